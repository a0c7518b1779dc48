"""Runs the template's functions inside this process, the way the Lambda runtime would run them.

`FunctionRunner` is the `lambda_runner` that SAM CLI's API Gateway emulator (`LocalApigwService`) calls:
`is_debugging()`, and `invoke(name, event_json, stdout=StreamWriter, ...)` with the result written to
stdout as JSON. That entry point serves API requests only, so it is where the API key is checked.
The scheduler and `txguard invoke` call `call(name, event)` directly.
"""

from __future__ import annotations

import hmac
import importlib.util
import json
import logging
import os
import secrets
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from txguard_dev.commands.common import LOCAL_MODEL_DIR

# Not under "txguard.": that logger belongs to the functions' Powertools Logger, which prints JSON to stdout.
log = logging.getLogger("txguard-local")

ACCOUNT_ID = "123456789012"
# Set by the template for AWS; with them set, the functions would read a secret instead of DATABASE_URL.
_AWS_ONLY_VARIABLES = (
    "TXGUARD_DB_HOST",
    "TXGUARD_DB_SECRET_ARN",
    "TXGUARD_CONSOLE_SIGNIN_SECRET_ARN",
    "TXGUARD_CONSOLE_SESSION_SECRET_ARN",
    "TXGUARD_MODEL_BUCKET",  # locally, artifacts live in TXGUARD_MODEL_DIR
    "TXGUARD_TRAIN_FUNCTION",  # locally, the console trains in the request
)

Handler = Callable[[Any, Any], Any]


@dataclass(frozen=True)
class LocalFunction:
    """What running one function of the template needs, read from SAM's own providers."""

    name: str
    code_dir: Path
    handler: str  # "module.function", as in the template
    layer_dirs: tuple[Path, ...]
    environment: Mapping[str, str]
    timeout_s: int
    memory_mb: int
    schedules: tuple[tuple[str, str], ...]  # (event name, schedule expression) of its Schedule events
    # Its API routes all say `ApiKeyRequired: false`: it checks callers itself (the console's session cookie),
    # so the runner lets requests through without x-api-key and hands it the local sign-in key instead.
    own_auth: bool = False

    @property
    def handler_file(self) -> Path:
        module = self.handler.rsplit(".", 1)[0]
        return self.code_dir / (module.replace(".", "/") + ".py")


def _env_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    return None  # an intrinsic SAM could not resolve locally (Fn::GetAtt and the like)


def _local_function(record: Any) -> LocalFunction:
    variables = (record.environment or {}).get("Variables") or {}
    environment = {k: v for k, v in ((k, _env_value(v)) for k, v in variables.items()) if v is not None}
    schedules = tuple(
        (name, str(event["Properties"]["Schedule"]))
        for name, event in (record.events or {}).items()
        if event.get("Type") == "Schedule"
        and "Schedule" in event.get("Properties", {})
        and str(event["Properties"].get("State", "ENABLED"))
        != "DISABLED"  # as EventBridge: a disabled rule never fires
    )
    api_events = [event for event in (record.events or {}).values() if event.get("Type") == "Api"]
    own_auth = bool(api_events) and all(
        ((event.get("Properties") or {}).get("Auth") or {}).get("ApiKeyRequired") is False for event in api_events
    )
    return LocalFunction(
        name=record.name,
        code_dir=Path(record.codeuri),
        handler=record.handler,
        layer_dirs=tuple(Path(layer.codeuri) for layer in record.layers if layer.codeuri),
        environment=environment,
        timeout_s=int(record.timeout or 3),
        memory_mb=int(record.memory or 128),
        schedules=schedules,
        own_auth=own_auth,
    )


class TemplateError(ValueError):
    pass


