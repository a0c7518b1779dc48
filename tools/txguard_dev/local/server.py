"""SAM CLI's own API Gateway emulator in front of the in-process runner, on a server we can shut down."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass
from typing import Any

from samcli.local.apigw.local_apigw_service import LocalApigwService
from werkzeug.serving import WSGIRequestHandler, make_server

from txguard_dev.local.runner import FunctionRunner, log


class _RequestLog(WSGIRequestHandler):
    """One plain line per request in the runtime's log (werkzeug's own adds terminal colours)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.info('%s "%s" %s', self.address_string(), self.requestline, code)


def _refuse_undecodable_bodies(app: Any) -> Any:
    """The emulator answers 502 for a body that is not UTF-8 before any function runs; answer as the
    functions do for malformed JSON instead: 400 in the one error shape."""

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        if length:
            body = environ["wsgi.input"].read(length)
            try:
                body.decode("utf-8")
            except UnicodeDecodeError:
                payload = json.dumps(
                    {
                        "error": {
                            "code": "malformed_json",
                            "message": "the request body is not UTF-8 text",
                            "details": [],
                        }
                    }
                ).encode()
                start_response(
                    "400 BAD REQUEST",
                    [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))],
                )
                return [payload]
            environ["wsgi.input"] = io.BytesIO(body)
        return app(environ, start_response)

    return middleware


@dataclass(frozen=True, order=True)
class Route:
    method: str
    path: str
    function_name: str


class ApiServer:
    """Serves the template's API routes: route matching, events and responses are the emulator's own."""

    def __init__(self, runner: FunctionRunner, host: str = "127.0.0.1", port: int = 3000) -> None:
        api = runner.template.api()
        service = LocalApigwService(api, runner, port=port, host=host)
        service.create()  # builds the Flask app; the emulator's own run() could not be stopped from here
        self.routes = sorted(
            Route(method, route.path, route.function_name) for route in api.routes for method in route.methods
        )
        self.host = host
        app = _refuse_undecodable_bodies(service._app)
        self._server: Any = make_server(host, port, app, threaded=True, request_handler=_RequestLog)
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="txguard-api", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
