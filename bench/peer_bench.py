"""txguard against the app a user would otherwise write (bench/peer_app.py), side by side over HTTP, in one run.

Both are started as their users would run them locally, as processes of their own on free ports, against the
same PostgreSQL database: txguard as `make run` serves it (`txguard local`: SAM CLI's API Gateway emulator in
front of the functions, with an API key), the peer on Flask's own development server. Both sit on werkzeug's
threaded server; the client keeps one HTTP/1.1 connection open to each.

- Batches: POST /store_data of 1,000 and of 5,000 transactions (txguard `{"transactions": [...]}`, the peer a
  list), the same transactions to both, a batch to one then the same batch to the other; each round sends new
  ids for the same 1,000 accounts, a month after the previous round's. Throughput in transactions/s.
- Peak memory: the high-water mark of each server's resident set (VmHWM, reset through /proc/<pid>/clear_refs
  before the batches) over the batch rounds.
- Single POST: one transaction a request, sequential, warm (after the batches, so accounts have history),
  alternating between the two request by request so that the machine's load hits both alike; p50 and p99.

Ratios are txguard / peer: for throughput above 1 is txguard faster, for latency and memory below 1 is.
Each ratio is the median of the rounds' ratios, each pairing runs made moments apart.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bench.harness import BenchDatabase, ms, p50, p99
from bench.ingest_bench import T0, rows, transaction_json
from bench.peer_app import READY_LINE as PEER_READY
from txguard_dev.local.command import READY_LINE as TXGUARD_READY

ROOT = Path(__file__).resolve().parent.parent
TXGUARD = Path(sys.executable).with_name("txguard")
ACCOUNTS = 1000
MONTH_MS = 30 * 86_400_000
API_KEY = "bench-peer-key"


@dataclass
class Server:
    """A server process of its own, started on a free port; its HTTP client keeps one connection open."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    url: str = ""
    headers: dict[str, str] | None = None
    _connection: http.client.HTTPConnection | None = None

    @classmethod
    def start(cls, name: str, command: list[str], env: dict[str, str], ready: str, log_dir: Path) -> Server:
        log_path = log_dir / f"{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        server = cls(name, process, log_path)
        deadline = time.monotonic() + 120
        while True:
            line = next((li for li in log_path.read_text(errors="replace").splitlines() if li.startswith(ready)), None)
            if line is not None:
                server.url = line.removeprefix(ready).strip()
                return server
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise RuntimeError(f"{name} did not start:\n{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.05)

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        if self._connection is None:
            parts = urlsplit(self.url)
            self._connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=300)
        headers = {"content-type": "application/json", **(self.headers or {})}
        self._connection.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        answer = self._connection.getresponse()
        return answer.status, answer.read()

    def reset_peak_memory(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def memory_mb(self, field: str) -> float:
        """VmHWM (peak resident set since the last reset) or VmRSS, in MB."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field} for {self.name}")

    def stop(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_servers(database: BenchDatabase, log_dir: Path) -> tuple[Server, Server]:
    env = {k: v for k, v in os.environ.items() if k not in {"TXGUARD_API_KEY", "PORT", "DATABASE_URL"}}
    env |= {"PYTHONUNBUFFERED": "1", "DATABASE_URL": database.admin_url}
    txguard = Server.start(
        "txguard",
        [str(TXGUARD), "local", "--port", "0", "--api-key", API_KEY],
        env,
        TXGUARD_READY.split("{", 1)[0],
        log_dir,
    )
    txguard.headers = {"x-api-key": API_KEY}
    try:
        peer = Server.start(
            "peer",
            [sys.executable, "-m", "bench.peer_app", "--port", "0", "--database-url", database.admin_url],
            env,
            PEER_READY.split("{", 1)[0],
            log_dir,
        )
    except BaseException:
        txguard.stop()
        raise
    return txguard, peer


def post(server: Server, body: Any) -> float:
    """Seconds for one POST /store_data; raises unless every transaction was stored."""
    started = time.perf_counter()
    status, raw = server.request("POST", "/store_data", body)
    elapsed = time.perf_counter() - started
    if status != 201:
        raise RuntimeError(f"{server.name} answered {status}: {raw[:300]!r}")
    return elapsed


def batch_body(server: Server, items: list[dict[str, Any]]) -> Any:
    return {"transactions": items} if server.name == "txguard" else items


def batch_rounds(txguard: Server, peer: Server, batch_size: int, count: int, rounds: int, first_round: int) -> Any:
    """Transactions/s of each side per round, each batch sent to one side then the other (alternating first)."""
    rates: dict[str, list[float]] = {"txguard": [], "peer": []}
    for n in range(first_round, first_round + rounds):
        data = rows(count, 10_000_000 * (n + 1), ACCOUNTS, seed=n + 2, start=T0 + MONTH_MS * n)
        spent = {"txguard": 0.0, "peer": 0.0}
        for b, start in enumerate(range(0, count, batch_size)):
            items = [transaction_json(t) for t in data[start : start + batch_size]]
            order = (txguard, peer) if (n + b) % 2 == 0 else (peer, txguard)
            for server in order:
                spent[server.name] += post(server, batch_body(server, items))
        for name in rates:
            rates[name].append(count / spent[name])
    return rates


def single_rounds(txguard: Server, peer: Server, requests: int, rounds: int, first_id: int, start: int) -> Any:
    """Seconds of each single POST per round, the two sides alternating request by request."""
    latencies: dict[str, list[list[float]]] = {"txguard": [], "peer": []}
    for n in range(rounds):
        data = rows(requests, first_id + n * 1_000_000, ACCOUNTS, seed=100 + n, start=start + n * MONTH_MS)
        times: dict[str, list[float]] = {"txguard": [], "peer": []}
        for i, t in enumerate(data):
            for server in (txguard, peer) if i % 2 == 0 else (peer, txguard):
                times[server.name].append(post(server, transaction_json(t)))
        for name in latencies:
            latencies[name].append(times[name])
    return latencies


def paired(measured: list[float], baselines: list[float]) -> tuple[float, list[float]]:
    ratios = [m / b for m, b in zip(measured, baselines, strict=True)]
    return round(statistics.median(ratios), 3), [round(r, 3) for r in ratios]


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    rounds = 3
    with tempfile.TemporaryDirectory(prefix="txguard-peer-bench-") as log_dir:
        txguard, peer = start_servers(database, Path(log_dir))
        try:
            # Warm: both have served a batch and single requests before anything is measured.
            warm = [transaction_json(t) for t in rows(1000, 1, ACCOUNTS, seed=1, start=T0 - MONTH_MS)]
            for server in (txguard, peer):
                post(server, batch_body(server, warm))
                for item in warm[:20]:
                    post(server, {**item, "transaction_id": item["transaction_id"] + 5_000_000})
            idle_mb = {s.name: s.memory_mb("VmRSS") for s in (txguard, peer)}
            for server in (txguard, peer):
                server.reset_peak_memory()
            count = max(5000, int(10_000 * scale))
            by_size = {
                size: batch_rounds(txguard, peer, size, count, rounds, first_round=i * rounds)
                for i, size in enumerate((1000, 5000))
            }
            peak_mb = {s.name: s.memory_mb("VmHWM") for s in (txguard, peer)}
            requests = max(100, int(300 * scale))
            singles = single_rounds(
                txguard, peer, requests, 5, first_id=900_000_000, start=T0 + MONTH_MS * (2 * rounds + 1)
            )
        finally:
            txguard.stop()
            peer.stop()
    results = []
    for size, rates in by_size.items():
        ratio, by_round = paired(rates["txguard"], rates["peer"])
        results.append(
            {
                "name": f"POST /store_data, batches of {size:,} over HTTP: txguard (local API emulator) vs the "
                "naive Flask + psycopg2 app",
                "transactions_per_round": count,
                "rounds": rounds,
                "baseline_rows_per_s": round(statistics.median(rates["peer"])),
                "measured_rows_per_s": round(statistics.median(rates["txguard"])),
                "ratio": ratio,
                "ratio_by_round": by_round,
                "target": "",
            }
        )
    p50s = {name: [p50(r) for r in rs] for name, rs in singles.items()}
    p99s = {name: [p99(r) for r in rs] for name, rs in singles.items()}
    ratio, by_round = paired(p50s["txguard"], p50s["peer"])
    p99_ratio, p99_by_round = paired(p99s["txguard"], p99s["peer"])
    results.append(
        {
            "name": "single POST /store_data over HTTP (sequential, warm): txguard (local API emulator) vs the naive "
            "Flask + psycopg2 app",
            "requests_per_round": requests,
            "rounds": len(singles["txguard"]),
            "baseline_p50_ms": ms(statistics.median(p50s["peer"])),
            "measured_p50_ms": ms(statistics.median(p50s["txguard"])),
            "ratio": ratio,
            "ratio_by_round": by_round,
            "baseline_p99_ms": ms(statistics.median(p99s["peer"])),
            "measured_p99_ms": ms(statistics.median(p99s["txguard"])),
            "p99_ratio": p99_ratio,
            "p99_ratio_by_round": p99_by_round,
            "target": "<= 1",
            "met": ratio <= 1,
        }
    )
    results.append(
        {
            "name": "peak memory (RSS) of the server process during the batch rounds: txguard (local API emulator) "
            "vs the naive Flask + psycopg2 app",
            "baseline_peak_mb": round(peak_mb["peer"], 1),
            "measured_peak_mb": round(peak_mb["txguard"], 1),
            "ratio": round(peak_mb["txguard"] / peak_mb["peer"], 3),
            "baseline_idle_mb": round(idle_mb["peer"], 1),
            "measured_idle_mb": round(idle_mb["txguard"], 1),
            "target": "",
        }
    )
    return results
