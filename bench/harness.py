"""Timing helpers and the scratch database every benchmark runs in."""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2

from txguard import db
from txguard.detection import detector_cache
from txguard.migrate import migrate, service_login_role
from txguard.settings import reload_settings
from txguard.storage.rule_sets import apply_rule_set
from txguard_dev.local.postgres import Server, create_database, drop_database, find_or_start_server


@dataclass(frozen=True)
class BenchDatabase:
    server: Server
    name: str
    admin_url: str

    def execute(self, statement: str) -> None:
        conn = psycopg2.connect(self.admin_url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def apply_rules(self, document: dict[str, Any], comment: str) -> None:
        """Store a rule set as the newest version, as `txguard rules apply` does, and drop the cached one."""
        conn = psycopg2.connect(self.admin_url)
        try:
            with conn, conn.cursor() as cur:
                apply_rule_set(cur, document, comment)
        finally:
            conn.close()
        detector_cache.clear()


# The default rules plus rules reading the history features (day-aligned 7- and 30-day windows, merchant counts
# over days, merchant risk, merchant used before, local time), so that benchmarks measure what they cost.
HISTORY_RULES: list[dict[str, Any]] = [
    {
        "id": "spend_above_30d",
        "description": "Five times the 30-day mean after ten transactions",
        "when": "amount > 5 * mean_amount_30d AND count_30d >= 10 AND amount_to_mean_30d > 5",
        "score": "0.9",
    },
    {
        "id": "busy_week",
        "description": "A busy week",
        "when": "count_7d > 500 AND sum_7d > 10 * mean_amount_7d",
        "score": "0.5",
        "mode": "shadow",
    },
    {
        "id": "risky_merchant",
        "description": "A merchant with many known frauds",
        "when": "merchant_risk_1d > 0.5 OR merchant_risk_7d > 0.3 OR merchant_risk_30d > 0.2 OR merchant_count_30d < 0",
        "score": "0.5",
        "mode": "shadow",
    },
    {
        "id": "new_merchant_at_night",
        "description": "A new merchant at night, well above the week's mean",
        "when": "merchant_used_before = 0 AND is_night = 1 AND amount > 3 * mean_amount_7d AND merchant_count_7d >= 0",
        "score": "0.5",
        "mode": "shadow",
    },
]


def history_rule_set() -> dict[str, Any]:
    """The default rule set with HISTORY_RULES added, features in UTC with a 7-day label delay."""
    from txguard.storage.rule_sets import default_rule_set

    document = default_rule_set().document()
    document["rules"] = [*document["rules"], *HISTORY_RULES]
    document["features"] = {"time_zone": "UTC", "label_delay_days": 7}
    return document


@contextmanager
def bench_database() -> Iterator[BenchDatabase]:
    with find_or_start_server() as server:
        name = create_database(server, prefix="txguard_bench")
        admin_url = server.database_url(name)
        previous = os.environ.get("DATABASE_URL")
        try:
            migrate(admin_url, service_login_role(name))
            os.environ["DATABASE_URL"] = server.database_url(name, user=service_login_role(name))
            db.reset_connection()
            detector_cache.clear()
            reload_settings()
            yield BenchDatabase(server, name, admin_url)
        finally:
            db.reset_connection()
            if previous is None:
                os.environ.pop("DATABASE_URL", None)
            else:
                os.environ["DATABASE_URL"] = previous
            drop_database(server, name)


def timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def samples(work: Callable[[], object], count: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        work()
    return [timed(work) for _ in range(count)]


def p50(values: list[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> float:
    """Seconds as milliseconds to the µs, as results report them."""
    return round(seconds * 1000, 3)


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]


# Card verifications are zero-amount authorisations; real histories hold some (42 rows of the Handbook data), so the
# benchmarks' histories do too, and their timings include accounts whose mean and spread can be 0.
CARD_VERIFICATION_SHARE = 0.01


def amount_text(rng: random.Random, sigma: float) -> str:
    """A purchase amount in EUR (lognormal around 33, two places), or "0.00" for a card verification one time in
    a hundred; drawn from `rng` alone, so a seed gives the same amounts in every run."""
    purchase = rng.lognormvariate(3.5, sigma)
    return "0.00" if rng.random() < CARD_VERIFICATION_SHARE else f"{purchase:.2f}"
