"""Transactions from an SQS FIFO queue, a Kinesis data stream or a Kafka topic; reports failed records per item."""

from aws_lambda_powertools.utilities.typing import LambdaContext

from txguard.observability import logger, metrics, tracer
from txguard.stream import handle_batch


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler(capture_response=False, capture_error=False)
@metrics.log_metrics
def lambda_handler(event: dict, context: LambdaContext) -> dict:
    return dict(handle_batch(event, context))
