"""Generator rates: transactions generated per second in memory, and `--direct` (through the ingest code,
decisions included, labels written) against raw idempotent COPY measured in the same run."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import BenchDatabase, timed
from bench.ingest_bench import raw_copy_rate
from txguard_generator import GenerateParams, generate
from txguard_generator.delivery import deliver
from txguard_generator.sinks import DirectSink


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    in_memory = int(100_000 * scale)
    direct = int(20_000 * scale)
    params = GenerateParams(num_transactions=in_memory, num_accounts=1000, seed=1, start=1_700_000_000_000)
    rate_in_memory = in_memory / timed(lambda: len(generate(params).items))

    run = generate(GenerateParams(num_transactions=direct, num_accounts=500, seed=2, start=1_700_000_000_000))
    rows = [(t.transaction_id, t.account_id, t.ts, str(t.amount)) for t in (item.transaction for item in run.items)]
    baseline = raw_copy_rate(database, rows)
    started = time.perf_counter()
    deliver(run, [DirectSink(keep_metrics=False)], [], batch_size=500)
    rate_direct = direct / (time.perf_counter() - started)
    return [
        {
            "name": "generator in memory vs raw idempotent COPY (can it outpace the database?)",
            "transactions": in_memory,
            "baseline_rows_per_s": round(baseline),
            "measured_rows_per_s": round(rate_in_memory),
            "ratio": round(rate_in_memory / baseline, 3),
        },
        {
            "name": "generate --direct (ingest code, decisions) vs raw idempotent COPY",
            "transactions": direct,
            "batch_size": 500,
            "baseline_rows_per_s": round(baseline),
            "measured_rows_per_s": round(rate_direct),
            "ratio": round(rate_direct / baseline, 3),
        },
    ]
