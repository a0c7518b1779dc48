"""`txguard lists ...`: allow, block and custom lists in the database the service uses (DATABASE_URL).

    txguard lists create blocked_cards --kind card --action block --description "confirmed stolen"
    txguard lists ls                                   # every list: kind, action, version, items
    txguard lists show blocked_cards                   # its definition and its first items
    txguard lists set blocked_cards --action none      # change the action (none, allow, block) or description
    txguard lists add blocked_cards card_7f3a --expires-at 2027-01-01T00:00:00Z --note "under review"
    txguard lists remove blocked_cards card_7f3a card_91bd
    txguard lists import blocked_cards cards.csv       # header: value[,expires_at][,note]; .csv.gz too
    txguard lists export blocked_cards > cards.csv     # the same columns, expiry as RFC 3339
    txguard lists changes blocked_cards --value card_7f3a

Every value, expiry and note is validated as the API validates them (txguard.lists). `import` is all or nothing:
rows are validated as they are read while the database merges the previous chunk (COPY into a temporary table,
one set-based statement; into a stored list, a second session looks the next chunk up meanwhile when the database
allows one more connection), all in one database transaction that any bad row rolls back (problems by line, field,
value and reason, exit 2): one new version, each change audited. Rows already in the list as given change nothing.
Changes are recorded as made by `cli:<user>` (the operating-system user, or --actor).
"""

from __future__ import annotations

import argparse
import csv
import getpass
import gzip
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from txguard.errors import said, shorten
from txguard.memory import collection_paused
from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    integer_argument,
    open_database,
    service_database_url,
)
from txguard_dev.commands.labels import open_text

MAX_PROBLEMS_SHOWN = 20
PAGE = 1000


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="lists_command", metavar="SUBCOMMAND", required=True)
    create = sub.add_parser("create", help="create a list")
    create.add_argument("name")
    create.add_argument("--kind", required=True, help="account, merchant, card, country, ip, device, merchant_category")
    create.add_argument("--action", default="none", help="none (rules read it), allow or block")
    create.add_argument("--description", default=None)
    sub.add_parser("ls", help="every list")
    show = sub.add_parser("show", help="a list's definition and its first items")
    show.add_argument("name")
    show.add_argument("--limit", type=integer_argument(0, 1000), default=20, help="items shown (0-1000, default 20)")
    change = sub.add_parser("set", help="change a list's action or description (a new version)")
    change.add_argument("name")
    change.add_argument("--action", default=None, help="none, allow or block")
    change.add_argument("--description", default=None, help="the new description ('' for none)")
    add = sub.add_parser("add", help="add (or update) one item")
    add.add_argument("name")
    add.add_argument("value")
    add.add_argument("--expires-at", default=None, help="epoch ms or RFC 3339 with a zone, in the future")
    add.add_argument("--note", default=None)
    remove = sub.add_parser("remove", help="remove values")
    remove.add_argument("name")
    remove.add_argument("values", nargs="+")
    imported = sub.add_parser("import", help="add a CSV file's items (all or nothing, one version)")
    imported.add_argument("name")
    imported.add_argument("file", type=Path, help="CSV (.csv or .csv.gz), header value[,expires_at][,note]")
    imported.add_argument("--no-progress", action="store_true", help="no progress bar")
    exported = sub.add_parser("export", help="a list's items as CSV (value, expires_at, note)")
    exported.add_argument("name")
    exported.add_argument("--out", type=Path, default=None, help="a file (default: standard output)")
    changes = sub.add_parser("changes", help="a list's audit, oldest first")
    changes.add_argument("name")
    changes.add_argument("--value", default=None, help="only this value's changes")
    changes.add_argument(
        "--limit", type=integer_argument(1, 1000), default=100, help="changes shown, oldest first (1-1000, default 100)"
    )
    for each in (create, change, add, remove, imported):
        each.add_argument("--actor", default=None, help="who, for the audit (default: the operating-system user)")


