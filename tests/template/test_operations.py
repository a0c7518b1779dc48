"""Operational properties of the stack: migrations at deploy time, connection budget, logs, traces, alarms."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.template.stack import load_sam_template, log_groups_left_to_aws, reference, stack

TOPIC = "arn:aws:sns:us-east-1:123456789012:oncall"
# max_connections of Aurora PostgreSQL Serverless v2 with a capacity range of 0.5-1 ACU, the smallest
# ceiling the template allows (DatabaseMaxCapacity >= 1); larger ceilings only raise it. docs/deploy.md.
MAX_CONNECTIONS_AT_ONE_ACU = 189


def test_every_parameter_has_a_default() -> None:
    """`sam deploy --guided` offers them and the local runtime resolves the template with them."""
    parameters = load_sam_template()["Parameters"]
    assert parameters
    assert [name for name, p in parameters.items() if "Default" not in p] == []


# ------------------------------------------------------------------------------------- migrations ----


@pytest.mark.parametrize(
    "overrides", [{}, {"ExistingDatabaseEndpoint": "db.example.internal"}], ids=["new", "existing"]
)
def test_migrations_run_during_the_deploy_once_the_proxy_has_its_target(overrides: dict[str, str]) -> None:
    deployed = stack(overrides)
    (name,) = deployed.of_type("Custom::TxguardMigrations")
    migrations = deployed.properties(name)
    assert migrations["ServiceToken"] == {"Fn::GetAtt": ["MigrateFunction", "Arn"]}
    target = "ProxyTargetGroup" if not overrides else "ExistingProxyTargetGroup"
    assert migrations["ProxyTarget"] == {"Ref": target}
    assert int(migrations["ServiceTimeout"]) > int(deployed.properties("MigrateFunction")["Timeout"])


def test_a_new_layer_version_makes_cloudformation_run_the_migrations_again() -> None:
    deployed = stack()
    (layer,) = deployed.of_type("AWS::Lambda::LayerVersion")
    assert deployed.properties("Migrations")["LayerVersion"] == {"Ref": layer}
    assert deployed.properties("MigrateFunction")["Layers"] == [{"Ref": layer}]


def test_the_migrate_function_reaches_the_database_as_its_administrator_through_the_proxy() -> None:
    deployed = stack()
    env = deployed.environment("MigrateFunction")
    assert env["TXGUARD_MIGRATE_ADMIN_SECRET_ARN"] == {"Fn::GetAtt": ["DatabaseCluster", "MasterUserSecret.SecretArn"]}
    registered = [a["SecretArn"] for a in deployed.properties("DatabaseProxy")["Auth"]]
    assert env["TXGUARD_MIGRATE_ADMIN_SECRET_ARN"] in registered
    assert env["TXGUARD_DB_SECRET_ARN"] in registered


def test_deleting_the_stack_keeps_the_data() -> None:
    deployed = stack()
    assert deployed.resources["DatabaseCluster"]["DeletionPolicy"] == "Snapshot"
    assert deployed.resources["DatabaseCluster"]["UpdateReplacePolicy"] == "Snapshot"
    # The snapshot stays readable only while its key exists.
    assert deployed.resources["DataKey"]["DeletionPolicy"] == "Retain"
    assert deployed.properties("DatabaseCluster")["DeletionProtection"] == "true"


# ------------------------------------------------------------------------------ connection budget ----


def _reserved(deployed: Any) -> dict[str, int]:
    return {
        name: int(f["Properties"]["ReservedConcurrentExecutions"])
        for name, f in deployed.functions.items()
        if "ReservedConcurrentExecutions" in f["Properties"]
    }


def test_all_functions_together_fit_in_the_proxys_connection_budget_at_the_smallest_database() -> None:
    deployed = stack()
    reserved = _reserved(deployed)
    assert set(reserved) == set(deployed.functions)
    assert int(load_sam_template()["Parameters"]["DatabaseMaxCapacity"]["MinValue"]) == 1
    (target,) = deployed.of_type("AWS::RDS::DBProxyTargetGroup").values()
    percent = int(target["Properties"]["ConnectionPoolConfigurationInfo"]["MaxConnectionsPercent"])
    # Every execution environment holds one connection; in the worst case each pins one database connection.
    assert sum(reserved.values()) <= MAX_CONNECTIONS_AT_ONE_ACU * percent // 100


def test_reserving_concurrency_can_be_turned_off_for_accounts_with_a_small_quota() -> None:
    assert _reserved(stack({"ReserveConcurrency": "false"})) == {}


def test_the_generator_and_the_migrations_never_run_twice_at_once() -> None:
    reserved = _reserved(stack())
    assert reserved["GenerateFunction"] == reserved["MigrateFunction"] == 1


# ----------------------------------------------------------------------------------- logs, traces ----


def test_every_function_logs_json_to_a_log_group_of_its_own_with_a_retention() -> None:
    deployed = stack()
    groups = []
    for name, function in deployed.functions.items():
        logging = function["Properties"]["LoggingConfig"]
        assert logging["LogFormat"] == "JSON", name
        group = reference(logging["LogGroup"])
        assert deployed.resources[group]["Type"] == "AWS::Logs::LogGroup"
        assert int(deployed.properties(group)["RetentionInDays"]) > 0
        groups.append(group)
    assert len(set(groups)) == len(groups) == 8


@pytest.mark.parametrize("overrides", [{}, {"DatabaseReaderInstance": "true"}], ids=["writer", "writer and reader"])
def test_the_databases_log_and_the_apis_execution_log_are_ours_with_key_and_retention(
    overrides: dict[str, str],
) -> None:
    deployed = stack(overrides)
    assert deployed.properties("DatabaseCluster")["EnableCloudwatchLogsExports"] == ["postgresql"]
    assert log_groups_left_to_aws(deployed) == []
    for group in ("DatabaseLogGroup", "ApiExecutionLogGroup"):
        assert deployed.properties(group)["KmsKeyId"] == {"Fn::GetAtt": ["DataKey", "Arn"]}


def test_a_log_group_left_to_aws_or_created_too_late_is_caught() -> None:
    def weaken(template: dict[str, Any]) -> None:
        del template["Resources"]["ApiExecutionLogGroup"]
        del template["Resources"]["DatabaseWriter"]["DependsOn"]

    found = log_groups_left_to_aws(stack(mutate=weaken))
    assert (
        "TxguardApiv1Stage's execution log: log group API-Gateway-Execution-Logs_${TxguardApi}/v1 is left to AWS"
        in found
    )
    assert "DatabaseCluster's postgresql log: DatabaseWriter may write before DatabaseLogGroup exists" in found


def test_functions_and_the_api_are_traced_with_x_ray() -> None:
    deployed = stack()
    assert all(f["Properties"]["TracingConfig"] == {"Mode": "Active"} for f in deployed.functions.values())
    (stage,) = deployed.of_type("AWS::ApiGateway::Stage").values()
    assert stage["Properties"]["TracingEnabled"] is True
    assert stage["Properties"]["AccessLogSetting"]["DestinationArn"]


def test_a_failed_scheduled_generation_lands_in_a_dead_letter_queue() -> None:
    deployed = stack()
    generator = deployed.properties("GenerateFunction")
    assert generator["DeadLetterConfig"] == {"TargetArn": {"Fn::GetAtt": ["GenerateDeadLetterQueue", "Arn"]}}
    (rule,) = schedules_of(deployed, "GenerateFunction")
    assert rule["ScheduleExpression"] == "rate(5 minutes)"


def schedules_of(deployed: Any, function: str) -> list[dict[str, Any]]:
    """The properties of the EventBridge rules that invoke `function`."""
    return [
        rule["Properties"]
        for rule in deployed.of_type("AWS::Events::Rule").values()
        if rule["Properties"]["Targets"][0]["Arn"] == {"Fn::GetAtt": [function, "Arn"]}
    ]


def test_alerts_left_in_the_outbox_are_drained_every_minute_by_the_ingest_function() -> None:
    deployed = stack()
    (rule,) = schedules_of(deployed, "IngestFunction")
    assert rule["ScheduleExpression"] == "rate(1 minute)"
    assert rule.get("State", "ENABLED") == "ENABLED"
    # The ingest function's own role already allows publishing to the bus: the drain needs nothing more.
    assert deployed.properties("IngestFunction")["Role"] == {"Fn::GetAtt": ["IngestFunctionRole", "Arn"]}


def test_the_generator_is_configured_through_its_environment() -> None:
    env = stack({"GenerateMode": "api"}).environment("GenerateFunction")
    names = ("NUM_TRANSACTIONS", "NUM_ACCOUNTS", "FRAUD_RATE", "MEAN_GAP", "SEED", "BATCH_SIZE", "POST_URL", "MODE")
    assert {f"TXGUARD_GENERATE_{n}" for n in names} <= set(env)
    assert env["TXGUARD_GENERATE_MODE"] == "api"
    assert env["TXGUARD_GENERATE_API_KEY_PARAMETER"] == {"Ref": "GenerateApiKeySecret"}
    assert env["TXGUARD_GENERATE_POST_URL"]["Fn::Sub"].endswith("/v1/store_data")


# ----------------------------------------------------------------------------------------- alarms ----


def _alarmed_metrics(deployed: Any) -> set[tuple[str, str, str]]:
    found = set()
    for alarm in deployed.of_type("AWS::CloudWatch::Alarm").values():
        props = alarm["Properties"]
        stats = [props] + [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
        for metric in stats:
            if "MetricName" in metric:
                subject = ",".join(reference(d["Value"]) for d in metric.get("Dimensions", []))
                found.add((metric["Namespace"], metric["MetricName"], subject))
    return found


def test_alarms_cover_errors_throttles_api_5xx_and_latency_and_database_connections() -> None:
    alarmed = _alarmed_metrics(stack())
    expected = {
        ("AWS/Lambda", "Errors", "IngestFunction"),
        ("AWS/Lambda", "Errors", "DetectFunction"),
        ("AWS/Lambda", "Errors", "GenerateFunction"),
        ("AWS/Lambda", "Throttles", "IngestFunction"),
        ("AWS/Lambda", "Throttles", "DetectFunction"),
        ("AWS/Lambda", "Errors", "ListsFunction"),
        ("AWS/Lambda", "Throttles", "ListsFunction"),
        ("AWS/ApiGateway", "5XXError", "txguard-api,v1"),
        ("AWS/ApiGateway", "Latency", "txguard-api,v1"),
        ("AWS/RDS", "DatabaseConnections", "DatabaseProxy"),
        ("AWS/RDS", "MaxDatabaseConnectionsAllowed", "DatabaseProxy"),
        ("txguard", "AlertPublishFailures", "txguard"),
    }
    assert expected <= alarmed


def test_api_latency_is_alarmed_on_its_99th_percentile() -> None:
    deployed = stack()
    (latency,) = [
        a for a in deployed.of_type("AWS::CloudWatch::Alarm").values() if a["Properties"].get("MetricName") == "Latency"
    ]
    assert latency["Properties"]["ExtendedStatistic"] == "p99"


def test_alarms_notify_the_given_topic_and_only_when_one_is_given() -> None:
    with_topic = stack({"AlarmTopicArn": TOPIC}).of_type("AWS::CloudWatch::Alarm")
    assert with_topic and all(a["Properties"]["AlarmActions"] == [TOPIC] for a in with_topic.values())
    without = stack().of_type("AWS::CloudWatch::Alarm")
    assert all("AlarmActions" not in a["Properties"] for a in without.values())


def test_api_alarms_watch_the_api_by_the_name_it_is_given() -> None:
    deployed = stack()
    (api,) = deployed.of_type("AWS::ApiGateway::RestApi").values()
    watched = {
        d["Value"]
        for alarm in deployed.of_type("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("Namespace") == "AWS/ApiGateway"
        for d in alarm["Properties"]["Dimensions"]
        if d["Name"] == "ApiName"
    }
    assert watched == {api["Properties"]["Name"]}


def test_the_dashboard_is_valid_json_showing_every_function_the_api_and_the_proxy() -> None:
    deployed = stack()
    (dashboard,) = deployed.of_type("AWS::CloudWatch::Dashboard").values()
    body, variables = dashboard["Properties"]["DashboardBody"]["Fn::Sub"]
    names = set(re.findall(r"\$\{([A-Za-z0-9:]+)\}", body))
    assert {"IngestFunction", "DetectFunction", "GenerateFunction", "DatabaseProxy", "ApiName"} <= names
    assert names - set(variables) <= set(deployed.resources) | set(deployed.parameters)
    widgets = json.loads(re.sub(r"\$\{([A-Za-z0-9:]+)\}", "1", body))["widgets"]
    assert len(widgets) >= 6


# ---------------------------------------------------------------------------------------- outputs ----


def test_outputs_name_what_a_client_and_an_operator_need() -> None:
    outputs = stack().outputs
    assert {"ApiUrl", "ApiKeyId", "EventBusName", "DatabaseServiceSecretArn", "DashboardUrl"} <= set(outputs)
    assert outputs["ApiKeyId"]["Value"] == {"Ref": "TxguardApiApiKey"}
    assert outputs["EventBusName"]["Value"] == {"Fn::GetAtt": ["FraudEventBus", "Name"]}


# ---------------------------------------------------------------------------------- stream ingest ----

KAFKA_CLUSTER = "arn:aws:kafka:us-east-1:123456789012:cluster/payments/0f1e2d3c-1"


def _mappings(overrides: dict[str, str]) -> dict[str, dict[str, Any]]:
    deployed = stack(overrides)
    return {
        name: m["Properties"]
        for name, m in deployed.of_type("AWS::Lambda::EventSourceMapping").items()
        if m["Properties"]["FunctionName"] == {"Ref": "StreamIngestFunction"}
    }


def test_the_stream_function_consumes_the_fifo_queue_by_default_and_kinesis_and_kafka_only_when_asked() -> None:
    assert set(_mappings({})) == {"StreamQueueMapping"}
    everything = {"StreamKinesisEnabled": "true", "StreamKafkaClusterArn": KAFKA_CLUSTER}
    mappings = _mappings(everything)
    assert set(mappings) == {"StreamQueueMapping", "StreamKinesisMapping", "StreamKafkaMapping"}
    for name, mapping in mappings.items():
        assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
    for name in ("StreamKinesisMapping", "StreamKafkaMapping"):
        assert mappings[name]["DestinationConfig"]["OnFailure"]["Destination"] == {
            "Fn::GetAtt": ["StreamFailureQueue", "Arn"]
        }
    assert mappings["StreamKafkaMapping"]["EventSourceArn"] == KAFKA_CLUSTER
    assert _mappings({"StreamSqsEnabled": "false"}) == {}


def test_the_transaction_queue_is_fifo_with_a_dead_letter_queue_watched_by_an_alarm() -> None:
    deployed = stack()
    queue = deployed.properties("TransactionQueue")
    assert queue["FifoQueue"] in (True, "true")
    assert queue["RedrivePolicy"]["deadLetterTargetArn"] == {"Fn::GetAtt": ["TransactionDeadLetterQueue", "Arn"]}
    # Lambda's advice for an SQS source: the visibility timeout at least six times the function's timeout.
    assert int(queue["VisibilityTimeout"]) >= 6 * int(
        deployed.functions["StreamIngestFunction"]["Properties"]["Timeout"]
    )
    watched = {
        tuple(d["Value"]["Fn::GetAtt"]) if isinstance(d["Value"], dict) else d["Value"]
        for alarm in deployed.of_type("AWS::CloudWatch::Alarm").values()
        if alarm["Properties"].get("MetricName") == "ApproximateNumberOfMessagesVisible"
        for d in alarm["Properties"]["Dimensions"]
    }
    assert ("TransactionDeadLetterQueue", "QueueName") in watched


def test_fraud_alerts_reach_the_sns_topic_as_a_sentence_only_when_asked() -> None:
    assert stack().of_type("AWS::SNS::Topic") == {}
    deployed = stack({"AlertTopicEnabled": "true"})
    rule = deployed.resources["FraudAlertRule"]
    assert rule["Properties"]["EventBusName"] == {"Ref": "FraudEventBus"}
    assert rule["Properties"]["EventPattern"] == {"source": ["txguard"], "detail-type": ["FraudDetected"]}
    (target,) = rule["Properties"]["Targets"]
    assert target["Arn"] == {"Ref": "FraudAlertTopic"}
    template = target["InputTransformer"]["InputTemplate"]
    assert template.startswith('"Fraud detected: transaction <transaction> of account <account>')
    assert set(re.findall(r"<(\w+)>", template)) <= set(target["InputTransformer"]["InputPathsMap"])
