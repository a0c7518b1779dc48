"""template.yaml as CloudFormation will see it: translated by aws-sam-translator, then resolved for one
set of parameter values (conditions decided, Fn::If chosen, AWS::NoValue dropped).

The `*_violations` functions state the template's security properties. Each returns what breaks its
property, so a test can show both that the template keeps it and that a template which doesn't is caught.
"""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "template.yaml"

# Services whose resources hold or move data: a statement granting any of their actions names its resources.
DATA_SERVICES = frozenset(
    {"secretsmanager", "ssm", "kms", "rds", "rds-db", "events", "sqs", "sns", "logs", "s3", "dynamodb"}
)
# AWS managed policies a role may carry, each for a service that offers no resource-level scoping.
ALLOWED_MANAGED_POLICIES = {
    "AWSLambdaENIManagementAccess": "ENIs for functions in the VPC",
    "AWSXRayDaemonWriteAccess": "X-Ray trace segments",
    "AmazonAPIGatewayPushToCloudWatchLogs": "API Gateway's account-wide logging role",
    "AmazonRDSEnhancedMonitoringRole": "RDS enhanced monitoring",
}
PSEUDO_PARAMETERS = {
    "AWS::Region": "us-east-1",
    "AWS::AccountId": "123456789012",
    "AWS::Partition": "aws",
    "AWS::StackName": "txguard",
    "AWS::URLSuffix": "amazonaws.com",
}
_NO_VALUE = object()


def load_sam_template() -> dict[str, Any]:
    from samcli.yamlhelper import yaml_parse

    return yaml_parse(TEMPLATE.read_text())


@cache
def _sam_template() -> dict[str, Any]:
    return load_sam_template()


