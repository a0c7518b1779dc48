"""`txguard replay FILE`: a labelled transactions file sent in time order through the real ingest path, its labels
released to the labels store a delay after their transactions, in event time.

    txguard replay --preset handbook ../shared/data/handbook-dev-2018-04-to-07.csv.gz
    txguard replay data.jsonl --map transaction_id=id --map timestamp=ts --map fraud=is_fraud --source analyst
    txguard replay data.csv.gz --post-url http://127.0.0.1:3000/store_data --api-key KEY

The file is CSV (*.csv, *.csv.gz) or JSON lines (gzip too). Every row is read, validated by the API's own rules
and sorted by (timestamp, transaction_id) before anything is sent; a bad row stops the replay before it starts,
naming its line, field, value and reason.

Where it goes: directly (default; txguard.service in-process on DATABASE_URL, exactly what the ingest function
runs) or with `--post-url` (the URL of POST /store_data; labels go to /labels beside it) over HTTP with the API
key. Transactions go in batches of `--batch-size` (default 5,000). Labels: each labelled row's label is known
`--label-delay-days` (default 7) after its transaction (labelled_at = transaction time + delay); before a batch
whose first transaction is at time T, every pending label with labelled_at <= T is sent (10,000 at most a
request), and the rest at the end, except labels not due yet by the wall clock (a label cannot be known in the
future), which are counted and left unsent. Genuine labels (fraud = false) are sent too, so evaluation knows
what was checked; `--frauds-only` sends only fraud labels.

Re-running a replay stores nothing twice: transactions and labels (their labelled_at is fixed by the file) are
answered as duplicates.

Columns: `--map FIELD=COLUMN` names the column of a field (account_id, transaction_id, timestamp, amount, currency,
merchant_id, the optional attributes channel, country, merchant_category, card_id, ip_address, device_id and
metadata, fraud, reason); by default each field is read from the column of its own name. A column --map names
that no row has is refused (a misspelt fraud column would send no label at all). Cells are read as the
API reads JSON, with text forms allowed: integers in digits, `fraud` as true/false or 1/0, `timestamp` as epoch ms,
RFC 3339, or "YYYY-MM-DD HH:MM:SS[.fff]" taken as UTC, `metadata` as an object or its JSON text (in a CSV cell).
An empty cell is an absent attribute. A row without a fraud cell has no label.

`--preset handbook` reads the Fraud Detection Handbook's simulated transactions: account_id = CUSTOMER_ID + 1,
transaction_id = TRANSACTION_ID, timestamp = TX_DATETIME (UTC), amount = TX_AMOUNT (rounded half up to cents: the
file's floats carry binary artefacts such as 85.64999999999999), currency EUR, merchant_id =
"t" + TERMINAL_ID, fraud = TX_FRAUD, reason = the TX_FRAUD_SCENARIO's name (1 amount_above_220,
2 compromised_terminal, 3 compromised_card; none for genuine), source chargeback.
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, cast

from txguard import literals
from txguard.domain import ATTRIBUTES, FraudLabel, Transaction
from txguard.errors import said, shorten
from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    integer_argument,
    period_argument,
    use_local_model_store,
)
from txguard_dev.commands.labels import Unreadable, is_csv_name, rows

DAY_MS = 86_400_000
LABEL_CHUNK = 10_000
FIELDS = (
    "account_id",
    "transaction_id",
    "timestamp",
    "amount",
    "currency",
    "merchant_id",
    *ATTRIBUTES,
    "fraud",
    "reason",
)
_NAIVE = re.compile(r"([0-9]{4}-[0-9]{2}-[0-9]{2})[ T]([0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,3})?)\Z")
_EPOCH_MS = re.compile(literals.INTEGER_PATTERN + r"\Z")
HANDBOOK_SCENARIOS = {"1": "amount_above_220", "2": "compromised_terminal", "3": "compromised_card"}

Cell = Callable[[dict[str, Any]], Any]


def _column(name: str) -> Cell:
    return lambda row: row.get(name)


def _plus_one(name: str) -> Cell:
    def read(row: dict[str, Any]) -> Any:
        value = row.get(name)
        try:
            return literals.integer_from_text(str(value), 0, 2**63 - 2) + 1
        except ValueError:
            return value  # refused by the field's own rule, which names it

    return read


def _cents(name: str) -> Cell:
    """The Handbook writes amounts as Python floats, some with binary artefacts (85.64999999999999 for 85.65):
    rounded half up to cents, which is what was meant."""

    def read(row: dict[str, Any]) -> Any:
        value = row.get(name)
        try:
            return str(literals.decimal(value).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))
        except (ValueError, ArithmeticError):
            return value  # refused by the amount's own rule, which names it

    return read


def _handbook_reason(row: dict[str, Any]) -> Any:
    scenario = row.get("TX_FRAUD_SCENARIO")
    return HANDBOOK_SCENARIOS.get(str(scenario)) if scenario not in ("0", None) else None


PRESETS: dict[str, dict[str, Cell]] = {
    "handbook": {
        "account_id": _plus_one("CUSTOMER_ID"),
        "transaction_id": _column("TRANSACTION_ID"),
        "timestamp": _column("TX_DATETIME"),
        "amount": _cents("TX_AMOUNT"),
        "currency": lambda row: "EUR",
        "merchant_id": lambda row: None if row.get("TERMINAL_ID") in (None, "") else f"t{row['TERMINAL_ID']}",
        "fraud": _column("TX_FRAUD"),
        "reason": _handbook_reason,
    }
}
PRESET_SOURCES = {"handbook": "chargeback"}


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, help="CSV or JSON lines, gzip allowed (*.gz)")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="a known file layout (see the command's help)")
    parser.add_argument(
        "--map", action="append", default=[], metavar="FIELD=COLUMN", help="the column a field is read from"
    )
    parser.add_argument(
        "--label-delay-days",
        type=integer_argument(0, 3650),
        default=7,
        help="labels become known this many days after their transactions (default 7)",
    )
    parser.add_argument("--frauds-only", action="store_true", help="send only fraud labels, not genuine ones")
    parser.add_argument("--source", default=None, help="the labels' source (default chargeback)")
    parser.add_argument("--batch-size", type=integer_argument(1, 50_000), default=5000, help="default 5000")
    parser.add_argument(
        "--from",
        dest="from_",
        type=period_argument,
        default=None,
        help="only transactions at or after this time (a UTC date, its midnight, or a timestamp)",
    )
    parser.add_argument(
        "--until",
        type=period_argument,
        default=None,
        help="only transactions before this time (a UTC date, its midnight, or a timestamp)",
    )
    parser.add_argument("--post-url", default=None, help="POST /store_data's URL (labels go to /labels beside it)")
    parser.add_argument("--api-key", default=None, help="x-api-key for --post-url (default: $TXGUARD_API_KEY)")
    parser.add_argument(
        "--sink",
        choices=("sqs", "kinesis"),
        help="transactions go to the stream ingest queue or stream, one a message (labels still go to DATABASE_URL, "
        "or to --post-url's /labels)",
    )
    parser.add_argument(
        "--endpoint-url",
        default=os.environ.get("AWS_ENDPOINT_URL"),
        help="with --sink: the SQS/Kinesis endpoint (default $AWS_ENDPOINT_URL, else the local one on port 4566)",
    )
    parser.add_argument("--queue-url", help="with --sink sqs (default: the local transactions.fifo)")
    parser.add_argument("--stream-name", help="with --sink kinesis (default: transactions)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


@dataclass
class Replay:
    """A file's rows, validated and in time order: transactions, and each labelled row's label."""

    transactions: list[Transaction]
    labels: list[FraudLabel]  # in the order of their labelled_at (the transactions' order, shifted by the delay)


@dataclass
class Totals:
    stored: int = 0
    duplicates: int = 0
    flagged: int = 0
    labels_stored: int = 0
    label_duplicates: int = 0
    labels_not_due: int = 0
    problems: list[str] = field(default_factory=list)


def _timestamp(value: Any) -> Any:
    if isinstance(value, str):
        match = _NAIVE.match(value.strip())
        if match:
            return f"{match.group(1)}T{match.group(2)}Z"
        if _EPOCH_MS.match(value):  # epoch milliseconds in digits
            return int(value)
    return value


def _integer(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return literals.integer_from_text(value, -(2**63), 2**63 - 1)
        except ValueError:
            return value
    return value


def _fraud(value: Any) -> Any:
    if isinstance(value, int) and not isinstance(value, bool) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false"):
        return value.strip().lower() in ("1", "true")
    return value


def _json_object(value: Any) -> Any:
    """A metadata cell: an object as it is, or the JSON text of one (a CSV cell); anything else is left for the
    API's rules to refuse."""
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def cells(args: argparse.Namespace) -> dict[str, Cell]:
    """How each field is read from a row: the preset, then --map overrides. Raises CommandError for a bad --map."""
    mapping: dict[str, Cell] = {name: _column(name) for name in FIELDS}
    if args.preset:
        mapping.update(PRESETS[args.preset])
    for item in args.map:
        name, equals, column = item.partition("=")
        if not equals or name not in FIELDS or not column:
            raise CommandError(
                f"--map {item!r}: give FIELD=COLUMN with FIELD one of {', '.join(FIELDS)}", exit_code=EXIT_USAGE
            )
        mapping[name] = _column(column)
    return mapping


