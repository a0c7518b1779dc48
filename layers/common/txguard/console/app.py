"""The console's routes: each page and action, and who may call it (ConsoleFunction serves /console/*).

Every request but the sign-in form and the stylesheet needs a valid session: a page without one redirects to
the sign-in form, an action answers 401. Every action (POST) also needs the CSRF token of its session: a
forged, missing or expired one is 403 and nothing changes. Query parameters are validated like the API's
(literals.py): a bad one is a 400 page naming parameter, value and reason.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from importlib import resources
from typing import Any

import psycopg2.extensions
from jinja2 import Environment, PackageLoader, select_autoescape

from txguard import db, literals
from txguard.console import charts, list_pages, model_pages, queries, session, web
from txguard.console.session import Keys, Session
from txguard.console.web import Request, Response
from txguard.currencies import money
from txguard.errors import BadInput, Conflict, NotFound, TxguardError, Unavailable, shorten
from txguard.features import FEATURES
from txguard.intake import INT64_MAX, MAX_AMOUNT
from txguard.storage import console_rollups, review_claims, rule_sets

PAGE_SIZE = 50
WHAT_IF_LIMIT = Decimal(10**18)  # the largest magnitude What-if takes for a feature other than the amount
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
# The columns of a list of decisions (the Decisions page, an account's page) and of its CSV download.
DECISION_COLUMNS = [
    "transaction_id",
    "account_id",
    "time",
    "amount",
    "currency",
    "merchant_id",
    "flagged",
    "score",
    "rules",
    "label",
]
BAND_LABELS = ("0", "<10", "10-25", "25-50", "50-100", "100-250", "250-500", "500-1k", "1k-5k", "≥5k")


class Forbidden(TxguardError):
    """A CSRF token that is missing, forged or expired: 403, nothing changed."""

    code = "forbidden"


@cache
def templates() -> Environment:
    env = Environment(
        loader=PackageLoader("txguard.console", "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["ms"] = lambda ms: datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
    env.filters["money"] = lambda amount, currency: money(Decimal(amount), currency)
    env.filters["pct"] = lambda x: "–" if x is None else f"{100 * x:.1f}%"
    env.filters["four"] = lambda x: "–" if x is None else f"{x:.4f}"
    env.filters["day"] = model_pages.day
    return env


@cache
def stylesheet() -> str:
    return resources.files("txguard.console").joinpath("static/console.css").read_text(encoding="utf-8")


@dataclass
class Context:
    request: Request
    keys: Keys
    session: Session | None
    rollups: console_rollups.Refresh | None = None

    def refresh(self, cur: psycopg2.extensions.cursor) -> None:
        """Bring the rollups up to date (within a time budget) before a page reads them."""
        self.rollups = console_rollups.refresh(cur)

    def csrf(self) -> str:
        assert self.session is not None
        return session.csrf_token(self.keys, self.session)

    def page(self, name: str, status: int = 200, **values: Any) -> Response:
        if self.request.query.get("csv") and status == 200:
            tables = values.get("tables") or {}
            table = tables.get(self.request.query["csv"])
            if table is None:
                raise BadInput(f"query parameter 'csv': no table {shorten(self.request.query['csv'])!r} on this page")
            return web.csv_response(self.request.query["csv"], table["columns"], table["rows"])
        html = (
            templates()
            .get_template(name)
            .render(
                r=self.request,
                analyst=self.session.analyst if self.session else None,
                csrf=self.csrf() if self.session else "",
                rollups=self.rollups,
                **values,
            )
        )
        return Response(status, html)


# ------------------------------------------------------------------------------------------ parameters --


def _int_param(q: dict[str, str], name: str, minimum: int, maximum: int) -> int | None:
    text = q.get(name, "").strip()
    if not text:
        return None
    try:
        return literals.integer_from_text(text, minimum, maximum)
    except ValueError as exc:
        raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: {exc}") from None


def _decimal_param(q: dict[str, str], name: str, minimum: Decimal, maximum: Decimal) -> Decimal | None:
    text = q.get(name, "").strip()
    if not text:
        return None
    try:
        value = literals.decimal(text)
    except ValueError as exc:
        raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: {exc}") from None
    if not minimum <= value <= maximum:
        raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: must be from {minimum} to {maximum}")
    return value


def _choice(q: dict[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    text = q.get(name, "")
    if not text:
        return None
    if text not in choices:
        raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: must be one of {', '.join(choices)}")
    return text


def _date_param(q: dict[str, str], name: str) -> datetime | None:
    text = q.get(name, "").strip()
    if not text:
        return None
    try:
        day = datetime.strptime(text, "%Y-%m-%d")
    except ValueError:
        raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: must be a date YYYY-MM-DD") from None
    if day.year < 2000:
        raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: must be 2000-01-01 or later")
    return day.replace(tzinfo=UTC)


def _period(cur: psycopg2.extensions.cursor, q: dict[str, str]) -> queries.Period:
    since, until = _date_param(q, "from"), _date_param(q, "to")
    if since is None and until is None:
        return queries.default_period(cur)
    if since is None or until is None:
        raise BadInput("query parameters 'from' and 'to': give both, or neither for the last 30 days")
    end = until + queries.DAY  # "to" names the last day shown
    if end <= since:
        raise BadInput(f"query parameter 'from' = {q['from']!r} is after 'to' = {q['to']!r}")
    if (end - since).days > queries.MAX_PERIOD_DAYS:
        raise BadInput(f"the period is longer than {queries.MAX_PERIOD_DAYS} days")
    return queries.Period(since, end)


def _text_param(q: dict[str, str], name: str, pattern: str, what: str) -> str | None:
    import re

    text = q.get(name, "")
    if not text:
        return None
    if not re.fullmatch(pattern, text):
        raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: must be {what}")
    return text


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def _four(x: float | None) -> str:
    return "" if x is None else f"{x:.4f}"


def _table(columns: list[str], rows: list[list[Any]]) -> dict[str, Any]:
    return {"columns": columns, "rows": rows}


# ---------------------------------------------------------------------------------------------- pages --


def overview(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    ctx.refresh(cur)
    period = _period(cur, ctx.request.query)
    volume = queries.volume(cur, period)
    labelled = queries.labelled_totals(cur, period)
    days = period.day_labels()
    per_day = [volume.by_day.get(d, [0, 0]) for d in days]
    rows = [
        [d, n, f, f"{f / n:.4f}" if n else "", labelled.fraud_by_day.get(d, 0)]
        for d, (n, f) in zip(days, per_day, strict=True)
    ]
    open_reviews = volume.flagged - labelled.flagged_labelled
    kpis = {
        "transactions": volume.transactions,
        "amounts": sorted(volume.amount_by_currency.items()),
        "flag_rate": _ratio(volume.flagged, volume.transactions),
        "flagged": volume.flagged,
        "labelled_fraud": labelled.fraud,
        "labelled": labelled.labelled,
        "precision": _ratio(labelled.flagged_fraud, labelled.flagged_labelled),
        "recall": _ratio(labelled.flagged_fraud, labelled.fraud),
        "open_reviews": open_reviews,
    }
    return ctx.page(
        "overview.html",
        period=period,
        kpis=kpis,
        volume_chart=charts.line_chart("Transactions per day", days, [("transactions", [n for n, _ in per_day])]),
        rate_chart=charts.line_chart(
            "Share flagged per day", days, [("flagged", [f / n if n else 0 for n, f in per_day])], ".1%"
        ),
        fraud_chart=charts.line_chart(
            "Labelled fraud per day", days, [("labelled fraud", [labelled.fraud_by_day.get(d, 0) for d in days])]
        ),
        tables={"daily": _table(["day", "transactions", "flagged", "flag_rate", "labelled_fraud"], rows)},
    )


def decisions_page(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    q = ctx.request.query
    before = None
    if q.get("before"):
        try:
            ms, tid = q["before"].split(".")
            before = (
                literals.integer_from_text(ms, 0, INT64_MAX),
                literals.integer_from_text(tid, -INT64_MAX - 1, INT64_MAX),
            )
        except ValueError:
            raise BadInput(
                f"query parameter 'before' = {shorten(q['before'])!r}: not a page mark this console made"
            ) from None
    flag = _choice(q, "flagged", ("yes", "no"))
    since, until = _date_param(q, "from"), _date_param(q, "to")
    filters = queries.DecisionFilters(
        flagged=None if flag is None else flag == "yes",
        score_min=_decimal_param(q, "score_min", Decimal(0), Decimal(1)),
        score_max=_decimal_param(q, "score_max", Decimal(0), Decimal(1)),
        rule_id=_text_param(q, "rule", r"[a-z][a-z0-9_]{0,63}", "a rule id (lower-case letters, digits, _)"),
        label=_choice(q, "label", ("fraud", "genuine", "none")),
        account_id=_int_param(q, "account", 1, INT64_MAX),
        merchant_id=_text_param(q, "merchant", r"[A-Za-z0-9_.:\-]{1,64}", "1-64 letters, digits, _ . : -"),
        since=since,
        until=None if until is None else until + queries.DAY,
        before=before,
    )
    items = queries.decisions(cur, filters, PAGE_SIZE + 1)
    more = len(items) > PAGE_SIZE
    items = items[:PAGE_SIZE]
    labels = queries.labels_in_force(cur, [j.transaction.transaction_id for j in items])
    next_link = None
    if more:
        last = items[-1].transaction
        next_link = ctx.request.link("/decisions", **{**q, "before": f"{last.ts}.{last.transaction_id}", "csv": None})
    rows = [_decision_row(j, labels) for j in items]
    return ctx.page(
        "decisions.html",
        q=q,
        items=items,
        labels=labels,
        next_link=next_link,
        tables={
            "decisions": _table(
                DECISION_COLUMNS,
                rows,
            )
        },
    )


def _decision_row(j: Any, labels: dict[int, tuple[bool, str, str | None]]) -> list[Any]:
    t, d = j.transaction, j.decision
    label = labels.get(t.transaction_id)
    return [
        t.transaction_id,
        t.account_id,
        datetime.fromtimestamp(t.ts / 1000, UTC).isoformat(),
        str(t.amount),
        t.currency,
        t.merchant_id or "",
        d.fraud,
        str(d.score),
        " ".join(r.rule_id for r in d.reasons),
        "" if label is None else ("fraud" if label[0] else "genuine"),
    ]


def decision_page(ctx: Context, cur: psycopg2.extensions.cursor, transaction_id: int) -> Response:
    j = queries.decision(cur, transaction_id)
    if j is None:
        raise NotFound(f"no stored transaction {transaction_id}")
    stored = j.features is not None
    recomputed = None if stored else queries.features_at_decision(cur, j.transaction.account_id, transaction_id)
    features: dict[str, Any] = dict(j.features) if j.features is not None else (recomputed or {})
    history = queries.label_history(cur, [transaction_id])
    rows = [[name, str(value)] for name, value in sorted(features.items())]
    contributions = model_pages.decision_contributions(cur, j.decision, features)
    return ctx.page(
        "decision.html",
        j=j,
        contributions=contributions,
        features=rows,
        features_note=(
            "The features this decision was taken on, as stored with it (the ones its detector reads)."
            if stored
            else "Stored before decisions kept their features: recomputed point-in-time in SQL "
            "(transaction_features), from the account's history before this transaction."
            if recomputed is not None
            else "Stored before decisions kept their features, and recomputing them over this account's history "
            "takes too long for a page: GET /is_fraud/{account}?recompute=true re-decides it."
        ),
        what_if={
            "decide": 1,
            **{k: v for k, v in features.items() if k in FEATURES and k != "amount" and v is not None},
        },
        labels=history,
        tables={
            "features": _table(["feature", "value"], rows),
            "contributions": _table(["feature", "value", "contribution_log_odds"], contributions.rows),
        },
    )


def account_page(ctx: Context, cur: psycopg2.extensions.cursor, account_id: int) -> Response:
    summary = queries.account_summary(cur, account_id)
    items = queries.account_transactions(cur, account_id, 500)
    if not items:
        raise NotFound(f"no transactions for account {account_id}")
    ids = [j.transaction.transaction_id for j in items]
    labels = queries.labels_in_force(cur, ids)
    points = []
    for j in items:
        label = labels.get(j.transaction.transaction_id)
        kind = ("flagged " if j.decision.fraud else "") + ("fraud" if label and label[0] else "genuine")
        points.append((j.transaction.ts, j.transaction.amount, kind))
    span = (
        (
            datetime.fromtimestamp(items[0].transaction.ts / 1000, UTC).date().isoformat(),
            datetime.fromtimestamp(items[-1].transaction.ts / 1000, UTC).date().isoformat(),
        )
        if items
        else ("", "")
    )
    rows = [_decision_row(j, labels) for j in reversed(items)]
    return ctx.page(
        "account.html",
        account_id=account_id,
        summary=summary,
        items=list(reversed(items)),
        labels=labels,
        label_history=queries.label_history(cur, ids),
        chart=charts.timeline(f"Account {account_id}: amounts over time", points, span),
        tables={
            "transactions": _table(
                DECISION_COLUMNS,
                rows,
            )
        },
    )


def review_page(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    assert ctx.session is not None
    items = review_claims.queue(cur, PAGE_SIZE)
    mine = [i for i in items if i.claimed_by == ctx.session.analyst]
    free = [i for i in items if i.claimed_by is None]
    others = [i for i in items if i.claimed_by not in (None, ctx.session.analyst)]
    rows = [[i.transaction_id, i.account_id, i.outcome, i.score, i.claimed_by or ""] for i in items]
    return ctx.page(
        "review.html",
        mine=mine,
        free=free,
        others=others,
        claim_minutes=review_claims.CLAIM_SECONDS // 60,
        tables={"queue": _table(["transaction_id", "account_id", "outcome", "score", "claimed_by"], rows)},
    )


def review_item_page(ctx: Context, cur: psycopg2.extensions.cursor, transaction_id: int) -> Response:
    """Open one review item: claims it for this analyst, or says who holds it."""
    assert ctx.session is not None
    j = queries.decision(cur, transaction_id)
    if j is None:
        raise NotFound(f"no stored transaction {transaction_id}")
    holder = review_claims.holder(cur, transaction_id)
    labelled = queries.labels_in_force(cur, [transaction_id]).get(transaction_id)
    held_by_other = holder is not None and holder != ctx.session.analyst
    if not held_by_other and labelled is None:
        # A GET that claims: opening an item is what takes it. The claim expires by itself.
        held_by_other = not review_claims.claim(cur, transaction_id, ctx.session.analyst)
        holder = review_claims.holder(cur, transaction_id)
    return ctx.page("review_item.html", j=j, holder=holder, held_by_other=held_by_other, labelled=labelled)


def rules_page(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    ctx.refresh(cur)
    period = _period(cur, ctx.request.query)
    current = rule_sets.latest(cur)
    labelled = queries.labelled_totals(cur, period)
    hits = queries.daily_rule_hits(cur, period)
    by_day = queries.rule_labels_by_day(cur, period)
    days = period.day_labels()
    rules = current.rule_set.rules if current else []
    rows = []
    for rule in rules:
        total_hits = sum(hits.get(rule.id, {}).values())
        n, fraud = labelled.rules.get(rule.id, [0, 0])
        rows.append(
            [
                rule.id,
                rule.mode,
                rule.enabled,
                str(rule.score),
                total_hits,
                n,
                fraud,
                _four(_ratio(fraud, n)),
                _four(_ratio(fraud, labelled.fraud)),
            ]
        )
    series = [(rule.id, [hits.get(rule.id, {}).get(d, 0) for d in days]) for rule in rules if rule.id in hits][:5]
    precision_series = [
        (rule.id, [(lambda c: c[1] / c[0] if c[0] else 0)(by_day.get(rule.id, {}).get(d, (0, 0))) for d in days])
        for rule in rules
        if rule.id in by_day
    ][:5]
    over_time = [
        [d, rule_id, hits.get(rule_id, {}).get(d, 0), *by_day.get(rule_id, {}).get(d, (0, 0))]
        for rule_id in sorted(set(hits) | set(by_day))
        for d in days
    ]
    versions = rule_sets.history(cur)
    a = _int_param(ctx.request.query, "diff_from", 1, 2**31 - 1)
    b = _int_param(ctx.request.query, "diff_to", 1, 2**31 - 1)
    diff = None
    if a is not None and b is not None:
        old, new = rule_sets.version(cur, a), rule_sets.version(cur, b)
        if old is None or new is None:
            raise NotFound(f"no rule set version {a if old is None else b}")
        diff = rule_set_diff(old.rule_set.document(), new.rule_set.document())
    return ctx.page(
        "rules.html",
        period=period,
        current=current,
        rows=rows,
        versions=versions,
        diff=diff,
        diff_from=a,
        diff_to=b,
        hits_chart=charts.line_chart("Hits per day", days, series) if series else None,
        precision_chart=charts.line_chart("Precision per day (labelled hits)", days, precision_series, ".0%")
        if precision_series
        else None,
        current_json=_rule_set_text(current.rule_set.document()) if current else "",
        tables={
            "rules": _table(
                ["rule_id", "mode", "enabled", "weight", "hits", "labelled_hits", "fraud_hits", "precision", "recall"],
                rows,
            ),
            "over_time": _table(["day", "rule_id", "hits", "labelled_hits", "fraud_hits"], over_time),
        },
    )


def _rule_set_text(document: dict[str, Any]) -> str:
    """A rule set as someone would write it: without the parsed conditions stored beside each `when`."""
    import json

    rules = [{k: v for k, v in rule.items() if k != "condition"} for rule in document.get("rules", [])]
    return json.dumps({**document, "rules": rules}, indent=2)


def rule_set_diff(old: dict[str, Any], new: dict[str, Any]) -> list[dict[str, Any]]:
    """What changed from one rule set document to another: the threshold, and each rule added, removed or
    changed (field by field)."""
    changes: list[dict[str, Any]] = []
    if old.get("threshold") != new.get("threshold"):
        changes.append({"what": "threshold", "rule": "", "before": old.get("threshold"), "after": new.get("threshold")})
    before = {r["id"]: r for r in old.get("rules", [])}
    after = {r["id"]: r for r in new.get("rules", [])}
    for rule_id in sorted(before.keys() | after.keys()):
        if rule_id not in after:
            changes.append({"what": "removed", "rule": rule_id, "before": before[rule_id].get("when"), "after": ""})
        elif rule_id not in before:
            changes.append({"what": "added", "rule": rule_id, "before": "", "after": after[rule_id].get("when")})
        else:
            for name in ("when", "score", "mode", "enabled", "description"):
                if before[rule_id].get(name) != after[rule_id].get(name):
                    changes.append(
                        {
                            "what": name,
                            "rule": rule_id,
                            "before": before[rule_id].get(name),
                            "after": after[rule_id].get(name),
                        }
                    )
    return changes


def backtest_action(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    """Backtest a pasted rule set over a period (nothing is stored) and show the result on the Rules page."""
    from txguard.backtest import backtest
    from txguard.rule_engine import CompiledRuleSet
    from txguard.rule_language import RuleSetError, validate_rule_set

    form = ctx.request.form
    text = form.get("rules", "")
    try:
        candidate = validate_rule_set(literals.loads(text))
    except RuleSetError as exc:
        raise BadInput("the rule set is not valid: " + "; ".join(exc.problems)) from None
    except ValueError as exc:
        raise BadInput(f"the rule set is not JSON: {exc}") from None
    ctx.refresh(cur)
    period = _period(cur, {"from": form.get("from", ""), "to": form.get("to", "")})
    since_ms, until_ms = int(period.since.timestamp() * 1000), int(period.until.timestamp() * 1000)
    labels_by_id = _labels_for_backtest(cur, since_ms, until_ms)
    report = backtest(cur, CompiledRuleSet(0, candidate), since_ms, until_ms, labels_by_id)
    return _with_backtest(ctx, report, period)


def _labels_for_backtest(cur: psycopg2.extensions.cursor, since_ms: int, until_ms: int) -> dict[int, str]:
    """The labels in force of the period's transactions as the backtest takes them (pattern, or genuine)."""
    from txguard.labels import GENUINE, UNSPECIFIED_FRAUD, labels_in_force

    return {
        tid: (label.reason or UNSPECIFIED_FRAUD) if label.fraud else GENUINE
        for tid, label in labels_in_force(cur, None, since_ms, until_ms).items()
    }


