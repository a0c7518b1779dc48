"""Serving a champion model at ingest: batch ingest with the champion vs with the rules alone, in the same run.

Both sides go through the ingest handler with the packaged default rule set (which records the model's features, so
both compute the same features): the baseline decides with the rules alone, the measured side also scores every
transaction with a champion of LightGBM's usual size (300 trees of 31 leaves on the Handbook model's features) and
explains each flagged decision. Rounds alternate between the two (promote, retire), each pair moments apart (`make
bench ARGS='--only serving'`); each round promotes a new champion version whose threshold flags FLAGGED_SHARE of the
features that round's rules-only half stored (all of that half: both halves of a round have the same shape, each a
month after the previous half, so the measured half flags about that share too). Also: the model's own cost in µs
per transaction (score_matrix on a 5,000-row batch, one row alone, and the TreeSHAP explanation of one flagged
decision), and how many decisions the champion flagged (each explained).
"""

from __future__ import annotations

import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

from bench.harness import BenchDatabase, timed
from bench.ingest_bench import T0, handler_rate, rows
from txguard.detection import detector_cache

# The Handbook model's inputs, as the default rule set records them.
MODEL_FEATURES = (
    "amount",
    "count_24h",
    "mean_amount_24h",
    "count_7d",
    "mean_amount_7d",
    "count_30d",
    "mean_amount_30d",
    "amount_to_mean_30d",
    "seconds_since_previous",
    "merchant_used_before",
    "hour_of_day",
    "is_night",
    "is_weekend",
    "merchant_count_24h",
    "merchant_count_7d",
    "merchant_count_30d",
    "merchant_risk_1d",
    "merchant_risk_7d",
    "merchant_risk_30d",
)
TREES = 300
LEAVES = 31
ROUNDS = 5
DAY_MS = 86_400_000


def trained_dump(seed: int = 5) -> dict[str, Any]:
    """A champion-sized LightGBM model (its dump) on random rows of MODEL_FEATURES (the label depends on a few of
    them, so the trees grow to full size)."""
    import lightgbm
    import numpy as np

    rng = np.random.default_rng(seed)
    data = rng.gamma(2.0, 50.0, size=(20_000, len(MODEL_FEATURES)))
    data[rng.random(data.shape) < 0.05] = np.nan
    signal = np.nan_to_num(data[:, 0]) / 100 + np.nan_to_num(data[:, 7]) / 50 - np.nan_to_num(data[:, 1]) / 80
    labels = (signal + rng.normal(0, 1, len(data)) > 2.5).astype(int)
    params = {
        "objective": "binary",
        "num_leaves": LEAVES,
        "min_data_in_leaf": 20,
        "learning_rate": 0.05,
        "seed": seed,
        "deterministic": True,
        "verbose": -1,
        "num_threads": 1,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(data, label=labels, feature_name=list(MODEL_FEATURES)), TREES)
    dump: dict[str, Any] = booster.dump_model()
    return dump


FLAGGED_SHARE = 0.01  # what a champion's threshold flags on card data, about: the decisions it explains


def calibrated_artifact(database: BenchDatabase, dump: dict[str, Any], ids: tuple[int, int]) -> bytes:
    """The model with a threshold that flags FLAGGED_SHARE of the transactions stored with ids in [first, last]
    (`ids`; their stored features: the default rule set records the model's), so that the measured ingest, traffic
    of the same shape, explains about that share.

    The whole rules-only half, not its latest rows: late in a half, an account's 30-day windows still hold the
    previous half (a month earlier) and its 24-hour ones this half's earlier rows, so the latest 20,000 of 50,000
    score lower than the half as a whole, and a threshold set on them flagged 2.3 % of the measured half (which
    stored exactly the features ingest computed and scored: the scores recomputed from them are equal)."""
    import numpy as np

    from txguard.models.artifact import decode_artifact, encode_artifact
    from txguard.models.scoring import TreeModel

    stored = _registry(
        database,
        lambda cur: (
            cur.execute("SELECT features FROM transactions WHERE transaction_id BETWEEN %s AND %s", ids),
            cur.fetchall(),
        )[1],
    )
    matrix = [[None if (v := f.get(name)) is None else float(v) for name in MODEL_FEATURES] for (f,) in stored]
    model = TreeModel.from_artifact(decode_artifact(encode_artifact(MODEL_FEATURES, dump, 0.5)))
    threshold = float(np.quantile(model.score_matrix(matrix), 1 - FLAGGED_SHARE))
    return encode_artifact(MODEL_FEATURES, dump, threshold)


def _registry(database: BenchDatabase, work: Any) -> Any:
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            return work(cur)
    finally:
        conn.close()
        detector_cache.clear()


