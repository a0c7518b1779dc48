"""The one Logger, Metrics and Tracer of the service, built once and imported everywhere."""

from __future__ import annotations

import sys

from aws_lambda_powertools import Logger, Metrics, Tracer


class _CurrentStdout:
    """Writes to whatever sys.stdout is at the time of writing, not at import: `txguard invoke` sends the
    functions' output to stderr, and test runners swap stdout, after this module may have been imported."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


logger = Logger(service="txguard", stream=_CurrentStdout())  # type: ignore[arg-type]
metrics = Metrics(namespace="txguard", service="txguard")
tracer = Tracer(service="txguard")
