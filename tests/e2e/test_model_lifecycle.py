"""A model's life on a running `txguard local`, with no restart: registered, shadowed (decisions record its score),
promoted (it scores and flags), rolled back (the rules decide alone again). Every decision's detector version is
checked: each is the version in force when it was taken, picked up within the cache period."""

from __future__ import annotations

import itertools
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from tests.conftest import scratch_database
from tests.e2e.conftest import LocalService, start_local, stop_local
from tests.model_fixtures import register, trained_artifact
from txguard.models.artifact_store import DirectoryStore
from txguard.storage import detector_versions, models
from txguard_dev.local.postgres import Server

pytestmark = pytest.mark.e2e

T0 = 1_700_000_000_000
# TXGUARD_RULES_CACHE_SECONDS in the template (RulesCacheSeconds): a change is picked up within it.
CACHE_SECONDS = 10


@pytest.fixture
def lifecycle(pg_server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[LocalService, str]]:
    monkeypatch.setenv("TXGUARD_MODEL_DIR", str(tmp_path / "artifacts"))
    with scratch_database(pg_server, "txguard_lifecycle") as url:
        service = start_local([f"--api-key={secrets.token_urlsafe(16)}"], url, tmp_path / "local.log")
        try:
            yield service, url
        finally:
            assert stop_local(service) == 0, service.log()


def admin(url: str, work: Callable[[Any], Any]) -> Any:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            return work(cur)
    finally:
        conn.close()


_ids = itertools.count(1)


def post(service: LocalService, amount: str) -> dict[str, Any]:
    n = next(_ids)
    transaction = {"account_id": 7, "transaction_id": n, "timestamp": T0 + n * 60_000, "amount": amount}
    response = service.request("POST", "/store_data", body=transaction)
    assert response.status == 201, response.body
    decision: dict[str, Any] = response.body["results"][0]["decision"]
    return decision


def until_detector(service: LocalService, before: int, after: int, amount: str = "25.00") -> dict[str, Any]:
    """Post until a decision is taken by detector version `after`; every decision on the way is by `before` or
    `after`, and none by `before` once `after` decided one. Returns the first decision of `after`."""
    deadline = time.monotonic() + CACHE_SECONDS + 15
    while True:
        decision = post(service, amount)
        assert decision["detector_version"] in (before, after), decision
        if decision["detector_version"] == after:
            return decision
        assert time.monotonic() < deadline, f"detector version {after} was not picked up within the cache period"
        time.sleep(0.5)


def test_shadow_then_champion_then_rollback_with_no_restart(
    lifecycle: tuple[LocalService, str], tmp_path: Path
) -> None:
    service, url = lifecycle
    pid = service.process.pid
    store = DirectoryStore(tmp_path / "artifacts")
    first = admin(url, detector_versions.current)
    assert first is not None and first.champion_model_version is None

    plain = post(service, "25.00")
    assert plain["detector_version"] == first.version and plain["model_score"] is None

    version = admin(url, lambda cur: register(cur, tmp_path / "artifacts", trained_artifact(threshold=0.5)))

    # Shadow: scored and recorded, never deciding.
    shadowed = admin(url, lambda cur: models.set_shadow(cur, version, store)).detector
    decision = until_detector(service, first.version, shadowed.version, amount="850.00")
    assert set(decision["shadow_scores"]) == {str(version)} and decision["shadow_scores"][str(version)] > 0.5
    assert decision["model_score"] is None and decision["model_version"] is None
    assert not any(r["mode"] == "model" for r in decision["reasons"])

    # Champion: it scores every decision and flags above its threshold, with its explanation.
    promoted = admin(url, lambda cur: models.promote(cur, version, store)).detector
    until_detector(service, shadowed.version, promoted.version)
    large = post(service, "850.00")
    assert large["detector_version"] == promoted.version
    assert large["model_version"] == version and large["model_score"] > 0.5 and large["fraud"] is True
    (reason,) = [r for r in large["reasons"] if r["mode"] == "model"]
    assert (
        reason["rule_id"] == f"model:{version}" and "amount 850.00 EUR raised the model score" in reason["explanation"]
    )
    small = post(service, "12.00")
    assert small["detector_version"] == promoted.version and small["model_score"] < 0.5

    view = service.request("GET", "/is_fraud/7")
    assert view.status == 200
    flagged = [e for e in view.body["events"] if e["model_version"] == version]
    assert flagged and flagged[0]["detector_version"] == promoted.version and flagged[0]["model_score"] > 0.5

    # Rollback: the champion replaced none, so the rules decide alone again.
    rolled_back = admin(url, lambda cur: models.rollback(cur, store)).detector
    assert rolled_back.champion_model_version is None
    until_detector(service, promoted.version, rolled_back.version)
    after = post(service, "850.00")
    assert after["detector_version"] == rolled_back.version
    assert after["model_score"] is None and after["model_version"] is None

    # Every stored decision records the detector version that took it, in the order they were taken.
    stored = admin(
        url, lambda cur: (cur.execute("SELECT detector_version FROM transactions ORDER BY ts"), cur.fetchall())[1]
    )
    versions = [v for (v,) in stored]
    assert None not in versions and versions == sorted(versions)
    assert set(versions) == {first.version, shadowed.version, promoted.version, rolled_back.version}
    assert service.process.pid == pid and service.process.poll() is None
