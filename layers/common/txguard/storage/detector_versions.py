"""The `detector_versions` table (migration 0015): what decides, pinned as one version.

A detector version pins a rule set version, the champion model (None: the rules decide alone) and the shadow
models (scored and recorded, never deciding). A new one is written, in the same database transaction, by every
change of what decides: a rule set stored (storage.rule_sets) and a model's status changed (storage.models).

Every writer takes DETECTOR_LOCK_KEY (exclusive, transaction-scoped) before it changes anything and keeps it until
it commits, so detector versions are numbered in commit order and each records the state its own change left: a
rule set change and a promotion that run at once are serialised, and the later one sees the earlier one's row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg2.extensions

from txguard.errors import Conflict

# Serialises every change of what decides (any fixed number, distinct from the other advisory keys).
DETECTOR_LOCK_KEY = 0x7478_6775_6172_6415

_COLUMNS = "version, rule_set_version, champion_model_version, shadow_model_versions, created_at, created_by, comment"


class NoRuleSet(Conflict):
    """A detector version needs a rule set, and none is stored."""

    code = "no_rule_set"

    def __init__(self) -> None:
        super().__init__("no rule set is stored; run `txguard db migrate`, which stores the default one")


@dataclass(frozen=True)
class DetectorVersion:
    """One version of what decides: rule set version, champion model version (None: rules alone), shadow model
    versions (ascending), when, by whom and why."""

    version: int
    rule_set_version: int
    champion_model_version: int | None
    shadow_model_versions: tuple[int, ...]
    created_at: datetime
    created_by: str
    comment: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: created_at as RFC 3339."""
        return {
            "version": self.version,
            "rule_set_version": self.rule_set_version,
            "champion_model_version": self.champion_model_version,
            "shadow_model_versions": list(self.shadow_model_versions),
            "created_at": self.created_at.isoformat(),
            "created_by": self.created_by,
            "comment": self.comment,
        }


def lock(cur: psycopg2.extensions.cursor) -> None:
    """Take DETECTOR_LOCK_KEY until the end of the caller's database transaction (re-entrant)."""
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (DETECTOR_LOCK_KEY,))


def current(cur: psycopg2.extensions.cursor) -> DetectorVersion | None:
    """The newest detector version (None before any rule set was stored)."""
    cur.execute(f"SELECT {_COLUMNS} FROM detector_versions ORDER BY version DESC LIMIT 1")  # noqa: S608
    row = cur.fetchone()
    return None if row is None else _version(row)


def get(cur: psycopg2.extensions.cursor, number: int) -> DetectorVersion | None:
    """Detector version `number`, None when there is none."""
    cur.execute(f"SELECT {_COLUMNS} FROM detector_versions WHERE version = %s", (number,))  # noqa: S608
    row = cur.fetchone()
    return None if row is None else _version(row)


def history(cur: psycopg2.extensions.cursor, limit: int = 1000) -> list[DetectorVersion]:
    """The newest `limit` detector versions, newest first."""
    cur.execute(f"SELECT {_COLUMNS} FROM detector_versions ORDER BY version DESC LIMIT %s", (limit,))  # noqa: S608
    return [_version(row) for row in cur.fetchall()]


def record(cur: psycopg2.extensions.cursor, comment: str, created_by: str | None = None) -> DetectorVersion:
    """Write the detector version the caller's transaction leaves: the newest rule set, the champion and the
    shadows as they stand now (the caller's own changes included). Takes DETECTOR_LOCK_KEY.

    `created_by` None: the database user. Raises NoRuleSet when no rule set is stored.
    """
    lock(cur)
    cur.execute(
        f"""INSERT INTO detector_versions (version, rule_set_version, champion_model_version,
                                           shadow_model_versions, created_by, comment)
            SELECT (SELECT coalesce(max(version), 0) + 1 FROM detector_versions),
                   (SELECT max(version) FROM rule_sets),
                   (SELECT version FROM model_versions WHERE status = 'champion'),
                   ARRAY(SELECT version FROM model_versions WHERE status = 'shadow' ORDER BY version),
                   coalesce(%s, current_user), %s
            WHERE EXISTS (SELECT FROM rule_sets)
            RETURNING {_COLUMNS}""",  # noqa: S608
        (created_by, comment),
    )
    row = cur.fetchone()
    if row is None:
        raise NoRuleSet()
    return _version(row)


def _version(row: tuple[Any, ...]) -> DetectorVersion:
    version, rule_set_version, champion, shadows, created_at, created_by, comment = row
    return DetectorVersion(
        int(version),
        int(rule_set_version),
        None if champion is None else int(champion),
        tuple(int(v) for v in shadows),
        created_at,
        created_by,
        comment,
    )