def mapped_columns(args: argparse.Namespace) -> dict[str, str]:
    """The columns --map names, each with its option as given (`fraud=is_fraud`), for read_replay to find."""
    return {item.partition("=")[2]: item for item in args.map}


def read_replay(
    path: Path,
    mapping: dict[str, Cell],
    source: str,
    delay_ms: int,
    frauds_only: bool,
    from_ms: int | None,
    until_ms: int | None,
    mapped: dict[str, str] | None = None,
) -> Replay:
    """Every row of the file validated (transaction and label by the API's rules) and sorted by time. `mapped`
    (column -> its --map option): columns that some row must have, since a column named in no row would read as
    empty cells everywhere (a misspelt fraud column: no label sent at all). Raises ValueError naming the first bad
    rows (line, field, value, reason), or each mapped column no row has."""
    from txguard.intake import check_items
    from txguard.label_intake import check_labels

    found: list[tuple[Transaction, bool | None, str | None]] = []
    problems: list[str] = []
    from_csv = is_csv_name(path)
    unseen = set(mapped or ())
    columns: set[str] = set()
    for number, row in rows(path):
        if isinstance(row, Unreadable):
            problems.append(f"line {number}: {shorten(row.reason)}")
            continue
        if not isinstance(row, dict):
            problems.append(f"line {number}: the row is not an object")
            continue
        extra = cast(dict[Any, Any], row).get(None)  # csv.DictReader's key for the cells past the header's
        if extra is not None:
            problems.append(f"line {number}: {said('(extra cells)', extra, 'the row has more cells than the header')}")
            continue
        if unseen:
            unseen.difference_update(row)
            columns.update(row)
        item = {
            "account_id": _integer(mapping["account_id"](row)),
            "transaction_id": _integer(mapping["transaction_id"](row)),
            "timestamp": _timestamp(mapping["timestamp"](row)),
            "amount": mapping["amount"](row),
            "currency": mapping["currency"](row) or None,
            "merchant_id": mapping["merchant_id"](row) or None,
        }
        for name in ATTRIBUTES:
            value = mapping[name](row)
            if value not in (None, ""):
                item[name] = _json_object(value) if name == "metadata" else value
        if from_csv and item["currency"] is None:
            del item["currency"]
        (checked,) = check_items([item])
        fraud = mapping["fraud"](row)
        reason = mapping["reason"](row) or None
        if checked.transaction is None:
            problems += [f"line {number}: {said(p.field or 'the row', p.value, p.reason)}" for p in checked.problems]
        elif fraud not in (None, ""):
            label = {"transaction_id": checked.transaction.transaction_id, "fraud": _fraud(fraud), "source": source}
            if reason is not None:
                label["reason"] = reason
            (checked_label,) = check_labels([label])
            if checked_label.label is None:
                problems += [
                    f"line {number}: {said(p.field or 'the row', p.value, p.reason)}" for p in checked_label.problems
                ]
            else:
                found.append((checked.transaction, checked_label.label.fraud, checked_label.label.reason))
        else:
            found.append((checked.transaction, None, None))
        if len(problems) >= 20:
            break
    if unseen and mapped and len(problems) < 20:  # every row read: no row has them (they explain bad rows too)
        have = ", ".join(sorted(columns)) or "none"
        raise ValueError(
            "; ".join(
                f"--map {mapped[c]!r}: no row of {path} has a column {c!r} (the columns read: {shorten(have)})"
                for c in sorted(unseen)
            )
            + "; nothing was sent"
        )
    if problems:
        raise ValueError(f"{path}: bad rows; nothing was sent\n  " + "\n  ".join(problems[:20]))
    found = [f for f in found if (from_ms is None or f[0].ts >= from_ms) and (until_ms is None or f[0].ts < until_ms)]
    found.sort(key=lambda f: (f[0].ts, f[0].transaction_id))
    labels = [
        FraudLabel(t.transaction_id, fraud, source, t.ts + delay_ms, reason)
        for t, fraud, reason in found
        if fraud is not None and (fraud or not frauds_only)
    ]
    return Replay([f[0] for f in found], labels)


