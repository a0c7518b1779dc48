"""`txguard dlq list | redrive`: the stream ingest dead-letter queue, and sending its messages back.

    txguard dlq list --endpoint-url http://127.0.0.1:4566         # txguard local --streams
    txguard dlq redrive --dlq-url https://sqs.../txguard-TransactionDeadLetterQueue.fifo --queue-url https://...

A dead letter is either refused by the function (its `error_code` and `error`, in the API's one error shape,
are in message attributes: fix the producer, or the message, before a redrive) or moved by the queue's redrive
policy after failing MAX_RECEIVES times (no error attached: usually the database was down; redrive it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from txguard_dev.commands.common import CommandError


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="dlq_command", required=True)
    for name, help_text in (
        ("list", "print every dead letter with its error, leaving it in the queue"),
        ("redrive", "send dead letters back to the transaction queue and delete them from the dead-letter queue"),
    ):
        command = sub.add_parser(name, help=help_text)
        command.add_argument(
            "--endpoint-url",
            default=os.environ.get("AWS_ENDPOINT_URL"),
            help="SQS endpoint (default $AWS_ENDPOINT_URL; AWS itself when unset)",
        )
        command.add_argument("--dlq-url", help="the dead-letter queue (default: the local one, transactions-dlq.fifo)")
        command.add_argument("--json", action="store_true", help="one JSON object a line")
        if name == "redrive":
            command.add_argument("--queue-url", help="where to send them (default: the local transactions.fifo)")
            command.add_argument(
                "--only-failed",
                action="store_true",
                help="only messages the queue moved after repeated failures, not those refused as invalid",
            )


def _queue_url(sqs: object, given: str | None, name: str) -> str:
    if given:
        return given
    try:
        return str(sqs.get_queue_url(QueueName=name)["QueueUrl"])  # type: ignore[attr-defined]
    except Exception as exc:
        raise CommandError(f"no queue {name!r} there ({type(exc).__name__}); pass its URL") from None


def run(args: argparse.Namespace) -> int:
    import boto3

    from txguard_dev.local import streams

    sqs = streams.client("sqs", args.endpoint_url) if args.endpoint_url else boto3.client("sqs")
    dlq_url = _queue_url(sqs, args.dlq_url, streams.DLQ_NAME)
    letters = streams.read_dead_letters(sqs, dlq_url)
    if args.dlq_command == "list":
        for letter in letters:
            if args.json:
                error = json.loads(letter.error) if letter.error else None
                print(
                    json.dumps(
                        {"message_id": letter.message_id, "code": letter.code, "error": error, "body": letter.body}
                    )
                )
            else:
                why = letter.code or "failed repeatedly (no error attached)"
                reasons = ""
                if letter.error:
                    details = json.loads(letter.error).get("error", {}).get("details", [])
                    reasons = "; ".join(f"{d.get('field')}: {d.get('reason')}" for d in details)
                print(f"{letter.message_id}  {why}  {reasons}\n    {letter.body[:300]}")
        streams.release(sqs, dlq_url, letters)
        print(f"{len(letters)} dead letter(s) in {dlq_url}", file=sys.stderr)
        return 0
    queue_url = _queue_url(sqs, args.queue_url, streams.QUEUE_NAME)
    chosen = [d for d in letters if not (args.only_failed and d.code)]
    streams.release(sqs, dlq_url, [d for d in letters if d not in chosen])
    sent = streams.redrive(sqs, dlq_url, queue_url, chosen)
    print(f"{sent} dead letter(s) sent back to {queue_url}", file=sys.stderr)
    return 0
