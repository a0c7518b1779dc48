"""What a trained model costs per transaction, in µs: scoring a batch of 1000 and a batch of one
(TreeModel.score_matrix), and explaining one decision (TreeModel.contributions), against deciding the same
transaction with the default rule set (CompiledRuleSet.decide) measured in the same run.

The model is the size the Fraud Detection Handbook's champion needs: 500 trees of 31 leaves over 30 features,
trained here by LightGBM on seeded random data with missing values (a development dependency; serving reads the
artifact without it). Loading it (decode_artifact + TreeModel.from_artifact) is reported too: a cold start that
loads the champion pays for it once.

Then the whole decision step, features + rules (+ the champion), as Python CPU µs per transaction (process time,
median of paired rounds): the row-by-row engine (`decisions_in_time_order(..., as_columns=False)`) against the
columnar one (feature_columns, rule_columns), on generated traffic replayed from nothing with the default rule
set, the JSON of each transaction's stored features and its decision built as ingest needs them (no features
dicts: `keep_features=False`; issue #19's target: ≤ 10 µs); the columnar stages also give what building every
row's features dict costs (what ingest did before) and the stored JSON written from those dicts (features_json)
beside the JSON written from the columns (json_rows).
The champion is the model above with a threshold no score reaches: TreeSHAP explanations (about 1 ms a flagged
decision, the same in both engines) are left out.
"""

from __future__ import annotations

import statistics
import time
from decimal import Decimal
from typing import Any

from bench.harness import BenchDatabase
from txguard.features import FEATURES
from txguard.models.artifact import decode_artifact, encode_artifact
from txguard.models.scoring import TreeModel
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import validate_rule_set
from txguard.storage.rule_sets import default_rule_set

# Rules reading every attribute feature (the generated transactions carry countries, devices and cards).
ATTRIBUTE_RULES = [
    {
        "id": "new_device_abroad",
        "description": "a device the account never used, in a second country within a day",
        "when": "new_device = 1 AND distinct_countries_24h >= 2",
        "score": "0.4",
    },
    {
        "id": "new_country_large",
        "description": "a large amount in a country the account never paid in",
        "when": "new_country = 1 AND amount > 500",
        "score": "0.3",
    },
    {
        "id": "many_devices_or_cards",
        "description": "three devices or two cards within a day",
        "when": "distinct_devices_24h >= 3 OR distinct_cards_24h >= 2",
        "score": "0.3",
    },
]

TREES = 500
LEAVES = 31
NUM_FEATURES = 30
ROUNDS = 5


def handbook_sized_artifact(
    trees: int = TREES, rows: int = 6000, seed: int = 0, num_features: int = NUM_FEATURES
) -> bytes:
    """Artifact bytes of a LightGBM model of `trees` trees of up to 31 leaves over the first `num_features`
    features."""
    import lightgbm as lgb
    import numpy as np

    names = list(FEATURES)[:num_features]
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, num_features))
    x[:, 1] = rng.integers(0, 6, rows)
    x[rng.random(x.shape) < 0.1] = np.nan
    signal = (np.nan_to_num(x[:, :10]) * rng.normal(size=10)).sum(axis=1)
    y = (signal + rng.normal(size=rows) * 2 > 3).astype(int)
    booster = lgb.train(
        {"objective": "binary", "num_leaves": LEAVES, "min_data_in_leaf": 5, "learning_rate": 0.05, "verbose": -1,
         "seed": seed, "num_threads": 2},
        lgb.Dataset(x, y, feature_name=names),
        num_boost_round=trees,
    )  # fmt: skip
    return encode_artifact(names, booster.dump_model(), 0.5)


def feature_rows(count: int, seed: int = 1) -> list[list[float | None]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(count, NUM_FEATURES))
    x[:, 1] = rng.integers(0, 6, count)
    return [[None if v != v or mask else v for v, mask in zip(row, rng.random(NUM_FEATURES) < 0.1, strict=True)]
            for row in x.tolist()]  # fmt: skip


