"""`txguard evaluate`: the decisions stored at ingest against the labels of generated traffic.

    txguard evaluate                          # every labelled transaction in fraud_labels
    txguard evaluate --run-id 1234 --run-id 1240
    txguard evaluate --labels run.labels.csv  # labels from a file (e.g. a run posted to another database)

Reads DATABASE_URL. Prints the number of transactions evaluated, the confusion matrix, precision, recall
and F1 overall, and recall and F1 per fraud pattern.
"""

from __future__ import annotations

import argparse
import sys

from txguard.commands.common import integer_argument
from txguard.generator.evaluation import RENDERERS


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--labels", metavar="FILE", help="labels file (CSV or JSON lines) instead of fraud_labels")
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

    from txguard.db import DatabaseUnavailable, run_in_transaction
    from txguard.generator.delivery import database_configured
    from txguard.generator.evaluation import Evaluation, from_labels, from_table
    from txguard.generator.labels import read_labels

    if not database_configured():
        print("txguard evaluate: set DATABASE_URL to the database holding the decisions", file=sys.stderr)
        return 2
    try:
        labels = read_labels(args.labels) if args.labels else None
    except (OSError, ValueError) as exc:
        print(f"txguard evaluate: {exc}", file=sys.stderr)
        return 2

    def evaluate(cur: psycopg2.extensions.cursor) -> Evaluation:
        if labels is None:
            return from_table(cur, args.run_id)
        return from_labels(cur, labels, args.run_id, args.labels)

    try:
        evaluation = run_in_transaction(evaluate)
    except (DatabaseUnavailable, psycopg2.Error) as exc:
        print(f"txguard evaluate: {exc}", file=sys.stderr)
        return 1
    if evaluation.evaluated == 0:
        print("txguard evaluate: no labelled transaction is stored (nothing to evaluate)", file=sys.stderr)
        return 1
    print(RENDERERS[args.format](evaluation))
    return 0
