"""The model registry and detector versions on a real PostgreSQL: each status change is one database transaction
that writes a detector version, refuses what the lifecycle forbids or an unusable artifact without changing
anything, and two concurrent promotions leave exactly one champion."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg2
import psycopg2.errors
import pytest

from tests.conftest import Database
from tests.integration.helpers import apply_rules, rule
from txguard.models.artifact_store import DirectoryStore
from txguard.storage import detector_versions, models
from txguard.storage.models import IllegalTransition, ModelNotFound, NewModel, UnusableModel

pytestmark = pytest.mark.integration

T = TypeVar("T")
DAY = 86_400_000
FEATURES = ("amount", "count_24h")


def tiny_artifact(features: tuple[str, ...] = FEATURES, seed: int = 1) -> bytes:
    """A real LightGBM model (a few trees on random data) as artifact bytes."""
    import lightgbm
    import numpy as np

    from txguard.models.artifact import encode_artifact

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(300, len(features)))
    y = (x[:, 0] + rng.normal(scale=0.5, size=300) > 1).astype(int)
    booster = lightgbm.train(
        {"objective": "binary", "num_leaves": 4, "verbose": -1, "seed": seed, "num_threads": 1},
        lightgbm.Dataset(x, y, feature_name=list(features)),
        num_boost_round=3,
    )
    return encode_artifact(list(features), booster.dump_model(), 0.5)


def new_model(sha: str, features: tuple[str, ...] = FEATURES, name: str = "test") -> NewModel:
    t0 = 1_530_000_000_000
    return NewModel(
        name=name,
        artifact_sha256=sha,
        features=features,
        train_from=t0,
        train_to=t0 + 20 * DAY,
        gap_days=7,
        valid_from=t0 + 27 * DAY,
        valid_to=t0 + 34 * DAY,
        label_cutoff=t0 + 34 * DAY,
        seed=7,
        params={"num_leaves": 4},
        metrics={"validation": {"average_precision": 0.5}},
        thresholds=[{"score": 0.5, "precision": 0.5, "recall": 0.5, "fpr": 0.01}],
    )


@pytest.fixture
def store(tmp_path: Path) -> DirectoryStore:
    return DirectoryStore(tmp_path / "artifacts")


@pytest.fixture
def conn(database: Database) -> Iterator[Any]:
    connection = psycopg2.connect(database.service_url)
    try:
        yield connection
    finally:
        connection.close()


def in_transaction(conn: Any, work: Callable[[Any], T]) -> T:
    with conn, conn.cursor() as cur:
        return work(cur)


def registered(conn: Any, store: DirectoryStore, count: int = 1, **kwargs: Any) -> list[int]:
    versions = []
    for seed in range(count):
        sha = store.put(tiny_artifact(seed=seed + 1))
        versions.append(
            in_transaction(conn, lambda cur, sha=sha: models.register(cur, new_model(sha, **kwargs))).version
        )
    return versions


def statuses(database: Database) -> dict[int, str]:
    return dict(database.query("SELECT version, status FROM model_versions ORDER BY version"))


def detector_count(database: Database) -> int:
    return int(database.query("SELECT count(*) FROM detector_versions")[0][0])


def test_a_candidate_is_registered_with_its_windows_and_metrics_and_changes_no_detector(
    database: Database, conn: Any, store: DirectoryStore
) -> None:
    before = detector_count(database)
    (version,) = registered(conn, store)
    model = in_transaction(conn, lambda cur: models.get(cur, "latest"))
    assert (model.version, model.status, model.features) == (version, "candidate", FEATURES)
    assert model.train_to - model.train_from == 20 * DAY and model.gap_days == 7
    assert model.metrics == {"validation": {"average_precision": 0.5}} and model.thresholds[0]["fpr"] == 0.01
    assert model.features_hash == models.features_hash(FEATURES)
    assert detector_count(database) == before
    assert in_transaction(conn, lambda cur: models.get(cur, str(version))) == model
    with pytest.raises(ModelNotFound, match="version 99 is not registered"):
        in_transaction(conn, lambda cur: models.get(cur, 99))


def test_registering_refuses_features_serving_does_not_compute(conn: Any, store: DirectoryStore) -> None:
    with pytest.raises(models.InvalidModel, match="serving does not compute"):
        registered(conn, store, features=("amount", "shoe_size"))


def test_shadow_promote_and_rollback_each_write_the_detector_version_they_leave(
    database: Database, conn: Any, store: DirectoryStore
) -> None:
    first_detector = in_transaction(conn, detector_versions.current)
    assert first_detector is not None and first_detector.champion_model_version is None
    one, two, three = registered(conn, store, 3)

    change = in_transaction(conn, lambda cur: models.set_shadow(cur, two, store))
    assert change.detector.shadow_model_versions == (two,) and change.detector.champion_model_version is None
    change = in_transaction(conn, lambda cur: models.promote(cur, one, store))
    assert (change.detector.champion_model_version, change.detector.shadow_model_versions) == (one, (two,))
    change = in_transaction(conn, lambda cur: models.promote(cur, "latest", store))  # three, a candidate
    assert [(c.version, c.before, c.after) for c in change.changes] == [
        (one, "champion", "retired"),
        (three, "candidate", "champion"),
    ]
    assert statuses(database) == {one: "retired", two: "shadow", three: "champion"}
    change = in_transaction(conn, lambda cur: models.promote(cur, two, store))  # a shadow promoted
    assert change.detector.shadow_model_versions == () and change.detector.champion_model_version == two

    # Rollbacks walk back through the champions: two -> three -> one -> the rules alone.
    assert in_transaction(conn, lambda cur: models.rollback(cur, store)).detector.champion_model_version == three
    assert statuses(database) == {one: "retired", two: "retired", three: "champion"}
    assert in_transaction(conn, lambda cur: models.rollback(cur, store)).detector.champion_model_version == one
    last = in_transaction(conn, lambda cur: models.rollback(cur, store))
    assert last.detector.champion_model_version is None and "rules decide alone" in last.notes[0]
    assert statuses(database) == {one: "retired", two: "retired", three: "retired"}

    history = in_transaction(conn, detector_versions.history)
    assert [d.version for d in history] == list(range(first_detector.version + 7, first_detector.version - 1, -1))
    assert all(d.rule_set_version == first_detector.rule_set_version for d in history)
    assert [d.champion_model_version for d in reversed(history)] == [None, None, one, three, two, three, one, None]


def test_the_lifecycle_refuses_illegal_transitions_and_changes_nothing(
    database: Database, conn: Any, store: DirectoryStore
) -> None:
    one, two = registered(conn, store, 2)
    with pytest.raises(IllegalTransition, match="no champion to roll back"):
        in_transaction(conn, lambda cur: models.rollback(cur, store))
    in_transaction(conn, lambda cur: models.promote(cur, one, store))
    in_transaction(conn, lambda cur: models.retire(cur, two))
    before = (statuses(database), detector_count(database))
    refused = [
        (lambda cur: models.promote(cur, one, store), "already the champion"),
        (lambda cur: models.set_shadow(cur, one, store), "is the champion"),
        (lambda cur: models.retire(cur, two), "already retired"),
        (lambda cur: models.promote(cur, 3, store), "version 3 is not registered"),
    ]
    for work, message in refused:
        with pytest.raises((IllegalTransition, ModelNotFound), match=message):
            in_transaction(conn, work)
        assert (statuses(database), detector_count(database)) == before
    with pytest.raises(models.InvalidModelVersion, match="positive integer"):
        models.parse_version("-1")


def test_no_more_than_max_shadows(conn: Any, store: DirectoryStore) -> None:
    versions = registered(conn, store, models.MAX_SHADOWS + 1)
    for version in versions[:-1]:
        in_transaction(conn, lambda cur, v=version: models.set_shadow(cur, v, store))
    with pytest.raises(IllegalTransition, match="retire one first"):
        in_transaction(conn, lambda cur: models.set_shadow(cur, versions[-1], store))


def test_a_missing_corrupt_or_mismatched_artifact_is_never_promoted_or_shadowed(
    database: Database, conn: Any, store: DirectoryStore, tmp_path: Path
) -> None:
    missing = in_transaction(conn, lambda cur: models.register(cur, new_model("a" * 64))).version
    corrupt_bytes = b'{"format":"txguard-lightgbm-1"}'
    corrupt = in_transaction(conn, lambda cur: models.register(cur, new_model(store.put(corrupt_bytes)))).version
    # Artifact and registry disagree on the features (the artifact's are another list).
    other = store.put(tiny_artifact(features=("amount", "count_1h")))
    mismatched = in_transaction(conn, lambda cur: models.register(cur, new_model(other))).version
    (good,) = registered(conn, store)
    damaged_sha = in_transaction(conn, lambda cur: models.get(cur, good)).artifact_sha256
    in_transaction(conn, lambda cur: models.promote(cur, good, store))
    before = (statuses(database), detector_count(database))
    for version, message in [(missing, "not in"), (corrupt, "is corrupt"), (mismatched, "names the features")]:
        for change in (models.promote, models.set_shadow):
            with pytest.raises(UnusableModel, match=message):
                in_transaction(conn, lambda cur, c=change, v=version: c(cur, v, store))
            assert (statuses(database), detector_count(database)) == before

    # A previous champion whose file was damaged since does not come back: the rollback is refused whole.
    (newer,) = registered(conn, store)
    in_transaction(conn, lambda cur: models.promote(cur, newer, store))
    (store.directory / "models" / f"{damaged_sha}.json").write_bytes(b"{}")
    before = (statuses(database), detector_count(database))
    with pytest.raises(UnusableModel, match="damaged"):
        in_transaction(conn, lambda cur: models.rollback(cur, store))
    assert (statuses(database), detector_count(database)) == before


def test_a_status_change_that_fails_half_way_leaves_nothing_written(
    database: Database, conn: Any, store: DirectoryStore
) -> None:
    one, two = registered(conn, store, 2)
    in_transaction(conn, lambda cur: models.promote(cur, one, store))
    before = (statuses(database), detector_count(database))

    def promote_then_fail(cur: Any) -> None:
        models.promote(cur, two, store)  # statuses changed and a detector version written, in this transaction
        assert statuses(database) == before[0]  # not visible outside it
        cur.execute("SELECT 1 / 0")

    with pytest.raises(psycopg2.errors.DivisionByZero):
        in_transaction(conn, promote_then_fail)
    assert (statuses(database), detector_count(database)) == before


def test_two_champions_are_refused_by_the_database_itself(database: Database) -> None:
    database.execute("ALTER TABLE model_versions DISABLE TRIGGER ALL")  # no triggers; only the unique index counts
    conn = psycopg2.connect(database.admin_url)
    try:
        for version in (1, 2):
            with conn, conn.cursor() as cur:
                cur.execute(
                    """INSERT INTO model_versions (version, name, artifact_sha256, features, features_hash, train_from,
                         train_to, gap_days, valid_from, valid_to, label_cutoff, seed, params, metrics, thresholds)
                       VALUES (%s, 'x', repeat('a', 64), '{amount}', repeat('b', 64), now() - interval '9 days',
                         now() - interval '8 days', 0, now() - interval '8 days', now() - interval '1 day', now(), 1,
                         '{}', '{}', '[]')""",
                    (version,),
                )
        with conn, conn.cursor() as cur:
            cur.execute("UPDATE model_versions SET status = 'champion' WHERE version = 1")
        with pytest.raises(psycopg2.errors.UniqueViolation), conn, conn.cursor() as cur:
            cur.execute("UPDATE model_versions SET status = 'champion' WHERE version = 2")
    finally:
        conn.close()
        database.execute("ALTER TABLE model_versions ENABLE TRIGGER ALL")


def _race(database: Database, works: list[Callable[[Any], Any]]) -> list[Any]:
    """Run each work in its own thread and connection, released together; results or exceptions, in order."""
    barrier = threading.Barrier(len(works))
    results: list[Any] = [None] * len(works)

    def run(index: int) -> None:
        conn = psycopg2.connect(database.service_url)
        try:
            with conn, conn.cursor() as cur:
                cur.execute("SELECT 1")  # the transaction is open before the race starts
                barrier.wait()
                results[index] = works[index](cur)
        except Exception as exc:
            results[index] = exc
        finally:
            conn.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(works))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_two_concurrent_promotions_leave_exactly_one_champion(
    database: Database, conn: Any, store: DirectoryStore
) -> None:
    for round_ in range(5):
        one, two = registered(conn, store, 2)
        results = _race(
            database,
            [
                lambda cur, v=one: models.promote(cur, v, store),
                lambda cur, v=two: models.promote(cur, v, store),
            ],
        )
        assert all(isinstance(r, models.StatusChange) for r in results), results
        champions = database.query("SELECT version FROM model_versions WHERE status = 'champion'")
        assert len(champions) == 1, round_
        latest = in_transaction(conn, detector_versions.current)
        assert latest is not None and latest.champion_model_version == champions[0][0]
        # The later promotion retired the earlier one's champion: each detector version names a real champion.
        assert {r.detector.champion_model_version for r in results} == {one, two}

    # The same version promoted twice at once: one promotion, one refusal.
    (three,) = registered(conn, store)
    results = _race(database, [lambda cur: models.promote(cur, three, store)] * 2)
    assert sorted(type(r).__name__ for r in results) == ["IllegalTransition", "StatusChange"]
    assert database.query("SELECT version FROM model_versions WHERE status = 'champion'") == [(three,)]


def test_rule_set_changes_write_a_detector_version_with_the_models_in_force(
    database: Database, conn: Any, store: DirectoryStore
) -> None:
    (one,) = registered(conn, store)
    in_transaction(conn, lambda cur: models.promote(cur, one, store))
    apply_rules(database, [rule("big", "amount > 100")])
    latest = in_transaction(conn, detector_versions.current)
    rule_set = database.query("SELECT max(version) FROM rule_sets")[0][0]
    assert latest is not None
    assert (latest.rule_set_version, latest.champion_model_version) == (rule_set, one)
    assert latest.comment.startswith(f"rule set {rule_set}")


def test_a_rule_set_change_and_a_promotion_at_once_leave_a_detector_version_with_both(
    database: Database, conn: Any, store: DirectoryStore
) -> None:
    from txguard.storage.rule_sets import apply_rule_set

    (one,) = registered(conn, store)
    document = {"threshold": "0.5", "rules": [rule("big", "amount > 100")]}
    admin = psycopg2.connect(database.admin_url)
    try:
        # The rule set change holds its locks, not yet committed, while the promotion starts.
        with admin, admin.cursor() as cur:
            new_rule_set = apply_rule_set(cur, document, "concurrent")
            results = []
            thread = threading.Thread(
                target=lambda: results.append(_race(database, [lambda c: models.promote(c, one, store)]))
            )
            thread.start()
            thread.join(timeout=1)
            assert thread.is_alive()  # waiting on the detector lock
        thread.join(timeout=30)
    finally:
        admin.close()
    assert isinstance(results[0][0], models.StatusChange)
    latest = in_transaction(conn, detector_versions.current)
    assert latest is not None and (latest.rule_set_version, latest.champion_model_version) == (new_rule_set, one)


def test_migration_0015_seeds_the_first_detector_version_from_the_newest_rule_set(
    pg_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import txguard.migrate
    from tests.conftest import admin_query, scratch_database
    from txguard.migrate import available_migrations, migrate

    every = available_migrations()
    with scratch_database(pg_server, "txguard_detectors") as url:
        monkeypatch.setattr(txguard.migrate, "available_migrations", lambda: [m for m in every if m.version < 15])
        migrate(url)  # seeds rule set 1, with no detector versions to record it in
        admin_query(url, "INSERT INTO rule_sets (version, document) SELECT 2, document FROM rule_sets")
        monkeypatch.setattr(txguard.migrate, "available_migrations", lambda: every)
        migrate(url)
        assert admin_query(
            url,
            "SELECT version, rule_set_version, champion_model_version, shadow_model_versions FROM detector_versions",
        ) == [(1, 2, None, [])]