def actor(args: argparse.Namespace) -> str:
    """`cli:<who>`: --actor, else the operating-system user."""
    from txguard import lists

    try:
        who = args.actor or getpass.getuser()
    except (KeyError, OSError):  # no user name (a container without /etc/passwd entry)
        who = "unknown"
    try:
        return lists.actor(f"cli:{who}")
    except ValueError as exc:
        raise CommandError(f"--actor {who!r} {exc}", exit_code=EXIT_USAGE) from None


def _action(text: str) -> str | None:
    from txguard import lists

    value = None if text == "none" else text
    try:
        return lists.list_action(value)
    except ValueError:
        raise CommandError(f"--action {text!r} must be none, allow or block", exit_code=EXIT_USAGE) from None


def _refused(problems: list[str], what: str) -> CommandError:
    return _problem_list(f"{what}: {len(problems)} problem(s); nothing was stored", problems)


def _problem_list(head: str, problems: list[str]) -> CommandError:
    """`head`, then the first MAX_PROBLEMS_SHOWN problems one a line (exit 2)."""
    shown = problems[:MAX_PROBLEMS_SHOWN]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    return CommandError(head + "\n  " + "\n  ".join(shown) + more, exit_code=EXIT_USAGE)


def _ms_text(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard import lists
    from txguard.lists import InvalidList, ListExists, ListNotFound
    from txguard.storage.lists import ListItemsMoved

    if getattr(args, "name", None) is not None:
        try:
            lists.list_name(args.name)
        except ValueError as exc:
            raise CommandError(said("name", args.name, str(exc)), exit_code=EXIT_USAGE) from None
    try:
        with open_database(service_database_url()) as conn:
            return int(_COMMANDS[args.lists_command](conn, args))
    except InvalidList as exc:
        # The exception's message says what was refused and what became of it (nothing stored, removed or read).
        problems = [said(p.field or "the item", p.value, p.reason) for p in exc.problems]
        raise _problem_list(exc.message, problems) from None
    except (ListNotFound, ListExists) as exc:
        raise CommandError(exc.message) from None
    except ListItemsMoved as exc:
        raise CommandError(f"{exc}; nothing was stored") from None
    except psycopg2.Error as exc:
        raise CommandError(f"{str(exc).strip()}; nothing was stored") from None


def _create(conn: Any, args: argparse.Namespace) -> int:
    from txguard import lists
    from txguard.storage import lists as storage

    problems = []
    checked: dict[str, Any] = {}
    for field, check, value in (
        ("name", lists.list_name, args.name),
        ("kind", lists.list_kind, args.kind),
        ("description", lists.description, args.description),
    ):
        try:
            checked[field] = check(value)
        except ValueError as exc:
            problems.append(said(field, value, str(exc)))
    if problems:
        raise _refused(problems, f"list {args.name!r}")
    who = actor(args)
    with conn, conn.cursor() as cur:
        stored, created = storage.create(
            cur, checked["name"], checked["kind"], _action(args.action), checked["description"], who
        )
    print(f"list {stored.name} {'created' if created else 'already stored as given'} (version {stored.version})")
    return 0


def _ls(conn: Any, args: argparse.Namespace) -> int:
    from txguard.storage import lists as storage

    with conn, conn.cursor() as cur:
        stored = storage.all_lists(cur)
    if not stored:
        print("no lists; create one with `txguard lists create NAME --kind KIND`")
    for s in stored:
        print(
            f"{s.name:<32} {s.kind:<18} {s.action or '-':<6} v{s.version:<6} {s.items:>10,} items  "
            f"{s.description or ''}"
        )
    return 0


def _show(conn: Any, args: argparse.Namespace) -> int:
    from txguard.storage import lists as storage

    with conn, conn.cursor() as cur:
        s = storage.get(cur, args.name)
        items = storage.items(cur, args.name, None, None, args.limit) if args.limit else []
    print(f"{s.name}: {s.kind} list, action {s.action or 'none (rules read it)'}, version {s.version}")
    if s.description:
        print(f"  {s.description}")
    print(
        f"  created {_ms_text(s.created_at_ms)} by {s.created_by}; "
        f"changed {_ms_text(s.updated_at_ms)} by {s.updated_by}"
    )
    print(f"  {s.items:,} items{' (first ' + str(len(items)) + ')' if len(items) < s.items else ''}")
    for item in items:
        expiry = f"until {_ms_text(item.expires_at_ms)}" if item.expires_at_ms is not None else "no expiry"
        state = "" if item.active else " EXPIRED"
        print(f"  {item.value:<40} {expiry}{state}  {item.note or ''}")
    return 0


def _set(conn: Any, args: argparse.Namespace) -> int:
    from txguard import lists
    from txguard.storage import lists as storage

    changes: dict[str, Any] = {}
    if args.action is not None:
        changes["action"] = _action(args.action)
    if args.description is not None:
        try:
            changes["description"] = lists.description(args.description or None)
        except ValueError as exc:
            raise _refused([said("description", args.description, str(exc))], f"list {args.name!r}") from None
    if not changes:
        raise CommandError("give --action and/or --description", exit_code=EXIT_USAGE)
    who = actor(args)
    with conn, conn.cursor() as cur:
        stored, changed = storage.redefine(cur, args.name, who, **changes)
    print(f"list {stored.name} {'changed' if changed else 'unchanged'} (version {stored.version})")
    return 0


def _add(conn: Any, args: argparse.Namespace) -> int:
    from txguard import lists
    from txguard.storage import lists as storage

    raw = {"value": args.value} | {
        k: v for k, v in (("expires_at", args.expires_at), ("note", args.note)) if v is not None
    }
    who = actor(args)
    with conn, conn.cursor() as cur:
        kind = storage.lock(cur, args.name).kind
        result = storage.add_items(cur, args.name, lists.check_items(kind, [raw]), who)
    print(_summary(args.name, result))
    return 0


def _remove(conn: Any, args: argparse.Namespace) -> int:
    from txguard import lists
    from txguard.storage import lists as storage

    who = actor(args)
    with conn, conn.cursor() as cur:
        kind = storage.lock(cur, args.name).kind
        result = storage.remove_items(cur, args.name, lists.check_values(kind, args.values), who)
    print(_summary(args.name, result))
    return 0


def _summary(name: str, result: Any) -> str:
    parts = [f"{getattr(result, k):,} {k}" for k in ("added", "changed", "removed", "unchanged") if getattr(result, k)]
    return f"list {name}: {', '.join(parts) or 'nothing to do'}; version {result.version}"


def validated_items(path: Path, kind: str, now_ms: int, problems: list[str]) -> Iterator[Any]:
    """A CSV file's items (header `value` and optionally `expires_at`, `note`; an empty cell is an omitted field),
    validated against `kind` by txguard.lists as they are read, each value once (an expiry already past is taken,
    as `lists export` writes it: lists.ItemChecker's `past_expiries`). The bad rows are appended to
    `problems` (line, field, value and reason) and left out; reading stops after 10 x MAX_PROBLEMS_SHOWN of them.
    Raises CommandError (exit 2) for a bad header; OSError when the file cannot be read."""
    from txguard import lists

    checker = lists.ItemChecker(kind, now_ms, position="line", past_expiries=True)
    found: list[lists.ListProblem] = []
    try:
        with open_text(path) as file:
            # Enough to act on past 10 x MAX_PROBLEMS_SHOWN: counting every problem of a wrong file is not worth it.
            yield from checker.check_rows(lists.csv_rows(file, found), found, 10 * MAX_PROBLEMS_SHOWN)
    except lists.BadCsvHeader as exc:
        raise CommandError(f"{path}: {exc.message}", exit_code=EXIT_USAGE) from None
    finally:
        problems.extend(problem_lines(found))


def problem_lines(found: list[Any]) -> list[str]:
    """ListProblems of a CSV file as `line N: field = value: reason`, in line order."""
    return [
        f"line {p.index}: {said(p.field, p.value, p.reason) if p.field else shorten(p.reason)}"
        for p in sorted(found, key=lambda p: p.index or 0)
    ]


def _line_count(path: Path) -> int:
    """The progress bar's first total: the file's line breaks after the header (blank lines and notes with a line
    break count too; the bar is set right at the end)."""
    with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else path.open("rb") as file:
        return max(sum(chunk.count(b"\n") for chunk in iter(lambda: file.read(1 << 20), b"")) - 1, 0)


@contextmanager
def _lookup_session() -> Iterator[Any]:
    """A second connection for an import's lookups (storage.lists.import_items' `reader`), closed on exit; None,
    said on standard error, when the database refuses it (a connection limit reached): the second session only
    speeds an import into a stored list up, and the import's own session does the lookups without it."""
    with ExitStack() as stack:
        try:
            reader = stack.enter_context(open_database(service_database_url(), migrated=False))
        except CommandError as exc:  # raised only for a connection open_database could not open
            print(f"the import runs in one session: {exc}", file=sys.stderr)
            reader = None
        yield reader


def _import(conn: Any, args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from txguard.storage import lists as storage

    who = actor(args)
    started = time.monotonic()
    with conn, conn.cursor() as cur:
        kind = storage.definition(cur, args.name).kind  # a list's kind never changes
    problems: list[str] = []
    # A million rows leave a million tuples in the checker's index of values: the cyclic garbage collector would
    # walk them again and again (a third of the time) for cycles the import never makes.
    try:
        total = _line_count(args.file)
        # Rows are validated as they are read while the database merges the previous chunk; any problem rolls
        # the whole import back, so nothing is stored unless every row is valid.
        # A second session looks up each chunk's items in the stored list while the first writes the chunk before.
        with (
            collection_paused(),
            _lookup_session() as reader,
            conn,
            conn.cursor() as cur,
            tqdm(total=total, unit="item", disable=args.no_progress, file=sys.stderr) as bar,
        ):
            items = validated_items(args.file, kind, int(time.time() * 1000), problems)
            result = storage.import_items(
                cur,
                args.name,
                items,
                who,
                on_copied=bar.update,
                reader=reader,
                on_reader_lost=lambda exc: print(
                    f"the import goes on in one session: its lookups' session failed: {str(exc).strip()}",
                    file=sys.stderr,
                ),
            )
            bar.total = bar.n  # the items read, whatever the line count guessed
            bar.refresh()
            if problems:
                raise _refused(problems, str(args.file))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"{args.file}: {exc}", exit_code=EXIT_USAGE) from None
    count = result.added + result.changed + result.unchanged
    elapsed = max(time.monotonic() - started, 1e-9)
    print(
        f"{count:,} items from {args.file}: {_summary(args.name, result)} in {elapsed:.1f} s "
        f"({count / elapsed:,.0f} items/s)"
    )
    return 0


def _export(conn: Any, args: argparse.Namespace) -> int:
    from txguard.storage import lists as storage

    out = args.out.open("w", encoding="utf-8", newline="") if args.out else sys.stdout
    try:
        with conn, conn.cursor() as cur:
            storage.get(cur, args.name)
            storage.export_items(cur, args.name, out)
    finally:
        if args.out:
            out.close()
    return 0


def _changes(conn: Any, args: argparse.Namespace) -> int:
    from txguard import lists
    from txguard.storage import lists as storage

    with conn, conn.cursor() as cur:
        value = None
        if args.value is not None:
            value = lists.lookup_value(storage.definition(cur, args.name).kind, args.value)
        rows = storage.changes(cur, args.name, None, value, args.limit)
    for c in rows:
        head = f"v{c.version:<6} {_ms_text(c.changed_at_ms)} {c.actor:<24} {c.operation:<7}"
        if c.items is None:
            print(f"{head} kind {c.kind}, action {c.action or 'none'}, description {c.description or '-'}")
            continue
        for item in c.items:
            expiry = f" until {_ms_text(item.expires_at_ms)}" if item.expires_at_ms is not None else ""
            print(f"{head} {item.value}{expiry}{'  ' + item.note if item.note else ''}")
    return 0


_COMMANDS = {
    "create": _create,
    "ls": _ls,
    "show": _show,
    "set": _set,
    "add": _add,
    "remove": _remove,
    "import": _import,
    "export": _export,
    "changes": _changes,
}
