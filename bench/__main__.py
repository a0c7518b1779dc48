"""Run every benchmark; write bench/results/latest.json and bench/results/latest.md."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench import (
    bounded_bench,
    coldstart_bench,
    console_bench,
    dbtime_bench,
    detection_bench,
    generator_bench,
    ingest_bench,
    input_bench,
    lists_bench,
    model_bench,
    model_serving_bench,
    peer_bench,
    replay_bench,
    rules_bench,
    single_bench,
    stream_bench,
)
from bench.harness import bench_database

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }


# What a result's baseline_<key> and measured_<key> hold, by key.
UNITS = {
    "rows_per_s": "rows/s",
    "p50_ms": "ms p50",
    "peak_mb": "MB peak",
    "us_per_transaction": "µs/transaction",
    "round_trips": "round trips",
}


def markdown(results: list[dict[str, Any]], about: dict[str, Any]) -> str:
    lines = [
        f"Measured {about['date']} on {about['cpus']} CPUs, Python {about['python']}, {about['platform']}.",
        "",
        "| benchmark | baseline | measured | ratio | target |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        key, unit = next((k, u) for k, u in UNITS.items() if f"baseline_{k}" in r)
        base, got = r[f"baseline_{key}"], r[f"measured_{key}"]
        target = r.get("target", "")
        if "met" in r:
            target += " ✔" if r["met"] else " ✘"
        name = r["name"] + (f" ({r['detail']})" if "detail" in r else "")  # rounds, when a bench reports them
        lines.append(f"| {name} | {base} {unit} | {got} {unit} | {r['ratio']} | {target} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bench")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every size (0.1 for a quick look)")
    parser.add_argument(
        "--only",
        choices=[
            "ingest",
            "detection",
            "rules",
            "bounded",
            "generator",
            "coldstart",
            "input",
            "replay",
            "stream",
            "console",
            "model",
            "serving",
            "lists",
            "peer",
            "single",
            "dbtime",
        ],
        default=None,
    )
    args = parser.parse_args()
    results: list[dict[str, Any]] = []
    suites = {
        "ingest": ingest_bench.run,
        "detection": detection_bench.run,
        "rules": rules_bench.run,
        "bounded": bounded_bench.run,
        "generator": generator_bench.run,
        "coldstart": coldstart_bench.run,
        "input": input_bench.run,
        "replay": replay_bench.run,
        "stream": stream_bench.run,
        "console": console_bench.run,
        "model": model_bench.run,
        "serving": model_serving_bench.run,
        "lists": lists_bench.run,
        "peer": peer_bench.run,
        "single": single_bench.run,
        "dbtime": dbtime_bench.run,
    }
    for name, suite in suites.items():
        if args.only not in (None, name):
            continue
        with bench_database() as database:
            outcome = suite(database, args.scale)
        results.extend(outcome if isinstance(outcome, list) else [outcome])
        print(json.dumps(results[-1], indent=2), flush=True)
    about = machine()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(
        json.dumps({"machine": about, "scale": args.scale, "results": results}, indent=2) + "\n"
    )
    table = markdown(results, about)
    (RESULTS / "latest.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