class Destination:
    """Where the replay goes: `send` a batch of transactions, `send_labels` a batch of labels; each returns
    (stored, duplicates[, flagged])."""

    def __init__(self, post_url: str | None, api_key: str | None, stream: Any = None) -> None:
        self._sink: Any = None
        self._stream = stream  # a stream sink (txguard generate's): transactions go there, labels as below
        if post_url:
            from txguard_generator.sinks import HttpSink

            self._sink = HttpSink(post_url, api_key)
            base = post_url.rstrip("/").removesuffix("/store_data")
            self._labels_url = base + "/labels"
            self.description = post_url
        else:
            self.description = "database (direct)"
        if stream is not None:
            self.description = f"{stream.description} (labels: {self.description})"

    def send(self, batch: list[Transaction]) -> tuple[int, int, int]:
        if self._stream is not None:
            # The stream function stores and decides them later: every message sent counts as stored here.
            self._stream.send(batch)
            return len(batch), 0, 0
        if self._sink is not None:
            outcome = self._sink.send(batch)
            return outcome.stored, outcome.duplicates, outcome.flagged
        from txguard import service
        from txguard.observability import metrics

        with _service_quiet():
            results = service.store(batch)
        metrics.clear_metrics()  # nothing flushes them outside Lambda
        stored = [r for r in results if r.status == "stored"]
        return len(stored), len(results) - len(stored), sum(1 for r in stored if r.decision.fraud)

    def send_labels(self, batch: Sequence[FraudLabel]) -> tuple[int, int]:
        if self._sink is not None:
            answer = self._sink.post({"labels": [_label_record(label) for label in batch]}, self._labels_url)
            statuses = [r.get("status") for r in answer.get("results", [])]
            if len(statuses) != len(batch):
                raise CommandError(f"unexpected answer to a batch of {len(batch)} labels: {str(answer)[:200]}")
            stored = statuses.count("stored")
            return stored, len(batch) - stored
        from txguard import service
        from txguard.observability import metrics

        with _service_quiet():
            results = service.store_labels(batch)
        metrics.clear_metrics()
        stored_count = sum(1 for r in results if r.status == "stored")
        return stored_count, len(results) - stored_count


