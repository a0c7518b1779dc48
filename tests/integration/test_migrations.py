"""Migrations: applied once each, safe to run again and from several processes at once."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import scratch_database
from txguard.local.postgres import Server
from txguard.migrate import available_migrations, migrate
from txguard.settings import SERVICE_ROLE

pytestmark = pytest.mark.integration


def test_concurrent_migrate_runs_apply_each_migration_exactly_once(pg_server: Server) -> None:
    with scratch_database(pg_server, "txguard_migrate") as url:
        applied: list[list[int]] = []
        errors: list[BaseException] = []

        def run() -> None:
            try:
                applied.append([m.version for m in migrate(url, SERVICE_ROLE)])
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=run) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        assert errors == []
        every_version = [m.version for m in available_migrations()]
        assert sorted(v for versions in applied for v in versions) == every_version
        assert migrate(url, SERVICE_ROLE) == []  # and once more: nothing to do

        import psycopg2

        conn = psycopg2.connect(url)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT version FROM schema_migrations ORDER BY version")
                assert [row[0] for row in cur.fetchall()] == every_version
                cur.execute("SELECT count(*) FROM rule_sets")
                assert cur.fetchone() == (1,)  # the default rule set, seeded once
                cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (SERVICE_ROLE,))
                assert cur.fetchone() == (False,)
        finally:
            conn.close()
