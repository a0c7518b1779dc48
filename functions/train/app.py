"""Scheduled or invoked: trains a candidate model on the stored features and labels, and promotes it only when
AutoPromote is on and it beats the champion (txguard/models/training_job.py)."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from txguard.models.training_job import handle
from txguard.observability import logger, metrics, tracer


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return handle(event)