class Template:
    """A SAM template read with SAM CLI's providers (the same reading `sam local` does)."""

    def __init__(self, path: Path, parameter_overrides: Mapping[str, str] | None = None) -> None:
        from samcli.commands.exceptions import UserException
        from samcli.commands.validate.lib.exceptions import InvalidSamDocumentException
        from samcli.lib.providers.sam_function_provider import SamFunctionProvider
        from samcli.lib.providers.sam_stack_provider import SamLocalStackProvider

        # Absolute: the providers resolve CodeUri relative to the template path as given.
        self.path = path.resolve()
        try:
            self._stacks, _ = SamLocalStackProvider.get_stacks(
                str(self.path), parameter_overrides=dict(parameter_overrides or {})
            )
        except (UserException, InvalidSamDocumentException) as exc:
            raise TemplateError(f"{self.path}: {exc}") from exc
        self.functions = {
            record.name: _local_function(record)
            for record in SamFunctionProvider(self._stacks).get_all()
            if record.packagetype == "Zip" and record.codeuri and record.handler
        }

    def function(self, name: str) -> LocalFunction:
        from samcli.local.lambdafn.exceptions import FunctionNotFound

        try:
            return self.functions[name]
        except KeyError:
            raise FunctionNotFound(f"no function {name!r} in {self.path.name}") from None

    def api(self) -> Any:
        from samcli.lib.providers.api_provider import ApiProvider

        return ApiProvider(self._stacks, cwd=str(self.path.parent)).api


@dataclass
class LambdaContext:
    """The attributes of the Lambda context object that code and Powertools read."""

    function_name: str
    memory_limit_in_mb: int
    timeout_s: int
    invoked_function_arn: str = ""
    function_version: str = "$LATEST"
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_group_name: str = ""
    log_stream_name: str = "local"
    _deadline: float = 0.0

    def __post_init__(self) -> None:
        region = os.environ.get("AWS_REGION", "us-east-1")
        self.invoked_function_arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{self.function_name}"
        self.log_group_name = f"/aws/lambda/{self.function_name}"
        self._deadline = time.monotonic() + self.timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


@dataclass(frozen=True)
class Invocation:
    output: str  # the handler's result as JSON, or Lambda's error payload when it raised
    failed: bool
    duration_ms: float

    @property
    def payload(self) -> Any:
        return json.loads(self.output)


# Lambda's limit on a synchronous invocation's result, counted as the runtime serialises it (python3.11: JSON with
# every non-ASCII character escaped, which json.dumps does too). Over it, Lambda answers its own error instead of the
# result, and API Gateway a 502, whatever the function did before returning: enforced here so that local runs and
# tests meet the same wall.
RESPONSE_LIMIT_BYTES = 6_291_556


def too_large_error(size: int) -> dict[str, Any]:
    """The payload Lambda returns instead of a result of `size` bytes, over RESPONSE_LIMIT_BYTES."""
    return {
        "errorMessage": f"Response payload size ({size} bytes) exceeded maximum allowed payload size "
        f"({RESPONSE_LIMIT_BYTES} bytes).",
        "errorType": "Function.ResponseSizeTooLarge",
    }


def lambda_error(exc: BaseException) -> dict[str, Any]:
    """The payload Lambda returns for an unhandled exception; the API emulator answers 502 for it."""
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "stackTrace": traceback.format_list(traceback.extract_tb(exc.__traceback__)),
    }


LOCAL_API_KEY_ID = "local"


def _error_response(status: int, code: str, message: str) -> dict[str, Any]:
    body = {"error": {"code": code, "message": message, "details": []}}
    return {"statusCode": status, "headers": {"Content-Type": "application/json"}, "body": json.dumps(body)}


def api_key_rejection(event: Mapping[str, Any], api_key: str | None) -> dict[str, Any] | None:
    """The 401/403 response for a request without the right `x-api-key`, or None to let it through."""
    if api_key is None:
        return None
    headers = {str(k).lower(): v for k, v in (event.get("headers") or {}).items()}
    given = headers.get("x-api-key")
    if not given:
        return _error_response(401, "missing_api_key", "send the API key in the x-api-key header")
    if not hmac.compare_digest(str(given).encode(), api_key.encode()):
        return _error_response(403, "invalid_api_key", "the API key is not valid")
    return None


@contextmanager
def _environment(changes: Mapping[str, str | None]) -> Iterator[None]:
    """Apply `changes` to os.environ (None removes) and put back every variable as it was afterwards."""
    before = dict(os.environ)
    for name, value in changes.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        yield
    finally:
        for name in set(os.environ) - set(before):
            del os.environ[name]
        for name, value in before.items():
            if os.environ.get(name) != value:
                os.environ[name] = value


@contextmanager
def _on_sys_path(directories: tuple[Path, ...]) -> Iterator[None]:
    added = [str(d) for d in directories if str(d) not in sys.path]
    sys.path[:0] = added
    try:
        yield
    finally:
        for entry in added:
            if entry in sys.path:
                sys.path.remove(entry)


