"""Lists and their items: POST/GET /lists, GET/PATCH /lists/{name}, POST/GET /lists/{name}/items,
DELETE /lists/{name}/items/{value}, POST /lists/{name}/removals and GET /lists/{name}/changes."""

from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.utilities.typing import LambdaContext

from txguard.api.app import serve_lists
from txguard.observability import logger, metrics, tracer


@logger.inject_lambda_context(correlation_id_path=correlation_paths.API_GATEWAY_REST, clear_state=True)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return serve_lists(event, context)
