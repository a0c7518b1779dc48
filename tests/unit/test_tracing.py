"""Traces leave the stack's KMS boundary: no tracer decorator may record a response or an error object."""

from __future__ import annotations

import ast
from typing import Any

from tests.conftest import ROOT
from txguard.observability import drop_exception_messages

_DECORATORS = {"capture_method", "capture_lambda_handler"}


def tracer_decorators() -> list[tuple[str, ast.expr]]:
    files = [*(ROOT / "layers" / "common" / "txguard").rglob("*.py"), *(ROOT / "functions").glob("*/app.py")]
    found = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for decorator in node.decorator_list:
                    target = decorator.func if isinstance(decorator, ast.Call) else decorator
                    if isinstance(target, ast.Attribute) and target.attr in _DECORATORS:
                        found.append((f"{path.relative_to(ROOT)}:{node.name}", decorator))
    return found


def test_every_tracer_decorator_records_neither_responses_nor_errors() -> None:
    decorators = tracer_decorators()
    assert len(decorators) >= 7, decorators  # three handlers, the service's entry points, the unit of work
    for where, decorator in decorators:
        assert isinstance(decorator, ast.Call), f"{where}: bare decorator records the response and the error"
        flags = {k.arg: k.value for k in decorator.keywords}
        for flag in ("capture_response", "capture_error"):
            value = flags.get(flag)
            assert isinstance(value, ast.Constant) and value.value is False, f"{where}: {flag} is not False"


class _Throwable:
    def __init__(self, message: str) -> None:
        self.message = message
        self.type = "DuplicateIdConflict"


class _Entity:
    def __init__(self, cause: Any = None, subsegments: list[Any] | None = None) -> None:
        self.cause = cause
        self.subsegments = subsegments or []


def test_exception_messages_are_dropped_from_an_entity_and_its_subsegments_types_stay() -> None:
    inner = _Entity({"exceptions": [_Throwable("transaction ids already used with different content: 17")]})
    outer = _Entity("an id of the cause recorded below", [_Entity(), inner])
    drop_exception_messages(outer)
    (throwable,) = inner.cause["exceptions"]
    assert not hasattr(throwable, "message") and throwable.type == "DuplicateIdConflict"
