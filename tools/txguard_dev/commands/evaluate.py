"""`txguard evaluate`: the decisions stored at ingest against the labels of generated traffic.

    txguard evaluate                          # every stored transaction with a label in the labels table
    txguard evaluate --run-id 1234 --run-id 1240
    txguard evaluate --labels run.labels.csv  # labels from a file (e.g. a run posted to another database)

Reads DATABASE_URL. Prints the number of transactions evaluated, the confusion matrix, precision, recall
and F1 overall, and recall and F1 per fraud pattern.
"""

from __future__ import annotations

import argparse
import json
import sys

from txguard.labels import GENUINE
from txguard.scoring import TABLE_SOURCE, Evaluation
from txguard_dev.commands.common import EXIT_USAGE, CommandError, integer_argument, open_database, service_database_url


def render_text(e: Evaluation) -> str:
    o = e.overall
    runs = ", ".join(str(r) for r in e.run_ids) or "all"
    versions = ", ".join(str(v) for v in sorted(e.rule_set_versions)) or "-"
    width = max([len(p) for p in e.patterns] + [len("compromised_merchant")])
    # A labels file may hold any labelled traffic, not only generated runs: say where the truth came from.
    where = (
        "the labels in force in the labels table" if e.source == TABLE_SOURCE else f"the labels in the file {e.source}"
    )
    lines = [
        f"Evaluated {e.evaluated:,} stored transactions against {where} (runs: {runs}; rule set version {versions})",
    ]
    if e.not_stored:
        lines.append(f"Left out: {e.not_stored:,} labelled transactions that are not stored")
    lines += [
        "",
        "Confusion matrix        flagged   not flagged",
        f"  fraud        {e.tp:>14,} {e.fn:>13,}",
        f"  genuine      {e.fp:>14,} {e.tn:>13,}",
        "",
        f"{'':<{width}}   precision  recall      F1",
        f"{'overall':<{width}}   {o.precision:>9.3f}  {o.recall:>6.3f}  {o.f1:>6.3f}",
        "",
        f"{'pattern':<{width}}  transactions  flagged  recall      F1",
    ]
    for pattern in e.patterns:
        m = e.pattern_metrics(pattern)
        total, flagged = e.counts(pattern)
        lines.append(f"{pattern:<{width}}  {total:>12,}  {flagged:>7,}  {m.recall:>6.3f}  {m.f1:>6.3f}")
    genuine = e.fp + e.tn
    rate = e.fp / genuine if genuine else 0.0
    lines.append(f"{GENUINE:<{width}}  {genuine:>12,}  {e.fp:>7,}  (false positive rate {rate:.2%})")
    lines.append("")
    lines.append("Per-pattern F1 uses the overall precision: a false alarm belongs to no pattern.")
    return "\n".join(lines)


def render_markdown(e: Evaluation) -> str:
    o = e.overall
    rows = [
        "| pattern | transactions | flagged | precision | recall | F1 |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| **overall** | {e.tp + e.fn:,} fraud | {e.tp:,} | {o.precision:.3f} | {o.recall:.3f} | **{o.f1:.3f}** |",
    ]
    for pattern in e.patterns:
        m = e.pattern_metrics(pattern)
        total, flagged = e.counts(pattern)
        rows.append(f"| {pattern} | {total:,} | {flagged:,} | ({m.precision:.3f}) | {m.recall:.3f} | {m.f1:.3f} |")
    rows.append(f"| genuine | {e.fp + e.tn:,} | {e.fp:,} | | | |")
    rows += [
        "",
        "| | flagged | not flagged |",
        "| --- | ---: | ---: |",
        f"| fraud | {e.tp:,} | {e.fn:,} |",
        f"| genuine | {e.fp:,} | {e.tn:,} |",
    ]
    return "\n".join(rows)


def render_json(e: Evaluation) -> str:
    return json.dumps(e.as_dict(), indent=2)


RENDERERS = {"text": render_text, "markdown": render_markdown, "json": render_json}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", metavar="FILE", help="labels file (CSV or JSON lines) instead of the labels table")
    parser.add_argument(
        "--run-id",
        type=integer_argument(0, 2**63 - 1),
        action="append",
        default=[],
        help="only this run (repeatable; default: all runs)",
    )
    parser.add_argument("--format", choices=sorted(RENDERERS), default="text", help="default text")


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard.labels import read_labels
    from txguard.scoring import from_labels, from_table
    from txguard_generator.delivery import database_configured

    if not database_configured():
        raise CommandError("set DATABASE_URL to the database holding the decisions", exit_code=EXIT_USAGE)
    try:
        labels = read_labels(args.labels) if args.labels else None
    except (OSError, ValueError) as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None

    try:
        with open_database(service_database_url()) as conn, conn, conn.cursor() as cur:
            if labels is None:
                evaluation = from_table(cur, args.run_id)
            else:
                evaluation = from_labels(cur, labels, args.run_id, args.labels)
    except psycopg2.Error as exc:
        raise CommandError(str(exc).strip()) from None
    if evaluation.evaluated == 0:
        print("txguard evaluate: no labelled transaction is stored (nothing to evaluate)", file=sys.stderr)
        return 1
    print(RENDERERS[args.format](evaluation))
    return 0