def per_call_us(call: Any, repeat: int) -> float:
    """The best of ROUNDS rounds of `repeat` calls, in µs per call (the least disturbed by neighbours)."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(repeat):
            call()
        rounds.append((time.perf_counter() - started) / repeat * 1e6)
    return min(rounds)


def rules_us_per_transaction(count: int = 1000) -> float:
    """The default rule set deciding `count` transactions whose features are all present (every rule read)."""
    rules = CompiledRuleSet(1, default_rule_set())
    features: dict[str, Any] = {name: Decimal("3.5") for name in FEATURES}
    features |= {"count": 12, "is_first_transaction": 0, "merchant_used_before": 1, "is_night": 0}
    return per_call_us(lambda: [rules.decide(features, "m-1", "EUR") for _ in range(count)], 1) / count


def engines_us_per_transaction(detector: Any, count: int, rounds: int = 3) -> tuple[float, float, dict[str, float]]:
    """Median CPU µs per transaction of the row-by-row and the columnar engine (paired rounds, alternated), and
    the columnar engine's stages (medians of `rounds` rounds, the rest being a whole columnar run less them)."""
    import gc
    from collections import defaultdict

    from txguard.detection import decisions_in_time_order, empty_history, empty_timeline
    from txguard.feature_columns import columnar_features
    from txguard.features import features_json
    from txguard_generator import GenerateParams, generate

    run = generate(GenerateParams(num_transactions=count, num_accounts=max(count // 40, 10), seed=11))
    txs = sorted((labelled.transaction for labelled in run), key=lambda t: (t.ts, t.transaction_id))
    names = tuple(sorted(detector.needed_features))  # what ingest stores with each decision

    def cpu_us(as_columns: bool) -> float:
        histories: Any = defaultdict(empty_history)
        merchants: Any = defaultdict(empty_timeline)
        started = time.process_time()
        decided = decisions_in_time_order(
            txs, histories, merchants, detector, as_columns=as_columns, record=names, keep_features=False
        )
        for _ in decided:
            pass
        return (time.process_time() - started) * 1e6 / len(txs)

    rows, columns = [], []
    for _ in range(rounds):
        rows.append(cpu_us(False))
        columns.append(cpu_us(True))
    per = 1e6 / len(txs)
    measured: dict[str, list[float]] = defaultdict(list)
    for _ in range(rounds):
        measured["whole"].append(cpu_us(True))
        # As decisions_in_time_order decides a batch as columns: with the cyclic garbage collector paused.
        gc.disable()
        try:
            histories: Any = defaultdict(empty_history)
            merchants: Any = defaultdict(empty_timeline)
            started = time.process_time()
            needed, settings = detector.needed_features, detector.feature_settings
            computed = columnar_features(txs, histories, merchants, needed, settings)
            featured = time.process_time()
            assert computed is not None
            detector.decide_columns(computed, computed.items([t.merchant_id for t in txs], txs[0].currency))
            decided = time.process_time()
            computed.json_rows(names)
            from_columns = time.process_time()
            dicts = computed.rows()
            materialised = time.process_time()
            for features in dicts:
                features_json(features, names)
            from_dicts = time.process_time()
            champion = getattr(detector, "champion", None)
            if champion is not None:
                matrix = computed.matrix(champion.features)
                scoring = time.process_time()
                champion.model.score_matrix(matrix)
                measured["  of which the champion's score_matrix"].append((time.process_time() - scoring) * per)
        finally:
            gc.enable()
        measured["feature columns"].append((featured - started) * per)
        measured["rules (+ model) on the columns"].append((decided - featured) * per)
        measured["stored features JSON from the columns"].append((from_columns - decided) * per)
        measured["(not built for ingest: features dicts)"].append((materialised - from_columns) * per)
        measured["(before: stored features JSON from the dicts)"].append((from_dicts - materialised) * per)
    three = ("feature columns", "rules (+ model) on the columns", "stored features JSON from the columns")
    stages = {name: statistics.median(measured[name]) for name in three}
    if "  of which the champion's score_matrix" in measured:
        stages["  of which the champion's score_matrix"] = statistics.median(
            measured["  of which the champion's score_matrix"]
        )
    stages["histories, Decided rows and the rest (the whole less the three stages)"] = statistics.median(
        measured["whole"]
    ) - sum(stages[name] for name in three)
    for name in ("(not built for ingest: features dicts)", "(before: stored features JSON from the dicts)"):
        stages[name] = statistics.median(measured[name])
    return statistics.median(rows), statistics.median(columns), {k: round(v, 2) for k, v in stages.items()}


def run(database: BenchDatabase, scale: float) -> list[dict[str, Any]]:
    del database  # scoring touches no database
    trees = max(50, round(TREES * min(scale, 1.0)))
    data = handbook_sized_artifact(trees)
    started = time.perf_counter()
    artifact = decode_artifact(data)
    decoded = time.perf_counter()
    model = TreeModel.from_artifact(artifact)
    compiled = time.perf_counter()
    rows = feature_rows(1000)
    rules_us = rules_us_per_transaction()

    batch_us = per_call_us(lambda: model.score_matrix(rows), 3) / len(rows)
    single_us = statistics.median([per_call_us(lambda row=row: model.score(row), 20) for row in rows[:10]])
    first_explanation_started = time.perf_counter()
    model.contributions(rows[0])
    first_explanation_ms = (time.perf_counter() - first_explanation_started) * 1000
    explain_us = statistics.median([per_call_us(lambda row=row: model.contributions(row), 1) for row in rows[1:6]])

    about = {
        "model": f"{trees} trees, {LEAVES} leaves, {NUM_FEATURES} features",
        "artifact_bytes": len(data),
        "decode_ms": round((decoded - started) * 1000, 1),
        "compile_ms": round((compiled - decoded) * 1000, 1),
        "first_explanation_ms (compiles the explainer)": round(first_explanation_ms, 1),
        "baseline": "the default rule set deciding one transaction (CompiledRuleSet.decide), µs",
    }

    def result(name: str, measured_us: float) -> dict[str, Any]:
        # In the table's rows/s columns: transactions per second, so ratio = rules' cost / the model's.
        return {
            "name": name,
            "baseline_rows_per_s": round(1e6 / rules_us),
            "measured_rows_per_s": round(1e6 / measured_us),
            "ratio": round(rules_us / measured_us, 3),
            "baseline_us_per_transaction": round(rules_us, 1),
            "measured_us_per_transaction": round(measured_us, 1),
            **about,
        }

    from txguard.models.serving import ModelDetector, ServedModel

    count = max(2000, round(20_000 * scale))
    rules = CompiledRuleSet(1, default_rule_set())
    with_attributes = default_rule_set().document()
    with_attributes["rules"] = [*with_attributes["rules"], *ATTRIBUTE_RULES]
    engines = []
    for what, detector in (
        ("features + rules (default rule set)", rules),
        ("features + rules + champion", ModelDetector(1, rules, ServedModel(1, model, 2.0))),
        (
            "features + rules (default rule set and rules on every attribute feature)",
            CompiledRuleSet(1, validate_rule_set(with_attributes)),
        ),
    ):
        row_us, column_us, stages = engines_us_per_transaction(detector, count)
        engines.append(
            {
                "name": f"{what}, {count:,} generated transactions: row by row vs as columns (Python CPU)",
                "baseline_us_per_transaction": round(row_us, 1),
                "measured_us_per_transaction": round(column_us, 1),
                "ratio": round(column_us / row_us, 3),
                "columnar_stages_us_per_transaction": stages,
                "target": "≤ 10 µs per transaction",
                "met": column_us <= 10,
            }
        )
    return [
        *engines,
        result("model scoring, batch of 1000 (score_matrix) vs deciding with the default rules", batch_us),
        result("model scoring, one transaction (score) vs deciding with the default rules", single_us),
        result("model explanation of one decision (contributions, TreeSHAP) vs deciding with the rules", explain_us),
    ]
