"""Where generated transactions go: the API over HTTP, the storage code directly, or a file.

Every sink takes one batch at a time and says what became of it. Labels never go through a sink.
"""

from __future__ import annotations

import csv
import http.client
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from txguard.domain import ATTRIBUTES, Transaction
from txguard_generator.params import check_post_url

USER_AGENT = "txguard-generate"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# A CSV file's columns: the attributes a generated transaction carries (never metadata) after the core fields.
FILE_FIELDS = (
    "transaction_id",
    "account_id",
    "timestamp",
    "amount",
    "currency",
    "merchant_id",
    "channel",
    "country",
    "merchant_category",
    "card_id",
    "ip_address",
    "device_id",
)


class DeliveryError(Exception):
    """A batch could not be delivered; the message says what the destination answered."""


@dataclass
class Outcome:
    stored: int = 0
    duplicates: int = 0
    flagged: int = 0  # of the stored ones, how many the detector flagged
    written: int = 0  # to a file

    def __iadd__(self, other: Outcome) -> Outcome:
        self.stored += other.stored
        self.duplicates += other.duplicates
        self.flagged += other.flagged
        self.written += other.written
        return self


class Sink(Protocol):
    description: str

    def send(self, batch: list[Transaction]) -> Outcome: ...

    def close(self) -> None: ...


def transaction_record(t: Transaction) -> dict[str, Any]:
    """A transaction as POST /store_data takes it (and as the JSON-lines file holds it)."""
    record: dict[str, Any] = {
        "account_id": t.account_id,
        "transaction_id": t.transaction_id,
        "timestamp": t.ts,
        "amount": str(t.amount),
        "currency": t.currency,
    }
    if t.merchant_id is not None:
        record["merchant_id"] = t.merchant_id
    for name, value in zip(ATTRIBUTES, t.attributes(), strict=True):
        if value is not None:
            record[name] = value
    return record


class DirectSink:
    """Through txguard.service.store, exactly what the ingest function runs: each transaction gets its decision."""

    description = "database (direct)"

    def __init__(self, keep_metrics: bool = True) -> None:
        # Outside Lambda nothing flushes the metrics; Powertools would print them to stdout every 100 values.
        self._keep_metrics = keep_metrics

    def send(self, batch: list[Transaction]) -> Outcome:
        from txguard import service  # the storage stack is imported only by the sink that needs it
        from txguard.observability import metrics

        results = service.store(batch)
        if not self._keep_metrics:
            metrics.clear_metrics()
        stored = [r for r in results if r.status == "stored"]
        return Outcome(
            stored=len(stored),
            duplicates=len(results) - len(stored),
            flagged=sum(1 for r in stored if r.decision.fraud),
        )

    def close(self) -> None:
        pass


