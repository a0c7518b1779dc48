"""`txguard generate`: labelled synthetic transactions to the API, the database or a file.

    txguard generate --num-transactions 2000 --post-url http://127.0.0.1:3000/store_data
    txguard generate --direct --seed 7              # DATABASE_URL: stored with decisions, labels in the labels table
    txguard generate --out run.jsonl --seed 7       # labels in run.labels.csv

Flags carry the parameter names of the scheduled function (TXGUARD_GENERATE_<NAME>, event detail).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from txguard_dev.commands.common import (
    check_database,
    integer_argument,
    service_database_url,
    use_local_model_store,
)
from txguard_generator.params import API_KEY_ENV, MODES, GenerateParams, ParameterError, parse_params


def register(parser: argparse.ArgumentParser) -> None:
    defaults = GenerateParams()
    what = parser.add_argument_group("what to generate")
    what.add_argument("--num-transactions", help=f"default {defaults.num_transactions}")
    what.add_argument(
        "--num-accounts",
        help=f"accounts 1..N, with the reserved ids 9000000000000000000 + n (default {defaults.num_accounts})",
    )
    what.add_argument("--fraud-rate", help=f"share of transactions from fraud patterns (default {defaults.fraud_rate})")
    what.add_argument(
        "--start",
        help="first timestamp: epoch ms or RFC 3339 with a zone (default: the run is moved by whole days to end "
        "within the 24 hours before now, so the same seed gives the same hours on any day)",
    )
    what.add_argument(
        "--mean-gap",
        help=f"mean seconds between one account's transactions (default {defaults.mean_gap:g})",
    )
    what.add_argument("--seed", help="reproduce a run (default: a fresh seed, printed)")
    what.add_argument(
        "--run-id",
        type=integer_argument(0, 2**63 - 1),
        help="fix the run id, hence the transaction ids (default: from the clock)",
    )

    where = parser.add_argument_group("where it goes")
    where.add_argument(
        "--post-url", help="POST batches to this /store_data URL: https://, or http:// to this machine (mode api)"
    )
    where.add_argument(
        "--direct", action="store_true", help="store with the ingest code into DATABASE_URL (mode direct)"
    )
    where.add_argument("--out", metavar="FILE", help="write JSON lines, or CSV for *.csv; '-' for stdout")
    where.add_argument(
        "--sink",
        choices=("sqs", "kinesis"),
        help="send one transaction per message to the stream ingest queue or stream (txguard local --streams)",
    )
    where.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="with --sink: the SQS/Kinesis endpoint (default $AWS_ENDPOINT_URL, else the local one on port 4566)",
    )
    where.add_argument("--queue-url", help="with --sink sqs (default: the local transactions.fifo)")
    where.add_argument("--stream-name", help="with --sink kinesis (default: transactions)")
    where.add_argument("--mode", choices=MODES, help="direct, api or file (implied by the flags above)")
    where.add_argument("--batch-size", help=f"transactions per request or transaction (default {defaults.batch_size})")
    where.add_argument("--api-key", help=f"x-api-key for --post-url (default: ${API_KEY_ENV})")
    where.add_argument(
        "--labels-out",
        metavar="FILE",
        help="also write labels to this file (CSV for *.csv, else JSON lines); with --out, default FILE.labels.csv",
    )
    where.add_argument("--no-progress", action="store_true", help="no progress bar, even on a terminal")


def choose_mode(args: argparse.Namespace) -> str:
    implied = [m for m, given in (("direct", args.direct), ("api", args.post_url is not None)) if given]
    if getattr(args, "sink", None):
        if implied:
            raise ParameterError("--sink goes with neither --direct nor --post-url")
        return "file"  # nothing stored nor posted here: the stream function stores what it is fed
    if len(implied) > 1:
        raise ParameterError("choose one of --direct and --post-url (add --out to keep a copy in a file)")
    if args.mode is not None:
        if implied and implied[0] != args.mode:
            raise ParameterError(f"--mode {args.mode} contradicts --{'direct' if args.direct else 'post-url'}")
        if args.mode == "file" and not args.out:
            raise ParameterError("--mode file needs --out FILE")
        return str(args.mode)
    if implied:
        return implied[0]
    if args.out:
        return "file"
    raise ParameterError("say where the transactions go: --post-url URL, --direct or --out FILE")


def params_from_args(args: argparse.Namespace) -> GenerateParams:
    names = ("num_transactions", "num_accounts", "fraud_rate", "start", "mean_gap", "seed", "batch_size", "post_url")
    raw = {name: getattr(args, name) for name in names}
    raw["mode"] = choose_mode(args)
    return parse_params(raw)


def default_labels_path(out: str) -> str:
    path = Path(out)
    return str(path.with_name(path.name.split(".")[0] + ".labels.csv"))


def stream_sink(args: argparse.Namespace) -> Any:
    from txguard_dev.local import streams

    endpoint = args.endpoint_url or f"http://127.0.0.1:{streams.DEFAULT_PORT}"
    if args.sink == "sqs":
        sqs = streams.client("sqs", endpoint)
        url = args.queue_url or sqs.get_queue_url(QueueName=streams.QUEUE_NAME)["QueueUrl"]
        return streams.SqsSink(endpoint, url)
    return streams.KinesisSink(endpoint, args.stream_name or streams.STREAM_NAME)


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard.db import DatabaseUnavailable
    from txguard.ingest import DuplicateIdConflict
    from txguard.rule_language import RuleSetError
    from txguard_generator.delivery import DatabaseLabels, FileLabels, LabelDestination, database_configured, deliver
    from txguard_generator.ids import check_run_id
    from txguard_generator.sinks import DeliveryError, DirectSink, FileSink, HttpSink, Progress, Sink
    from txguard_generator.traffic import generate

    report = sys.stderr if args.out == "-" else sys.stdout
    try:
        params = params_from_args(args)
        if args.run_id is not None:
            check_run_id(args.run_id)
        if params.mode == "direct" and not database_configured():
            raise ParameterError("--direct needs DATABASE_URL (a migrated database)")
    except (ParameterError, ValueError) as exc:
        print(f"txguard generate: {exc}", file=sys.stderr)
        return 2
    if params.mode == "direct" or (params.mode == "api" and database_configured()):
        check_database(service_database_url())  # before anything is generated, sent or written

    run_ = generate(params, run_id=args.run_id)
    sinks: list[Sink] = []
    labels: list[LabelDestination] = []
    try:
        if params.mode == "direct":
            use_local_model_store()  # ingest runs here: the champion comes from where `txguard train` stored it
            sinks.append(DirectSink(keep_metrics=False))
            labels.append(DatabaseLabels())
        elif params.mode == "api":
            assert params.post_url is not None
            sinks.append(HttpSink(params.post_url, args.api_key or os.environ.get(API_KEY_ENV) or None))
            if database_configured():
                labels.append(DatabaseLabels())
        if args.sink:
            sinks.append(stream_sink(args))
        if args.out:
            sinks.append(FileSink(args.out))
        labels_out = args.labels_out
        if labels_out is None and params.mode == "file" and args.out and args.out != "-":
            labels_out = default_labels_path(args.out)
        if labels_out:
            labels.append(FileLabels(labels_out))
    except OSError as exc:
        print(f"txguard generate: {exc}", file=sys.stderr)
        return 1
    if not labels:
        print(
            "txguard generate: labels are not kept (set DATABASE_URL or pass --labels-out to evaluate later)",
            file=sys.stderr,
        )

    progress = None if args.no_progress else Progress(len(run_))
    try:
        summary = deliver(run_, sinks, labels, params.batch_size, progress)
    except (DeliveryError, DatabaseUnavailable, DuplicateIdConflict, RuleSetError, OSError, psycopg2.Error) as exc:
        print(f"txguard generate: run {run_.run_id}: {exc}", file=sys.stderr)
        return 1
    for line in summary.lines():
        print(line, file=report)
    if any(isinstance(destination, DatabaseLabels) for destination in labels):
        print(f"evaluate with: txguard evaluate --run-id {run_.run_id}", file=report)
    elif labels_out and params.mode != "file":
        print(f"evaluate with: txguard evaluate --labels {labels_out} --run-id {run_.run_id}", file=report)
    return 0
