"""What each console page reads. Aggregates over time come from the rollups (storage/console_rollups.py),
refreshed from their last point before a page reads them; lists come from indexed, paged queries; labels are
read in force (the latest by labelled_at, then label_id). Nothing here scans the whole transactions table.
"""

from __future__ import annotations

import math
import operator
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg2.errors
import psycopg2.extensions

from txguard import labels
from txguard.currencies import money
from txguard.domain import DecidedTransaction
from txguard.storage import console_rollups
from txguard.storage.transactions import SELECT_TRANSACTIONS, SELECT_WITH_FEATURES, decided_from_row

DAY = timedelta(days=1)
MAX_PERIOD_DAYS = 400
MAX_SAMPLE_PERCENT = 10.0
SAMPLE_ROWS = 10_000  # rows the Explore page's correlations and summary statistics are computed on
MAX_SAMPLE_FEATURES = 10  # stored features added to the correlation matrix, at most


@dataclass(frozen=True)
class Period:
    since: datetime  # inclusive, UTC midnight
    until: datetime  # exclusive

    @property
    def last_day(self) -> str:
        return (self.until - DAY).date().isoformat()

    @property
    def days(self) -> int:
        return (self.until - self.since).days

    def day_labels(self) -> list[str]:
        return [(self.since + DAY * i).date().isoformat() for i in range(self.days)]


def default_period(cur: psycopg2.extensions.cursor, days: int = 30) -> Period:
    """The `days` UTC days up to and including the newest stored hour (today's when nothing is stored)."""
    extent = console_rollups.extent(cur)
    last = extent[1] if extent else datetime.now(UTC)
    until = datetime(last.year, last.month, last.day, tzinfo=UTC) + DAY
    return Period(until - DAY * days, until)


@dataclass
class LabelledTotals:
    labelled: int = 0
    fraud: int = 0
    flagged_labelled: int = 0
    flagged_fraud: int = 0
    fraud_by_day: dict[str, int] = field(default_factory=dict)
    by_hour: dict[int, list[int]] = field(default_factory=dict)  # hour of day -> [labelled, fraud]
    by_weekday: dict[int, list[int]] = field(default_factory=dict)  # ISO weekday -> [labelled, fraud]
    by_band: dict[int, list[int]] = field(default_factory=dict)  # amount band -> [labelled, fraud]
    rules: dict[str, list[int]] = field(default_factory=dict)  # rule id -> [labelled hits, fraud hits]


def labelled_totals(cur: psycopg2.extensions.cursor, period: Period) -> LabelledTotals:
    """Counts of the labelled transactions of the period (labels in force), overall, by day, hour, weekday,
    amount band and rule, from the label rollups (refresh them first: volume() does)."""
    totals = LabelledTotals()
    for row in console_rollups.label_hourly(cur, period.since, period.until):
        hour = row.hour.astimezone(UTC)
        totals.labelled += row.labelled
        totals.fraud += row.fraud
        if row.flagged:
            totals.flagged_labelled += row.labelled
            totals.flagged_fraud += row.fraud
        day = hour.date().isoformat()
        totals.fraud_by_day[day] = totals.fraud_by_day.get(day, 0) + row.fraud
        for key, bucket in (
            (hour.hour, totals.by_hour),
            (hour.isoweekday(), totals.by_weekday),
            (row.amount_band, totals.by_band),
        ):
            cell = bucket.setdefault(key, [0, 0])
            cell[0] += row.labelled
            cell[1] += row.fraud
    first, end = _days(period)
    for _day, rule_id, labelled, fraud in console_rollups.rule_labels(cur, first, end):
        cell = totals.rules.setdefault(rule_id, [0, 0])
        cell[0] += labelled
        cell[1] += fraud
    return totals


