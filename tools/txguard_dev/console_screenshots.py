"""`make screenshots`: a picture of each console page, taken in headless Chromium, into docs/console/.

Starts `txguard local` on a database of its own (dropped afterwards), posts labelled synthetic traffic through
the API, stores the generator's truth as labels (source "generator", the pattern as the reason), then signs in
and photographs every page. Nothing is drawn by hand.
"""

from __future__ import annotations

import argparse
import csv
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2

from txguard_dev.local.postgres import create_database, drop_database, find_or_start_server

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "overview": "/console",
    "decisions": "/console/decisions?flagged=yes",
    "decision": None,  # the first flagged decision, found on the decisions page
    "account": None,
    "review": "/console/review",
    "rules": "/console/rules",
    "models": "/console/models",
    "explore": "/console/explore",
    "what-if": "/console/what-if?decide=1&amount=900&count=20&mean_amount=30&max_amount=80&count_1m=0",
}


def _wait_ready(log: Path, process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("txguard local ready on "):
                return line.removeprefix("txguard local ready on ").strip()
        if process.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError("txguard local did not start:\n" + log.read_text(errors="replace"))


def _store_labels(database_url: str, labels_csv: Path) -> int:
    with labels_csv.open(newline="") as file:
        rows = [(int(r["transaction_id"]), r["pattern"] != "genuine", r["pattern"]) for r in csv.DictReader(file)]
    conn = psycopg2.connect(database_url)
    try:
        with conn, conn.cursor() as cur:
            cur.executemany(
                """INSERT INTO labels (transaction_id, fraud, source, labelled_at, reason)
                   SELECT %s, %s, 'generator', least(ts + interval '7 days', date_trunc('milliseconds', now())), %s
                   FROM transactions WHERE transaction_id = %s
                   ON CONFLICT DO NOTHING""",
                [(tid, fraud, pattern, tid) for tid, fraud, pattern in rows],
            )
    finally:
        conn.close()
    return len(rows)


def take(out: Path, transactions: int) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    binary = Path(sys.executable).with_name("txguard")
    key = secrets.token_urlsafe(16)
    with find_or_start_server() as server, tempfile.TemporaryDirectory() as tmp:
        name = create_database(server, prefix="txguard_screenshots")
        url = server.database_url(name)
        log = Path(tmp) / "local.log"
        env = {k: v for k, v in os.environ.items() if k not in {"TXGUARD_API_KEY", "PORT"}} | {"DATABASE_URL": url}
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(binary), "local", "--port", "0", "--api-key", key],
                cwd=ROOT,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:
            base = _wait_ready(log, process)
            labels = Path(tmp) / "labels.csv"
            subprocess.run(
                [
                    str(binary),
                    "generate",
                    "--num-transactions",
                    str(transactions),
                    "--num-accounts",
                    "300",
                    "--seed",
                    "16",
                    "--post-url",
                    f"{base}/store_data",
                    "--api-key",
                    key,
                    "--labels-out",
                    str(labels),
                    "--no-progress",
                ],
                check=True,
                env=env,
            )
            _store_labels(url, labels)
            with sync_playwright() as p:
                browser = p.chromium.launch(
                    executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=["--no-sandbox"]
                )
                page = browser.new_page(viewport={"width": 1280, "height": 900}, base_url=base)
                page.goto("/console")
                page.fill("input[name=analyst]", "analyst.one")
                page.fill("input[name=key]", key)
                page.click("button[type=submit]")
                page.screenshot(path=str(out / "signed-in.png"))
                for shot, path in PAGES.items():
                    if shot == "decision":
                        page.goto("/console/decisions?flagged=yes")
                        page.click("table[data-table=decisions] tbody tr >> nth=0 >> a >> nth=0")
                    elif shot == "account":
                        page.goto("/console/decisions?flagged=yes")
                        page.click("table[data-table=decisions] tbody tr >> nth=0 >> a >> nth=1")
                    else:
                        assert path is not None
                        page.goto(path)
                    page.screenshot(path=str(out / f"{shot}.png"), full_page=True)
                    print(f"{out / shot}.png")
                browser.close()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(30)
            drop_database(server, name)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "console")
    parser.add_argument("--transactions", type=int, default=20_000)
    args = parser.parse_args()
    take(args.out, args.transactions)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
