"""The scheduled generate function: parameters from its environment, overridden by the event's `detail`.

`direct` (the default) stores through the same code as the ingest function; `api` posts to the API with
the key read from the SSM parameter (or Secrets Manager secret, by ARN) named in
TXGUARD_GENERATE_API_KEY_PARAMETER. Labels go to the labels store whenever a database is configured.

Where the key is sent comes from the deployment only (TXGUARD_GENERATE_POST_URL): an event's detail may tune
the run but may not name a URL, since anyone who can put an event on the schedule's bus could otherwise
collect the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from txguard.observability import logger, metrics
from txguard_generator.delivery import DatabaseLabels, LabelDestination, database_configured, deliver
from txguard_generator.params import (
    API_KEY_ENV,
    API_KEY_PARAMETER_ENV,
    GenerateParams,
    ParameterError,
    params_from_env,
    parse_params,
)
from txguard_generator.sinks import DirectSink, HttpSink, Sink
from txguard_generator.traffic import generate

API_KEY_MAX_AGE_S = 300


def scheduled_params(event: Mapping[str, Any], environ: Mapping[str, str]) -> GenerateParams:
    params = params_from_env(environ)
    detail = event.get("detail")
    if detail is not None and not isinstance(detail, Mapping):
        raise ParameterError("the event's detail must be an object of parameters")
    if detail and "post_url" in detail:
        raise ParameterError(
            "post_url comes from the deployment (TXGUARD_GENERATE_POST_URL), not from the event's detail"
        )
    params = parse_params(detail or {}, params)
    if params.mode == "file":
        raise ParameterError("the scheduled function stores what it generates: mode must be direct or api")
    return params


def api_key(environ: Mapping[str, str]) -> str | None:
    name = environ.get(API_KEY_PARAMETER_ENV)
    if not name:
        return environ.get(API_KEY_ENV) or None
    # Imported here: boto3 costs ~120 ms of cold start and only the api mode needs it.
    from aws_lambda_powertools.utilities import parameters

    if name.startswith("arn:aws:secretsmanager:"):
        value: Any = parameters.get_secret(name, max_age=API_KEY_MAX_AGE_S)
    else:
        value = parameters.get_parameter(name, decrypt=True, max_age=API_KEY_MAX_AGE_S)
    return str(value).strip() or None


def run_scheduled(event: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    environ = os.environ if environ is None else environ
    params = scheduled_params(event, environ)
    run = generate(params)
    sinks: list[Sink]
    labels: list[LabelDestination] = []
    if params.mode == "direct":
        sinks = [DirectSink()]
        labels.append(DatabaseLabels())
    else:
        assert params.post_url is not None
        sinks = [HttpSink(params.post_url, api_key(environ))]
        if database_configured():
            labels.append(DatabaseLabels())
    summary = deliver(run, sinks, labels, params.batch_size)
    metrics.add_metric(name="GeneratedTransactions", unit=MetricUnit.Count, value=summary.generated)
    metrics.add_metric(name="GeneratedFraud", unit=MetricUnit.Count, value=summary.fraud)
    result = {"mode": params.mode, **summary.as_dict()}
    logger.info("generated a run", extra=result)
    return result