def _days(period: Period) -> tuple[int, int]:
    return int(period.since.timestamp() // 86_400), int(period.until.timestamp() // 86_400)


def rule_labels_by_day(cur: psycopg2.extensions.cursor, period: Period) -> dict[str, dict[str, tuple[int, int]]]:
    """rule id -> day -> (labelled hits, fraud hits)."""
    first, end = _days(period)
    out: dict[str, dict[str, tuple[int, int]]] = defaultdict(dict)
    for day, rule_id, labelled, fraud in console_rollups.rule_labels(cur, first, end):
        out[rule_id][_day_label(day)] = (labelled, fraud)
    return out


def _day_label(day: int) -> str:
    return (datetime(1970, 1, 1, tzinfo=UTC) + DAY * day).date().isoformat()


@dataclass
class Volume:
    transactions: int = 0
    flagged: int = 0
    amount_by_currency: dict[str, Decimal] = field(default_factory=dict)
    by_day: dict[str, list[int]] = field(default_factory=dict)  # day -> [transactions, flagged]
    by_hour: dict[int, list[int]] = field(default_factory=dict)  # hour of day (UTC) -> [transactions, flagged]
    by_weekday: dict[int, list[int]] = field(default_factory=dict)
    by_band: dict[int, list[int]] = field(default_factory=dict)


def volume(cur: psycopg2.extensions.cursor, period: Period) -> Volume:
    """Volume, amounts and flags of the period from the hourly rollup (refresh it first)."""
    v = Volume()
    for row in console_rollups.hourly(cur, period.since, period.until):
        hour = row.hour.astimezone(UTC)
        v.transactions += row.transactions
        v.flagged += row.flagged
        v.amount_by_currency[row.currency] = v.amount_by_currency.get(row.currency, Decimal(0)) + row.amount
        day = v.by_day.setdefault(hour.date().isoformat(), [0, 0])
        day[0] += row.transactions
        day[1] += row.flagged
        for key, bucket in ((hour.hour, v.by_hour), (hour.isoweekday(), v.by_weekday), (row.amount_band, v.by_band)):
            cell = bucket.setdefault(key, [0, 0])
            cell[0] += row.transactions
            cell[1] += row.flagged
    return v


def labels_in_force(cur: psycopg2.extensions.cursor, ids: Sequence[int]) -> dict[int, tuple[bool, str, str | None]]:
    """transaction id -> (fraud, source, reason) of the label in force now, for those of `ids` labelled (the one
    reader of labels, txguard.labels)."""
    if not ids:
        return {}
    return {tid: (x.fraud, x.source, x.reason) for tid, x in labels.labels_in_force(cur, list(ids)).items()}


def label_history(cur: psycopg2.extensions.cursor, transaction_ids: Sequence[int]) -> list[dict[str, Any]]:
    """Every label of these transactions, newest first."""
    if not transaction_ids:
        return []
    cur.execute(
        """SELECT transaction_id, fraud, source, reason, labelled_at, received_at FROM labels
           WHERE transaction_id = ANY(%s::bigint[]) ORDER BY labelled_at DESC, label_id DESC LIMIT 500""",
        ("{" + ",".join(str(i) for i in transaction_ids) + "}",),
    )
    names = ("transaction_id", "fraud", "source", "reason", "labelled_at", "received_at")
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


@dataclass(frozen=True)
class DecisionFilters:
    flagged: bool | None = None
    score_min: Decimal | None = None
    score_max: Decimal | None = None
    rule_id: str | None = None
    label: str | None = None  # "fraud", "genuine", "none"
    account_id: int | None = None
    merchant_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    before: tuple[int, int] | None = None  # (epoch ms, transaction id) of the last row of the previous page


def decisions(cur: psycopg2.extensions.cursor, f: DecisionFilters, limit: int) -> list[DecidedTransaction]:
    """Up to `limit` decisions matching the filters, newest first (through the ts, account or merchant index;
    filters on score, rule and label are checked on the rows in that order)."""
    conditions: list[str] = []
    params: list[Any] = []
    simple = (
        ("fraud = %s", f.flagged),
        ("score >= %s", f.score_min),
        ("score <= %s", f.score_max),
        ("account_id = %s", f.account_id),
        ("merchant_id = %s", f.merchant_id),
        ("ts >= %s", f.since),
        ("ts < %s", f.until),
    )
    for condition, value in simple:
        if value is not None:
            conditions.append(condition)
            params.append(value)
    if f.rule_id is not None:
        conditions.append("reasons @> %s::jsonb")
        params.append('[{"rule_id": ' + _json_string(f.rule_id) + "}]")
    in_force = (
        "(SELECT l.fraud FROM labels l WHERE l.transaction_id = transactions.transaction_id"
        " ORDER BY l.labelled_at DESC, l.label_id DESC LIMIT 1)"
    )
    if f.label == "fraud":
        conditions.append(f"{in_force} IS TRUE")
    elif f.label == "genuine":
        conditions.append(f"{in_force} IS FALSE")
    elif f.label == "none":
        conditions.append("NOT EXISTS (SELECT 1 FROM labels l WHERE l.transaction_id = transactions.transaction_id)")
    if f.before is not None:
        conditions.append("(ts, transaction_id) < (txguard_ms_to_ts(%s), %s)")
        params.extend(f.before)
    where = (" WHERE " + " AND ".join(conditions)) if conditions else ""
    cur.execute(SELECT_TRANSACTIONS + where + " ORDER BY ts DESC, transaction_id DESC LIMIT %s", (*params, limit))
    return [decided_from_row(row) for row in cur.fetchall()]


def _json_string(text: str) -> str:
    import json

    return json.dumps(text)


def decision(cur: psycopg2.extensions.cursor, transaction_id: int) -> DecidedTransaction | None:
    """One stored decision with the features it was taken on (None for rows stored before they were kept)."""
    cur.execute(SELECT_WITH_FEATURES + " WHERE transaction_id = %s", (transaction_id,))
    row = cur.fetchone()
    return decided_from_row(row) if row else None


RECOMPUTE_BUDGET_MS = 500  # the most a decision page spends recomputing features a row did not store


def features_at_decision(
    cur: psycopg2.extensions.cursor, account_id: int, transaction_id: int
) -> dict[str, Any] | None:
    """The features of one transaction, recomputed point-in-time in SQL (transaction_features, over the account's
    history), or None when that takes longer than RECOMPUTE_BUDGET_MS (a long history): the page stays fast."""
    cur.execute("SELECT current_setting('statement_timeout')")
    previous = cur.fetchone()[0]
    cur.execute("SAVEPOINT console_features")
    cur.execute("SELECT set_config('statement_timeout', %s, true)", (str(RECOMPUTE_BUDGET_MS),))
    result: dict[str, Any] | None
    try:
        cur.execute(
            "SELECT features FROM transaction_features(%s) WHERE transaction_id = %s", (account_id, transaction_id)
        )
        row = cur.fetchone()
    except psycopg2.errors.QueryCanceled:
        cur.execute("ROLLBACK TO SAVEPOINT console_features")
        result = None
    else:
        cur.execute("RELEASE SAVEPOINT console_features")
        result = dict(row[0]) if row else {}
    cur.execute("SELECT set_config('statement_timeout', %s, true)", (previous,))
    return result


def account_transactions(cur: psycopg2.extensions.cursor, account_id: int, limit: int) -> list[DecidedTransaction]:
    """The account's newest `limit` transactions, oldest first (the (account_id, ts) index)."""
    cur.execute(
        SELECT_TRANSACTIONS + " WHERE account_id = %s ORDER BY ts DESC, transaction_id DESC LIMIT %s",
        (account_id, limit),
    )
    return list(reversed([decided_from_row(row) for row in cur.fetchall()]))


def account_summary(cur: psycopg2.extensions.cursor, account_id: int) -> dict[str, Any] | None:
    """The account's running totals, or None for an unknown account: its count and first and last timestamps
    (account_stats), and per currency (amounts of different currencies are never added up; account_currency_stats)
    its largest amount as text in the currency's minor units, e.g. "30.00 EUR, 7000 JPY"."""
    cur.execute(
        """SELECT a.tx_count, a.first_ts, a.last_ts,
                  coalesce(array_agg(c.currency ORDER BY c.currency) FILTER (WHERE c.currency IS NOT NULL), '{}'),
                  coalesce(array_agg(c.amount_max ORDER BY c.currency) FILTER (WHERE c.currency IS NOT NULL), '{}')
           FROM account_stats a LEFT JOIN account_currency_stats c ON c.account_id = a.account_id
           WHERE a.account_id = %s
           GROUP BY a.account_id""",
        (account_id,),
    )
    row = cur.fetchone()
    if not row:
        return None
    count, first, last, currencies, largest = row
    amount_max = ", ".join(f"{money(m, c)} {c}" for c, m in zip(currencies, largest, strict=True) if m is not None)
    return {"transactions": count, "amount_max": amount_max, "first": first, "last": last}


@dataclass
class Sample:
    columns: list[str]
    rows: list[list[float]]
    fraction: float


def sample(cur: psycopg2.extensions.cursor, period: Period, expected_rows: int) -> Sample:
    """About SAMPLE_ROWS transactions of the period, drawn by block sampling (TABLESAMPLE SYSTEM, seeded, so a
    page shows the same sample twice), with amount, score, flag, hour and weekday."""
    # Rows of the period in the sample = percent × rows of the period; the blocks read = percent × the table.
    # Capped at MAX_SAMPLE_PERCENT of the table, so a short period gets fewer rows rather than a long scan.
    percent = min(MAX_SAMPLE_PERCENT, max(100.0 * SAMPLE_ROWS / max(expected_rows, 1), 0.0001))
    cur.execute(
        """SELECT amount, score, fraud::int, extract(hour FROM ts AT TIME ZONE 'UTC'),
                  extract(isodow FROM ts AT TIME ZONE 'UTC'), features
           FROM transactions TABLESAMPLE SYSTEM (%s) REPEATABLE (42)
           WHERE ts >= %s AND ts < %s LIMIT %s""",
        (percent, period.since, period.until, SAMPLE_ROWS * 2),
    )
    fetched = cur.fetchall()
    # The stored features every sampled decision has (a detector stores the ones it reads), besides amount.
    stored = [r[5] for r in fetched]
    common = (
        sorted(set.intersection(*(set(k for k, v in f.items() if isinstance(v, int | float)) for f in stored)))
        if stored and all(isinstance(f, dict) for f in stored)
        else []
    )
    names = [n for n in common if n != "amount"][:MAX_SAMPLE_FEATURES]
    rows = [[float(x) for x in r[:5]] + [float(r[5][n]) for n in names] for r in fetched]
    return Sample(["amount", "score", "flagged", "hour", "weekday", *names], rows, percent / 100)


def correlations(s: Sample) -> list[list[float | None]]:
    """Pearson correlation of every pair of columns (None when a column is constant)."""
    n = len(s.rows)
    k = len(s.columns)
    if n < 2:
        return [[None] * k for _ in range(k)]
    columns = [[r[i] for r in s.rows] for i in range(k)]
    means = [math.fsum(c) / n for c in columns]
    centred = [[x - mean for x in c] for c, mean in zip(columns, means, strict=True)]
    norms = [math.sqrt(math.fsum(x * x for x in c)) for c in centred]
    matrix: list[list[float | None]] = [[None] * k for _ in range(k)]
    for i in range(k):
        for j in range(i, k):
            if norms[i] and norms[j]:
                value = math.fsum(map(operator.mul, centred[i], centred[j])) / (norms[i] * norms[j])
                matrix[i][j] = matrix[j][i] = value
    return matrix


def summary_stats(s: Sample) -> list[list[Any]]:
    """Per column: count, mean, std, min, median, p95, max."""
    out = []
    for i, name in enumerate(s.columns):
        values = sorted(r[i] for r in s.rows)
        n = len(values)
        if not n:
            out.append([name, 0, "", "", "", "", "", ""])
            continue
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / n)
        out.append(
            [
                name,
                n,
                f"{mean:.4f}",
                f"{std:.4f}",
                f"{values[0]:g}",
                f"{values[n // 2]:g}",
                f"{values[min(n - 1, int(n * 0.95))]:g}",
                f"{values[-1]:g}",
            ]
        )
    return out


def daily_rule_hits(cur: psycopg2.extensions.cursor, period: Period) -> dict[str, dict[str, int]]:
    """rule id -> day -> hits over the period (rollup, active and shadow modes summed)."""
    first, end = _days(period)
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for day, rule_id, _mode, hits in console_rollups.rule_hits(cur, first, end):
        label = _day_label(day)
        out[rule_id][label] = out[rule_id].get(label, 0) + hits
    return out