def translate(sam_template: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CloudFormation template `sam deploy` would hand to CloudFormation."""
    from samtranslator.translator.transform import transform

    template = copy.deepcopy(sam_template if sam_template is not None else _sam_template())
    for resource in template["Resources"].values():
        properties = resource.get("Properties", {})
        # The translator wants uploaded code; `sam deploy` puts these S3 locations in place of the paths.
        if resource["Type"] == "AWS::Serverless::Function":
            properties["CodeUri"] = "s3://artifacts/function.zip"
        if resource["Type"] == "AWS::Serverless::LayerVersion":
            properties["ContentUri"] = "s3://artifacts/layer.zip"
    defaults = {name: p.get("Default") for name, p in template.get("Parameters", {}).items()}
    os.environ.setdefault("AWS_DEFAULT_REGION", PSEUDO_PARAMETERS["AWS::Region"])
    return transform(template, defaults, _NoManagedPolicyLookups())


class _NoManagedPolicyLookups:
    """The template names no SAM policy templates or managed policies by name: nothing to look up."""

    def load(self) -> dict[str, str]:
        return {}


@dataclass(frozen=True)
class Stack:
    """The resources of a translated template that exist for these parameter values, resolved."""

    parameters: Mapping[str, Any]
    conditions: Mapping[str, bool]
    resources: Mapping[str, dict[str, Any]]
    outputs: Mapping[str, dict[str, Any]]

    def of_type(self, resource_type: str) -> dict[str, dict[str, Any]]:
        return {name: r for name, r in self.resources.items() if r["Type"] == resource_type}

    def properties(self, name: str) -> dict[str, Any]:
        props: dict[str, Any] = self.resources[name].get("Properties", {})
        return props

    @property
    def functions(self) -> dict[str, dict[str, Any]]:
        return self.of_type("AWS::Lambda::Function")

    def environment(self, function: str) -> dict[str, Any]:
        env: dict[str, Any] = self.properties(function).get("Environment", {}).get("Variables", {})
        return env

    def role_of(self, function: str) -> str:
        role = self.properties(function)["Role"]
        assert isinstance(role, dict) and "Fn::GetAtt" in role, f"{function}: Role is not a role of this stack"
        name: str = role["Fn::GetAtt"][0]
        return name


def stack(overrides: Mapping[str, str] | None = None, mutate: Callable[[dict[str, Any]], None] | None = None) -> Stack:
    """Translate template.yaml (after `mutate`, for tests that prove a check can fail) and resolve it."""
    sam_template = copy.deepcopy(_sam_template())
    if mutate is not None:
        mutate(sam_template)
    translated = translate(sam_template) if mutate is not None else _default_translation()
    return resolve(translated, overrides or {})


@cache
def _default_translation() -> dict[str, Any]:
    return translate()


def resolve(template: dict[str, Any], overrides: Mapping[str, str]) -> Stack:
    declared = template.get("Parameters", {})
    unknown = set(overrides) - set(declared)
    assert not unknown, f"no such parameters: {unknown}"
    parameters: dict[str, Any] = {}
    for name, declaration in declared.items():
        value = str(overrides.get(name, declaration.get("Default", "")))
        parameters[name] = value.split(",") if declaration["Type"] == "CommaDelimitedList" else value
    parameters |= PSEUDO_PARAMETERS
    definitions = template.get("Conditions", {})
    decided: dict[str, bool] = {}

    def condition(name: str) -> bool:
        if name not in decided:
            decided[name] = _evaluate(definitions[name], parameters, condition)
        return decided[name]

    def value(node: Any) -> Any:
        return _resolve(node, parameters, condition)

    resources = {
        name: value({k: v for k, v in resource.items() if k != "Condition"})
        for name, resource in template["Resources"].items()
        if "Condition" not in resource or condition(resource["Condition"])
    }
    outputs = {
        name: value(output)
        for name, output in template.get("Outputs", {}).items()
        if "Condition" not in output or condition(output["Condition"])
    }
    return Stack(parameters, {name: condition(name) for name in definitions}, resources, outputs)


def _evaluate(node: Any, parameters: Mapping[str, Any], condition: Callable[[str], bool]) -> bool:
    (function, argument), *_ = node.items()
    if function == "Condition":
        return condition(argument)
    if function == "Fn::Not":
        return not _evaluate(argument[0], parameters, condition)
    if function == "Fn::And":
        return all(_evaluate(a, parameters, condition) for a in argument)
    if function == "Fn::Or":
        return any(_evaluate(a, parameters, condition) for a in argument)
    if function == "Fn::Equals":
        left, right = (_resolve(a, parameters, condition) for a in argument)
        return str(left) == str(right)
    raise AssertionError(f"condition function {function} is not understood here")


def _resolve(node: Any, parameters: Mapping[str, Any], condition: Callable[[str], bool]) -> Any:
    if isinstance(node, list):
        items = [_resolve(item, parameters, condition) for item in node]
        return [item for item in items if item is not _NO_VALUE]
    if not isinstance(node, dict):
        return node
    if len(node) == 1:
        (function, argument), *_ = node.items()
        if function == "Ref":
            if argument == "AWS::NoValue":
                return _NO_VALUE
            return parameters.get(argument, node)
        if function == "Fn::If":
            chosen = argument[1] if condition(argument[0]) else argument[2]
            return _resolve(chosen, parameters, condition)
        if function == "Fn::Join":
            separator, parts = argument
            parts = _resolve(parts, parameters, condition)
            if isinstance(parts, list) and all(isinstance(p, str) for p in parts):
                return separator.join(parts)
        if function == "Fn::Sub" and isinstance(argument, str):
            text = re.sub(
                r"\$\{([A-Za-z0-9:]+)\}",
                lambda m: parameters[m.group(1)] if isinstance(parameters.get(m.group(1)), str) else m.group(0),
                argument,
            )
            return text if "${" not in text else {"Fn::Sub": text}
        if function == "Fn::Split":
            separator, text = argument
            text = _resolve(text, parameters, condition)
            if isinstance(text, str):
                return text.split(separator)
    resolved = {key: _resolve(value, parameters, condition) for key, value in node.items()}
    return {key: value for key, value in resolved.items() if value is not _NO_VALUE}


def reference(node: Any) -> str:
    """A short, comparable name for a resource reference: `X` for Ref X, `X.Attr` for GetAtt X.Attr."""
    if isinstance(node, dict) and "Ref" in node:
        return str(node["Ref"])
    if isinstance(node, dict) and "Fn::GetAtt" in node:
        name, attribute = node["Fn::GetAtt"]
        return f"{name}.{attribute}"
    if isinstance(node, dict) and "Fn::Sub" in node:
        text = node["Fn::Sub"]
        return str(text if isinstance(text, str) else text[0])
    return str(node)


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def iam_statements(stack: Stack) -> Iterator[tuple[str, dict[str, Any]]]:
    """(resource name, statement) for every identity-based policy statement of the stack."""
    for name, role in stack.of_type("AWS::IAM::Role").items():
        for policy in role["Properties"].get("Policies", []):
            for statement in _as_list(policy["PolicyDocument"]["Statement"]):
                yield name, statement
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for name, policy in stack.of_type(kind).items():
            for statement in _as_list(policy["Properties"]["PolicyDocument"]["Statement"]):
                yield name, statement


def managed_policies(stack: Stack, role: str) -> list[str]:
    arns = stack.properties(role).get("ManagedPolicyArns", [])
    return [reference(arn).rsplit("/", 1)[-1] for arn in arns]


def grants(stack: Stack, role: str) -> set[tuple[str, str]]:
    """(action, resource) pairs a role's inline policies allow."""
    found = set()
    for name, statement in iam_statements(stack):
        if name == role and statement["Effect"] == "Allow":
            for action in _as_list(statement["Action"]):
                for resource in _as_list(statement["Resource"]):
                    found.add((action, reference(resource)))
    return found


# ------------------------------------------------------------------------------------- properties ----


def unauthenticated_methods(stack: Stack) -> list[str]:
    """API methods a caller can reach without an API key."""
    found = []
    for name, api in stack.of_type("AWS::ApiGateway::RestApi").items():
        body = api["Properties"]["Body"]
        schemes = body.get("components", {}).get("securitySchemes", {})
        key_schemes = {s for s, d in schemes.items() if d.get("type") == "apiKey" and d.get("in") == "header"}
        for path, methods in body["paths"].items():
            for method, definition in methods.items():
                required = {s for requirement in definition.get("security", []) for s in requirement}
                if not required & key_schemes:
                    found.append(f"{name} {method.upper()} {path}")
    return found


def api_routes(stack: Stack) -> dict[str, str]:
    """'METHOD /path' -> the function behind it."""
    routes = {}
    for api in stack.of_type("AWS::ApiGateway::RestApi").values():
        for path, methods in api["Properties"]["Body"]["paths"].items():
            for method, definition in methods.items():
                uri = reference(definition["x-amazon-apigateway-integration"]["uri"])
                routes[f"{method.upper()} {path}"] = uri.split("${", 2)[-1].split(".Arn}")[0]
    return routes


def functions_outside_vpc(stack: Stack) -> list[str]:
    return sorted(
        name
        for name, function in stack.functions.items()
        if not function["Properties"].get("VpcConfig", {}).get("SubnetIds")
        or not function["Properties"].get("VpcConfig", {}).get("SecurityGroupIds")
    )


def wildcard_violations(stack: Stack) -> list[str]:
    """Statements allowing every action of a service, or a data service's actions on every resource."""
    found = []
    for name, statement in iam_statements(stack):
        if statement["Effect"] != "Allow":
            continue
        actions = _as_list(statement["Action"])
        resources = _as_list(statement["Resource"])
        for action in actions:
            if action == "*" or action.endswith(":*"):
                found.append(f"{name}: action {action}")
            elif action.split(":")[0] in DATA_SERVICES and "*" in resources:
                found.append(f"{name}: {action} on *")
    for role in stack.of_type("AWS::IAM::Role"):
        for policy in managed_policies(stack, role):
            if policy not in ALLOWED_MANAGED_POLICIES:
                found.append(f"{role}: managed policy {policy}")
    return found


def encryption_violations(stack: Stack) -> list[str]:
    """Data at rest without a customer managed key, or in transit without TLS."""
    found = []
    for name, cluster in stack.of_type("AWS::RDS::DBCluster").items():
        props = cluster["Properties"]
        if props.get("StorageEncrypted") is not True or not props.get("KmsKeyId"):
            found.append(f"{name}: storage not encrypted with the stack's key")
        if props.get("ManageMasterUserPassword") is not True or "MasterUserPassword" in props:
            found.append(f"{name}: master password not managed in Secrets Manager")
    for name, instance in stack.of_type("AWS::RDS::DBInstance").items():
        if instance["Properties"].get("PubliclyAccessible") is not False:
            found.append(f"{name}: publicly accessible")
    for name, group in stack.of_type("AWS::RDS::DBClusterParameterGroup").items():
        if str(group["Properties"]["Parameters"].get("rds.force_ssl")) != "1":
            found.append(f"{name}: the database accepts connections without TLS")
    for name, proxy in stack.of_type("AWS::RDS::DBProxy").items():
        if proxy["Properties"].get("RequireTLS") is not True:
            found.append(f"{name}: proxy accepts connections without TLS")
    for kind, key in (
        ("AWS::SecretsManager::Secret", "KmsKeyId"),
        ("AWS::Logs::LogGroup", "KmsKeyId"),
        ("AWS::SQS::Queue", "KmsMasterKeyId"),
        ("AWS::Events::EventBus", "KmsKeyIdentifier"),
    ):
        for name, resource in stack.of_type(kind).items():
            if not resource["Properties"].get(key):
                found.append(f"{name}: no KMS key")
    for name, key_resource in stack.of_type("AWS::KMS::Key").items():
        if key_resource["Properties"].get("EnableKeyRotation") is not True:
            found.append(f"{name}: key rotation off")
    for name in stack.functions:
        env = stack.environment(name)
        if env.get("TXGUARD_DB_HOST") and env.get("TXGUARD_DB_SSLMODE") != "verify-full":
            found.append(f"{name}: database connection does not verify the server certificate")
    return found


def log_groups_left_to_aws(stack: Stack) -> list[str]:
    """Log groups AWS would create on its own (no key, kept forever): not defined in the template with a
    retention, or not there before their first line is written."""
    defined = {
        str(group["Properties"].get("LogGroupName", {}).get("Fn::Sub", "")): (name, group)
        for name, group in stack.of_type("AWS::Logs::LogGroup").items()
        if isinstance(group["Properties"].get("LogGroupName"), dict)
    }
    expected: list[tuple[str, str, list[str]]] = []  # (name, for what, resources that must wait for it)
    for cluster, resource in stack.of_type("AWS::RDS::DBCluster").items():
        instances = [
            name
            for name, instance in stack.of_type("AWS::RDS::DBInstance").items()
            if instance["Properties"].get("DBClusterIdentifier") == {"Ref": cluster}
        ]
        for log in resource["Properties"].get("EnableCloudwatchLogsExports", []):
            expected.append((f"/aws/rds/cluster/${{{cluster}}}/{log}", f"{cluster}'s {log} log", instances))
    for stage_name, stage in stack.of_type("AWS::ApiGateway::Stage").items():
        levels = {m.get("LoggingLevel", "OFF") for m in stage["Properties"].get("MethodSettings", [])}
        if levels - {"OFF"}:
            api = stage["Properties"]["RestApiId"]["Ref"]
            name = f"API-Gateway-Execution-Logs_${{{api}}}/{stage['Properties']['StageName']}"
            expected.append((name, f"{stage_name}'s execution log", []))
    found = []
    for name, what, waiting in expected:
        if name not in defined:
            found.append(f"{what}: log group {name} is left to AWS")
            continue
        group_name, group = defined[name]
        if int(group["Properties"].get("RetentionInDays", 0)) <= 0:
            found.append(f"{what}: {group_name} has no retention")
        for resource in waiting:
            depends = stack.resources[resource].get("DependsOn", [])
            depends = [depends] if isinstance(depends, str) else depends
            upstream = {d for r in depends for d in [r, *_depends_on(stack, r)]}
            if group_name not in upstream:
                found.append(f"{what}: {resource} may write before {group_name} exists")
    return found


def _depends_on(stack: Stack, name: str) -> list[str]:
    depends = stack.resources.get(name, {}).get("DependsOn", [])
    depends = [depends] if isinstance(depends, str) else list(depends)
    return [d for r in depends for d in [r, *_depends_on(stack, r)]]
