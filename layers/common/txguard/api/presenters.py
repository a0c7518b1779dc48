"""The API's JSON responses, serialised once (the shapes themselves are in txguard/presenters.py)."""

from __future__ import annotations

from typing import Any

import orjson
from aws_lambda_powertools.event_handler import Response, content_types


def json_response(status: int, body: dict[str, Any]) -> Response[str]:
    """Serialised here, once: Powertools would otherwise walk a large result through pydantic again."""
    return Response(
        status_code=status,
        content_type=content_types.APPLICATION_JSON,
        body=orjson.dumps(body).decode(),
    )
