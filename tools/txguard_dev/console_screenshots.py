"""`make screenshots`: a picture of each console page, taken in headless Chromium, into docs/console/.

Starts `txguard local` on a database and a model directory of its own (both dropped afterwards), posts labelled
synthetic traffic through the API and the generator's truth through POST /labels (source "generator", the
pattern as the reason), then signs in and photographs every page; on the Models pages it trains a candidate with
the training form, opens its report, promotes it with the confirmation and shows the new detector version, then
What-if with the new champion.
Nothing is drawn by hand.
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
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from txguard_dev.local.postgres import create_database, drop_database, find_or_start_server

ROOT = Path(__file__).resolve().parents[2]
PAGES = {
    "overview": "/console",
    "decisions": "/console/decisions?flagged=yes",
    "decision": None,  # the first flagged decision, found on the decisions page
    "account": None,
    "review": "/console/review",
    "rules": "/console/rules",
    "explore": "/console/explore",
}


# What-if, after the promotion: the rules and the champion decide an edited transaction.
WHAT_IF = (
    "/console/what-if?decide=1&amount=900&count=20&mean_amount=30&max_amount=80&count_1m=0&count_24h=4"
    "&mean_amount_24h=45&count_7d=12&mean_amount_7d=35&count_30d=20&mean_amount_30d=30&seconds_since_previous=600"
)


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


def _post_labels(base: str, key: str, labels_csv: Path) -> int:
    """The generator's truth through POST /labels (source generator, the pattern as the reason), labelled now."""
    import json
    import urllib.request

    with labels_csv.open(newline="") as file:
        labels = [
            {"transaction_id": int(r["transaction_id"]), "fraud": r["pattern"] != "genuine", "source": "generator"}
            | ({"reason": r["pattern"]} if r["pattern"] != "genuine" else {})
            for r in csv.DictReader(file)
        ]
    for start in range(0, len(labels), 5000):
        body = json.dumps({"labels": labels[start : start + 5000]}).encode()
        request = urllib.request.Request(
            f"{base}/labels", data=body, method="POST", headers={"content-type": "application/json", "x-api-key": key}
        )
        with urllib.request.urlopen(request, timeout=120) as answer:
            if answer.status != 201:
                raise RuntimeError(f"POST /labels answered {answer.status}")
    return len(labels)


def _models(page: Any, out: Path) -> None:
    """Train a candidate with the console's form (labels known until tomorrow: all of them; a one-day gap, since
    the generated traffic spans about two weeks), photograph its report, promote it through the confirmation
    page, and photograph the Models page it leaves."""

    def shot(name: str) -> None:
        page.screenshot(path=str(out / f"{name}.png"), full_page=True)
        print(f"{out / name}.png")

    page.set_default_timeout(120_000)  # training runs within the request
    page.goto("/console/models/train")
    page.fill("input[name=name]", "synthetic-candidate")
    page.fill("input[name=until]", (datetime.now(UTC) + timedelta(days=1)).date().isoformat())
    page.fill("input[name=seed]", "16")
    page.fill("input[name=gap_days]", "1")
    shot("model-train")
    page.click("form button[type=submit] >> text=Train")
    if page.locator("#done").count() != 1:
        raise RuntimeError("training from the console failed:\n" + page.locator("main").inner_text())
    shot("model")
    page.click("button.promote")
    shot("model-confirm")
    page.click("button.confirm")
    page.goto("/console/models")
    shot("models")
    time.sleep(11)  # the detectors pick the new champion up within TXGUARD_RULES_CACHE_SECONDS (10 s)
    page.goto(WHAT_IF)
    shot("what-if")


def take(out: Path, transactions: int) -> None:
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    binary = Path(sys.executable).with_name("txguard")
    key = secrets.token_urlsafe(16)
    with find_or_start_server() as server, tempfile.TemporaryDirectory() as tmp:
        name = create_database(server, prefix="txguard_screenshots")
        url = server.database_url(name)
        log = Path(tmp) / "local.log"
        env = {k: v for k, v in os.environ.items() if k not in {"TXGUARD_API_KEY", "PORT", "TXGUARD_MODEL_BUCKET"}}
        env |= {"DATABASE_URL": url, "TXGUARD_MODEL_DIR": str(Path(tmp) / "models")}
        with log.open("wb") as sink:
            process = subprocess.Popen(
                [str(binary), "local", "--port", "0", f"--api-key={key}"],
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
                    f"--api-key={key}",  # a random key may start with "-", which argparse would read as an option
                    "--labels-out",
                    str(labels),
                    "--no-progress",
                ],
                check=True,
                env=env,
            )
            _post_labels(base, key, labels)
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
                _models(page, out)
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
