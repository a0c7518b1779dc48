"""Small trained models for serving tests: LightGBM trained on a fixture, written as an artifact, registered.

Training here is the training library's (a development dependency); serving scores with txguard's own evaluator.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psycopg2.extensions

from txguard.models.artifact import encode_artifact
from txguard.models.artifact_store import DirectoryStore
from txguard.storage import models

DAY = 86_400_000
# The fixture's transactions are fraud when large; the model sees the amount and how busy the account was.
FEATURES = ("amount", "count_24h", "seconds_since_previous")


def fixture_rows(size: int = 600, seed: int = 7) -> tuple[list[list[float | None]], list[int]]:
    """Rows of FEATURES and labels: amounts above 400 are fraud (a few genuine ones too: noise)."""
    rng = random.Random(seed)
    rows: list[list[float | None]] = []
    labels = []
    for _ in range(size):
        amount = rng.choice([rng.uniform(1, 200), rng.uniform(400, 900)])
        previous = None if rng.random() < 0.1 else rng.uniform(1, 86_400)
        rows.append([round(amount, 2), float(rng.randint(0, 10)), previous])
        labels.append(int(amount > 400 and rng.random() > 0.05))
    return rows, labels


def trained_artifact(threshold: float = 0.5, seed: int = 7, trees: int = 20) -> bytes:
    """A LightGBM binary model trained on fixture_rows(seed), as artifact bytes."""
    return trained_model(threshold, seed, trees)[0]


def trained_model(threshold: float = 0.5, seed: int = 7, trees: int = 20) -> tuple[bytes, str]:
    """A LightGBM binary model trained on fixture_rows(seed): artifact bytes, and LightGBM's own text form."""
    import lightgbm
    import numpy as np

    rows, labels = fixture_rows(seed=seed)
    data = np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)
    params = {
        "objective": "binary",
        "num_leaves": 4,
        "min_data_in_leaf": 5,
        "learning_rate": 0.2,
        "seed": seed,
        "deterministic": True,
        "verbose": -1,
        "num_threads": 1,
    }
    booster = lightgbm.train(params, lightgbm.Dataset(data, label=labels, feature_name=list(FEATURES)), trees)
    return encode_artifact(FEATURES, booster.dump_model(), threshold), booster.model_to_string()


def register(
    cur: psycopg2.extensions.cursor,
    directory: Path,
    data: bytes,
    name: str = "fixture",
    features: Sequence[str] = FEATURES,
) -> int:
    """Store the artifact under `directory` (TXGUARD_MODEL_DIR) and register it as a candidate; its version."""
    sha = DirectoryStore(directory).put(data)
    t0 = 1_600_000_000_000
    version = models.register(
        cur,
        models.NewModel(
            name=name,
            artifact_sha256=sha,
            features=tuple(features),
            train_from=t0,
            train_to=t0 + 10 * DAY,
            gap_days=1,
            valid_from=t0 + 11 * DAY,
            valid_to=t0 + 20 * DAY,
            label_cutoff=t0 + 21 * DAY,
            seed=7,
            params={"fixture": True},
            metrics={},
            thresholds=[],
        ),
    )
    return version.version


def artifact_path(directory: Path, sha256: str) -> Path:
    return directory / "models" / f"{sha256}.json"


def dump_of(data: bytes) -> dict[str, Any]:
    import json

    document: dict[str, Any] = json.loads(data)
    return document
