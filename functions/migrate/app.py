"""CloudFormation custom resource `Migrations`: the schema is ready when `sam deploy` finishes
(txguard/deploy_migrations.py does the work)."""

from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from txguard.deploy_migrations import handle_custom_resource
from txguard.observability import logger


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> None:
    handle_custom_resource(event, context)
