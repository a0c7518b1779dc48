"""`txguard labels import FILE`: labels from a CSV or JSON-lines file (gzip too) into the labels store.

    txguard labels import chargebacks.csv        # columns transaction_id, fraud, source, labelled_at, reason
    txguard labels import reviews.jsonl.gz       # one label object per line

Each row is validated by the API's own rules (txguard.label_intake); CSV cells are text, so `transaction_id` and
`labelled_at` (epoch ms) are read as integers in digits, `fraud` as true/false, and an empty `labelled_at` or
`reason` as omitted. All or nothing: every row is checked before anything is written, and the file is stored in
one database transaction, so a bad row (reported by line, field, value and reason) or any failure leaves the
labels store as it was. Re-importing a file stores nothing twice (each label is answered as a duplicate).
Reads DATABASE_URL (the service's connection).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import itertools
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, NamedTuple

from txguard import literals
from txguard.domain import FraudLabel
from txguard.errors import NOT_CSV, said, shorten
from txguard.labels import LabelInForce
from txguard_dev.commands.common import EXIT_USAGE, CommandError, open_database, service_database_url

MAX_PROBLEMS_SHOWN = 20
CHUNK = 10_000  # labels per write (the API's batch limit); all chunks share one database transaction


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="labels_command", metavar="SUBCOMMAND", required=True)
    imported = sub.add_parser("import", help="store labels from a CSV or JSON-lines file (all or nothing)")
    imported.add_argument("file", type=Path, help="CSV (*.csv, *.csv.gz) or JSON lines (anything else)")
    imported.add_argument("--no-progress", action="store_true", help="no progress bar")


def open_text(path: Path) -> IO[str]:
    """A UTF-8 text file, gunzipped when its name ends in .gz. A byte-order mark is skipped: spreadsheets write
    one ("CSV UTF-8"), and it would otherwise become part of the header's first column name. Raises OSError."""
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def is_csv_name(path: Path) -> bool:
    return path.name.lower().removesuffix(".gz").endswith(".csv")


class Unreadable(NamedTuple):
    """A line of a JSON-lines file that is not JSON: `reason` says why."""

    reason: str


def rows(path: Path) -> Iterator[tuple[int, dict[str, Any] | Any]]:
    """(line number, row) of a CSV (a dict of text cells, header on line 1) or JSON-lines file (each line's JSON
    value by the one JSON rule, or Unreadable for a line that is not JSON; blank lines skipped). CSV is read
    strictly: a quoted cell the file ends in (a file cut short) or text after a closing quote is an Unreadable
    row, the last one, rather than a cell holding the rest of the file. Raises ValueError for a CSV header naming
    a column twice (csv.DictReader would keep the last cell of the two)."""
    with open_text(path) as file:
        if is_csv_name(path):
            reader = csv.DictReader(file, strict=True)
            try:
                header = reader.fieldnames or []
            except csv.Error as exc:
                yield reader.reader.line_num, Unreadable(f"{NOT_CSV}: {exc}")
                return
            repeated = sorted({name for name in header if header.count(name) > 1})
            if repeated:
                raise ValueError(
                    f"{path}: header {list(header)!r}: {', '.join(map(repr, repeated))} named more than once; "
                    "name each column once"
                )
            try:
                for row in reader:
                    yield reader.line_num, row
            except csv.Error as exc:  # DictReader's own line_num is set only by a row read whole
                yield reader.reader.line_num, Unreadable(f"{NOT_CSV}: {exc}")
            return
        for number, line in enumerate(file, start=1):
            if line.strip():
                try:
                    yield number, literals.loads(line)
                except literals.JsonRefused as exc:
                    yield number, Unreadable(str(exc))


def _text_cell(row: dict[str, Any], name: str, convert: Any) -> None:
    # A CSV cell is text: convert what the JSON form would carry as a number or boolean; an empty cell is omitted.
    if name not in row:
        return
    value = row[name]
    if value in ("", None):
        del row[name]
        return
    try:
        row[name] = convert(value)
    except ValueError:
        pass  # left as text: the label's own rule refuses it with its reason


def label_item(row: Any, from_csv: bool) -> Any:
    """A file row as the JSON item the API would receive."""
    if not from_csv or not isinstance(row, dict):
        return row
    item = {k: v for k, v in row.items() if k is not None}
    _text_cell(item, "transaction_id", lambda v: literals.integer_from_text(v, -(2**63), 2**63 - 1))
    _text_cell(item, "fraud", literals.boolean_from_text)
    _text_cell(item, "labelled_at", lambda v: literals.integer_from_text(v, 0, 2**63 - 1) if ":" not in v else v)
    _text_cell(item, "reason", str)
    if None in row:
        item["(extra cells)"] = row[None]
    return item


