"""Refusing a huge number through the ingest function: `1e1000000` or a 100,000-digit integer in each numeric
field, against refusing a string of the same length in the same field (same body size, no number in it). The
huge value used to be converted to an integer before its range check, superlinearly (~39 s for a timestamp); it
must be judged on its exponent or length, so refusing it costs about what refusing any invalid value costs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench.harness import BenchDatabase, p50, samples
from txguard_dev.local.runner import FunctionRunner, Template

ROOT = Path(__file__).resolve().parent.parent
FIELDS = ("account_id", "transaction_id", "timestamp", "amount")
HUGE = ("1e1000000", "9" * 100_000)


def _body(field: str, value: str) -> str:
    item = {"account_id": 1, "transaction_id": 1, "timestamp": 1_714_564_800_000, "amount": "1.00"}
    return json.dumps(item | {field: "VALUE"}).replace('"VALUE"', value)


def run(database: BenchDatabase, scale: float) -> dict[str, Any]:
    runner = FunctionRunner(Template(ROOT / "template.yaml"), database_url=None)
    event = json.loads((ROOT / "events" / "store_data.json").read_text())
    count = max(5, int(50 * scale))

    def refuse(body: str) -> None:
        answer = json.loads(runner.call("IngestFunction", {**event, "body": body}).output)
        if answer["statusCode"] != 422:
            raise RuntimeError(f"expected 422, got {answer['statusCode']}: {answer['body'][:300]}")

    def refusal_p50(body: str) -> float:
        return p50(samples(lambda: refuse(body), count, warmup=2))

    cases: dict[str, tuple[float, float]] = {}
    for field in FIELDS:
        for number in HUGE:
            same_size = json.dumps("x" * (len(number) - 2))
            plain = refusal_p50(_body(field, same_size))
            cases[f"{field} {number[:10]}"] = (plain, refusal_p50(_body(field, number)))
    worst = max(cases, key=lambda case: cases[case][1] / cases[case][0])
    plain, huge = cases[worst]
    return {
        "name": "refusing 1e1000000 or 100,000 digits in a numeric field vs a same-size string there (worst case)",
        "baseline_p50_ms": round(plain * 1000, 3),
        "measured_p50_ms": round(huge * 1000, 3),
        "worst_case": worst,
        "p50_ms_by_case": {case: [round(t * 1000, 3) for t in times] for case, times in cases.items()},
        "ratio": round(huge / plain, 2),
        "target": "<= 5",
        "met": huge / plain <= 5,
    }
