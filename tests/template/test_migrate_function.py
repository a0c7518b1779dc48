"""functions/migrate: the custom resource that migrates the database while `sam deploy` runs.

Real PostgreSQL for the database, moto for Secrets Manager, and a local HTTP listener in place of the
presigned S3 URL CloudFormation waits on.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import psycopg2
import pytest

from tests.conftest import admin_query
from tests.template.stack import ROOT
from txguard import deploy_migrations
from txguard.migrate import service_group_role, service_login_role
from txguard_dev.local.postgres import Server, create_database, drop_database

pytestmark = pytest.mark.integration

PASSWORD_OF = "SELECT rolpassword FROM pg_authid WHERE rolname = %s"
STACK_ID = "arn:aws:cloudformation:us-east-1:123456789012:stack/txguard/1"


def _load_app() -> ModuleType:
    spec = importlib.util.spec_from_file_location("txguard_migrate_app", ROOT / "functions" / "migrate" / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Context:
    remaining_s: float = 60.0
    function_name: str = "MigrateFunction"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:MigrateFunction"
    aws_request_id: str = "request-1"
    log_stream_name: str = "2026/11/21/[$LATEST]abc"

    def get_remaining_time_in_millis(self) -> int:
        return int(self.remaining_s * 1000)


@dataclass
class CloudFormation:
    """Stands in for the presigned URL: records every answer PUT to it."""

    url: str
    answers: list[dict[str, Any]] = field(default_factory=list)

    def request(self, request_type: str, physical_id: str | None = None) -> dict[str, Any]:
        event = {
            "RequestType": request_type,
            "ResponseURL": self.url,
            "StackId": STACK_ID,
            "RequestId": f"{request_type}-1",
            "LogicalResourceId": "Migrations",
            "ResourceType": "Custom::TxguardMigrations",
            "ResourceProperties": {},
        }
        if physical_id is not None:
            event["PhysicalResourceId"] = physical_id
        return event


@pytest.fixture
def cloudformation() -> Iterator[CloudFormation]:
    answers: list[dict[str, Any]] = []

    class Listener(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            answers.append({"content_type": self.headers.get("Content-Type"), **json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield CloudFormation(f"http://127.0.0.1:{server.server_address[1]}/response?X-Amz-Signature=x", answers)
    finally:
        server.shutdown()
        server.server_close()


@dataclass(frozen=True)
class Deployment:
    app: ModuleType
    database: str
    admin_url: str

    @property
    def login(self) -> str:
        return service_login_role(self.database)


@pytest.fixture
def deployment(pg_server: Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[Deployment]:
    """A fresh empty database, its secrets in (mocked) Secrets Manager, the function's environment set."""
    from aws_lambda_powertools.utilities import parameters
    from moto import mock_aws

    server = urlsplit(pg_server.admin_url)
    if not server.hostname:
        pytest.skip("the migrate function connects over TCP; this PostgreSQL listens on a socket only")
    database = create_database(pg_server, prefix="txguard_cr_test")
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "TXGUARD_DB_HOST": server.hostname,
        "TXGUARD_DB_PORT": str(server.port or 5432),
        "TXGUARD_DB_NAME": database,
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("DATABASE_URL", "TXGUARD_DB_SSLMODE", "TXGUARD_DB_SSLROOTCERT"):
        monkeypatch.delenv(name, raising=False)
    parameters.clear_caches()
    with mock_aws():
        import boto3

        secrets = boto3.client("secretsmanager")
        admin = secrets.create_secret(
            Name="admin", SecretString=json.dumps({"username": server.username, "password": server.password or "x"})
        )
        service = secrets.create_secret(
            Name="service",
            SecretString=json.dumps({"username": service_login_role(database), "password": "s3rvice-Passw0rd"}),
        )
        monkeypatch.setenv("TXGUARD_MIGRATE_ADMIN_SECRET_ARN", admin["ARN"])
        monkeypatch.setenv("TXGUARD_DB_SECRET_ARN", service["ARN"])
        try:
            yield Deployment(_load_app(), database, pg_server.database_url(database))
        finally:
            parameters.clear_caches()
            drop_database(pg_server, database)


