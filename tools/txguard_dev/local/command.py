"""`txguard local`: the whole service on this machine (API, schedules, database) until Ctrl-C or SIGTERM.

No container runtime needed: SAM CLI's API Gateway emulator serves the template's routes and the functions
run in this process. Without DATABASE_URL it uses the server on 127.0.0.1:5432, or starts an embedded one.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import re
import secrets
import shlex
import signal
import sys
import threading
from contextlib import ExitStack
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from txguard_dev.commands.common import decimal_argument, integer_argument
from txguard_dev.local.runner import FunctionRunner, Template, log

if TYPE_CHECKING:
    from txguard_dev.local.schedule import Job
    from txguard_dev.local.server import ApiServer

READY_LINE = "txguard local ready on {url}"


def add_template_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--template",
        type=Path,
        default=None,
        help="SAM template (default: template.yaml here or in a parent)",
    )
    parser.add_argument(
        "--parameter-overrides",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="template parameter values, e.g. GenerateNumTransactions=10",
    )
    parser.add_argument(
        "--database-name",
        default=None,
        help="database to use (default: the one DATABASE_URL names, else txguard; created if missing)",
    )


MIN_SCHEDULE_SECONDS = Decimal("0.1")  # below this the scheduler would only spin


def _positive_seconds(text: str) -> float:
    seconds = decimal_argument(Decimal(0), Decimal(86_400))(text)
    if seconds < MIN_SCHEDULE_SECONDS:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} must be at least {MIN_SCHEDULE_SECONDS} seconds")
    return float(seconds)


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port",
        type=integer_argument(0, 65_535),
        # A string default goes through `type` too, so $PORT is read by the same rule as --port.
        default=os.environ.get("PORT") or "3000",
        help="default: $PORT or 3000",
    )
    add_template_arguments(parser)
    # Off unless asked for: the template's scheduled generator writes synthetic transactions into the database.
    schedule = parser.add_mutually_exclusive_group()
    schedule.add_argument(
        "--schedule",
        action="store_true",
        help="run the scheduled functions at the template's rates (the generator writes synthetic transactions)",
    )
    schedule.add_argument(
        "--schedule-every",
        type=_positive_seconds,
        metavar="SECONDS",
        help="run the scheduled functions this often (implies --schedule)",
    )
    schedule.add_argument("--no-schedule", action="store_true", help="run no scheduled function (the default)")
    parser.add_argument(
        "--streams",
        action="store_true",
        help="also start a local SQS and Kinesis (moto's server) and feed StreamIngestFunction from them",
    )
    parser.add_argument(
        "--streams-port",
        type=integer_argument(0, 65_535),
        default="4566",
        help="port of the local SQS and Kinesis endpoint (default 4566)",
    )
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--api-key", default=None, help="default: $TXGUARD_API_KEY, else a generated one")
    auth.add_argument("--no-auth", action="store_true", help="accept requests without an API key")


def find_template(given: Path | None) -> Path:
    if given is not None:
        return given.resolve()
    for directory in (Path.cwd(), *Path.cwd().parents):
        if (directory / "template.yaml").is_file():
            return directory / "template.yaml"
    raise FileNotFoundError("no template.yaml in the current directory or above it; pass --template")


def parse_overrides(pairs: list[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--parameter-overrides takes KEY=VALUE, not {pair!r}")
        overrides[key] = value
    return overrides


def chosen_jobs(args: argparse.Namespace, template: Template) -> list[Job]:
    """The scheduled runs to fire: none unless --schedule or --schedule-every asked for them."""
    from txguard_dev.local.schedule import scheduled_jobs

    if not args.schedule and args.schedule_every is None:
        return []
    return scheduled_jobs(template, args.schedule_every)


def configure_logging() -> None:
    """The runtime's lines and the request log on stderr; the functions' Powertools logs are left alone."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    for name in (log.name, "werkzeug"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False


def choose_api_key(args: argparse.Namespace) -> tuple[str | None, bool]:
    """The key requests must carry (None: no check), and whether it was generated here."""
    if args.no_auth:
        return None, False
    given = args.api_key or os.environ.get("TXGUARD_API_KEY")
    return (given, False) if given else (secrets.token_urlsafe(24), True)


