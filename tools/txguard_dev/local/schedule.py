"""Fires the template's Schedule events locally: nothing in SAM CLI does.

Each scheduled function is invoked in-process at its `rate(...)`, with the event EventBridge sends
(the shape of `sam local generate-event cloudwatch scheduled-event`, as in events/scheduled.json).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from txguard_dev.local.runner import ACCOUNT_ID, FunctionRunner, Template, log

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": 86400}


def parse_rate(expression: str) -> float | None:
    """Seconds between runs of a `rate(N unit)` expression; None for `cron(...)`; ValueError otherwise."""
    expression = expression.strip()
    if expression.startswith("cron(") and expression.endswith(")"):
        return None
    match = _RATE.match(expression)
    if match is None:
        raise ValueError(f"not a schedule expression: {expression!r}")
    count, unit = int(match.group(1)), match.group(2)
    # EventBridge's own rule: the singular unit for 1, the plural otherwise.
    if count == 0 or (count == 1) != (not unit.endswith("s")):
        raise ValueError(f"not a valid rate: {expression!r}")
    return float(count * _UNIT_SECONDS[unit.rstrip("s")])


def scheduled_event(rule_name: str, region: str = "us-east-1") -> dict[str, Any]:
    return {
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": ACCOUNT_ID,
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "region": region,
        "resources": [f"arn:aws:events:{region}:{ACCOUNT_ID}:rule/{rule_name}"],
        "detail": {},
    }


@dataclass(frozen=True)
class Job:
    function_name: str
    every_s: float
    rule_name: str


def scheduled_jobs(template: Template, every_s: float | None = None) -> list[Job]:
    """One job per Schedule event; `every_s` replaces every interval (a demo) and sets cron(...) ones."""
    jobs = []
    for function in template.functions.values():
        for event_name, expression in function.schedules:
            interval = parse_rate(expression)
            if interval is None and every_s is None:
                log.warning(
                    "%s: %s has no local equivalent; pass --schedule-every to run it",
                    function.name,
                    expression,
                )
                continue
            if interval is None:
                log.warning("%s: %s fires every %g s locally (--schedule-every)", function.name, expression, every_s)
            interval = every_s if every_s is not None else interval
            assert interval is not None
            # The rule SAM creates for a Schedule event is named after the function and the event.
            jobs.append(Job(function.name, interval, f"{function.name}{event_name}"))
    return jobs


class Scheduler:
    """A thread running due jobs one after the other; a failing run is logged and the next still comes."""

    def __init__(self, runner: FunctionRunner, jobs: list[Job]) -> None:
        self.runner = runner
        self.jobs = jobs
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="txguard-scheduler", daemon=True)

    def start(self) -> None:
        if self.jobs:
            self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def _loop(self) -> None:
        now = time.monotonic()
        due = {job: now + job.every_s for job in self.jobs}
        while not self._stop.is_set():
            job = min(due, key=due.__getitem__)
            if self._stop.wait(max(0.0, due[job] - time.monotonic())):
                return
            self.run_once(job)
            # Catch up from the time it was due, but never fire a backlog of missed runs.
            due[job] = max(due[job] + job.every_s, time.monotonic())

    def run_once(self, job: Job) -> None:
        try:
            result = self.runner.call(job.function_name, scheduled_event(job.rule_name))
        except Exception:
            log.exception("scheduled run of %s could not start", job.function_name)
            return
        if result.failed:
            log.error("scheduled run of %s failed: %s", job.function_name, result.payload.get("errorMessage"))
        else:
            log.info("scheduled run of %s done in %.0f ms", job.function_name, result.duration_ms)
