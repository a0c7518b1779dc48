"""GET /models and GET /models/{version}: the model registry, read-only, served by the detect function."""

from __future__ import annotations

from typing import Annotated, Literal

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import Router
from aws_lambda_powertools.event_handler.openapi.params import Path, Query

from txguard import service
from txguard.api.errors import COMMON_ERRORS, documented_errors
from txguard.api.presenters import json_response
from txguard.api.schemas import ModelListResponse, ModelOut, integer_text
from txguard.storage.models import MAX_VERSION

router = Router()


@router.get(
    "/models",
    summary="The registered model versions, newest first, with their validation figures",
    responses={
        200: {"description": "a page of versions", "content": {"application/json": {"model": ModelListResponse}}},
        **documented_errors({**COMMON_ERRORS, 422: "a bad query parameter"}),
    },
)
def list_models(
    status: Annotated[Literal["candidate", "shadow", "champion", "retired"] | None, Query()] = None,
    before: Annotated[
        int | None, integer_text(1, MAX_VERSION), Query(ge=1, le=MAX_VERSION, description="only versions below")
    ] = None,
    limit: Annotated[int, integer_text(1, 1000), Query(ge=1, le=1000)] = 100,
) -> Response[str]:
    page = service.model_listing(status, before, limit)
    return json_response(
        200, {"models": [m.as_dict(with_details=False) for m in page.items], "next_before": page.next_before}
    )


@router.get(
    "/models/<version>",
    summary="One model version: windows, features, metrics and threshold table",
    responses={
        200: {"description": "the version", "content": {"application/json": {"model": ModelOut}}},
        **documented_errors(
            {**COMMON_ERRORS, 404: "no such version", 422: "version is neither a positive integer nor `latest`"}
        ),
    },
)
def get_model(
    version: Annotated[
        str, Path(min_length=1, max_length=12, description="a version number, or `latest` (the highest)")
    ],
) -> Response[str]:
    return json_response(200, service.model_version(version).as_dict())