class FunctionRunner:
    """Invokes functions one at a time: os.environ and sys.path are process-wide."""

    def __init__(self, template: Template, database_url: str | None, api_key: str | None = None) -> None:
        self.template = template
        self.database_url = database_url
        self.api_key = api_key
        self._lock = threading.Lock()
        self._modules: dict[str, ModuleType] = {}
        # Signs the console's session cookies for this run: a restart signs everyone out.
        self._session_key = secrets.token_urlsafe(32)

    def is_debugging(self) -> bool:
        return False

    def invoke(self, function_name: str, event: str, stdout: Any, stderr: Any = None, **_: Any) -> None:
        """The API emulator's entry point: an API Gateway event in, the function's result to stdout."""
        request = json.loads(event)
        own_auth = self.template.functions.get(function_name, None)
        rejection = None if own_auth is not None and own_auth.own_auth else api_key_rejection(request, self.api_key)
        if rejection is not None:
            stdout.write_str(json.dumps(rejection))
            return
        if self.api_key is not None and not (own_auth is not None and own_auth.own_auth):
            # API Gateway names the key that let a request through (the lists' audit records it); locally
            # there is one key.
            identity = request.setdefault("requestContext", {}).setdefault("identity", {})
            identity["apiKeyId"] = LOCAL_API_KEY_ID
        stdout.write_str(self.call(function_name, request).output)

    def call(self, function_name: str, event: Any) -> Invocation:
        function = self.template.function(function_name)
        with self._lock, self._runtime(function):
            context = LambdaContext(function.name, function.memory_mb, function.timeout_s)
            started = time.perf_counter()
            try:
                output, failed = json.dumps(self._handler(function)(event, context)), False
            except (Exception, SystemExit) as exc:  # sys.exit() in a handler ends the invocation, not us
                log.error("%s failed: %s: %s", function.name, type(exc).__name__, exc, exc_info=exc)
                output, failed = json.dumps(lambda_error(exc)), True
            duration_ms = (time.perf_counter() - started) * 1000
        if len(output) > RESPONSE_LIMIT_BYTES:  # json.dumps writes ASCII only: characters are bytes
            log.error("%s returned %d bytes, over Lambda's response limit", function.name, len(output))
            output, failed = json.dumps(too_large_error(len(output))), True
        log.info(
            "%s request %s: %.1f ms%s",
            function.name,
            context.aws_request_id,
            duration_ms,
            " (failed)" * failed,
        )
        if duration_ms > function.timeout_s * 1000:
            log.warning("%s ran %.0f ms, over its %d s timeout", function.name, duration_ms, function.timeout_s)
        return Invocation(output, failed, duration_ms)

    @contextmanager
    def _runtime(self, function: LocalFunction) -> Iterator[None]:
        # Like `sam local`: template values, unless the shell sets the same variable.
        changes: dict[str, str | None] = {k: v for k, v in function.environment.items() if k not in os.environ}
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        changes |= {
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", region),
            "AWS_SAM_LOCAL": "true",  # Powertools Tracer stays off, as under `sam local`
            "AWS_LAMBDA_FUNCTION_NAME": function.name,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(function.memory_mb),
            "AWS_LAMBDA_FUNCTION_TIMEOUT": str(function.timeout_s),
        }
        changes |= dict.fromkeys(_AWS_ONLY_VARIABLES)
        if self.database_url is not None:
            changes["DATABASE_URL"] = self.database_url
        # The functions read (and TrainFunction writes) model artifacts where the commands do.
        changes["TXGUARD_MODEL_DIR"] = os.environ.get("TXGUARD_MODEL_DIR") or str(Path(LOCAL_MODEL_DIR).resolve())
        if function.own_auth:
            changes["TXGUARD_CONSOLE_SESSION_KEY"] = self._session_key
            changes["TXGUARD_CONSOLE_SIGNIN_KEY"] = self.api_key
            changes["TXGUARD_CONSOLE_NO_AUTH"] = "true" if self.api_key is None else None
        with _environment(changes), _on_sys_path((function.code_dir, *function.layer_dirs)):
            yield

    def _handler(self, function: LocalFunction) -> Handler:
        module = self._modules.get(function.name)
        if module is None:
            module = self._modules[function.name] = load_module(function)
        handler: Handler = getattr(module, function.handler.rsplit(".", 1)[1])
        return handler


def load_module(function: LocalFunction) -> ModuleType:
    """Import the handler's file under a name of its own: every function's module is called `app`."""
    path = function.handler_file
    name = f"txguard_local_{function.name}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module
