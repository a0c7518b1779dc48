"""The console's Lists pages: every list; one list's items and audit; a CSV upload of items and removal of values.

Changes go through storage.lists as the API's and the command line's do (one version per upload, each change
audited as `console:<analyst>`), validated by txguard.lists: an upload with any bad row stores nothing and the page
shows every problem by line, field, value and reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import psycopg2.extensions

from txguard import lists
from txguard.console import web
from txguard.errors import BadInput, NotFound, shorten
from txguard.lists import InvalidList, ListProblem
from txguard.storage import lists as storage

if TYPE_CHECKING:
    from txguard.console.app import Context
    from txguard.console.web import Response

ITEMS_SHOWN = 200
CHANGES_SHOWN = 100
MAX_UPLOAD_LINES = 10_000  # an upload is a form (1 MB at most); `txguard lists import` takes any size


def name_from_path(text: str) -> str:
    """A list's name from the page's path. Raises NotFound for anything that cannot be one."""
    try:
        return lists.list_name(text)
    except ValueError:
        raise NotFound(f"{shorten(text)!r} is not a list name") from None


def lists_page(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    return ctx.page("lists.html", stored=storage.all_lists(cur))


def list_page(
    ctx: Context,
    cur: psycopg2.extensions.cursor,
    name: str,
    problems: list[ListProblem] | None = None,
    upload: str = "",
) -> Response:
    stored = storage.get(cur, name)
    raw_value = ctx.request.query.get("value")
    value = None
    if raw_value:
        try:
            value = lists.lookup_value(stored.kind, raw_value)
        except InvalidList as exc:
            raise BadInput(f"query parameter 'value' = {shorten(raw_value)!r}: {exc.problems[0].reason}") from None
    changes = storage.changes(cur, name, None, value, 10 * CHANGES_SHOWN)[-CHANGES_SHOWN:]
    return ctx.page(
        "list.html",
        status=422 if problems else 200,
        stored=stored,
        items=storage.items(cur, name, None, value, ITEMS_SHOWN),
        changes=list(reversed(changes)),
        value=raw_value or "",
        problems=problems or [],
        upload=upload,
        done=ctx.request.query.get("done"),
    )


def _actor(ctx: Context) -> str:
    assert ctx.session is not None
    return lists.actor(f"console:{ctx.session.analyst}")


def upload_action(ctx: Context, cur: psycopg2.extensions.cursor, name: str) -> Response:
    """Add the items of the pasted CSV (header value[,expires_at][,note]) in one version, or none of them."""
    text = ctx.request.form.get("csv", "")
    kind = storage.lock(cur, name).kind
    problems: list[ListProblem] = []
    lines = text.splitlines()
    if len(lines) > MAX_UPLOAD_LINES + 1:
        problems.append(
            ListProblem(None, None, len(lines) - 1, f"at most {MAX_UPLOAD_LINES:,} rows; use txguard lists import")
        )
        return list_page(ctx, cur, name, problems, text)
    try:
        checker = lists.ItemChecker(kind, position="line", past_expiries=True)  # as `lists import` reads CSV
        items = list(checker.check_rows(lists.csv_rows(lines, problems), problems, 100))
    except lists.BadCsvHeader as exc:
        problems.append(ListProblem(1, None, None, exc.message))
        items = []
    if problems or not items:
        if not problems:
            problems.append(ListProblem(None, None, None, "no rows: paste a header and at least one row"))
        return list_page(ctx, cur, name, sorted(problems, key=lambda p: p.index or 0), text)
    result = storage.add_items(cur, name, items, _actor(ctx))
    return web.redirect(
        ctx.request.link(f"/lists/{name}", done="uploaded" if result.added + result.changed else "same")
    )


def remove_action(ctx: Context, cur: psycopg2.extensions.cursor, name: str) -> Response:
    """Remove the values given one per line, in one version."""
    kind = storage.lock(cur, name).kind
    raw = [line.strip() for line in ctx.request.form.get("values", "").splitlines() if line.strip()]
    if not raw:
        raise BadInput("give the values to remove, one per line")
    try:
        values = lists.check_values(kind, raw)
    except InvalidList as exc:
        return list_page(ctx, cur, name, list(exc.problems), "")
    result = storage.remove_items(cur, name, values, _actor(ctx))
    return web.redirect(ctx.request.link(f"/lists/{name}", done="removed" if result.removed else "same"))
