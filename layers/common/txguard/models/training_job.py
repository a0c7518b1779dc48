"""TrainFunction: training in AWS, on its schedule or when invoked, and the one rule that may promote.

An invocation trains a candidate exactly as `txguard train` does (txguard.models.training), on the service's
database, with the artifact in TXGUARD_MODEL_BUCKET. The event is either the schedule's (the cutoff is today's UTC
midnight) or a JSON object naming any of:

    {"until": "2018-07-01" | epoch ms, "name": "...", "seed": 1, "gap_days": 7, "valid_days": 7,
     "train_days": 90, "rounds": 300, "features": ["amount", ...]}

Unset fields come from the environment (TXGUARD_TRAIN_*: see `JobSettings.from_env`), else training's defaults.

It never promotes unless TXGUARD_TRAIN_AUTO_PROMOTE is true (the template's AutoPromote, off by default). Then the
candidate becomes champion only when, on the same validation window, its average precision exceeds the champion's
(scored as serving scores it) by at least TXGUARD_TRAIN_PROMOTE_MARGIN, and the champion is still the one compared
when the promotion runs. With no champion, the bar is the stored decisions' own average precision on the window
(what decides today). A champion that cannot be compared (its features were not read, its artifact is unusable)
is never replaced automatically.

Runs without scikit-learn (the decision-tree baseline is reported as unavailable): the function ships lightgbm and
scipy only, within Lambda's 250 MB (see functions/train/Makefile).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Any

from txguard import literals
from txguard.errors import BadInput
from txguard.features import DAY_MS
from txguard.models import artifact_store, training
from txguard.storage import detector_versions
from txguard.storage import models as registry

_FIELDS = ("until", "name", "seed", "gap_days", "valid_days", "train_days", "rounds", "features")


class InvalidTrainingEvent(BadInput):
    """An invocation's event names a field this function does not take, or a bad value; nothing trained."""


@dataclass(frozen=True)
class JobSettings:
    """From the environment: auto-promotion (off unless "true"), its margin (AP, 0–1) and training's defaults."""

    auto_promote: bool = False
    promote_margin: float = 0.01
    gap_days: int = training.DEFAULT_GAP_DAYS
    valid_days: int = training.DEFAULT_VALID_DAYS
    train_days: int | None = None
    rounds: int = training.DEFAULT_ROUNDS
    seed: int = training.DEFAULT_SEED

    @classmethod
    def from_env(cls) -> JobSettings:
        """TXGUARD_TRAIN_AUTO_PROMOTE, _PROMOTE_MARGIN, _GAP_DAYS, _VALID_DAYS, _TRAIN_DAYS (0 or unset: all history),
        _ROUNDS, _SEED. Raises ValueError naming a bad one."""

        def number(name: str, default: int, low: int, high: int) -> int:
            text = os.environ.get(name, "")
            return default if text == "" else literals.integer_from_text(text, low, high)

        margin_text = os.environ.get("TXGUARD_TRAIN_PROMOTE_MARGIN", "0.01")
        margin = float(margin_text)
        if not 0 <= margin < 1:
            raise ValueError(f"TXGUARD_TRAIN_PROMOTE_MARGIN={margin_text} must be in [0, 1)")
        train_days = number("TXGUARD_TRAIN_TRAIN_DAYS", 0, 0, 3650)
        return cls(
            auto_promote=os.environ.get("TXGUARD_TRAIN_AUTO_PROMOTE", "false").lower() == "true",
            promote_margin=margin,
            gap_days=number("TXGUARD_TRAIN_GAP_DAYS", training.DEFAULT_GAP_DAYS, 0, 365),
            valid_days=number("TXGUARD_TRAIN_VALID_DAYS", training.DEFAULT_VALID_DAYS, 1, 365),
            train_days=train_days or None,
            rounds=number("TXGUARD_TRAIN_ROUNDS", training.DEFAULT_ROUNDS, 1, 10_000),
            seed=number("TXGUARD_TRAIN_SEED", training.DEFAULT_SEED, 0, 2**31 - 1),
        )


def options_from_event(event: Any, settings: JobSettings, now_ms: int) -> training.TrainingOptions:
    """The run an event asks for (see the module docstring). Raises InvalidTrainingEvent naming the field."""
    today = now_ms - now_ms % DAY_MS
    base = training.TrainingOptions(
        until=today,
        name="",
        seed=settings.seed,
        gap_days=settings.gap_days,
        valid_days=settings.valid_days,
        train_days=settings.train_days,
        rounds=settings.rounds,
        created_by="TrainFunction",
    )
    scheduled = isinstance(event, dict) and event.get("source") == "aws.events"
    given: dict[str, Any] = {} if scheduled or event is None else event
    if not isinstance(given, dict):
        raise InvalidTrainingEvent("the event must be a JSON object", [_problem(None, event, "not an object")])
    unknown = sorted(set(given) - set(_FIELDS))
    if unknown:
        raise InvalidTrainingEvent(
            f"unknown fields {unknown}; the event takes {list(_FIELDS)}",
            [_problem(name, given[name], "unknown field") for name in unknown],
        )
    changes: dict[str, Any] = {}
    try:
        if "until" in given:
            changes["until"] = _until(given["until"])
        for name, low, high in (
            ("seed", 0, 2**31 - 1),
            ("gap_days", 0, 365),
            ("valid_days", 1, 365),
            ("train_days", 1, 3650),
            ("rounds", 1, 10_000),
        ):
            if name in given:
                value = given[name]
                if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                    raise _Refused(name, value, f"must be an integer from {low} to {high}")
                changes[name] = value
        if "features" in given:
            features = given["features"]
            if not isinstance(features, list) or not features or not all(isinstance(f, str) for f in features):
                raise _Refused("features", features, "must be a non-empty list of feature names")
            changes["features"] = tuple(features)
        if "name" in given:
            name = given["name"]
            if not isinstance(name, str) or not 1 <= len(name) <= registry.MAX_NAME_LENGTH:
                raise _Refused("name", name, f"must be 1 to {registry.MAX_NAME_LENGTH} characters")
            changes["name"] = name
    except _Refused as refused:
        raise InvalidTrainingEvent(
            f"{refused.field} {refused.reason}", [_problem(refused.field, refused.value, refused.reason)]
        ) from None
    options = replace(base, **changes)
    if not options.name:
        day = time.strftime("%Y-%m-%d", time.gmtime(options.until / 1000))
        options = replace(options, name=f"lightgbm-{day}-scheduled" if scheduled else f"lightgbm-{day}")
    return options


