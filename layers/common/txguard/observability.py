"""The one Logger, Metrics and Tracer of the service, built once and imported everywhere."""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics, Tracer

logger = Logger(service="txguard")
metrics = Metrics(namespace="txguard", service="txguard")
tracer = Tracer(service="txguard")
