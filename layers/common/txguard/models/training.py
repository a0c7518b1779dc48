"""Training a fraud model on labelled history: `txguard train` and TrainFunction.

What is read (storage.training_data): the feature vectors the decisions stored at ingest (exactly what serving
computed), and for each the label in force at the cutoff `until` (labels with labelled_at < until; a transaction
without one counts as genuine). Nothing at or after the cutoff is read.

The split, by transaction time (UTC, epoch ms), with g = gap_days and v = valid_days:

    train_from ........ train_to | g days | valid_from .. valid_to | g days | until (label cutoff)

- the validation window is the v days (default 7) that end g days (default 7) before the cutoff: their labels had
  g days to arrive (a chargeback takes days), so the window is judged on nearly final labels;
- the training window ends g days before the validation window starts (the Fraud Detection Handbook's "delay
  period": the model is validated as it would serve, on days it never saw the labels of, and a fraud campaign
  running across the boundary does not leak into the validation figures); it starts at the first stored
  transaction with features, or `train_days` before its end.

The model: LightGBM gradient-boosted trees (binary objective), `rounds` boosting rounds, reproducible with `seed`
(deterministic=True, one fixed thread count, row-wise histograms). Class imbalance: frauds are weighted by
`scale_pos_weight`, by default sqrt(genuine / fraud) of the training window. The full ratio (LightGBM's
is_unbalance) would inflate every probability by that factor; the square root raises the weight of the rare class
while keeping the score usable as a probability next to the rules' (the decision score is 1 − (1 − p)(1 − r)).

Reported on the validation window (metrics, stored in the registry row): ROC AUC, average precision, Card
Precision@k (txguard.scoring, the Handbook's definitions), precision, recall and F1 at the threshold that
maximises F1 on the validation window (the artifact's decision threshold), the confusion matrix there, the
precision–recall curve (at most 200 points), feature importance (total gain of each feature's splits), and a
threshold table (precision, recall and false-positive rate at scores 0.00, 0.01, ..., 0.99). The same ranking
metrics are given, on the same rows, for a scikit-learn decision tree (the baseline), for the current champion
(scored by txguard.models.scoring.TreeModel, as serving scores it) and for the stored decisions' own scores.

lightgbm, numpy and scikit-learn are imported when training runs: serving never loads them. Without
scikit-learn the baseline is reported as unavailable.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg2.extensions

from txguard.errors import BadInput
from txguard.features import ALL_FEATURES, DAY_MS
from txguard.models.artifact import EXCLUDED_FEATURES
from txguard.scoring import average_precision, card_precision_at_k, roc_auc
from txguard.storage import models as registry
from txguard.storage import training_data

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    FloatArray = npt.NDArray[np.float64]

DEFAULT_GAP_DAYS = 7
DEFAULT_VALID_DAYS = 7
DEFAULT_ROUNDS = 300
DEFAULT_SEED = 1
NUM_THREADS = 2  # fixed, so that a run is the same on any machine; deterministic=True does the rest
THRESHOLD_LEVELS = 100  # the threshold table's score levels: 0.00, 0.01, ..., 0.99
CURVE_POINTS = 200  # at most this many precision–recall points are kept
BASELINE_MAX_DEPTH = 6

# LightGBM parameters every run uses; `seed` and `scale_pos_weight` are added per run.
BASE_PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_data_in_leaf": 100,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": NUM_THREADS,
    "verbose": -1,
}


class TrainingError(BadInput):
    """Training cannot run on what is stored (no rows, no fraud in a window, unknown features, bad windows); the
    message says what and what to change. Nothing was registered."""

    code = "training_refused"


@dataclass(frozen=True)
class TrainingOptions:
    """A training run. Times are epoch ms; days are whole days. `features` None: every feature stored with every
    transaction of the training window. `scale_pos_weight` None: sqrt(genuine / fraud) of the training window."""

    until: int
    name: str
    seed: int = DEFAULT_SEED
    gap_days: int = DEFAULT_GAP_DAYS
    valid_days: int = DEFAULT_VALID_DAYS
    train_days: int | None = None
    features: tuple[str, ...] | None = None
    rounds: int = DEFAULT_ROUNDS
    scale_pos_weight: float | None = None
    k: int = 100
    created_by: str | None = None


@dataclass(frozen=True)
class Windows:
    """[train_from, train_to), [valid_from, valid_to) and the label cutoff, epoch ms."""

    train_from: int
    train_to: int
    valid_from: int
    valid_to: int
    label_cutoff: int

    def as_dict(self) -> dict[str, int]:
        return {
            "train_from": self.train_from,
            "train_to": self.train_to,
            "valid_from": self.valid_from,
            "valid_to": self.valid_to,
            "label_cutoff": self.label_cutoff,
        }


def windows(options: TrainingOptions, first_ts: int | None) -> Windows:
    """The split (see the module docstring) for a cutoff and the first stored transaction with features (epoch
    ms; None: nothing stored). Raises TrainingError when the training window would be empty."""
    valid_to = options.until - options.gap_days * DAY_MS
    valid_from = valid_to - options.valid_days * DAY_MS
    train_to = valid_from - options.gap_days * DAY_MS
    if first_ts is None:
        raise TrainingError("no transaction is stored with its features: nothing to train on")
    if options.train_days is not None:
        train_from = train_to - options.train_days * DAY_MS
    else:
        train_from = first_ts - first_ts % DAY_MS  # the first stored day, from its midnight (UTC)
    if train_from >= train_to or first_ts >= train_to:
        raise TrainingError(
            f"the training window would be empty: it ends at {_date(train_to)} (--until {_date(options.until)} less "
            f"{options.gap_days} + {options.valid_days} + {options.gap_days} days of gap, validation and gap), and "
            f"the first transaction stored with features is of {_date(first_ts)}"
        )
    return Windows(train_from, train_to, valid_from, valid_to, options.until)


def _date(ms: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class Matrix:
    """One window's rows: features (n × len(features), NaN where missing), labels 0/1, and for the ranking
    metrics each row's account and time; `stored_score` the stored decision's score."""

    x: FloatArray
    y: npt.NDArray[np.int8]
    account_ids: list[int]
    ts: list[int]
    stored_score: list[float]
    labelled: int
    frauds: int

    @property
    def rows(self) -> int:
        return int(self.y.shape[0])


Progress = Callable[[str, int, int | None], None]  # (stage, advance by, total or None)


def _read(
    conn: psycopg2.extensions.connection,
    features: Sequence[str],
    from_ms: int,
    to_ms: int,
    cutoff_ms: int,
    progress: Progress | None,
    stage: str,
    total: int | None,
) -> Matrix:
    import numpy as np

    xs, ys, accounts, times, scores = [], [], [], [], []
    labelled = 0
    for chunk in training_data.labelled_rows(conn, features, from_ms, to_ms, cutoff_ms):
        xs.append(np.array(chunk.values, dtype=np.float64).reshape(len(chunk.values), len(features)))
        ys.append(np.array(chunk.fraud, dtype=np.int8))
        accounts.extend(chunk.account_ids)
        times.extend(chunk.ts)
        scores.extend(chunk.score)
        labelled += sum(chunk.labelled)
        if progress is not None:
            progress(stage, len(chunk.values), total)
    x = np.concatenate(xs) if xs else np.empty((0, len(features)))
    y = np.concatenate(ys) if ys else np.empty(0, dtype=np.int8)
    return Matrix(x, y, accounts, times, scores, labelled, int(y.sum()))


def chosen_features(counts: training_data.WindowCounts, wanted: tuple[str, ...] | None) -> tuple[str, ...]:
    """The features to train on: `wanted` (each must be a feature serving computes, stored with every row of the
    training window), or by default every feature stored with every row, in name order. Raises TrainingError."""
    everywhere = {name for name, n in counts.feature_counts.items() if n == counts.with_features}
    usable = sorted(name for name in everywhere if name in ALL_FEATURES and name not in EXCLUDED_FEATURES)
    if wanted is None:
        if not usable:
            raise TrainingError(
                "no feature is stored with every transaction of the training window; record the features to train "
                "on in the rule set, or name them with --features"
            )
        return tuple(usable)
    problems = []
    for name in wanted:
        if name in EXCLUDED_FEATURES:
            problems.append(f"{name!r} is the model's own score: a model cannot be trained on it")
        elif name not in ALL_FEATURES:
            problems.append(f"{name!r} is not a feature serving computes")
        elif name not in everywhere:
            stored = counts.feature_counts.get(name, 0)
            problems.append(
                f"{name!r} is stored with {stored:,} of the {counts.with_features:,} transactions of the training "
                "window, not all of them"
            )
    if len(set(wanted)) != len(wanted):
        problems.append("a feature is named twice")
    if problems:
        raise TrainingError("--features: " + "; ".join(problems))
    return wanted


@dataclass
class Ranking:
    """How one scorer ranks the validation window: ROC AUC, AP, CP@k (None where undefined), and at its
    best-F1 threshold: precision, recall, F1."""

    roc_auc: float | None
    average_precision: float | None
    card_precision: float | None
    f1: float
    precision: float
    recall: float
    threshold: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "roc_auc": self.roc_auc,
            "average_precision": self.average_precision,
            "card_precision_at_k": self.card_precision,
            "f1": self.f1,
            "precision": self.precision,
            "recall": self.recall,
            "threshold": self.threshold,
        }


def best_f1_threshold(scores: FloatArray, y: npt.NDArray[np.int8]) -> tuple[float, float, float, float]:
    """(threshold, precision, recall, F1) at the threshold maximising F1 over the distinct scores (flagged: score
    >= threshold); the highest such threshold on ties. (1.0, 0, 0, 0) when there is no fraud."""
    import numpy as np

    positives = int(y.sum())
    if positives == 0 or scores.size == 0:
        return 1.0, 0.0, 0.0, 0.0
    order = np.argsort(-scores, kind="stable")
    s, labels = scores[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]  # a threshold flags a whole tie group
    tp = np.cumsum(labels)[last_of_tie]
    flagged = np.arange(1, s.size + 1)[last_of_tie]
    thresholds = s[last_of_tie]
    precision = tp / flagged
    recall = tp / positives
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    best = int(np.argmax(f1))  # the first maximum: the highest threshold among equals
    return float(thresholds[best]), float(precision[best]), float(recall[best]), float(f1[best])


def ranking(scores: FloatArray, matrix: Matrix, k: int) -> Ranking:
    """The ranking metrics of `scores` (one per row of `matrix`, higher = more suspicious) on its labels."""
    listed = [float(s) for s in scores]
    truth = [int(v) for v in matrix.y]
    both = 0 < matrix.frauds < matrix.rows
    cp = card_precision_at_k(
        ((t // DAY_MS, a, s, bool(f)) for t, a, s, f in zip(matrix.ts, matrix.account_ids, listed, truth, strict=True)),
        k,
    )
    threshold, precision, recall, f1 = best_f1_threshold(scores, matrix.y)
    return Ranking(
        roc_auc(listed, truth) if both else None,
        average_precision(listed, truth) if matrix.frauds else None,
        cp.mean,
        f1,
        precision,
        recall,
        threshold,
    )


def threshold_table(
    scores: FloatArray, y: npt.NDArray[np.int8], levels: int = THRESHOLD_LEVELS
) -> list[dict[str, Any]]:
    """For each score level t = 0, 1/levels, ..., (levels−1)/levels: flagged = score >= t, with precision (1.0
    when nothing is flagged), recall, false-positive rate (flagged genuine / genuine) and the count flagged."""
    import numpy as np

    positives = int(y.sum())
    negatives = int(y.size - positives)
    ordered = np.sort(scores)
    fraud_scores = np.sort(scores[y == 1])
    table = []
    for i in range(levels):
        t = i / levels
        flagged = int(ordered.size - np.searchsorted(ordered, t, side="left"))
        tp = int(fraud_scores.size - np.searchsorted(fraud_scores, t, side="left"))
        fp = flagged - tp
        table.append(
            {
                "score": round(t, 6),
                "flagged": flagged,
                "precision": tp / flagged if flagged else 1.0,
                "recall": tp / positives if positives else 0.0,
                "fpr": fp / negatives if negatives else 0.0,
            }
        )
    return table


def precision_recall_curve(
    scores: FloatArray, y: npt.NDArray[np.int8], points: int = CURVE_POINTS
) -> list[dict[str, float]]:
    """The precision–recall curve (one point per distinct score, highest first), thinned to at most `points`
    points evenly spread over recall; each {threshold, precision, recall}."""
    import numpy as np

    positives = int(y.sum())
    if positives == 0 or scores.size == 0:
        return []
    order = np.argsort(-scores, kind="stable")
    s, labels = scores[order], y[order]
    last_of_tie = np.r_[s[1:] != s[:-1], True]
    tp = np.cumsum(labels)[last_of_tie]
    flagged = np.arange(1, s.size + 1)[last_of_tie]
    thresholds = s[last_of_tie]
    precision, recall = tp / flagged, tp / positives
    if thresholds.size > points:
        targets = np.linspace(0, 1, points)
        keep = np.unique(np.clip(np.searchsorted(recall, targets, side="left"), 0, thresholds.size - 1))
        thresholds, precision, recall = thresholds[keep], precision[keep], recall[keep]
    return [
        {"threshold": float(t), "precision": float(p), "recall": float(r)}
        for t, p, r in zip(thresholds, precision, recall, strict=True)
    ]


@dataclass
class TrainingResult:
    """What a run did: the version registered, and its report (what `--json` prints; the registry row holds
    `metrics` and `thresholds`)."""

    model: registry.ModelVersion
    report: dict[str, Any] = field(default_factory=dict)


def _lightgbm_params(options: TrainingOptions, scale_pos_weight: float) -> dict[str, Any]:
    return {**BASE_PARAMS, "seed": options.seed, "scale_pos_weight": scale_pos_weight}


def _baseline(train: Matrix, valid: Matrix, seed: int, k: int) -> dict[str, Any]:
    """A scikit-learn decision tree (depth BASELINE_MAX_DEPTH, balanced class weights, missing values handled by
    the tree itself) on the same rows: the baseline the model must beat."""
    try:
        from sklearn.tree import DecisionTreeClassifier
    except ImportError:
        return {"available": False, "reason": "scikit-learn is not installed here (it is in `txguard train`)"}
    tree = DecisionTreeClassifier(max_depth=BASELINE_MAX_DEPTH, class_weight="balanced", random_state=seed)
    tree.fit(train.x, train.y)
    scores = tree.predict_proba(valid.x)[:, 1]
    return {
        "available": True,
        "model": f"DecisionTreeClassifier(max_depth={BASELINE_MAX_DEPTH}, class_weight='balanced')",
        **ranking(scores, valid, k).as_dict(),
    }


def compare_with_champion(
    cur: psycopg2.extensions.cursor, artifacts: registry.ArtifactSource, valid: Matrix, features: Sequence[str], k: int
) -> dict[str, Any]:
    """The current champion's ranking of the validation rows, scored as serving scores them (TreeModel); or why it
    cannot be compared (no champion, its artifact unusable, a feature of it not among those read)."""
    import numpy as np

    champion = registry.champion(cur)
    if champion is None:
        return {"available": False, "reason": "there is no champion"}
    missing = [name for name in champion.features if name not in features]
    if missing:
        return {
            "available": False,
            "version": champion.version,
            "reason": f"the champion reads features this run did not: {missing}",
        }
    try:
        registry.check_artifact(champion, artifacts)
        from txguard.models.artifact import decode_artifact
        from txguard.models.scoring import TreeModel

        model = TreeModel.from_artifact(decode_artifact(artifacts.get(champion.artifact_sha256)))
    except (registry.UnusableModel, ImportError) as exc:
        return {"available": False, "version": champion.version, "reason": str(exc)}
    columns = [list(features).index(name) for name in model.features]
    scores = np.asarray(model.score_matrix(valid.x[:, columns]), dtype=np.float64)
    return {
        "available": True,
        "version": champion.version,
        "name": champion.name,
        **ranking(scores, valid, k).as_dict(),
    }


def train(
    conn: psycopg2.extensions.connection,
    options: TrainingOptions,
    artifacts: Any,
    progress: Progress | None = None,
) -> TrainingResult:
    """Train, evaluate and register a candidate (see the module docstring). `conn` is an open connection (no
    transaction pending); `artifacts` has put(bytes) -> sha256 and get(sha256) -> bytes (models.artifact_store).
    `progress(stage, advance, total)` is told of rows read ("train", "valid") and rounds done ("rounds").

    Raises TrainingError (nothing registered) when the windows are empty, a window has no fraud, or a named
    feature cannot be used; ArtifactUnavailable when the artifact cannot be stored; psycopg2.Error on database
    trouble."""
    # OpenMP threads that wait by spinning slow LightGBM ninefold on a machine whose cores other work also uses
    # (measured: 0.78 against 0.086 s a round, 892,000 rows, 2 threads, load average 7 on 2 cores); sleeping
    # costs nothing when the cores are free. Read when the OpenMP runtime loads: set before lightgbm is imported.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import lightgbm
    import numpy as np

    from txguard.models.artifact import encode_artifact

    # One snapshot for every read: the windows, the features and the labels agree with each other.
    conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
    try:
        with conn:
            with conn.cursor() as cur:
                split = windows(options, training_data.first_transaction_ms(cur))
                counts = training_data.window_counts(cur, split.train_from, split.train_to)
                valid_counts = training_data.window_counts(cur, split.valid_from, split.valid_to)
            if counts.with_features == 0:
                raise TrainingError(
                    f"no transaction with stored features in the training window {_date(split.train_from)} to "
                    f"{_date(split.train_to)}"
                )
            features = chosen_features(counts, options.features)
            train_rows = _read(
                conn,
                features,
                split.train_from,
                split.train_to,
                split.label_cutoff,
                progress,
                "train",
                counts.with_features,
            )
            valid_rows = _read(
                conn,
                features,
                split.valid_from,
                split.valid_to,
                split.label_cutoff,
                progress,
                "valid",
                valid_counts.with_features,
            )
    finally:
        conn.set_session(isolation_level="DEFAULT", readonly=False)
    for label, rows, window in (
        ("training", train_rows, (split.train_from, split.train_to)),
        ("validation", valid_rows, (split.valid_from, split.valid_to)),
    ):
        if rows.frauds == 0:
            raise TrainingError(
                f"the {label} window {_date(window[0])} to {_date(window[1])} has {rows.rows:,} transactions with "
                f"features and no fraud labelled before {_date(split.label_cutoff)}: move --until, or widen the "
                "windows"
            )
        if rows.frauds == rows.rows:
            raise TrainingError(f"every transaction of the {label} window is labelled fraud: nothing to learn from")

    genuine = train_rows.rows - train_rows.frauds
    scale = options.scale_pos_weight if options.scale_pos_weight is not None else math.sqrt(genuine / train_rows.frauds)
    params = _lightgbm_params(options, scale)
    dataset = lightgbm.Dataset(
        train_rows.x, label=train_rows.y, feature_name=list(features), free_raw_data=False, params={"verbose": -1}
    )

    def on_round(env: Any) -> None:
        if progress is not None:
            progress("rounds", 1, options.rounds)

    booster = lightgbm.train(params, dataset, num_boost_round=options.rounds, callbacks=[on_round])
    valid_scores = np.asarray(booster.predict(valid_rows.x), dtype=np.float64)
    model_ranking = ranking(valid_scores, valid_rows, options.k)
    flagged = valid_scores >= model_ranking.threshold
    confusion = {
        "tp": int(np.sum(flagged & (valid_rows.y == 1))),
        "fp": int(np.sum(flagged & (valid_rows.y == 0))),
        "fn": int(np.sum(~flagged & (valid_rows.y == 1))),
        "tn": int(np.sum(~flagged & (valid_rows.y == 0))),
    }
    gains = booster.feature_importance(importance_type="gain")
    total_gain = float(np.sum(gains)) or 1.0
    ranked = sorted(((float(g), f) for f, g in zip(features, gains, strict=True)), key=lambda i: (-i[0], i[1]))
    importance = [{"feature": f, "gain": g, "share": g / total_gain} for g, f in ranked]
    stored = np.asarray(valid_rows.stored_score, dtype=np.float64)

    artifact = encode_artifact(list(features), booster.dump_model(), model_ranking.threshold)
    sha256 = artifacts.put(artifact)

    with conn, conn.cursor() as cur:
        champion_report = compare_with_champion(cur, artifacts, valid_rows, features, options.k)
    metrics: dict[str, Any] = {
        "validation": {
            "rows": valid_rows.rows,
            "frauds": valid_rows.frauds,
            "labelled": valid_rows.labelled,
            **model_ranking.as_dict(),
            "k": options.k,
            "confusion_matrix": confusion,
            "precision_recall_curve": precision_recall_curve(valid_scores, valid_rows.y),
        },
        "training": {"rows": train_rows.rows, "frauds": train_rows.frauds, "labelled": train_rows.labelled},
        "feature_importance": importance,
        "baseline": _baseline(train_rows, valid_rows, options.seed, options.k),
        "champion": champion_report,
        "stored_decisions": ranking(stored, valid_rows, options.k).as_dict(),
    }
    metrics = _finite(metrics)
    thresholds = threshold_table(valid_scores, valid_rows.y)
    new = registry.NewModel(
        name=options.name,
        artifact_sha256=sha256,
        features=tuple(features),
        train_from=split.train_from,
        train_to=split.train_to,
        gap_days=options.gap_days,
        valid_from=split.valid_from,
        valid_to=split.valid_to,
        label_cutoff=split.label_cutoff,
        seed=options.seed,
        params={**params, "num_boost_round": options.rounds, "lightgbm": lightgbm.__version__},
        metrics=metrics,
        thresholds=thresholds,
        created_by=options.created_by,
    )
    with conn, conn.cursor() as cur:
        model = registry.register(cur, new)
    report = {
        "version": model.version,
        "name": model.name,
        "status": model.status,
        "artifact_sha256": sha256,
        "features": list(features),
        "windows": split.as_dict(),
        "gap_days": options.gap_days,
        "seed": options.seed,
        "params": new.params,
        "metrics": metrics,
    }
    return TrainingResult(model, report)


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities (undefined ratios) become None, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