def run(args: argparse.Namespace) -> int:
    # Imported here: `txguard local --help` should not pay for SAM CLI and Flask.
    import psycopg2

    from txguard import db
    from txguard_dev.local.postgres import service_database
    from txguard_dev.local.schedule import Scheduler
    from txguard_dev.local.server import ApiServer

    configure_logging()
    api_key, generated = choose_api_key(args)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        template = Template(find_template(args.template), parse_overrides(args.parameter_overrides))
        jobs = chosen_jobs(args, template)
        with ExitStack() as stack:
            database_url = stack.enter_context(service_database(args.database_name))
            stack.callback(db.reset_connection)  # before an embedded server stops
            runner = FunctionRunner(template, database_url, api_key)
            api = ApiServer(runner, args.host, args.port)  # a port in use: werkzeug says so and exits 1
            stack.callback(api.stop)
            api.start()
            scheduler = Scheduler(runner, jobs)
            stack.callback(scheduler.stop)
            scheduler.start()
            if args.streams:
                start_streams(stack, runner, args.host, args.streams_port)
            print_banner(runner, api, jobs, generated)
            print(READY_LINE.format(url=api.url), flush=True)
            while not stop.wait(0.5):
                pass
            log.info("stopping")
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C cuts the shutdown short
    except (FileNotFoundError, ValueError, psycopg2.OperationalError) as exc:
        print(f"txguard local: {exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def start_streams(stack: ExitStack, runner: FunctionRunner, host: str, port: int) -> None:
    """moto's server with the template's queue, dead-letter queue and stream, and the pollers that feed
    StreamIngestFunction from them; stopped with the rest."""
    from txguard_dev.local import streams

    endpoint = stack.enter_context(streams.moto_server(host, port))
    resources = streams.create_resources(endpoint)
    os.environ.update(resources.environment())  # the function reaches the dead-letter queues there
    pollers = streams.Pollers(resources, streams.runner_invoke(runner))
    stack.callback(pollers.stop)
    pollers.start()
    print(f"streams   SQS {resources.queue_url} (dead letters {resources.dlq_url})")
    print(f"streams   Kinesis {resources.stream_name} at {endpoint} -> {streams.FUNCTION}")
    print(f"          feed:  txguard generate --sink sqs --endpoint-url {endpoint} --num-transactions 1000")
    print(f"          see:   txguard dlq list --endpoint-url {endpoint}")


def print_banner(runner: FunctionRunner, api: ApiServer, jobs: list[Job], generated_key: bool) -> None:
    from txguard_dev.local.postgres import without_password

    print(f"template  {runner.template.path}")
    print(f"database  {without_password(runner.database_url or '')}")
    if runner.api_key is None:
        print("API key   none (--no-auth)")
    else:
        how = " (generated; set TXGUARD_API_KEY or pass --api-key to choose it)" if generated_key else ""
        print(f"API key   {runner.api_key}{how}")
    for job in jobs:
        print(f"schedule  {job.function_name} every {job.every_s:g} s")
    scheduled = sorted(
        f"{function.name}'s {event}"
        for function in runner.template.functions.values()
        for event, _ in function.schedules
    )
    if scheduled and not jobs:
        print(
            f"schedule  scheduled events off ({', '.join(scheduled)}; the API serves every route): "
            "turn on with --schedule or --schedule-every SECONDS"
        )
    samples = sample_requests(runner.template.path.parent / "events")
    print()
    own_auth = {f.name for f in runner.template.functions.values() if f.own_auth}
    for name in sorted(own_auth):
        roots = sorted({r.path for r in api.routes if r.function_name == name and "{" not in r.path})
        for root in roots:
            how = "sign in with the API key above" if runner.api_key else "sign in with any key (--no-auth)"
            print(f"console   {api.url}{root}  ->  {name} ({how})")
    for route in api.routes:
        if route.function_name in own_auth:
            continue
        print(f"{route.method:<6} {api.url}{route.path}  ->  {route.function_name}")
        print(f"       {curl_command(api.url, route.method, route.path, runner.api_key, samples)}")
    print()


def sample_requests(events_dir: Path) -> dict[tuple[str, str], tuple[str, str | None]]:
    """(method, route path) -> (request path with query, body), from API Gateway events in events/."""
    samples: dict[tuple[str, str], tuple[str, str | None]] = {}
    for file in sorted(events_dir.glob("*.json")):
        try:
            event: Any = json.loads(file.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(event, dict) or not isinstance(event.get("httpMethod"), str):
            continue
        body = event.get("body")
        if body and event.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        query = urlencode(event.get("queryStringParameters") or {})
        path = str(event.get("path") or "") + (f"?{query}" if query else "")
        samples.setdefault((event["httpMethod"].upper(), str(event.get("resource") or event.get("path"))), (path, body))
    return samples


def curl_command(
    base_url: str,
    method: str,
    route_path: str,
    api_key: str | None,
    samples: dict[tuple[str, str], tuple[str, str | None]],
) -> str:
    """A curl for the route, using a saved event's path and body when there is one."""
    path, body = samples.get((method, route_path), (None, None))
    if not path:
        path = re.sub(r"\{[^}]+\+\}", "example", re.sub(r"\{[^}+]+\}", "1", route_path))
    parts = ["curl", "-i"] + ([] if method == "GET" else ["-X", method]) + [shlex.quote(base_url + path)]
    if api_key is not None:
        parts += ["-H", shlex.quote(f"x-api-key: {api_key}")]
    if method in {"POST", "PUT", "PATCH"}:
        parts += ["-H", shlex.quote("content-type: application/json"), "-d", shlex.quote(body or "{}")]
    return " ".join(parts)
