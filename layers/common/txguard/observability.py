"""The one Logger, Metrics and Tracer of the service, built once and imported everywhere.

Traces leave the stack's KMS boundary (X-Ray is encrypted with its own key), so they carry timings, names and
error types only, never transaction data:
- every `capture_method` / `capture_lambda_handler` passes `capture_response=False, capture_error=False`
  (a response or an error object would be stored as trace metadata);
- only botocore is patched. The X-Ray psycopg2 patch would record each failing statement's error, whose
  DETAIL line carries row values ("Key (transaction_id)=(...)", "Failing row contains (...)"); the
  database's share of a request is the `run_in_transaction` subsegment instead;
- exception messages are removed from every trace entity before it is sent (`_TypesOnlyEmitter`): the
  X-Ray SDK records `str(exception)` of anything raised through a subsegment, and messages such as
  "transaction ids already used with different content: 17" name data. The type and stack stay.
"""

from __future__ import annotations

import sys
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_xray_sdk.core import xray_recorder
from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter


class _CurrentStdout:
    """Writes to whatever sys.stdout is at the time of writing, not at import: `txguard invoke` sends the
    functions' output to stderr, and test runners swap stdout, after this module may have been imported."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def drop_exception_messages(entity: Any) -> None:
    """Remove the message of every exception recorded on a trace entity and its subsegments (types stay)."""
    cause = getattr(entity, "cause", None)
    if isinstance(cause, dict):
        for throwable in cause.get("exceptions", ()):
            if hasattr(throwable, "message"):
                del throwable.message
    for child in getattr(entity, "subsegments", ()):
        drop_exception_messages(child)


class _TypesOnlyEmitter(UDPEmitter):  # type: ignore[misc]
    """The X-Ray daemon emitter (address from AWS_XRAY_DAEMON_ADDRESS), minus exception messages."""

    def send_entity(self, entity: Any) -> None:
        drop_exception_messages(entity)
        super().send_entity(entity)


logger = Logger(service="txguard", stream=_CurrentStdout())  # type: ignore[arg-type]
metrics = Metrics(namespace="txguard", service="txguard")
tracer = Tracer(service="txguard", patch_modules=("botocore",))
if not tracer.disabled:
    xray_recorder.configure(emitter=_TypesOnlyEmitter())