def model_costs(data: bytes, count: int = 5000) -> dict[str, float]:
    """µs per transaction: scoring a batch's matrix, one row alone, and one explanation (TreeSHAP)."""
    from txguard.models.artifact import decode_artifact
    from txguard.models.scoring import TreeModel

    model = TreeModel.from_artifact(decode_artifact(data))
    rng = random.Random(3)
    matrix = [[rng.uniform(0, 300) if rng.random() > 0.05 else None for _ in MODEL_FEATURES] for _ in range(count)]
    batch = min(timed(lambda: model.score_matrix(matrix)) for _ in range(3)) * 1e6 / count
    one = min(timed(lambda: [model.score(row) for row in matrix[:200]]) for _ in range(3)) * 1e6 / 200
    explain = min(timed(lambda: [model.contributions(row) for row in matrix[:20]]) for _ in range(3)) * 1e6 / 20
    return {
        "score_matrix_us_per_row": round(batch, 2),
        "score_one_row_us": round(one, 2),
        "explanation_us_per_flagged_decision": round(explain, 1),
    }


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    from txguard.models.artifact_store import DirectoryStore
    from txguard.storage import models

    count = int(50_000 * scale)
    batch_size = 5000
    dump = trained_dump()
    with tempfile.TemporaryDirectory(prefix="txguard-bench-models-") as directory:
        import os

        previous = os.environ.get("TXGUARD_MODEL_DIR")
        os.environ["TXGUARD_MODEL_DIR"] = directory
        try:
            store = DirectoryStore(Path(directory))
            # History for the accounts and merchants.
            handler_rate(database, rows(count, 1, 1000, seed=1, start=T0 - 30 * DAY_MS), batch_size, merchants=500)
            artifact = b""
            rules_only, with_model = [], []
            for n in range(ROUNDS):
                # Each round sends new ids for the same 1,000 accounts, a month after the previous round's, at 500
                # merchants: accounts with history, transactions in order, every recorded feature computed.
                first = rows(count, 10_000_000 * (2 * n + 1), 1000, seed=2 * n + 2, start=T0 + 60 * DAY_MS * n)
                second = rows(
                    count, 10_000_000 * (2 * n + 2), 1000, seed=2 * n + 3, start=T0 + 60 * DAY_MS * n + 30 * DAY_MS
                )
                rules_only.append(handler_rate(database, first, batch_size, merchants=500))
                # The threshold is set on the features this round's rules-only half stored, a month before the
                # traffic it flags (the accounts' history grows round by round, and with it their scores): a new
                # champion version each round, loaded and its explainer compiled within the measured half.
                artifact = calibrated_artifact(database, dump, (first[0][0], first[-1][0]))
                sha = store.put(artifact)
                version = _registry(database, lambda cur, sha=sha: _register(cur, models, sha)).version
                _registry(database, lambda cur, version=version: models.promote(cur, version, store))
                with_model.append(handler_rate(database, second, batch_size, merchants=500))
                _registry(database, lambda cur, version=version: models.retire(cur, version))
        finally:
            if previous is None:
                os.environ.pop("TXGUARD_MODEL_DIR", None)
            else:
                os.environ["TXGUARD_MODEL_DIR"] = previous
    by_round = _registry(
        database,
        lambda cur: (
            cur.execute(
                "SELECT count(*), count(*) FILTER (WHERE model_score >= model_threshold) FROM transactions "
                "WHERE model_version IS NOT NULL GROUP BY model_version ORDER BY model_version"
            ),
            cur.fetchall(),
        )[1],
    )
    scored, explained = sum(r[0] for r in by_round), sum(r[1] for r in by_round)
    ratios = [m / b for m, b in zip(with_model, rules_only, strict=True)]
    ratio = round(statistics.median(ratios), 3)
    return [
        {
            "name": f"batch ingest with a champion model ({TREES} trees) vs with the rules alone",
            "rows": count,
            "batch_size": batch_size,
            "rounds": ROUNDS,
            "baseline_rows_per_s": round(statistics.median(rules_only)),
            "measured_rows_per_s": round(statistics.median(with_model)),
            "ratio": ratio,
            "ratio_by_round": [round(r, 3) for r in ratios],
            "target": ">= 0.8",
            "met": ratio >= 0.8,
            "flagged_by_the_model": f"{explained} of {scored} scored (each explained)",
            "flagged_by_round": [r[1] for r in by_round],
            "model_cost": model_costs(artifact),
        }
    ]


def _register(cur: Any, models: Any, sha: str) -> Any:
    t0 = 1_500_000_000_000
    return models.register(
        cur,
        models.NewModel(
            name="bench champion",
            artifact_sha256=sha,
            features=MODEL_FEATURES,
            train_from=t0,
            train_to=t0 + 10 * DAY_MS,
            gap_days=1,
            valid_from=t0 + 11 * DAY_MS,
            valid_to=t0 + 20 * DAY_MS,
            label_cutoff=t0 + 21 * DAY_MS,
            seed=5,
            params={"num_leaves": LEAVES, "trees": TREES},
            metrics={},
            thresholds=[],
        ),
    )
