"""CloudFormation custom resource `Migrations`: the schema is ready when `sam deploy` finishes.

Create and Update apply the pending migrations with the administrative secret and (re)set the service
login's password from the service secret (sent as a SCRAM-SHA-256 verifier, never in clear), both through
RDS Proxy. A login that belongs to another database on the same server fails the deploy with a
MigrationError naming it and that database, and changes nothing. Delete answers SUCCESS and touches
nothing: deleting the stack never drops data. Every run is safe to repeat (see txguard.migrate).

CloudFormation learns the outcome from a PUT of a small JSON document to a presigned URL. It is written
here with urllib: Powertools has no custom-resource helper, and the PUT is all that crhelper would add.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
import urllib.request
from typing import Any

import psycopg2
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext

from txguard.db import dsn_from_settings
from txguard.migrate import migrate
from txguard.observability import logger
from txguard.settings import DatabaseSettings

ADMIN_SECRET_VARIABLE = "TXGUARD_MIGRATE_ADMIN_SECRET_ARN"
# The proxy may still be registering its target when the first deploy gets here: retry connecting.
RETRY_EVERY_S = 10.0
# Answer CloudFormation this long before the function would time out, so that a stuck run fails the
# deploy promptly instead of leaving the stack waiting for the custom resource's own timeout.
ANSWER_MARGIN_S = 20.0


def handle_custom_resource(event: dict[str, Any], context: LambdaContext) -> None:
    """Apply the migrations for a Create or Update, answer CloudFormation in every case."""
    settings = DatabaseSettings.from_env()
    answer = CloudFormationAnswer(event, f"txguard-migrations:{settings.host}/{settings.name}", context.log_stream_name)
    logger.info("custom resource request", extra={"request_type": event["RequestType"], "stack": event["StackId"]})
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - ANSWER_MARGIN_S
    watchdog = threading.Timer(max(deadline - time.monotonic(), 1.0), answer.failed, ("timed out",))
    watchdog.daemon = True
    watchdog.start()
    try:
        if event["RequestType"] == "Delete":
            answer.succeeded("nothing to do: the database and its data outlive the stack")
            return
        applied = apply_migrations(settings, deadline)
        names = [f"{m.version:04d}_{m.name}" for m in applied]
        logger.info("migrations applied", extra={"applied": names})
        answer.succeeded(f"applied {len(names)} migration(s)", {"Applied": ",".join(names) or "none"})
    except Exception as exc:
        logger.exception("migrations failed")
        answer.failed(f"{type(exc).__name__}: {exc}")
    finally:
        watchdog.cancel()


def apply_migrations(settings: DatabaseSettings, deadline: float) -> list[Any]:
    admin = dataclasses.replace(settings, url=None, secret_arn=_admin_secret_arn())
    service = parameters.get_secret(settings.secret_arn or "", transform="json", force_fetch=True)
    while True:
        try:
            return migrate(dsn_from_settings(admin), str(service["username"]), str(service["password"]))
        except psycopg2.OperationalError as exc:
            if time.monotonic() + RETRY_EVERY_S > deadline:
                raise
            logger.warning("database not reachable yet; retrying", extra={"error": str(exc).strip()[:300]})
            time.sleep(RETRY_EVERY_S)


def _admin_secret_arn() -> str:
    arn = os.environ.get(ADMIN_SECRET_VARIABLE)
    if not arn:
        raise RuntimeError(f"{ADMIN_SECRET_VARIABLE} is not set")
    return arn


class CloudFormationAnswer:
    """The response document CloudFormation waits for; only the first answer is sent."""

    def __init__(self, event: dict[str, Any], physical_id: str, log_stream: str) -> None:
        self._event = event
        self._log_stream = log_stream
        # An Update or Delete keeps the id CloudFormation knows: a new id would make it delete the old one.
        self._physical_id = event.get("PhysicalResourceId") or physical_id
        self._sent = False
        self._lock = threading.Lock()

    def succeeded(self, reason: str, data: dict[str, str] | None = None) -> None:
        self._send("SUCCESS", reason, data or {})

    def failed(self, reason: str) -> None:
        self._send("FAILED", reason, {})

    def _send(self, status: str, reason: str, data: dict[str, str]) -> None:
        with self._lock:
            if self._sent:
                return
            self._sent = True
        body = json.dumps(
            {
                "Status": status,
                "Reason": f"{reason} (log stream {self._log_stream})"[:1000],
                "PhysicalResourceId": self._physical_id,
                "StackId": self._event["StackId"],
                "RequestId": self._event["RequestId"],
                "LogicalResourceId": self._event["LogicalResourceId"],
                "NoEcho": False,
                "Data": data,
            }
        ).encode()
        # The presigned URL was signed with an empty content type: sending another would void it.
        request = urllib.request.Request(
            self._event["ResponseURL"], data=body, method="PUT", headers={"Content-Type": ""}
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            logger.info("answered CloudFormation", extra={"status": status, "http_status": response.status})
