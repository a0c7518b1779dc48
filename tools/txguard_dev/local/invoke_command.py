"""`txguard invoke FUNCTION -e events/x.json`: one function, in this process, like `sam local invoke`.

The function's response goes to stdout as JSON, its logs to stderr. The database is chosen and migrated as
`txguard local` does. Exit status 1 when the function raised (its Lambda error payload is printed).
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import redirect_stdout
from typing import Any

from txguard_dev.local.command import add_template_arguments, configure_logging, find_template, parse_overrides
from txguard_dev.local.runner import FunctionRunner, Template


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("function", metavar="FUNCTION", help="logical id of the function, e.g. IngestFunction")
    parser.add_argument("-e", "--event", default=None, help="event file, '-' for stdin (default: {})")
    add_template_arguments(parser)


def read_event(source: str | None) -> Any:
    if source is None:
        return {}
    if source == "-":
        return json.load(sys.stdin)
    with open(source, encoding="utf-8") as file:
        return json.load(file)


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard import db
    from txguard_dev.local.postgres import service_database

    configure_logging()
    response = sys.stdout
    try:
        event = read_event(args.event)
        template = Template(find_template(args.template), parse_overrides(args.parameter_overrides))
        if args.function not in template.functions:
            names = ", ".join(sorted(template.functions))
            print(
                f"txguard invoke: no function {args.function!r} in the template (there are: {names})",
                file=sys.stderr,
            )
            return 2
        # Whatever the function prints (Powertools logs, metrics) goes to stderr: stdout is for its response.
        with redirect_stdout(sys.stderr), service_database(args.database_name) as database_url:
            try:
                result = FunctionRunner(template, database_url).call(args.function, event)
            finally:
                db.reset_connection()
    except (OSError, ValueError, psycopg2.OperationalError) as exc:
        print(f"txguard invoke: {exc}", file=sys.stderr)
        return 1
    print(result.output, file=response, flush=True)
    return 1 if result.failed else 0
