"""Scheduled: generates a run of labelled transactions and stores it (directly, or through the API)."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from txguard.observability import logger, metrics, tracer
from txguard_generator.scheduled import run_scheduled


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return run_scheduled(event)
