"""The `model_versions` table (migration 0015): the model registry.

Each trained model is a version: its artifact's sha256 (the bytes live content-addressed in the artifact store,
txguard.models.artifact_store), its feature list and that list's hash, the windows it was trained and validated
on, the label cutoff, the seed and parameters, its metrics and threshold table, and a status:

    candidate ──shadow──▶ shadow ──promote──▶ champion ──retire / rollback / another promoted──▶ retired
        └────────────────promote───────────────▲    │
    retired ──shadow / promote──▶ (again)       (retire)

- `set_shadow`: a candidate or retired version is scored beside the champion and never decides (at most
  MAX_SHADOWS at once);
- `promote`: a candidate, shadow or retired version becomes the champion; the champion it replaces is retired,
  and remembered as this one's `previous_champion`;
- `retire`: a candidate, shadow or champion version is set aside (a retired champion leaves the rules alone);
- `rollback`: the champion is retired and its `previous_champion` (if any) is the champion again; rolling back
  again goes on back through the champions before it.

Every state change runs in the caller's one database transaction, under the detector lock
(storage.detector_versions.DETECTOR_LOCK_KEY), checks the transition first (IllegalTransition, nothing changed),
and writes a new detector version in the same transaction. A version becomes champion or shadow only if its
artifact can be read, hashes to its sha256, decodes, and names exactly the registered features, all of which
serving computes (UnusableModel otherwise, nothing changed). The unique index model_versions_one_champion keeps
two champions out even if this code were bypassed.

`latest` (the highest version number) is accepted wherever a version is.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

import psycopg2.extensions

from txguard import literals
from txguard.errors import BadInput, Conflict, NotFound
from txguard.features import ALL_FEATURES
from txguard.models.artifact import features_hash
from txguard.storage import detector_versions
from txguard.storage.detector_versions import DetectorVersion

Status = Literal["candidate", "shadow", "champion", "retired"]
STATUSES: tuple[Status, ...] = ("candidate", "shadow", "champion", "retired")
LATEST = "latest"
MAX_SHADOWS = 5  # each shadow is scored on every transaction: a bound on what shadows cost ingest
MAX_VERSION = 2**31 - 1
MAX_NAME_LENGTH = 100

_COLUMNS = """version, name, artifact_sha256, features, features_hash,
    txguard_ts_to_ms(train_from), txguard_ts_to_ms(train_to), gap_days,
    txguard_ts_to_ms(valid_from), txguard_ts_to_ms(valid_to), txguard_ts_to_ms(label_cutoff),
    seed, params, metrics, thresholds, status, previous_champion, created_at, created_by"""


class InvalidModelVersion(BadInput):
    """A model version that is neither a positive integer nor `latest`."""

    def __init__(self, text: object, field_name: str = "version") -> None:
        reason = f"must be a model version (a positive integer) or {LATEST!r}"
        shown = str(text)[:200]
        super().__init__(
            f"{field_name} {shown!r} {reason}",
            [{"index": None, "field": field_name, "value": shown, "reason": reason}],
        )


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, wanted: int | str) -> None:
        super().__init__(
            "no model is registered yet" if wanted == LATEST else f"model version {wanted} is not registered"
        )


class IllegalTransition(Conflict):
    """A status change the lifecycle does not allow (see the module docstring); nothing changed."""

    code = "illegal_transition"


class UnusableModel(Conflict):
    """A version whose artifact is missing, corrupt or does not match its registered features: it may not
    become champion or shadow; nothing changed."""

    code = "model_unusable"


class InvalidModel(BadInput):
    """A model that cannot be registered (a bad name, feature list, window or hash); nothing stored."""


class ArtifactSource(Protocol):
    """Where artifact bytes are read (txguard.models.artifact_store)."""

    def get(self, sha256: str) -> bytes:
        """The bytes whose sha256 is `sha256`; raises ArtifactUnavailable."""
        ...


@dataclass(frozen=True)
class NewModel:
    """What training registers. Times are epoch ms; windows are [from, to)."""

    name: str
    artifact_sha256: str
    features: tuple[str, ...]
    train_from: int
    train_to: int
    gap_days: int
    valid_from: int
    valid_to: int
    label_cutoff: int
    seed: int
    params: Mapping[str, Any]
    metrics: Mapping[str, Any]
    thresholds: Mapping[str, Any] | Sequence[Any]
    created_by: str | None = None  # None: the database user


@dataclass(frozen=True)
class ModelVersion:
    """A registered model. Times are epoch ms (created_at a datetime); metrics and thresholds as training wrote
    them (see txguard.models.training)."""

    version: int
    name: str
    artifact_sha256: str
    features: tuple[str, ...]
    features_hash: str
    train_from: int
    train_to: int
    gap_days: int
    valid_from: int
    valid_to: int
    label_cutoff: int
    seed: int
    params: dict[str, Any]
    metrics: dict[str, Any]
    thresholds: Any
    status: Status
    previous_champion: int | None
    created_at: datetime
    created_by: str

    def headline(self) -> dict[str, Any]:
        """The validation window's headline figures (0–1, None where undefined): what a listing shows."""
        valid = self.metrics.get("validation", {}) if isinstance(self.metrics, dict) else {}
        return {
            key: valid.get(key)
            for key in ("roc_auc", "average_precision", "card_precision_at_k", "f1", "precision", "recall", "threshold")
        }

    def as_dict(self, with_details: bool = True) -> dict[str, Any]:
        """JSON-ready; without details: no params, metrics or thresholds, the headline figures instead (a
        listing)."""
        data: dict[str, Any] = {
            "version": self.version,
            "name": self.name,
            "status": self.status,
            "artifact_sha256": self.artifact_sha256,
            "features": list(self.features),
            "features_hash": self.features_hash,
            "train_from": self.train_from,
            "train_to": self.train_to,
            "gap_days": self.gap_days,
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "label_cutoff": self.label_cutoff,
            "seed": self.seed,
            "previous_champion": self.previous_champion,
            "created_at": int(self.created_at.timestamp() * 1000),
            "created_by": self.created_by,
        }
        if with_details:
            data.update(params=self.params, metrics=self.metrics, thresholds=self.thresholds)
        else:
            data["validation"] = self.headline()
        return data


