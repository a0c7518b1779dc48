"""Each API function moves what its first request built to the collector's permanent generation, once."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.conftest import load_event
from txguard.api import app


@pytest.fixture
def cold(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    gc.unfreeze()
    monkeypatch.setattr(app, "_warm", False)
    yield
    gc.unfreeze()


@pytest.mark.parametrize("serve", [app.serve_ingest, app.serve_detect, app.serve_lists])
def test_the_first_request_freezes_what_is_alive_and_later_ones_freeze_nothing(
    cold: None, serve: Callable[[dict[str, Any], Any], dict[str, Any]]
) -> None:
    # A request no route takes: answered without a database.
    event = {**load_event("store_data.json"), "httpMethod": "GET", "path": "/nowhere", "resource": "/nowhere"}
    assert gc.get_freeze_count() == 0
    assert serve(event, None)["statusCode"] == 404
    frozen = gc.get_freeze_count()
    assert frozen > 10_000  # the modules, the resolver, the schemas: all of it
    kept = [object() for _ in range(100)] + [[] for _ in range(100)]  # alive and tracked after the first request
    assert serve(event, None)["statusCode"] == 404
    # Frozen objects may still be freed by reference counting; a second freeze would take the 200 kept ones.
    assert gc.get_freeze_count() <= frozen and len(kept) == 200