class _Refused(Exception):
    def __init__(self, field: str, value: Any, reason: str) -> None:
        super().__init__(reason)
        self.field, self.value, self.reason = field, value, reason


def _problem(field: str | None, value: Any, reason: str) -> dict[str, Any]:
    return {"index": None, "field": field, "value": value, "reason": reason}


def _until(value: Any) -> int:
    """A cutoff, read as every time window's bound is (intake.window_bound_ms): a UTC date (its midnight), epoch
    ms, or an RFC 3339 date-time with a zone."""
    from txguard.intake import window_bound_ms

    if isinstance(value, int | str) and not isinstance(value, bool):
        try:
            return window_bound_ms(value)
        except ValueError as exc:
            raise _Refused("until", value, str(exc)) from None
    raise _Refused("until", value, "must be a date (YYYY-MM-DD), epoch milliseconds or an RFC 3339 date-time")


def promotion_decision(metrics: dict[str, Any], margin: float) -> tuple[bool, int | None, str]:
    """Whether the candidate whose `metrics` training wrote beats what decides today by `margin` (average
    precision on the same validation window); the champion version compared (None: no champion) and why."""
    candidate = metrics["validation"]["average_precision"]
    champion = metrics.get("champion") or {}
    if champion.get("available"):
        bar, version, what = champion["average_precision"], champion["version"], f"champion {champion['version']}"
    elif champion.get("reason") == "there is no champion":
        bar, version, what = metrics["stored_decisions"]["average_precision"], None, "the stored decisions"
    else:
        return False, None, f"the champion cannot be compared: {champion.get('reason')}"
    if candidate is None or bar is None:
        return False, version, "average precision is undefined on the validation window"
    if candidate >= bar + margin:
        return True, version, f"average precision {candidate:.4f} beats {what}'s {bar:.4f} by {margin} or more"
    return False, version, f"average precision {candidate:.4f} does not beat {what}'s {bar:.4f} by {margin}"


def run(event: Any, conn_factory: Any, store: Any = None, now_ms: int | None = None) -> dict[str, Any]:
    """Train one candidate (and maybe promote it: see the module docstring). `conn_factory()` opens a database
    connection; `store` defaults to the environment's artifact store. Returns {"version", "name", "until",
    "average_precision", "promoted", "why"}. Raises InvalidTrainingEvent, TrainingError, ArtifactUnavailable,
    psycopg2.Error: the invocation fails and its Errors alarm fires."""
    settings = JobSettings.from_env()
    options = options_from_event(event, settings, int(time.time() * 1000) if now_ms is None else now_ms)
    store = store or artifact_store.store()
    conn = conn_factory()
    try:
        result = training.train(conn, options, store)
        model = result.model
        promoted, why = False, "AutoPromote is off"
        if settings.auto_promote:
            promote, compared, why = promotion_decision(model.metrics, settings.promote_margin)
            if promote:
                with conn, conn.cursor() as cur:
                    detector_versions.lock(cur)
                    current = registry.champion(cur)
                    if (None if current is None else current.version) == compared:
                        registry.promote(cur, model.version, store, created_by="TrainFunction")
                        promoted = True
                    else:
                        why = "the champion changed while the candidate was trained; not promoted"
    finally:
        conn.close()
    return {
        "version": model.version,
        "name": model.name,
        "until": options.until,
        "average_precision": model.metrics["validation"]["average_precision"],
        "promoted": promoted,
        "why": why,
    }


def handle(event: Any) -> dict[str, Any]:
    """TrainFunction's entry point: `run` on the service's database connection (a connection of its own: the
    reads are long and use a server-side cursor), with its outcome logged and counted (ModelTrained,
    ModelPromoted)."""
    from aws_lambda_powertools.metrics import MetricUnit

    from txguard.db import connect, dsn_from_settings
    from txguard.observability import logger, metrics
    from txguard.settings import DatabaseSettings

    def open_connection() -> Any:
        settings = DatabaseSettings.from_env()
        return connect(dsn_from_settings(settings), settings)

    outcome = run(event, open_connection)
    metrics.add_metric(name="ModelTrained", unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ModelPromoted", unit=MetricUnit.Count, value=int(outcome["promoted"]))
    # Not `name`: a log record's own attribute.
    logger.info("model trained", extra={f"model_{key}": value for key, value in outcome.items()})
    return outcome