def _applied_versions(admin_url: str) -> list[int]:
    conn = psycopg2.connect(admin_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
            (exists,) = cur.fetchone()
            if not exists:
                return []
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            return [v for (v,) in cur.fetchall()]
    finally:
        conn.close()


def test_create_migrates_the_database_and_answers_success(
    deployment: Deployment, cloudformation: CloudFormation
) -> None:
    deployment.app.lambda_handler(cloudformation.request("Create"), Context())

    (answer,) = cloudformation.answers
    assert answer["Status"] == "SUCCESS", answer["Reason"]
    applied = _applied_versions(deployment.admin_url)
    assert applied and answer["Data"]["Applied"].count(",") == len(applied) - 1
    assert answer["PhysicalResourceId"] == f"txguard-migrations:127.0.0.1/{deployment.database}"
    assert (answer["StackId"], answer["RequestId"], answer["LogicalResourceId"]) == (STACK_ID, "Create-1", "Migrations")
    # The presigned URL is signed for an empty content type.
    assert answer["content_type"] == ""


def test_the_service_role_gets_the_password_held_in_its_secret(
    deployment: Deployment, cloudformation: CloudFormation
) -> None:
    deployment.app.lambda_handler(cloudformation.request("Create"), Context())

    conn = psycopg2.connect(deployment.admin_url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT rolpassword IS NOT NULL, rolcanlogin FROM pg_authid WHERE rolname = %s", (deployment.login,)
            )
            assert cur.fetchone() == (True, True)
            cur.execute(
                "SELECT pg_has_role(%s, %s, 'member')", (deployment.login, service_group_role(deployment.database))
            )
            assert cur.fetchone() == (True,)
    finally:
        conn.close()


def test_the_password_is_stored_as_a_scram_verifier_never_in_clear(
    deployment: Deployment, cloudformation: CloudFormation
) -> None:
    deployment.app.lambda_handler(cloudformation.request("Create"), Context())

    ((stored,),) = admin_query(deployment.admin_url, PASSWORD_OF, (deployment.login,))
    assert stored.startswith("SCRAM-SHA-256$4096:") and "s3rvice-Passw0rd" not in stored
    service = psycopg2.connect(deployment.admin_url, user=deployment.login, password="s3rvice-Passw0rd")
    service.close()


def test_a_second_stack_with_the_first_stacks_login_fails_and_leaves_it_alone(
    deployment: Deployment, cloudformation: CloudFormation, pg_server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two stacks on one server: the second one's deploy is refused, not handed the first one's login."""
    import boto3
    from aws_lambda_powertools.utilities import parameters

    deployment.app.lambda_handler(cloudformation.request("Create"), Context())
    before = admin_query(deployment.admin_url, PASSWORD_OF, (deployment.login,))
    second = create_database(pg_server, prefix="txguard_cr_test")
    try:
        secret = boto3.client("secretsmanager").create_secret(
            Name="second-service",
            SecretString=json.dumps({"username": deployment.login, "password": "an0ther-Passw0rd"}),
        )
        monkeypatch.setenv("TXGUARD_DB_NAME", second)
        monkeypatch.setenv("TXGUARD_DB_SECRET_ARN", secret["ARN"])
        parameters.clear_caches()

        deployment.app.lambda_handler(cloudformation.request("Create"), Context())

        answer = cloudformation.answers[1]
        assert answer["Status"] == "FAILED"
        assert "MigrationError" in answer["Reason"] and deployment.login in answer["Reason"]
        assert repr(deployment.database) in answer["Reason"]
        assert _applied_versions(pg_server.database_url(second)) == []
        assert admin_query(deployment.admin_url, PASSWORD_OF, (deployment.login,)) == before
    finally:
        drop_database(pg_server, second)


def test_an_update_with_nothing_new_applies_nothing_and_succeeds(
    deployment: Deployment, cloudformation: CloudFormation
) -> None:
    deployment.app.lambda_handler(cloudformation.request("Create"), Context())
    physical_id = cloudformation.answers[0]["PhysicalResourceId"]

    deployment.app.lambda_handler(cloudformation.request("Update", physical_id), Context())

    update = cloudformation.answers[1]
    assert update["Status"] == "SUCCESS", update["Reason"]
    assert update["Data"] == {"Applied": "none"}
    assert update["PhysicalResourceId"] == physical_id


def test_delete_succeeds_and_leaves_the_data_where_it_is(
    deployment: Deployment, cloudformation: CloudFormation
) -> None:
    deployment.app.lambda_handler(cloudformation.request("Create"), Context())
    before = _applied_versions(deployment.admin_url)

    deployment.app.lambda_handler(cloudformation.request("Delete", "txguard-migrations:old"), Context())

    delete = cloudformation.answers[1]
    assert delete["Status"] == "SUCCESS"
    assert delete["PhysicalResourceId"] == "txguard-migrations:old"
    assert _applied_versions(deployment.admin_url) == before != []


def test_delete_needs_no_database(
    deployment: Deployment, cloudformation: CloudFormation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stack whose database never came up must still be deletable."""
    monkeypatch.setenv("TXGUARD_DB_PORT", "1")

    deployment.app.lambda_handler(cloudformation.request("Delete", "txguard-migrations:x"), Context())

    assert [a["Status"] for a in cloudformation.answers] == ["SUCCESS"]


def test_an_unreachable_database_fails_the_deploy_before_the_function_times_out(
    deployment: Deployment, cloudformation: CloudFormation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TXGUARD_DB_PORT", "1")

    deployment.app.lambda_handler(cloudformation.request("Create"), Context(remaining_s=25))

    (answer,) = cloudformation.answers
    assert answer["Status"] == "FAILED"
    assert "DatabaseUnavailable" in answer["Reason"] or "OperationalError" in answer["Reason"]
    assert "2026/11/21/[$LATEST]abc" in answer["Reason"]
    assert "s3rvice-Passw0rd" not in json.dumps(answer)


def test_a_missing_administrator_secret_fails_the_deploy_with_the_reason(
    deployment: Deployment, cloudformation: CloudFormation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TXGUARD_MIGRATE_ADMIN_SECRET_ARN")

    deployment.app.lambda_handler(cloudformation.request("Create"), Context())

    (answer,) = cloudformation.answers
    assert answer["Status"] == "FAILED"
    assert "TXGUARD_MIGRATE_ADMIN_SECRET_ARN is not set" in answer["Reason"]
    assert _applied_versions(deployment.admin_url) == []


def test_a_run_that_outlives_its_time_answers_failed_once(
    deployment: Deployment, cloudformation: CloudFormation
) -> None:
    answer = deploy_migrations.CloudFormationAnswer(cloudformation.request("Create"), "txguard-migrations:x", "stream")

    answer.failed("timed out")
    answer.succeeded("finished after all")

    assert [a["Status"] for a in cloudformation.answers] == ["FAILED"]


@pytest.mark.parametrize(
    ("overrides", "login"),
    [
        ({}, "txguard_app"),
        ({"DatabaseName": "staging"}, "staging_app"),
        ({"DatabaseName": "staging", "DatabaseServiceRole": "fraud_svc"}, "fraud_svc"),
    ],
)
def test_the_stacks_login_defaults_to_its_databases_own(overrides: dict[str, str], login: str) -> None:
    """Two stacks on one server have two databases, so by default two logins: neither is refused."""
    from tests.template.stack import stack

    deployed = stack(overrides)

    secret = deployed.properties("ServiceSecret")["GenerateSecretString"]["SecretStringTemplate"]
    assert json.loads(secret) == {"username": login}
    assert login == (
        overrides.get("DatabaseServiceRole") or service_login_role(overrides.get("DatabaseName", "txguard"))
    )
