"""The costliest rule set the limits allow (rule_language.py) against the default one: a 5,000-item batch through
the ingest handler must still finish within the statement timeout of its COPY, which decides the rows."""

from __future__ import annotations

import statistics
from typing import Any

from bench.harness import BenchDatabase
from bench.ingest_bench import handler_rate, rows
from txguard.rule_language import MAX_COMPARISONS, MAX_RULES
from txguard.settings import DatabaseSettings
from txguard.storage.rule_sets import default_rule_set
from txguard.storage.transactions import DECIDING_ALLOWANCE_MS_PER_ROW

BATCH = 5000
ROUNDS = 3
DAY_MS = 86_400_000
T0 = 1_700_000_000_000


def costliest_rule_set() -> dict[str, Any]:
    """Every rule fires on every transaction, so every comparison is evaluated and explained."""
    per_rule = MAX_COMPARISONS // MAX_RULES
    when = " AND ".join(["amount > 0", "count >= 0", "amount > 0.0001 * count"][:per_rule])
    rules = [{"id": f"r{i}", "description": "always", "when": when, "score": "0.01"} for i in range(MAX_RULES)]
    return {"threshold": "0.5", "rules": rules}


def run(database: BenchDatabase, scale: float) -> dict[str, Any]:
    default = default_rule_set().document()
    costliest = costliest_rule_set()
    baselines, measured = [], []
    for n in range(ROUNDS):  # alternated, so that both see the same load on a shared machine
        start = T0 + 2 * n * DAY_MS
        database.apply_rules(default, "bench: default")
        baselines.append(handler_rate(database, rows(BATCH, 10_000_000 * (2 * n + 1), 500, seed=n, start=start), BATCH))
        database.apply_rules(costliest, "bench: the costliest rule set allowed")
        data = rows(BATCH, 10_000_000 * (2 * n + 2), 500, seed=n, start=start + DAY_MS)
        measured.append(handler_rate(database, data, BATCH))
    seconds = [BATCH / rate for rate in measured]
    allowed_s = (DatabaseSettings.from_env().statement_timeout_ms + BATCH * DECIDING_ALLOWANCE_MS_PER_ROW) / 1000
    return {
        "name": f"a {BATCH:,}-item batch through the ingest handler: the costliest rule set allowed "
        f"({MAX_RULES} rules, {MAX_COMPARISONS} comparisons, all firing) vs the default rule set",
        "baseline_rows_per_s": round(statistics.median(baselines)),
        "measured_rows_per_s": round(statistics.median(measured)),
        "ratio": round(statistics.median(measured) / statistics.median(baselines), 3),
        "batch_seconds_by_round": [round(s, 2) for s in seconds],
        "target": f"batch within its COPY's statement timeout ({allowed_s:g} s)",
        "met": max(seconds) < allowed_s,
    }