@contextmanager
def _service_quiet() -> Iterator[None]:
    """The service's logger at WARNING while a batch is stored directly (one INFO line per batch would drown the
    progress bar), and as it was afterwards: the process may go on to serve, as under test or in a notebook."""
    from txguard.observability import logger

    level = logger.log_level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _label_record(label: FraudLabel) -> dict[str, Any]:
    record: dict[str, Any] = {
        "transaction_id": label.transaction_id,
        "fraud": label.fraud,
        "source": label.source,
        "labelled_at": label.labelled_at_ms,
    }
    if label.reason is not None:
        record["reason"] = label.reason
    return record


def _chunks(items: Sequence[FraudLabel], size: int) -> Iterator[Sequence[FraudLabel]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def replay(replayed: Replay, destination: Destination, batch_size: int, progress: Any, now_ms: int) -> Totals:
    """Send the transactions in batches, each preceded by the labels due by its first transaction's time."""
    totals = Totals()
    labels = replayed.labels
    due = [label.labelled_at_ms or 0 for label in labels]  # always set by read_replay
    released = 0

    def release(up_to_ms: int) -> None:
        nonlocal released
        end = bisect.bisect_right(due, up_to_ms, lo=released)
        for chunk in _chunks(labels[released:end], LABEL_CHUNK):
            stored, duplicates = destination.send_labels(chunk)
            totals.labels_stored += stored
            totals.label_duplicates += duplicates
        released = end

    txs = replayed.transactions
    for start in range(0, len(txs), batch_size):
        batch = txs[start : start + batch_size]
        release(batch[0].ts)
        stored, duplicates, flagged = destination.send(batch)
        totals.stored += stored
        totals.duplicates += duplicates
        totals.flagged += flagged
        progress.update(len(batch))
    release(now_ms)  # the rest, except labels not due yet by the wall clock
    totals.labels_not_due = len(labels) - released
    return totals


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from txguard.errors import TxguardError
    from txguard_generator.delivery import database_configured
    from txguard_generator.sinks import DeliveryError

    mapping = cells(args)
    source = args.source or PRESET_SOURCES.get(args.preset or "", "chargeback")
    from_ms, until_ms = args.from_, args.until
    if args.post_url is None and not database_configured():
        raise CommandError("set DATABASE_URL (or give --post-url)", exit_code=EXIT_USAGE)
    read_started = time.monotonic()
    try:
        replayed = read_replay(
            args.file,
            mapping,
            source,
            args.label_delay_days * DAY_MS,
            args.frauds_only,
            from_ms,
            until_ms,
            mapped_columns(args),
        )
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CommandError(str(exc), exit_code=EXIT_USAGE) from None
    read_s = time.monotonic() - read_started
    stream = None
    if args.sink:
        from txguard_dev.commands.generate import stream_sink

        try:
            stream = stream_sink(args)
        except Exception as exc:  # botocore's connection and client errors: say where, not a traceback
            raise CommandError(f"cannot reach the {args.sink} sink: {exc}") from None
    if args.post_url is None and stream is None:
        use_local_model_store()  # ingest runs here: the champion comes from where `txguard train` stored it
    destination = Destination(args.post_url, args.api_key or os.environ.get("TXGUARD_API_KEY"), stream)
    started = time.monotonic()
    try:
        with tqdm(total=len(replayed.transactions), unit="tx", disable=args.no_progress, file=sys.stderr) as bar:
            totals = replay(replayed, destination, args.batch_size, bar, int(time.time() * 1000))
    except (DeliveryError, TxguardError) as exc:
        raise CommandError(f"{exc}; what was sent before stays stored, and running the replay again is safe") from None
    elapsed = max(time.monotonic() - started, 1e-9)
    count = len(replayed.transactions)
    print(
        f"replayed {count:,} transactions from {args.file} to {destination.description} in {elapsed:.1f} s "
        f"({count / elapsed:,.0f} tx/s; reading and checking the file took {read_s:.1f} s)\n"
        + (
            f"transactions: {totals.stored:,} sent to the stream (stored and decided by the stream function)\n"
            if stream is not None
            else f"transactions: {totals.stored:,} stored, {totals.duplicates:,} duplicates, "
            f"{totals.flagged:,} flagged\n"
        )
        + f"labels (delay {args.label_delay_days} days): {totals.labels_stored:,} stored, "
        f"{totals.label_duplicates:,} duplicates, {totals.labels_not_due:,} not due yet"
    )
    return 0
