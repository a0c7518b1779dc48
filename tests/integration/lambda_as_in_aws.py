"""Run functions' handlers the way Lambda runs them, in a process of their own (tests/integration/test_aws_runtime.py).

Usage: python lambda_as_in_aws.py LAYER_PYTHON_DIR CALLS_JSON
CALLS_JSON: [[function code dir, event file], ...]. Tracing is on as in AWS (LAMBDA_TASK_ROOT set,
AWS_SAM_LOCAL unset, a sampled trace id), and the X-Ray "daemon" is a UDP socket of this process: what
the SDK sends is printed with the responses, as one JSON object on the last line of stdout.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any


class Context:
    """The Lambda context object, as far as the handlers and Powertools read it."""

    def __init__(self, name: str, timeout_s: int = 29) -> None:
        self.function_name = name
        self.function_version = "$LATEST"
        self.memory_limit_in_mb = 512
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{name}"
        self.aws_request_id = str(uuid.uuid4())
        self.log_group_name = f"/aws/lambda/{name}"
        self.log_stream_name = "2026/01/01/[$LATEST]0"
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def main() -> None:
    layer, calls = Path(sys.argv[1]), json.loads(sys.argv[2])
    daemon = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    daemon.bind(("127.0.0.1", 0))
    received: list[str] = []

    def listen() -> None:
        while True:
            received.append(daemon.recv(65535).decode())

    threading.Thread(target=listen, daemon=True).start()
    os.environ.pop("AWS_SAM_LOCAL", None)
    os.environ.pop("POWERTOOLS_TRACE_DISABLED", None)
    os.environ.update(
        AWS_XRAY_CONTEXT_MISSING="IGNORE_ERROR",
        AWS_XRAY_DAEMON_ADDRESS=f"127.0.0.1:{daemon.getsockname()[1]}",
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
    )
    sys.path.insert(0, str(layer))
    responses: list[Any] = []
    for code_dir, event_file in calls:
        os.environ["LAMBDA_TASK_ROOT"] = code_dir
        os.environ["AWS_LAMBDA_FUNCTION_NAME"] = Path(code_dir).name
        # The runtime sets a sampled trace header per invocation.
        os.environ["_X_AMZN_TRACE_ID"] = (
            f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Parent={uuid.uuid4().hex[:16]};Sampled=1"
        )
        sys.path.insert(0, code_dir)
        sys.modules.pop("app", None)
        import app  # the function's handler module, as the runtime imports it

        sys.path.remove(code_dir)
        event = json.loads(Path(event_file).read_text())
        responses.append(app.lambda_handler(event, Context(Path(code_dir).name)))
    import psycopg2

    import txguard

    time.sleep(0.3)  # the SDK sends over UDP without waiting; let the socket take everything in
    report = {
        "responses": responses,
        "segments": [line for datagram in received for line in datagram.splitlines()[1:]],
        "modules": {"txguard": txguard.__file__, "psycopg2": psycopg2.__file__},
    }
    print("\n" + json.dumps(report, default=str))


if __name__ == "__main__":
    main()