@dataclass(frozen=True)
class Change:
    version: int
    before: Status
    after: Status


@dataclass(frozen=True)
class StatusChange:
    """What one state change did: each version's status before and after, and the detector version written."""

    changes: tuple[Change, ...]
    detector: DetectorVersion
    notes: tuple[str, ...] = field(default=())


def parse_version(value: object, field_name: str = "version") -> int | str:
    """A model version from outside (CLI argument, path parameter): a positive integer (ASCII digits) or
    `latest`. Raises InvalidModelVersion."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_VERSION:
        return value
    if isinstance(value, str):
        if value == LATEST:
            return LATEST
        try:
            return literals.integer_from_text(value, 1, MAX_VERSION)
        except ValueError:
            pass
    raise InvalidModelVersion(value, field_name)


def get(cur: psycopg2.extensions.cursor, version: int | str, for_update: bool = False) -> ModelVersion:
    """Model `version` (an int, or `latest`: the highest number). Raises ModelNotFound, InvalidModelVersion."""
    wanted = parse_version(version)
    lock = " FOR UPDATE" if for_update else ""
    if wanted == LATEST:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions ORDER BY version DESC LIMIT 1{lock}")  # noqa: S608
    else:
        cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE version = %s{lock}", (wanted,))  # noqa: S608
    row = cur.fetchone()
    if row is None:
        raise ModelNotFound(wanted)
    return _model(row)


def list_versions(
    cur: psycopg2.extensions.cursor, status: Status | None = None, limit: int = 1000, before: int | None = None
) -> list[ModelVersion]:
    """Registered versions, newest first, optionally of one status and only below version `before`; at most
    `limit`."""
    cur.execute(
        f"""SELECT {_COLUMNS} FROM model_versions
            WHERE (%(status)s::text IS NULL OR status = %(status)s)
              AND (%(before)s::integer IS NULL OR version < %(before)s)
            ORDER BY version DESC LIMIT %(limit)s""",  # noqa: S608
        {"status": status, "limit": limit, "before": before},
    )
    return [_model(row) for row in cur.fetchall()]


def champion(cur: psycopg2.extensions.cursor) -> ModelVersion | None:
    """The champion, None when the rules decide alone."""
    cur.execute(f"SELECT {_COLUMNS} FROM model_versions WHERE status = 'champion'")  # noqa: S608
    row = cur.fetchone()
    return None if row is None else _model(row)


def _validated(model: NewModel) -> None:
    problems: list[tuple[str, object, str]] = []
    if not 1 <= len(model.name) <= MAX_NAME_LENGTH or not model.name.isprintable():
        problems.append(("name", model.name, f"must be 1 to {MAX_NAME_LENGTH} printable characters"))
    if len(model.artifact_sha256) != 64 or any(c not in "0123456789abcdef" for c in model.artifact_sha256):
        problems.append(("artifact_sha256", model.artifact_sha256, "must be 64 lower-case hexadecimal digits"))
    if not model.features:
        problems.append(("features", [], "must name at least one feature"))
    unknown = [name for name in model.features if name not in ALL_FEATURES]
    if unknown:
        problems.append(("features", unknown, "serving does not compute these features"))
    if len(set(model.features)) != len(model.features):
        problems.append(("features", list(model.features), "names a feature twice"))
    if not model.train_from < model.train_to <= model.valid_from < model.valid_to <= model.label_cutoff:
        problems.append(
            (
                "windows",
                [model.train_from, model.train_to, model.valid_from, model.valid_to, model.label_cutoff],
                "must satisfy train_from < train_to <= valid_from < valid_to <= label_cutoff",
            )
        )
    if model.gap_days < 0:
        problems.append(("gap_days", model.gap_days, "must not be negative"))
    if problems:
        raise InvalidModel(
            "the model cannot be registered: " + "; ".join(f"{f} {reason}" for f, _, reason in problems),
            [{"index": None, "field": f, "value": v, "reason": reason} for f, v, reason in problems],
        )


def register(cur: psycopg2.extensions.cursor, model: NewModel) -> ModelVersion:
    """Store a trained model as a new `candidate` version (what decides does not change: no detector version).
    Raises InvalidModel, storing nothing."""
    _validated(model)
    detector_versions.lock(cur)  # numbered max + 1: serialised with every other writer
    cur.execute(
        f"""INSERT INTO model_versions (version, name, artifact_sha256, features, features_hash, train_from, train_to,
                gap_days, valid_from, valid_to, label_cutoff, seed, params, metrics, thresholds, created_by)
            SELECT (SELECT coalesce(max(version), 0) + 1 FROM model_versions), %s, %s, %s::text[], %s,
                   txguard_ms_to_ts(%s), txguard_ms_to_ts(%s), %s, txguard_ms_to_ts(%s), txguard_ms_to_ts(%s),
                   txguard_ms_to_ts(%s), %s, %s, %s, %s, coalesce(%s, current_user)
            RETURNING {_COLUMNS}""",  # noqa: S608
        (
            model.name,
            model.artifact_sha256,
            list(model.features),
            features_hash(model.features),
            model.train_from,
            model.train_to,
            model.gap_days,
            model.valid_from,
            model.valid_to,
            model.label_cutoff,
            model.seed,
            json.dumps(model.params, allow_nan=False),
            json.dumps(model.metrics, allow_nan=False),
            json.dumps(model.thresholds, allow_nan=False),
            model.created_by,
        ),
    )
    row = cur.fetchone()
    assert row is not None
    return _model(row)


def check_artifact(model: ModelVersion, artifacts: ArtifactSource) -> None:
    """Raise UnusableModel unless `model`'s artifact can be read from `artifacts` (its bytes hashing to its
    sha256), decodes (txguard.models.artifact.decode_artifact), and names exactly the registered features with
    the registered hash, every one of which serving computes."""
    from txguard.models.artifact import CorruptArtifact, decode_artifact
    from txguard.models.artifact_store import ArtifactUnavailable

    prefix = f"model version {model.version} cannot be used"
    try:
        data = artifacts.get(model.artifact_sha256)
    except ArtifactUnavailable as exc:
        raise UnusableModel(f"{prefix}: {exc}") from None
    try:
        artifact = decode_artifact(data)
    except CorruptArtifact as exc:
        raise UnusableModel(f"{prefix}: its artifact {model.artifact_sha256} is corrupt: {exc}") from None
    if tuple(artifact.features) != model.features or artifact.features_hash != model.features_hash:
        raise UnusableModel(
            f"{prefix}: its artifact names the features {list(artifact.features)}, the registry {list(model.features)}"
        )
    unknown = sorted(set(model.features) - ALL_FEATURES)
    if unknown:
        raise UnusableModel(f"{prefix}: serving does not compute the features {unknown}")


def set_shadow(
    cur: psycopg2.extensions.cursor, version: int | str, artifacts: ArtifactSource, created_by: str | None = None
) -> StatusChange:
    """A candidate or retired version becomes a shadow (scored and recorded beside the champion, never
    deciding). Raises ModelNotFound, IllegalTransition (already a shadow, the champion, MAX_SHADOWS reached),
    UnusableModel; nothing changed then."""
    detector_versions.lock(cur)
    model = get(cur, version, for_update=True)
    if model.status == "shadow":
        raise IllegalTransition(f"model version {model.version} is already a shadow")
    if model.status == "champion":
        raise IllegalTransition(
            f"model version {model.version} is the champion; promote another version, or retire or roll it back, "
            "before it can be a shadow"
        )
    cur.execute("SELECT count(*) FROM model_versions WHERE status = 'shadow'")
    row = cur.fetchone()
    if row is not None and row[0] >= MAX_SHADOWS:
        raise IllegalTransition(
            f"{row[0]} versions are shadows already (at most {MAX_SHADOWS}, each is scored on every transaction); "
            "retire one first"
        )
    check_artifact(model, artifacts)
    _set_status(cur, model.version, "shadow")
    return _recorded(cur, [Change(model.version, model.status, "shadow")], f"model {model.version} shadow", created_by)


def promote(
    cur: psycopg2.extensions.cursor, version: int | str, artifacts: ArtifactSource, created_by: str | None = None
) -> StatusChange:
    """A candidate, shadow or retired version becomes the champion; the champion it replaces (if any) is retired
    and remembered as its `previous_champion`. Raises ModelNotFound, IllegalTransition (already the champion),
    UnusableModel; nothing changed then."""
    detector_versions.lock(cur)
    model = get(cur, version, for_update=True)
    if model.status == "champion":
        raise IllegalTransition(f"model version {model.version} is already the champion")
    check_artifact(model, artifacts)
    changes = []
    replaced = champion(cur)
    if replaced is not None:
        _set_status(cur, replaced.version, "retired")
        changes.append(Change(replaced.version, "champion", "retired"))
    cur.execute(
        "UPDATE model_versions SET status = 'champion', previous_champion = %s WHERE version = %s",
        (None if replaced is None else replaced.version, model.version),
    )
    changes.append(Change(model.version, model.status, "champion"))
    return _recorded(cur, changes, f"model {model.version} champion", created_by)


def retire(cur: psycopg2.extensions.cursor, version: int | str, created_by: str | None = None) -> StatusChange:
    """A candidate, shadow or champion version is retired (a retired champion leaves the rules deciding alone).
    Raises ModelNotFound, IllegalTransition (already retired); nothing changed then."""
    detector_versions.lock(cur)
    model = get(cur, version, for_update=True)
    if model.status == "retired":
        raise IllegalTransition(f"model version {model.version} is already retired")
    _set_status(cur, model.version, "retired")
    notes = ("there is no champion now: the rules decide alone",) if model.status == "champion" else ()
    change = Change(model.version, model.status, "retired")
    return _recorded(cur, [change], f"model {model.version} retired", created_by, notes)


def rollback(cur: psycopg2.extensions.cursor, artifacts: ArtifactSource, created_by: str | None = None) -> StatusChange:
    """The champion is retired and the champion it replaced (its `previous_champion`) returns; when it replaced
    none, the rules decide alone. Raises IllegalTransition (no champion), UnusableModel (the previous champion's
    artifact cannot be used); nothing changed then."""
    detector_versions.lock(cur)
    current = champion(cur)
    if current is None:
        raise IllegalTransition("there is no champion to roll back")
    changes = [Change(current.version, "champion", "retired")]
    _set_status(cur, current.version, "retired")
    notes: tuple[str, ...] = ()
    if current.previous_champion is None:
        notes = (f"model version {current.version} replaced no champion: the rules decide alone",)
    else:
        previous = get(cur, current.previous_champion, for_update=True)
        check_artifact(previous, artifacts)
        _set_status(cur, previous.version, "champion")
        changes.append(Change(previous.version, previous.status, "champion"))
    return _recorded(cur, changes, f"rollback of model {current.version}", created_by, notes)


def _set_status(cur: psycopg2.extensions.cursor, version: int, status: Status) -> None:
    cur.execute("UPDATE model_versions SET status = %s WHERE version = %s", (status, version))


def _recorded(
    cur: psycopg2.extensions.cursor,
    changes: list[Change],
    comment: str,
    created_by: str | None,
    notes: tuple[str, ...] = (),
) -> StatusChange:
    return StatusChange(tuple(changes), detector_versions.record(cur, comment, created_by), notes)


def _model(row: tuple[Any, ...]) -> ModelVersion:
    (
        version,
        name,
        sha,
        features,
        fhash,
        train_from,
        train_to,
        gap_days,
        valid_from,
        valid_to,
        label_cutoff,
        seed,
        params,
        metrics,
        thresholds,
        status,
        previous,
        created_at,
        created_by,
    ) = row
    return ModelVersion(
        int(version),
        name,
        sha,
        tuple(features),
        fhash,
        int(train_from),
        int(train_to),
        int(gap_days),
        int(valid_from),
        int(valid_to),
        int(label_cutoff),
        int(seed),
        params,
        metrics,
        thresholds,
        status,
        None if previous is None else int(previous),
        created_at,
        created_by,
    )