def _with_backtest(ctx: Context, report: Any, period: queries.Period) -> Response:
    rows = [
        [
            rule_id,
            report.fired.get(rule_id, 0),
            c.true_positive,
            c.false_positive,
            c.false_negative,
            _ratio(c.true_positive, c.true_positive + c.false_positive),
            _ratio(c.true_positive, c.true_positive + c.false_negative),
        ]
        for rule_id, c in sorted(report.per_rule.items())
    ]
    o = report.overall
    result = {
        "period": period,
        "evaluated": report.evaluated,
        "flagged": report.flagged,
        "baseline_flagged": report.baseline_flagged,
        "baseline_version": report.baseline_version,
        "stored_flagged": report.stored_flagged,
        "drift": sum(report.drift.values()),
        "newly_flagged": report.newly_flagged,
        "no_longer_flagged": report.no_longer_flagged,
        "labelled": report.labelled,
        "precision": _ratio(o.true_positive, o.true_positive + o.false_positive),
        "recall": _ratio(o.true_positive, o.true_positive + o.false_negative),
        "rows": rows,
    }
    return ctx.page("backtest.html", result=result)


def explore_page(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    ctx.refresh(cur)
    period = _period(cur, ctx.request.query)
    volume = queries.volume(cur, period)
    labelled = queries.labelled_totals(cur, period)

    def rate(bucket: dict[int, list[int]], key: int) -> float:
        n, fraud = bucket.get(key, [0, 0])
        return fraud / n if n else 0.0

    hours = list(range(24))
    weekdays = list(range(1, 8))
    bands = list(range(len(BAND_LABELS)))
    by_hour = [
        [
            h,
            volume.by_hour.get(h, [0, 0])[0],
            volume.by_hour.get(h, [0, 0])[1],
            *labelled.by_hour.get(h, [0, 0]),
            f"{rate(labelled.by_hour, h):.4f}",
        ]
        for h in hours
    ]
    by_weekday = [
        [
            WEEKDAYS[d - 1],
            volume.by_weekday.get(d, [0, 0])[0],
            volume.by_weekday.get(d, [0, 0])[1],
            *labelled.by_weekday.get(d, [0, 0]),
            f"{rate(labelled.by_weekday, d):.4f}",
        ]
        for d in weekdays
    ]
    by_band = [
        [
            BAND_LABELS[b],
            volume.by_band.get(b, [0, 0])[0],
            volume.by_band.get(b, [0, 0])[1],
            *labelled.by_band.get(b, [0, 0]),
            f"{rate(labelled.by_band, b):.4f}",
        ]
        for b in bands
    ]
    sample = queries.sample(cur, period, volume.transactions)
    matrix = queries.correlations(sample)
    columns = ["bucket", "transactions", "flagged", "labelled", "labelled_fraud", "fraud_rate"]
    return ctx.page(
        "explore.html",
        period=period,
        amount_chart=charts.bar_chart(
            "Transactions by amount band", list(BAND_LABELS), [volume.by_band.get(b, [0, 0])[0] for b in bands]
        ),
        hour_chart=charts.bar_chart(
            "Labelled fraud rate by hour (UTC)",
            [str(h) for h in hours],
            [rate(labelled.by_hour, h) for h in hours],
            ".2%",
        ),
        weekday_chart=charts.bar_chart(
            "Labelled fraud rate by weekday", list(WEEKDAYS), [rate(labelled.by_weekday, d) for d in weekdays], ".2%"
        ),
        band_chart=charts.bar_chart(
            "Labelled fraud rate by amount band", list(BAND_LABELS), [rate(labelled.by_band, b) for b in bands], ".2%"
        ),
        heatmap=charts.heatmap("Correlation of features (sample)", sample.columns, matrix),
        sample=sample,
        tables={
            "by_hour": _table(columns, by_hour),
            "by_weekday": _table(columns, by_weekday),
            "by_amount_band": _table(columns, by_band),
            "correlation": _table(
                ["feature", *sample.columns],
                [
                    [sample.columns[i], *("" if v is None else f"{v:.4f}" for v in line)]
                    for i, line in enumerate(matrix)
                ],
            ),
            "summary": _table(
                ["feature", "count", "mean", "std", "min", "median", "p95", "max"], queries.summary_stats(sample)
            ),
        },
    )


def what_if_page(ctx: Context, cur: psycopg2.extensions.cursor) -> Response:
    """Decide an edited transaction with the current detector (its rule set, champion and shadows, as ingest
    decides); nothing is stored (a GET)."""
    from txguard.detection import detector_cache
    from txguard.settings import service_settings

    q = ctx.request.query
    current = rule_sets.latest(cur)
    values: dict[str, str] = {name: q.get(name, "") for name in FEATURES}
    currency = _text_param(q, "currency", r"[A-Z]{3}", "an ISO 4217 code") or "EUR"
    merchant = _text_param(q, "merchant_id", r"[A-Za-z0-9_.:\-]{1,64}", "1-64 letters, digits, _ . : -")
    result = None
    contributions = None
    if q.get("decide") and current is not None:
        features: dict[str, Any] = {}
        for name in FEATURES:
            text = values[name].strip()
            if not text:
                features[name] = None
                continue
            try:
                value = literals.decimal(text)
            except ValueError as exc:
                raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: {exc}") from None
            # What ingest could ever compute: an amount within intake's limit, any other feature within 10^18.
            limit = MAX_AMOUNT if name == "amount" else WHAT_IF_LIMIT
            if not -limit <= value <= limit or (name == "amount" and value < 0):
                low = 0 if name == "amount" else -limit
                raise BadInput(f"query parameter {name!r} = {shorten(text)!r}: must be from {low} to {limit}")
            features[name] = int(value) if value == value.to_integral_value() and not FEATURES[name].money else value
        if features.get("amount") is None:
            raise BadInput("query parameter 'amount': required to decide")
        detector = detector_cache.current(cur, service_settings().rules_cache_seconds)
        result = detector.decide(dict(features), merchant, currency)
        contributions = model_pages.decision_contributions(cur, result, features)
    return ctx.page(
        "what_if.html",
        features=list(FEATURES),
        values=values,
        currency=currency,
        merchant=merchant or "",
        current=current,
        result=result,
        contributions=contributions,
        tables={
            "contributions": _table(
                ["feature", "value", "contribution_log_odds"], contributions.rows if contributions else []
            )
        },
    )


# --------------------------------------------------------------------------------------------- actions --


def label_action(ctx: Context, cur: psycopg2.extensions.cursor, transaction_id: int) -> Response:
    """Write the analyst's label ("fraud" or "genuine") for a review item they hold, then back to the queue."""
    from txguard.console import labelling

    assert ctx.session is not None
    verdict = ctx.request.form.get("verdict")
    if verdict not in ("fraud", "genuine"):
        raise BadInput(f"form field 'verdict' = {shorten(str(verdict))!r}: must be fraud or genuine")
    holder = review_claims.holder(cur, transaction_id)
    if holder is not None and holder != ctx.session.analyst:
        raise Forbidden(f"transaction {transaction_id} is being reviewed by {holder}")
    if queries.decision(cur, transaction_id) is None:
        raise NotFound(f"no stored transaction {transaction_id}")
    labelling.write_label(cur, transaction_id, verdict == "fraud", f"analyst:{ctx.session.analyst}")
    review_claims.release(cur, transaction_id, ctx.session.analyst)
    return web.redirect(ctx.request.link("/review", labelled=transaction_id))


# ---------------------------------------------------------------------------------------------- routing --

Page = Callable[..., Response]


def _id_from_path(text: str) -> int:
    try:
        return literals.integer_from_text(text, -INT64_MAX - 1, INT64_MAX)
    except ValueError as exc:
        raise NotFound(f"{shorten(text)!r} is not a transaction or account id: {exc}") from None


def _model_version_from_path(text: str) -> int:
    try:
        return literals.integer_from_text(text, 1, 2**31 - 1)
    except ValueError as exc:
        raise NotFound(f"{shorten(text)!r} is not a model version: {exc}") from None


def _route(method: str, path: str) -> tuple[Page, tuple[Any, ...]] | None:
    parts = [p for p in path.split("/") if p]
    simple: dict[tuple[str, str], Page] = {
        ("GET", ""): overview,
        ("GET", "decisions"): decisions_page,
        ("GET", "review"): review_page,
        ("GET", "rules"): rules_page,
        ("POST", "rules/backtest"): backtest_action,
        ("GET", "models"): model_pages.models_page,
        ("GET", "models/train"): model_pages.train_page,
        ("POST", "models/train"): model_pages.train_action,
        ("POST", "models/rollback"): model_pages.rollback_action,
        ("GET", "explore"): explore_page,
        ("GET", "what-if"): what_if_page,
        ("GET", "lists"): list_pages.lists_page,
    }
    key = (method, "/".join(parts))
    if key in simple:
        return simple[key], ()
    if len(parts) == 2 and method == "GET":
        by_id = {"decisions": decision_page, "accounts": account_page, "review": review_item_page}
        if parts[0] in by_id:
            return by_id[parts[0]], (_id_from_path(parts[1]),)
    if len(parts) == 3 and method == "POST" and parts[0] == "review" and parts[2] == "label":
        return label_action, (_id_from_path(parts[1]),)
    if parts[:1] == ["lists"] and len(parts) in (2, 3):
        if len(parts) == 2 and method == "GET":
            return list_pages.list_page, (list_pages.name_from_path(parts[1]),)
        actions = {"upload": list_pages.upload_action, "remove": list_pages.remove_action}
        if len(parts) == 3 and method == "POST" and parts[2] in actions:
            return actions[parts[2]], (list_pages.name_from_path(parts[1]),)
    if parts[:1] == ["models"] and len(parts) >= 2:
        if len(parts) == 2 and method == "GET":
            return model_pages.model_page, (_model_version_from_path(parts[1]),)
        if len(parts) == 3 and method == "POST" and parts[2] in model_pages.ACTIONS:
            return model_pages.model_action, (_model_version_from_path(parts[1]), parts[2])
    return None


_PERIOD = frozenset({"from", "to"})
# The query parameters each page reads (and "csv" for its tables); any other is refused by name.
PAGE_PARAMETERS: dict[str, frozenset[str]] = {
    "overview": _PERIOD,
    "decisions_page": frozenset(
        {"flagged", "score_min", "score_max", "rule", "label", "account", "merchant", "from", "to", "before"}
    ),
    "review_page": frozenset({"labelled"}),
    "models_page": frozenset({"done"}),
    "model_page": frozenset({"done"}),
    "train_page": frozenset({"started"}),
    "rules_page": _PERIOD | {"diff_from", "diff_to"},
    "explore_page": _PERIOD,
    "what_if_page": frozenset({"decide", "currency", "merchant_id", *FEATURES}),
    "list_page": frozenset({"value", "done"}),
}


def _unknown_parameters(page: Page, query: dict[str, str]) -> list[str]:
    allowed = PAGE_PARAMETERS.get(page.__name__, frozenset()) | {"csv"}
    return sorted(name for name in query if name not in allowed)


def _error_page(ctx: Context, status: int, message: str) -> Response:
    return ctx.page("error.html", status=status, status_code=status, message=message)


def handle(event: dict[str, Any], keys: Keys) -> Response:
    """One console request: sign-in and sign-out, the stylesheet, or a page or action for a signed-in analyst."""
    try:
        request = web.parse(event)
    except BadInput as exc:
        return Response(400, f"bad request: {exc.message}", content_type="text/plain; charset=utf-8")
    current = session.read(keys, request.cookies.get(session.COOKIE))
    ctx = Context(request, keys, current)
    path = request.path.rstrip("/") or "/"
    if path == "/static/console.css" and request.method == "GET":
        return Response(
            200, stylesheet(), content_type="text/css; charset=utf-8", headers={"Cache-Control": "max-age=300"}
        )
    if path == "/signin":
        return _signin(ctx)
    if path == "/signout" and request.method == "POST":
        if current is None or not session.csrf_valid(keys, current, request.form.get("csrf")):
            return _error_page(Context(request, keys, None), 403, "the sign-out form is not valid; sign out again")
        gone = web.session_cookie(session.COOKIE, "", request.base, 0, keys.secure_cookies)
        return web.redirect(request.link("/signin"), cookies=[gone])
    try:
        route = _route(request.method, path)
        bad_id = None
    except NotFound as exc:  # a path with an id that is not one: no such page, said after the session check
        route, bad_id = None, exc.message
    if current is None:
        if request.method == "GET":
            return web.redirect(request.link("/signin", next=path if route else None))
        return _error_page(ctx, 401, "sign in first")
    if route is None:
        return _error_page(ctx, 404, bad_id or "there is no such page")
    page, args = route
    unknown = _unknown_parameters(page, request.query)
    if unknown:
        return _error_page(ctx, 400, f"unknown query parameter {shorten(unknown[0])!r} on this page")
    if request.method == "POST" and not session.csrf_valid(keys, current, request.form.get("csrf")):
        return _error_page(
            ctx,
            403,
            "the form's CSRF token is missing, forged or expired: nothing was changed; reload the page and try again",
        )
    try:
        return db.run_in_transaction(lambda cur: page(ctx, cur, *args))
    except Forbidden as exc:
        return _error_page(ctx, 403, exc.message)
    except Conflict as exc:
        return _error_page(ctx, 409, exc.message)
    except model_pages.TrainingNotHere as exc:
        return _error_page(ctx, 501, exc.message)
    except NotFound as exc:
        return _error_page(ctx, 404, exc.message)
    except BadInput as exc:
        return _error_page(ctx, 400, exc.message)
    except (db.DatabaseUnavailable, Unavailable) as exc:
        response = _error_page(ctx, 503, exc.message)
        response.headers.update(exc.headers)
        return response


def _signin(ctx: Context) -> Response:
    request = ctx.request
    next_path = request.query.get("next") or request.form.get("next") or "/"
    if not next_path.startswith("/") or next_path.startswith("//") or "\\" in next_path:
        next_path = "/"
    if request.method == "GET":
        return ctx.page("signin.html", next_path=next_path, error=None, local=not ctx.keys.secure_cookies)
    if request.method != "POST":
        return _error_page(ctx, 405, "sign in with the form")
    name = request.form.get("analyst", "").strip()
    key = request.form.get("key", "")
    error = None
    if not session.ANALYST_NAME.match(name):
        error = "your name: 1-64 letters, digits, _ . @ -"
    elif not session.key_matches(ctx.keys, key):
        error = "that key is not the console's sign-in key"
    if error:
        page = Context(request, ctx.keys, None).page(
            "signin.html", status=401, next_path=next_path, error=error, local=not ctx.keys.secure_cookies
        )
        return page
    _, cookie = session.issue(ctx.keys, name)
    set_cookie = web.session_cookie(
        session.COOKIE, cookie, request.base, session.SESSION_SECONDS, ctx.keys.secure_cookies
    )
    return web.redirect(request.base + (next_path if next_path != "/" else ""), cookies=[set_cookie])


def serve_console(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """ConsoleFunction: an API Gateway request for /console or below. The keys are read per request (the
    secrets are cached by Powertools for five minutes; locally they are environment variables)."""
    keys = session.keys_from_env()
    return handle(event, keys).to_event(keys.secure_cookies)
