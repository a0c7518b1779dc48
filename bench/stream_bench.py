"""Stream ingest (StreamIngestFunction fed SQS FIFO and Kinesis batches as Lambda delivers them) vs POST /store_data
batch ingest (IngestFunction, 5,000 a request), on the same kind of transactions, in the same run.

Both run in-process through the local FunctionRunner against the bench database; the SQS and Kinesis services
themselves are not part of the measure (the event is built as Lambda would deliver it). Each round sends new ids,
a month after the previous round's, for the same accounts; the ratio of each round pairs two runs made moments
apart, and the median of the rounds is reported.
"""

from __future__ import annotations

import base64
import json
import statistics
from pathlib import Path
from typing import Any

from bench.harness import BenchDatabase, timed
from bench.ingest_bench import handler_rate, rows
from txguard_dev.local.runner import FunctionRunner, Template

ROOT = Path(__file__).resolve().parent.parent
T0 = 1_700_000_000_000
ROUNDS = 3
MONTH_MS = 30 * 86_400_000


def _body(t: tuple[int, int, int, str]) -> str:
    tid, account, ts, amount = t
    return json.dumps({"account_id": account, "transaction_id": tid, "timestamp": ts, "amount": amount})


def sqs_events(data: list[tuple[int, int, int, str]], batch_size: int = 10) -> list[dict[str, Any]]:
    arn = "arn:aws:sqs:us-east-1:123456789012:transactions.fifo"
    return [
        {
            "Records": [
                {
                    "messageId": f"m-{t[0]}",
                    "receiptHandle": "r",
                    "body": _body(t),
                    "attributes": {"MessageGroupId": str(t[1]), "ApproximateReceiveCount": "1"},
                    "messageAttributes": {},
                    "md5OfBody": "",
                    "eventSource": "aws:sqs",
                    "eventSourceARN": arn,
                    "awsRegion": "us-east-1",
                }
                for t in data[start : start + batch_size]
            ]
        }
        for start in range(0, len(data), batch_size)
    ]


def kinesis_events(data: list[tuple[int, int, int, str]], batch_size: int = 500) -> list[dict[str, Any]]:
    arn = "arn:aws:kinesis:us-east-1:123456789012:stream/transactions"
    return [
        {
            "Records": [
                {
                    "kinesis": {
                        "partitionKey": str(t[1]),
                        "sequenceNumber": str(10**20 + t[0]),
                        "data": base64.b64encode(_body(t).encode()).decode(),
                        "approximateArrivalTimestamp": t[2] / 1000,
                    },
                    "eventSource": "aws:kinesis",
                    "eventID": f"shardId-000000000000:{10**20 + t[0]}",
                    "eventSourceARN": arn,
                }
                for t in data[start : start + batch_size]
            ]
        }
        for start in range(0, len(data), batch_size)
    ]


def stream_rate(events: list[dict[str, Any]], count: int) -> float:
    runner = FunctionRunner(Template(ROOT / "template.yaml"), database_url=None)

    def ingest_all() -> None:
        for event in events:
            result = runner.call("StreamIngestFunction", event)
            if result.failed or json.loads(result.output)["batchItemFailures"]:
                raise RuntimeError(f"stream ingest failed: {result.output[:300]}")

    return count / timed(ingest_all)


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    count = max(1000, int(10_000 * scale))
    results = []
    for name, to_events in (("SQS FIFO, 10 a batch", sqs_events), ("Kinesis, 500 a batch", kinesis_events)):
        http, stream = [], []
        for n in range(ROUNDS):
            base = (len(results) * ROUNDS + n) * 2
            http_data = rows(count, 10_000_000 * (base + 1), 1000, seed=base, start=T0 + base * MONTH_MS)
            stream_data = rows(count, 10_000_000 * (base + 2), 1000, seed=base + 1, start=T0 + (base + 1) * MONTH_MS)
            http.append(handler_rate(database, http_data, 5000))
            stream.append(stream_rate(to_events(stream_data), count))
        ratios = [s / h for s, h in zip(stream, http, strict=True)]
        results.append(
            {
                "name": f"stream ingest ({name}) vs POST /store_data batches of 5,000 (throughput)",
                "baseline_rows_per_s": round(statistics.median(http)),
                "measured_rows_per_s": round(statistics.median(stream)),
                "ratio": round(statistics.median(ratios), 3),
                "ratio_by_round": [round(r, 3) for r in ratios],
                "target": "",
            }
        )
    return results