def read_label_file(path: Path, refused: str = "nothing was stored") -> list[FraudLabel]:
    """Every label of the file, validated; raises ValueError naming the file and listing the bad rows (line, field,
    value, reason; a JSON line that is not JSON), ending its first line with `refused` (what was not done), or the
    CSV header naming a column twice."""
    return _checked_labels(path, rows(path), refused)


def _checked_labels(path: Path, found: Iterable[tuple[int, Any]], refused: str) -> list[FraudLabel]:
    from txguard.label_intake import check_labels

    labels: list[FraudLabel] = []
    problems: list[str] = []
    from_csv = is_csv_name(path)
    for number, row in found:
        if isinstance(row, Unreadable):
            problems.append(f"line {number}: {shorten(row.reason)}")
            continue
        (checked,) = check_labels([label_item(row, from_csv)])
        if checked.label is not None:
            labels.append(checked.label)
            continue
        problems.extend(f"line {number}: {said(p.field or 'the row', p.value, p.reason)}" for p in checked.problems)
    if problems:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
        raise ValueError(f"{path}: {len(problems)} problem(s); {refused}\n  " + "\n  ".join(shown) + more)
    return labels


def labels_in_file(path: Path, now_ms: int) -> dict[int, LabelInForce]:
    """The label in force of each transaction a labels file names (`txguard evaluate --labels`), the file in
    either form, told by its first row (CSV or JSON lines, gzip too):
    - the labels import's (transaction_id, fraud, source, labelled_at, reason), every row validated as `labels
      import` validates it: a transaction's label in force is its latest by labelled_at (epoch ms; omitted: now,
      `now_ms`), a later line winning a tie;
    - the generator's `--labels-out` (transaction_id, pattern, run_id): "genuine" or a fraud pattern, which is the
      label's reason; the last line of a transaction wins, labelled_at 0.
    Raises ValueError naming the bad rows (nothing is evaluated), OSError when the file cannot be read."""
    from txguard.labels import GENUINE, label_of

    found = rows(path)
    first = next(found, None)
    if first is None:
        return {}
    every = itertools.chain([first], found)
    labels: dict[int, LabelInForce] = {}
    if isinstance(first[1], dict) and "pattern" in first[1]:
        for number, row in every:
            label = label_of(row, f"{path}: line {number}")
            fraud = label.pattern != GENUINE
            labels[label.transaction_id] = LabelInForce(fraud, "file", label.pattern if fraud else None, 0)
        return labels
    for checked in _checked_labels(path, every, "nothing was evaluated"):
        at = now_ms if checked.labelled_at_ms is None else checked.labelled_at_ms
        held = labels.get(checked.transaction_id)
        if held is None or at >= held.labelled_at_ms:
            labels[checked.transaction_id] = LabelInForce(checked.fraud, checked.source, checked.reason, at)
    return labels


def run(args: argparse.Namespace) -> int:
    import psycopg2
    from tqdm import tqdm

    from txguard.storage.labels import write_labels

    try:
        labels = read_label_file(args.file)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CommandError(f"{args.file}: {exc}", exit_code=EXIT_USAGE) from None
    except (OSError, ValueError) as exc:  # OSError names the file, read_label_file's ValueError too
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None
    started = time.monotonic()
    stored = duplicates = 0
    now_ms = int(time.time() * 1000)
    try:
        with (
            open_database(service_database_url()) as conn,
            conn,
            conn.cursor() as cur,
            tqdm(total=len(labels), unit="label", disable=args.no_progress, file=sys.stderr) as bar,
        ):
            for start in range(0, len(labels), CHUNK):
                results = write_labels(cur, labels[start : start + CHUNK], now_ms)
                added = sum(1 for r in results if r.status == "stored")
                stored += added
                duplicates += len(results) - added
                bar.update(len(results))
    except psycopg2.Error as exc:
        raise CommandError(f"{str(exc).strip()}; nothing was stored") from None
    elapsed = max(time.monotonic() - started, 1e-9)
    print(
        f"{len(labels):,} labels from {args.file}: {stored:,} stored, {duplicates:,} duplicates "
        f"in {elapsed:.1f} s ({len(labels) / elapsed:,.0f} labels/s)"
    )
    return 0
