"""`txguard evaluate`: the decisions stored at ingest against the labels known now.

    txguard evaluate --from 2018-07-01 --to 2018-08-01     # a period (transaction time, UTC; --to exclusive)
    txguard evaluate --run-id 1234 --run-id 1240           # generated runs only (their id ranges)
    txguard evaluate --labels run.labels.csv               # labels from a file instead of the labels store
    txguard evaluate --labels chargebacks.csv              # (either `labels import`'s form or the generator's)
    txguard evaluate --json                                # or --format markdown

Reads DATABASE_URL. Reports ROC AUC and average precision of the scores, precision, recall and F1 of the fraud
flag with the confusion matrix, Card Precision@k per day (--k, default 100), recall per label reason, and the
outcomes (decisions and frauds per allow / review / block, precision of block, recall within block + review,
share in review); see
txguard/evaluation.py for the definitions. A transaction with no label in force counts as genuine unless
`--unlabelled skip`.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from txguard.evaluation import OutcomeReport, Report
from txguard.features import DAY_MS
from txguard.labels import RUN_ID_SHIFT
from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    integer_argument,
    open_database,
    period_argument,
    service_database_url,
)
from txguard_dev.commands.labels import labels_in_file


def _day(day: int) -> str:
    return datetime.fromtimestamp(day * DAY_MS / 1000, UTC).date().isoformat()


def _time(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _metric(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def outcome_line(o: OutcomeReport) -> str:
    """The outcomes in one line: counts (frauds among them), precision of block, recall within block + review,
    share in review."""
    counts = ", ".join(f"{name} {o.counts[name]:,} ({o.frauds[name]:,} fraud)" for name in o.counts)
    return (
        f"outcomes: {counts}; precision of block {_metric(o.block_precision)}, recall within block + review "
        f"{_metric(o.recall_block_review)}, share in review {o.review_share:.2%}"
    )


def render_text(r: Report) -> str:
    c = r.confusion
    versions = ", ".join(str(v) for v in r.detector_versions) or "-"
    unlabelled = (
        f"{r.unlabelled:,} without a label (counted as genuine)"
        if r.unlabelled_counted_as_genuine
        else f"{r.unlabelled:,} without a label (left out)"
    )
    lines = [
        f"Evaluated {r.evaluated:,} stored decisions ({_time(r.first_ts)} to {_time(r.last_ts)}, detector version "
        f"{versions}) against {r.source}",
        f"  {r.frauds:,} fraud: {r.labelled_fraud:,} labelled fraud, {r.labelled_genuine:,} labelled genuine, "
        + unlabelled,
    ]
    if r.not_stored:
        lines.append(f"  left out: {r.not_stored:,} labelled transactions that are not stored")
    cp = r.card_precision
    lines += [
        "",
        "Ranking (the score)",
        f"  ROC AUC              {_metric(r.roc_auc)}",
        f"  average precision    {_metric(r.average_precision)}",
        f"  Card Precision@{cp.k:<5} {_metric(cp.mean)}   (mean over {len(cp.days)} days)"
        if cp
        else "  Card Precision@k     undefined",
        "",
        "The fraud flag",
        f"  precision {r.flag.precision:.3f}   recall {r.flag.recall:.3f}   F1 {r.flag.f1:.3f}",
        "",
        "  Confusion matrix        flagged   not flagged",
        f"    fraud        {c.true_positive:>14,} {c.false_negative:>13,}",
        f"    genuine      {c.false_positive:>14,} {c.true_negative:>13,}",
        "",
        "Outcomes                  decisions    frauds",
        *(f"  {name:<22} {r.outcomes.counts[name]:>11,} {r.outcomes.frauds[name]:>9,}" for name in r.outcomes.counts),
        f"  precision of block {_metric(r.outcomes.block_precision)}   recall within block + review "
        f"{_metric(r.outcomes.recall_block_review)}   share in review {r.outcomes.review_share:.2%}",
    ]
    if r.reasons:
        width = max(len(reason) for reason in r.reasons)
        lines += ["", f"  {'reason':<{width}}   frauds  flagged  recall      F1"]
        for reason, s in r.reasons.items():
            lines.append(f"  {reason:<{width}} {s.frauds:>8,} {s.flagged:>8,}  {s.recall:>6.3f}  {s.f1:>6.3f}")
        lines.append("  (a reason's F1 uses the overall precision: a false alarm belongs to no reason)")
    return "\n".join(lines)


def render_markdown(r: Report) -> str:
    c, cp = r.confusion, r.card_precision
    rows = [
        "| metric | value |",
        "| --- | ---: |",
        f"| transactions | {r.evaluated:,} ({r.frauds:,} fraud) |",
        f"| ROC AUC | {_metric(r.roc_auc)} |",
        f"| average precision | {_metric(r.average_precision)} |",
        f"| Card Precision@{cp.k if cp else 'k'} | {_metric(cp.mean if cp else None)} |",
        f"| precision of the flag | {r.flag.precision:.3f} |",
        f"| recall of the flag | {r.flag.recall:.3f} |",
        f"| F1 of the flag | {r.flag.f1:.3f} |",
        f"| decisions allow / review / block | {r.outcomes.counts['allow']:,} / {r.outcomes.counts['review']:,} / "
        f"{r.outcomes.counts['block']:,} |",
        f"| precision of block | {_metric(r.outcomes.block_precision)} |",
        f"| recall within block + review | {_metric(r.outcomes.recall_block_review)} |",
        f"| share in review | {r.outcomes.review_share:.2%} |",
        "",
        "| | flagged | not flagged |",
        "| --- | ---: | ---: |",
        f"| fraud | {c.true_positive:,} | {c.false_negative:,} |",
        f"| genuine | {c.false_positive:,} | {c.true_negative:,} |",
    ]
    if r.reasons:
        rows += ["", "| reason | frauds | flagged | recall | F1 |", "| --- | ---: | ---: | ---: | ---: |"]
        rows += [f"| {k} | {s.frauds:,} | {s.flagged:,} | {s.recall:.3f} | {s.f1:.3f} |" for k, s in r.reasons.items()]
    return "\n".join(rows)


def render_json(r: Report) -> str:
    data = r.as_dict()
    cp = data.get("card_precision")
    if isinstance(cp, dict):
        for day in cp["days"]:
            day["date"] = _day(day["day"])
    return json.dumps(data, indent=2)


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--from", dest="from_", type=period_argument, help="first transaction time (inclusive)")
    parser.add_argument("--to", type=period_argument, help="end of the period (exclusive)")
    parser.add_argument(
        "--labels",
        metavar="FILE",
        help="labels file instead of the labels store, CSV (.csv, .csv.gz) or JSON lines: as `txguard labels "
        "import` reads it (transaction_id, fraud, source, labelled_at, reason) or as `txguard generate "
        "--labels-out` writes it (transaction_id, pattern, run_id)",
    )
    parser.add_argument(
        "--run-id",
        type=integer_argument(0, 2**40 - 1),
        action="append",
        default=[],
        help="only this generated run's transactions (repeatable; default: every transaction of the period)",
    )
    parser.add_argument("--k", type=integer_argument(1, 100_000), default=100, help="Card Precision@k (default 100)")
    parser.add_argument(
        "--unlabelled",
        choices=["genuine", "skip"],
        default="genuine",
        help="a decision with no label in force counts as genuine (default) or is left out",
    )
    parser.add_argument("--format", choices=sorted(RENDERERS), default="text", help="default text")
    parser.add_argument("--json", action="store_const", dest="format", const="json", help="same as --format json")


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard.evaluation import Evaluation, Truth, judge
    from txguard.labels import labels_in_force
    from txguard.storage.transactions import ScoredRow, scored_in_period
    from txguard_generator.delivery import database_configured

    if not database_configured():
        raise CommandError("set DATABASE_URL to the database holding the decisions", exit_code=EXIT_USAGE)
    if args.from_ is not None and args.to is not None and args.from_ >= args.to:
        raise CommandError("--from must be before --to: the period would be empty", exit_code=EXIT_USAGE)
    try:
        # A labels file as `txguard labels import` reads it, or as `txguard generate --labels-out` writes it.
        from_file = labels_in_file(Path(args.labels), int(time.time() * 1000)) if args.labels else None
    except (OSError, UnicodeDecodeError, ValueError, csv.Error) as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None

    ranges = [(run << RUN_ID_SHIFT, (run + 1) << RUN_ID_SHIFT) for run in args.run_id]
    source = f"the labels in the file {args.labels}" if args.labels else "the labels store"
    evaluation = Evaluation(source, k=args.k, count_unlabelled_as_genuine=args.unlabelled == "genuine")
    chunks: Iterable[list[ScoredRow]]
    try:
        with open_database(service_database_url()) as conn, conn, conn.cursor() as cur:
            if from_file is not None:
                # The file says which transactions are evaluated: its labelled ones, stored.
                seen: set[int] = set()

                def from_the_file(chunk: list[int]) -> Mapping[int, Truth]:
                    seen.update(chunk)
                    return {tid: from_file[tid] for tid in chunk if tid in from_file}

                chunks = (
                    [row for row in chunk if row.transaction_id in from_file]
                    for chunk in scored_in_period(cur, args.from_, args.to, ranges)
                )
                evaluation.add_all(judge(chunks, from_the_file))
                if args.from_ is None and args.to is None and not ranges:
                    evaluation.not_stored = len(from_file.keys() - seen)
            else:
                chunks = scored_in_period(cur, args.from_, args.to, ranges)
                evaluation.add_all(judge(chunks, lambda chunk: labels_in_force(cur, transaction_ids=chunk)))
    except psycopg2.Error as exc:
        raise CommandError(str(exc).strip()) from None
    if evaluation.evaluated == 0:
        print("txguard evaluate: no stored decision in the period (nothing to evaluate)", file=sys.stderr)
        return 1
    print(RENDERERS[args.format](evaluation.report()))
    return 0
