"""The `rule_sets` table: every change is a new version, validated whole before it is stored; stored versions
are validated again when read (the limits hold for versions stored before them too). Each new version writes a
detector version (storage.detector_versions) in the same database transaction."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any

import psycopg2.extensions

from txguard.rule_language import RuleSet, RuleSetError, validate_rule_set
from txguard.storage import detector_versions, lists

# Serialises writers of new versions (any fixed number).
_RULES_LOCK_KEY = 0x7478_6775_6172_6402


@dataclass(frozen=True)
class StoredRuleSet:
    version: int
    rule_set: RuleSet
    comment: str
    created_at: datetime
    created_by: str


def default_rule_set() -> RuleSet:
    text = resources.files("txguard.rulesets").joinpath("default.json").read_text(encoding="utf-8")
    return validate_rule_set(json.loads(text))


def seed_default_rule_set(conn: psycopg2.extensions.connection) -> None:
    """Store the packaged default rule set as version 1 when there is no rule set at all."""
    with conn, conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_RULES_LOCK_KEY,))
        cur.execute("SELECT 1 FROM rule_sets LIMIT 1")
        if cur.fetchone() is None:
            # A schema older than migration 0015 has no detector versions yet: 0015 writes the first one.
            cur.execute("SELECT to_regclass('detector_versions') IS NOT NULL")
            row = cur.fetchone()
            _insert(cur, default_rule_set(), "default rule set", record=bool(row and row[0]))


def _insert(cur: psycopg2.extensions.cursor, rule_set: RuleSet, comment: str, record: bool = True) -> int:
    """Store the new version and the detector version that decides with it (taking the detector lock after the
    rules lock, the one order every writer uses)."""
    cur.execute(
        "INSERT INTO rule_sets (version, document, comment) "
        "SELECT coalesce(max(version), 0) + 1, %s, %s FROM rule_sets RETURNING version",
        (json.dumps(rule_set.document()), comment),
    )
    row = cur.fetchone()
    assert row is not None
    number = int(row[0])
    if record:
        detector_versions.record(cur, f"rule set {number}: {comment}" if comment else f"rule set {number}")
    return number


def apply_rule_set(cur: psycopg2.extensions.cursor, data: Any, comment: str = "") -> int:
    """Validate a whole rule set and store it as the new version; raises RuleSetError, storing nothing (also when
    a rule names a list that does not exist, or compares a field with a list of another kind)."""
    rule_set = validate_rule_set(data)
    check_lists(cur, rule_set)
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_RULES_LOCK_KEY,))
    return _insert(cur, rule_set, comment)


def check_lists(cur: psycopg2.extensions.cursor, rule_set: RuleSet) -> None:
    """RuleSet.check_lists against the lists stored now (storage.lists.list_definitions); raises RuleSetError."""
    if rule_set.list_fields():
        rule_set.check_lists({name: d.kind for name, d in lists.list_definitions(cur).items()})


def disable_rule(cur: psycopg2.extensions.cursor, rule_id: str) -> int:
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_RULES_LOCK_KEY,))
    current = latest(cur)
    if current is None:
        raise RuleSetError(["there is no rule set yet"])
    rules = current.rule_set.rules
    if not any(rule.id == rule_id for rule in rules):
        raise RuleSetError([f"rule {rule_id!r} is not in version {current.version}"])
    changed = current.rule_set.model_copy(
        update={"rules": [r.model_copy(update={"enabled": False}) if r.id == rule_id else r for r in rules]}
    )
    return _insert(cur, changed, f"disable {rule_id}")


def latest(cur: psycopg2.extensions.cursor) -> StoredRuleSet | None:
    cur.execute(
        "SELECT version, document, comment, created_at, created_by FROM rule_sets ORDER BY version DESC LIMIT 1"
    )
    row = cur.fetchone()
    return None if row is None else _stored(row)


def newest_version(cur: psycopg2.extensions.cursor) -> int | None:
    """The newest version's number (None when no rule set is stored), without reading its document."""
    cur.execute("SELECT max(version) FROM rule_sets")
    row = cur.fetchone()
    return None if row is None or row[0] is None else int(row[0])


def version(cur: psycopg2.extensions.cursor, number: int) -> StoredRuleSet | None:
    cur.execute(
        "SELECT version, document, comment, created_at, created_by FROM rule_sets WHERE version = %s",
        (number,),
    )
    row = cur.fetchone()
    return None if row is None else _stored(row)


def history(cur: psycopg2.extensions.cursor) -> list[StoredRuleSet]:
    cur.execute("SELECT version, document, comment, created_at, created_by FROM rule_sets ORDER BY version")
    return [_stored(row) for row in cur.fetchall()]


def _stored(row: tuple[Any, ...]) -> StoredRuleSet:
    """A stored version, validated like one being applied: the limits hold for versions stored before them too.

    Raises RuleSetError naming the version and each problem.
    """
    version_number, document, comment, created_at, created_by = row
    try:
        rule_set = validate_rule_set(document)
    except RuleSetError as exc:
        raise RuleSetError([f"stored version {version_number}: {problem}" for problem in exc.problems]) from None
    return StoredRuleSet(int(version_number), rule_set, comment, created_at, created_by)