class FileSink:
    """JSON lines (one API-shaped transaction a line), or CSV when the name ends in .csv; '-' is stdout."""

    def __init__(self, path: str) -> None:
        self.description = "stdout" if path == "-" else path
        self._own = path != "-"
        self._file: IO[str] = sys.stdout
        if self._own:
            self._file = Path(path).open("w", encoding="utf-8", newline="")  # noqa: SIM115 (closed by close())
        self._csv = csv.writer(self._file) if path.lower().endswith(".csv") else None
        if self._csv is not None:
            self._csv.writerow(FILE_FIELDS)

    def send(self, batch: list[Transaction]) -> Outcome:
        if self._csv is not None:
            self._csv.writerows(
                (t.transaction_id, t.account_id, t.ts, t.amount, t.currency, *(v or "" for v in t[5:12])) for t in batch
            )
        else:
            dumps = json.dumps
            self._file.writelines(dumps(transaction_record(t)) + "\n" for t in batch)
        return Outcome(written=len(batch))

    def close(self) -> None:
        if self._own:
            self._file.close()
        else:
            self._file.flush()


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter between attempts; a Retry-After from the server wins when present."""

    attempts: int = 8
    base_s: float = 0.5
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after_s: float | None, jitter: float) -> float:
        if retry_after_s is not None:
            return min(self.cap_s, max(0.0, retry_after_s))
        ceiling = min(self.cap_s, self.base_s * 2.0**attempt)
        return ceiling / 2 + jitter * ceiling / 2


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect surfaces as the 3xx it is: following it would send the API key to wherever it points."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_RefuseRedirects)


class HttpSink:
    """POST /store_data in batches; retries 429/5xx and lost connections, never a request the API refused.

    Redirects are not followed (the key goes to the configured URL or nowhere): a 3xx is a DeliveryError.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        backoff: Backoff | None = None,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        check_post_url(url)
        self.url = url
        self.description = url
        self._api_key = api_key
        self._backoff = backoff or Backoff()
        self._timeout_s = timeout_s
        self._sleep = sleep
        self._jitter = jitter
        self.retries = 0

    def send(self, batch: list[Transaction]) -> Outcome:
        return _outcome(self.post({"transactions": [transaction_record(t) for t in batch]}), len(batch))

    def post(self, document: dict[str, Any], url: str | None = None) -> Any:
        """POST `document` as JSON to `url` (default: this sink's) with the retries above; the decoded answer.
        Raises DeliveryError."""
        url = url or self.url
        body = json.dumps(document).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json", "User-Agent": USER_AGENT}
        if self._api_key:
            headers["x-api-key"] = self._api_key
        problem = ""
        for attempt in range(self._backoff.attempts):
            if attempt:
                self.retries += 1
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            retry_after: float | None = None
            try:
                with _OPENER.open(request, timeout=self._timeout_s) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                text = error.read().decode("utf-8", "replace")
                if 300 <= error.code < 400:
                    raise DeliveryError(
                        f"POST {url} answered {error.code} (a redirect to {error.headers.get('Location')!r}); "
                        "redirects are not followed: configure the final URL"
                    ) from None
                if error.code not in RETRY_STATUSES:
                    raise DeliveryError(f"POST {url} answered {error.code}: {_error_message(text)}") from None
                problem = f"{error.code}: {_error_message(text)}"
                retry_after = _seconds(error.headers.get("Retry-After"))
            except (urllib.error.URLError, http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                problem = f"{type(reason).__name__}: {reason}"
            if attempt + 1 < self._backoff.attempts:
                self._sleep(self._backoff.delay(attempt, retry_after, self._jitter()))
        raise DeliveryError(f"POST {url} failed {self._backoff.attempts} times; last: {problem}")

    def close(self) -> None:
        pass


def _outcome(answer: Any, expected: int) -> Outcome:
    results = answer.get("results") if isinstance(answer, dict) else None
    if not isinstance(results, list) or len(results) != expected:
        raise DeliveryError(f"unexpected answer to a batch of {expected}: {str(answer)[:200]}")
    outcome = Outcome()
    for result in results:
        if result.get("status") == "stored":
            outcome.stored += 1
            # The full form's decision, or the decisions form's outcome (the answer to a batch whose full form would
            # pass Lambda's response limit): flagged is blocked.
            decision = result.get("decision")
            flagged = decision.get("fraud") if isinstance(decision, dict) else result.get("outcome") == "block"
            outcome.flagged += bool(flagged)
        else:
            outcome.duplicates += 1
    return outcome


def _error_message(text: str) -> str:
    try:
        error = json.loads(text)["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return text.strip()[:200] or "(no body)"


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: fall back to our own backoff


class Progress:
    """A one-line progress bar with the rate, on a terminal only."""

    def __init__(self, total: int, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.total = total
        self.done = 0
        self._stream = stream or sys.stderr
        self._enabled = self._stream.isatty() if enabled is None else enabled
        self._started = time.monotonic()
        self._shown = 0.0

    def advance(self, count: int) -> None:
        self.done += count
        now = time.monotonic()
        if self._enabled and (now - self._shown >= 0.1 or self.done >= self.total):
            self._shown = now
            self._stream.write("\r" + self.line(now - self._started))
            self._stream.flush()

    def line(self, elapsed_s: float, width: int = 30) -> str:
        share = self.done / self.total if self.total else 1.0
        filled = int(share * width)
        rate = self.done / elapsed_s if elapsed_s > 0 else 0.0
        return (
            f"{self.done:>{len(str(self.total))},}/{self.total:,} [{'#' * filled}{'.' * (width - filled)}] "
            f"{share:4.0%}  {rate:,.0f} tx/s"
        )

    def finish(self) -> None:
        if self._enabled:
            self._stream.write("\n")
            self._stream.flush()
