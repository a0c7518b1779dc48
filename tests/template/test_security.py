"""Security properties of the deployed stack, read from template.yaml as CloudFormation receives it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.template.stack import (
    ALLOWED_MANAGED_POLICIES,
    api_routes,
    encryption_violations,
    functions_outside_vpc,
    grants,
    iam_statements,
    managed_policies,
    stack,
    unauthenticated_methods,
    wildcard_violations,
)

EXISTING_DATABASE = {
    "ExistingDatabaseEndpoint": "db.cluster-abc.us-east-1.rds.amazonaws.com",
    "ExistingDatabaseIdentifier": "payments",
    "ExistingDatabaseAdminSecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:payments-admin-AbCdEf",
    "ExistingDatabaseSecurityGroupId": "sg-0123456789abcdef0",
    "VpcId": "vpc-0123456789abcdef0",
    "PrivateSubnetIds": "subnet-0aaaaaaaaaaaaaaaa,subnet-0bbbbbbbbbbbbbbbb",
}
API_WITH_OWN_KEY = {"GenerateMode": "api"}
API_WITH_SSM_KEY = {"GenerateMode": "api", "GenerateApiKeyParameter": "/txguard/generator/api-key"}
SCENARIOS = {
    "defaults (new Aurora cluster, new VPC)": {},
    "existing database in a given VPC": EXISTING_DATABASE,
    "generator in api mode, key created by the stack": API_WITH_OWN_KEY,
    "generator in api mode, key in SSM": API_WITH_SSM_KEY,
    "no reserved concurrency": {"ReserveConcurrency": "false"},
}
scenarios = pytest.mark.parametrize("overrides", SCENARIOS.values(), ids=SCENARIOS.keys())


# ------------------------------------------------------------------------------------ API access ----


def test_the_api_serves_exactly_the_documented_routes() -> None:
    assert api_routes(stack()) == {
        "POST /store_data": "IngestFunction",
        "GET /store_data": "IngestFunction",
        "POST /labels": "IngestFunction",
        "GET /labels": "IngestFunction",
        "POST /rules/{rule_id}/snoozes": "IngestFunction",
        "GET /rules/{rule_id}/snoozes": "IngestFunction",
        "DELETE /rules/{rule_id}/snoozes/{kind}/{value}": "IngestFunction",
        "GET /is_fraud/{account}": "DetectFunction",
        "GET /models": "DetectFunction",
        "GET /models/{version}": "DetectFunction",
        "GET /openapi.json": "DetectFunction",
        "POST /lists": "ListsFunction",
        "GET /lists": "ListsFunction",
        "GET /lists/{name}": "ListsFunction",
        "PATCH /lists/{name}": "ListsFunction",
        "POST /lists/{name}/items": "ListsFunction",
        "GET /lists/{name}/items": "ListsFunction",
        "DELETE /lists/{name}/items/{value}": "ListsFunction",
        "POST /lists/{name}/removals": "ListsFunction",
        "GET /lists/{name}/changes": "ListsFunction",
        "GET /console": "ConsoleFunction",
        "POST /console": "ConsoleFunction",
        "GET /console/{proxy+}": "ConsoleFunction",
        "POST /console/{proxy+}": "ConsoleFunction",
    }


# A browser sends no x-api-key: the console's routes are the only ones without one, and the console function
# answers nothing but its sign-in form without a signed session (tests/integration/test_console.py).
CONSOLE_METHODS = [
    "TxguardApi GET /console",
    "TxguardApi GET /console/{proxy+}",
    "TxguardApi POST /console",
    "TxguardApi POST /console/{proxy+}",
]


@scenarios
def test_every_route_but_the_consoles_requires_an_api_key(overrides: dict[str, str]) -> None:
    deployed = stack(overrides)
    assert api_routes(deployed), "no routes found: the check would pass vacuously"
    assert sorted(unauthenticated_methods(deployed)) == CONSOLE_METHODS


def test_a_route_that_opts_out_of_the_api_key_is_caught() -> None:
    def open_one_route(template: dict[str, Any]) -> None:
        event = template["Resources"]["DetectFunction"]["Properties"]["Events"]["OpenApi"]
        event["Properties"]["Auth"] = {"ApiKeyRequired": False}

    assert sorted(unauthenticated_methods(stack(mutate=open_one_route))) == sorted(
        ["TxguardApi GET /openapi.json", *CONSOLE_METHODS]
    )


def test_api_keys_are_rate_limited_by_a_usage_plan_on_the_stage() -> None:
    deployed = stack()
    (plan,) = deployed.of_type("AWS::ApiGateway::UsagePlan").values()
    assert {k: int(v) for k, v in plan["Properties"]["Throttle"].items()} == {"BurstLimit": 200, "RateLimit": 100}
    assert [s["Stage"]["Ref"] for s in plan["Properties"]["ApiStages"]] == ["TxguardApiv1Stage"]


# ---------------------------------------------------------------------------------------- network ----


@pytest.mark.parametrize(
    "overrides",
    [{}, EXISTING_DATABASE, {"ReserveConcurrency": "false"}],
    ids=["defaults", "existing database", "no reserved concurrency"],
)
def test_every_function_runs_in_the_vpc_when_the_generator_stores_directly(overrides: dict[str, str]) -> None:
    deployed = stack(overrides)
    assert set(deployed.functions) == {
        "IngestFunction",
        "DetectFunction",
        "GenerateFunction",
        "MigrateFunction",
        "StreamIngestFunction",
        "ConsoleFunction",
        "TrainFunction",
        "ListsFunction",
    }
    assert functions_outside_vpc(deployed) == []


@pytest.mark.parametrize("overrides", [API_WITH_OWN_KEY, API_WITH_SSM_KEY], ids=["own key", "ssm key"])
def test_in_api_mode_only_the_generator_leaves_the_vpc_and_it_cannot_read_the_database_secret(
    overrides: dict[str, str],
) -> None:
    deployed = stack(overrides)
    assert functions_outside_vpc(deployed) == ["GenerateFunction"]
    generator_grants = grants(deployed, deployed.role_of("GenerateFunction"))
    assert ("secretsmanager:GetSecretValue", "ServiceSecret") not in generator_grants
    assert "AWSLambdaENIManagementAccess" not in managed_policies(deployed, deployed.role_of("GenerateFunction"))
    environment = deployed.environment("GenerateFunction")
    assert environment["TXGUARD_DB_HOST"] == environment["TXGUARD_DB_SECRET_ARN"] == ""


def test_a_function_taken_out_of_the_vpc_is_caught() -> None:
    def drop_vpc(template: dict[str, Any]) -> None:
        del template["Resources"]["DetectFunction"]["Properties"]["VpcConfig"]

    assert functions_outside_vpc(stack(mutate=drop_vpc)) == ["DetectFunction"]


@scenarios
def test_the_database_is_reachable_from_the_proxy_only_and_the_proxy_from_the_functions_only(
    overrides: dict[str, str],
) -> None:
    deployed = stack(overrides)
    ingress = [
        (name, rule)
        for name, group in deployed.of_type("AWS::EC2::SecurityGroup").items()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
    ] + [
        (r["Properties"]["GroupId"], r["Properties"])
        for r in deployed.of_type("AWS::EC2::SecurityGroupIngress").values()
    ]
    assert ingress, "no ingress rules found: the check would pass vacuously"
    for group, rule in ingress:
        assert "CidrIp" not in rule and "CidrIpv6" not in rule, f"{group} admits an address range"
    sources = {str(group): rule["SourceSecurityGroupId"]["Ref"] for group, rule in ingress}
    assert sources.get("ProxySecurityGroup") == "FunctionSecurityGroup"
    database_group = "DatabaseSecurityGroup" if "DatabaseSecurityGroup" in sources else "sg-0123456789abcdef0"
    assert sources[database_group] == "ProxySecurityGroup"


def test_a_created_vpc_has_no_route_to_the_internet() -> None:
    deployed = stack()
    assert deployed.of_type("AWS::EC2::VPC")
    assert not deployed.of_type("AWS::EC2::InternetGateway")
    assert not deployed.of_type("AWS::EC2::NatGateway")
    assert not deployed.of_type("AWS::EC2::Route")
    assert all(s["Properties"]["MapPublicIpOnLaunch"] is False for s in deployed.of_type("AWS::EC2::Subnet").values())


# -------------------------------------------------------------------------------- least privilege ----


@scenarios
def test_no_policy_grants_every_action_or_data_access_on_every_resource(overrides: dict[str, str]) -> None:
    deployed = stack(overrides)
    assert deployed.of_type("AWS::IAM::Role")
    assert wildcard_violations(deployed) == []


def test_a_wildcard_on_a_data_resource_is_caught() -> None:
    def widen(template: dict[str, Any]) -> None:
        statements = template["Resources"]["DetectFunctionRole"]["Properties"]["Policies"][0]["PolicyDocument"]
        statements["Statement"].append({"Effect": "Allow", "Action": "secretsmanager:GetSecretValue", "Resource": "*"})

    assert wildcard_violations(stack(mutate=widen)) == ["DetectFunctionRole: secretsmanager:GetSecretValue on *"]


def test_a_service_wide_action_or_an_unknown_managed_policy_is_caught() -> None:
    def widen(template: dict[str, Any]) -> None:
        role = template["Resources"]["IngestFunctionRole"]["Properties"]
        role["Policies"][0]["PolicyDocument"]["Statement"].append(
            {"Effect": "Allow", "Action": "events:*", "Resource": {"Fn::GetAtt": ["FraudEventBus", "Arn"]}}
        )
        role["ManagedPolicyArns"].append("arn:aws:iam::aws:policy/AmazonRDSDataFullAccess")

    assert wildcard_violations(stack(mutate=widen)) == [
        "IngestFunctionRole: action events:*",
        "IngestFunctionRole: managed policy AmazonRDSDataFullAccess",
    ]


def test_managed_policies_are_only_those_without_data_access() -> None:
    deployed = stack()
    used = {p for role in deployed.of_type("AWS::IAM::Role") for p in managed_policies(deployed, role)}
    assert used == set(ALLOWED_MANAGED_POLICIES)


def test_each_function_has_a_role_of_its_own() -> None:
    deployed = stack()
    roles = {name: deployed.role_of(name) for name in deployed.functions}
    assert len(set(roles.values())) == len(roles) == 8
    for role in roles.values():
        trust = deployed.properties(role)["AssumeRolePolicyDocument"]["Statement"]
        assert [s["Principal"] for s in trust] == [{"Service": "lambda.amazonaws.com"}]


_LOGS = ("logs:CreateLogStream", "logs:PutLogEvents")
_SECRET_KEY = ("kms:Decrypt", "DataKey.Arn")
# Every function that decides reads the champion's and the shadows' artifacts (decrypted through S3 by the same key).
_MODELS = ("s3:GetObject", "${ModelBucket.Arn}/models/*")


def _logs(group: str) -> set[tuple[str, str]]:
    return {(action, f"{group}.Arn") for action in _LOGS}


# The stream function: the database secret, FraudDetected events, and the stack's key for its queues and stream.
_STREAM_COMMON = {
    ("secretsmanager:GetSecretValue", "ServiceSecret"),
    _SECRET_KEY,
    _MODELS,
    ("kms:GenerateDataKey", "DataKey.Arn"),
    ("events:PutEvents", "FraudEventBus.Arn"),
}
_KINESIS_READ = (
    "kinesis:DescribeStream",
    "kinesis:DescribeStreamSummary",
    "kinesis:GetRecords",
    "kinesis:GetShardIterator",
    "kinesis:ListShards",
)


@pytest.mark.parametrize(
    ("overrides", "function", "expected"),
    [
        (
            {},
            "IngestFunction",
            _logs("IngestLogGroup")
            | {
                ("secretsmanager:GetSecretValue", "ServiceSecret"),
                _SECRET_KEY,
                ("events:PutEvents", "FraudEventBus.Arn"),
                _MODELS,
            },
        ),
        (
            {},
            "DetectFunction",
            _logs("DetectLogGroup") | {("secretsmanager:GetSecretValue", "ServiceSecret"), _SECRET_KEY, _MODELS},
        ),
        (
            {},
            "ListsFunction",
            _logs("ListsLogGroup") | {("secretsmanager:GetSecretValue", "ServiceSecret"), _SECRET_KEY},
        ),
        (
            {},
            "GenerateFunction",
            _logs("GenerateLogGroup")
            | {
                ("sqs:SendMessage", "GenerateDeadLetterQueue.Arn"),
                ("kms:GenerateDataKey", "DataKey.Arn"),
                _SECRET_KEY,
                ("secretsmanager:GetSecretValue", "ServiceSecret"),
                ("events:PutEvents", "FraudEventBus.Arn"),
                _MODELS,
            },
        ),
        (
            API_WITH_SSM_KEY,
            "GenerateFunction",
            _logs("GenerateLogGroup")
            | {
                ("sqs:SendMessage", "GenerateDeadLetterQueue.Arn"),
                ("kms:GenerateDataKey", "DataKey.Arn"),
                _SECRET_KEY,
                ("ssm:GetParameter", "arn:aws:ssm:us-east-1:123456789012:parameter/txguard/generator/api-key"),
            },
        ),
        (
            API_WITH_OWN_KEY,
            "GenerateFunction",
            _logs("GenerateLogGroup")
            | {
                ("sqs:SendMessage", "GenerateDeadLetterQueue.Arn"),
                ("kms:GenerateDataKey", "DataKey.Arn"),
                _SECRET_KEY,
                ("secretsmanager:GetSecretValue", "GenerateApiKeySecret"),
            },
        ),
        (
            {},
            "MigrateFunction",
            _logs("MigrateLogGroup")
            | {
                ("secretsmanager:GetSecretValue", "ServiceSecret"),
                ("secretsmanager:GetSecretValue", "DatabaseCluster.MasterUserSecret.SecretArn"),
                _SECRET_KEY,
            },
        ),
        (
            {},
            "StreamIngestFunction",
            _logs("StreamIngestLogGroup")
            | _STREAM_COMMON
            | {
                ("sqs:ReceiveMessage", "TransactionQueue.Arn"),
                ("sqs:DeleteMessage", "TransactionQueue.Arn"),
                ("sqs:GetQueueAttributes", "TransactionQueue.Arn"),
                ("sqs:SendMessage", "TransactionDeadLetterQueue.Arn"),
            },
        ),
        (
            {"StreamSqsEnabled": "false", "StreamKinesisEnabled": "true"},
            "StreamIngestFunction",
            _logs("StreamIngestLogGroup")
            | _STREAM_COMMON
            | {(action, "TransactionStream.Arn") for action in _KINESIS_READ}
            | {("sqs:SendMessage", "StreamFailureQueue.Arn")},
        ),
        (
            {},
            "ConsoleFunction",
            _logs("ConsoleLogGroup")
            | {
                ("secretsmanager:GetSecretValue", "ServiceSecret"),
                ("secretsmanager:GetSecretValue", "ConsoleSigninSecret"),
                ("secretsmanager:GetSecretValue", "ConsoleSessionSecret"),
                _SECRET_KEY,
                _MODELS,
                ("lambda:InvokeFunction", "TrainFunction.Arn"),  # the Models page's Train
            },
        ),
        (
            {},
            "TrainFunction",
            _logs("TrainLogGroup")
            | {
                ("secretsmanager:GetSecretValue", "ServiceSecret"),
                _SECRET_KEY,
                _MODELS,
                ("s3:PutObject", "${ModelBucket.Arn}/models/*"),
                ("kms:GenerateDataKey", "DataKey.Arn"),
                ("sqs:SendMessage", "TrainDeadLetterQueue.Arn"),
            },
        ),
    ],
    ids=[
        "ingest",
        "detect",
        "lists",
        "generate direct",
        "generate api ssm key",
        "generate api own key",
        "migrate",
        "stream ingest sqs",
        "stream ingest kinesis",
        "console",
        "train",
    ],
)
def test_each_role_allows_exactly_what_its_function_calls(
    overrides: dict[str, str], function: str, expected: set[tuple[str, str]]
) -> None:
    deployed = stack(overrides)
    assert grants(deployed, deployed.role_of(function)) == expected


def test_key_use_is_limited_to_the_services_that_decrypt_on_a_functions_behalf() -> None:
    deployed = stack()
    for name, statement in _statements_with_action(deployed, "kms:Decrypt"):
        via = statement["Condition"]["StringEquals"]["kms:ViaService"]
        assert via in {
            "secretsmanager.us-east-1.amazonaws.com",
            "sqs.us-east-1.amazonaws.com",
            "kinesis.us-east-1.amazonaws.com",
            "s3.us-east-1.amazonaws.com",  # model artifacts
        }, name


def _statements_with_action(deployed: Any, action: str) -> list[tuple[str, dict[str, Any]]]:
    found = [
        (name, statement)
        for name, statement in iam_statements(deployed)
        if action in (statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]])
    ]
    assert found, f"no statement allows {action}: the check would pass vacuously"
    return found


def test_fraud_events_go_to_the_stacks_own_bus() -> None:
    deployed = stack()
    assert deployed.environment("IngestFunction")["TXGUARD_EVENT_BUS_NAME"] == {"Fn::GetAtt": ["FraudEventBus", "Name"]}
    statements = _statements_with_action(deployed, "events:PutEvents")
    assert {name for name, _ in statements} == {
        "IngestFunctionRole",
        "GenerateFunctionRole",
        "StreamIngestFunctionRole",
    }
    assert all(s["Resource"] == {"Fn::GetAtt": ["FraudEventBus", "Arn"]} for _, s in statements)


# ------------------------------------------------------------------------------- secrets and keys ----


@scenarios
def test_no_secret_value_is_in_a_function_environment(overrides: dict[str, str]) -> None:
    deployed = stack(overrides)
    for name in deployed.functions:
        env = deployed.environment(name)
        assert not [k for k in env if "PASSWORD" in k or k.endswith("_KEY")], name
        if env.get("TXGUARD_DB_SECRET_ARN"):
            secret = env["TXGUARD_DB_SECRET_ARN"]["Ref"]
            assert deployed.resources[secret]["Type"] == "AWS::SecretsManager::Secret"


def test_the_service_password_is_generated_by_secrets_manager() -> None:
    secret = stack().properties("ServiceSecret")
    assert secret["GenerateSecretString"]["GenerateStringKey"] == "password"
    assert "SecretString" not in secret


# ------------------------------------------------------------------------------------- encryption ----


@scenarios
def test_data_is_encrypted_at_rest_with_the_stacks_key_and_in_transit_with_verified_tls(
    overrides: dict[str, str],
) -> None:
    deployed = stack(overrides)
    assert deployed.of_type("AWS::SecretsManager::Secret") and deployed.of_type("AWS::Logs::LogGroup")
    assert encryption_violations(deployed) == []


def test_unencrypted_storage_or_unverified_tls_is_caught() -> None:
    def weaken(template: dict[str, Any]) -> None:
        template["Resources"]["DatabaseCluster"]["Properties"]["StorageEncrypted"] = False
        template["Resources"]["DatabaseProxy"]["Properties"]["RequireTLS"] = False
        template["Globals"]["Function"]["Environment"]["Variables"]["TXGUARD_DB_SSLMODE"] = "require"

    found = encryption_violations(stack(mutate=weaken))
    assert "DatabaseCluster: storage not encrypted with the stack's key" in found
    assert "DatabaseProxy: proxy accepts connections without TLS" in found
    assert "IngestFunction: database connection does not verify the server certificate" in found


def test_the_fraud_event_bus_is_encrypted_with_the_stacks_key_usable_by_eventbridge_for_that_bus_only() -> None:
    deployed = stack()
    assert deployed.properties("FraudEventBus")["KmsKeyIdentifier"] == {"Fn::GetAtt": ["DataKey", "Arn"]}
    statement, rules = [
        s
        for s in deployed.properties("DataKey")["KeyPolicy"]["Statement"]
        if s["Principal"] == {"Service": "events.amazonaws.com"}
    ]
    bus_name = deployed.properties("FraudEventBus")["Name"]
    bus_arn = "arn:aws:events:us-east-1:123456789012:event-bus/" + bus_name
    assert statement["Condition"]["StringEquals"]["aws:SourceArn"] in (bus_arn, {"Fn::Sub": bus_arn})
    assert sorted(statement["Action"]) == ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"]
    # The rules on that bus (and only those) may encrypt what they publish to the encrypted alert topic.
    rule_arns = "arn:aws:events:us-east-1:123456789012:rule/" + bus_name + "/*"
    assert rules["Condition"]["ArnLike"]["aws:SourceArn"] in (rule_arns, {"Fn::Sub": rule_arns})
    assert rules["Condition"]["StringEquals"] == {"aws:SourceAccount": "123456789012"} or rules["Condition"][
        "StringEquals"
    ] == {"aws:SourceAccount": {"Ref": "AWS::AccountId"}}
    assert sorted(rules["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey"]


def test_an_event_bus_on_an_aws_owned_key_is_caught() -> None:
    def weaken(template: dict[str, Any]) -> None:
        del template["Resources"]["FraudEventBus"]["Properties"]["KmsKeyIdentifier"]

    assert "FraudEventBus: no KMS key" in encryption_violations(stack(mutate=weaken))


def test_functions_verify_the_proxy_certificate_against_a_ca_bundle() -> None:
    env = stack().environment("DetectFunction")
    assert env["TXGUARD_DB_SSLMODE"] == "verify-full"
    assert env["TXGUARD_DB_SSLROOTCERT"].startswith("/")
    assert env["TXGUARD_DB_HOST"] == {"Fn::GetAtt": ["DatabaseProxy", "Endpoint"]}
