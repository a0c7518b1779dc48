"""`txguard replay --post-url` through the local API (`txguard local`, as `make run` serves it), with its API key."""

from __future__ import annotations

import gzip
import io
import random
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from tests.conftest import ROOT, admin_query
from tests.e2e.conftest import LocalService
from txguard_dev.cli import main

pytestmark = pytest.mark.e2e


def test_a_replay_over_http_stores_each_transaction_and_label_once(
    local_service: LocalService, e2e_database_url: str, tmp_path: Path
) -> None:
    # The e2e database is shared: ids of this test's own, far from every other test's.
    base = random.randrange(10**12, 10**15)
    with gzip.open(ROOT / "tests" / "fixtures" / "handbook-sample.csv.gz", "rt") as file:
        header, *lines = file.read().splitlines()
    shifted = []
    for line in lines:
        cells = line.split(",")
        cells[0] = str(base + int(cells[0]))
        cells[2] = str(base + int(cells[2]))
        shifted.append(",".join(cells))
    path = tmp_path / "sample.csv"
    path.write_text("\n".join([header, *shifted]) + "\n")
    argv = ["replay", "--preset", "handbook", "--no-progress", "--batch-size", "7", str(path),
            "--post-url", local_service.url + "/store_data", f"--api-key={local_service.api_key}"]  # fmt: skip

    for expected in ("30 stored, 0 duplicates", "0 stored, 30 duplicates"):
        out, err = io.StringIO(), io.StringIO()
        with redirect_stdout(out), redirect_stderr(err):
            assert main(argv) == 0, err.getvalue()
        assert expected in out.getvalue()

    ids = (base, base + 30)
    stored = admin_query(
        e2e_database_url, "SELECT count(*) FROM transactions WHERE transaction_id >= %s AND transaction_id < %s", ids
    )
    labels = admin_query(
        e2e_database_url,
        "SELECT count(*), count(*) FILTER (WHERE fraud) FROM labels WHERE transaction_id >= %s AND transaction_id < %s",
        ids,
    )
    frauds = sum(1 for line in lines if line.split(",")[5] == "1")
    assert stored == [(30,)] and labels == [(30, frauds)]
    listed = local_service.request("GET", f"/labels?account_id={base + 1}")
    assert listed.status == 200 and listed.body["labels"]
    assert all(item["source"] == "chargeback" and item["in_force"] for item in listed.body["labels"])
    assert local_service.request("GET", f"/labels?account_id={base + 1}", api_key=None).status in (401, 403)
