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

from txguard.generator.evaluation import RENDERERS
from txguard_dev.commands.common import EXIT_USAGE, CommandError, integer_argument, open_database, service_database_url


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

    from txguard.generator.delivery import database_configured
    from txguard.generator.evaluation import from_labels, from_table
    from txguard.generator.labels import read_labels

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
