"""The layer's own scorer against LightGBM itself: probabilities, raw scores and TreeSHAP contributions of models
trained here on seeded random data (missing values as NaN and as zero, each missing_type, deep and shallow trees,
class weights, many trees) equal `Booster.predict` and `predict(pred_contrib=True)` within 1e-9."""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from txguard.features import FEATURES
from txguard.models import scoring
from txguard.models.artifact import decode_artifact, encode_artifact
from txguard.models.scoring import BIAS, TreeModel

TOLERANCE = 1e-9
NAMES = list(FEATURES)[:14]

# name -> (LightGBM parameters, boosting rounds)
MODELS: dict[str, tuple[dict[str, Any], int]] = {
    "handbook-like: 31 leaves, many trees": ({"num_leaves": 31, "learning_rate": 0.05}, 300),
    "stumps": ({"num_leaves": 2}, 40),
    "zero as missing": ({"num_leaves": 15, "zero_as_missing": True}, 60),
    "no missing values: NaN read as zero": ({"num_leaves": 7, "use_missing": False}, 40),
    "deep, unbalanced classes weighted": ({"num_leaves": 63, "max_depth": 12, "scale_pos_weight": 7.5}, 60),
    "wide leaves, small leaves allowed": ({"num_leaves": 100, "min_data_in_leaf": 3}, 30),
    "depth-limited, bagged, sigmoid 0.7": (
        {"num_leaves": 31, "max_depth": 4, "bagging_fraction": 0.7, "bagging_freq": 1, "sigmoid": 0.7},
        50,
    ),
}


def training_data(rng: np.random.Generator, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    x = rng.normal(size=(n, len(NAMES)))
    x[:, 2] = rng.integers(0, 4, n)  # a count-like column: many exact zeros
    x[:, 5] = np.abs(x[:, 5]) * 1000  # an amount-like column
    x[rng.random(x.shape) < 0.12] = np.nan
    x[:, 7][rng.random(n) < 0.3] = 0.0
    signal = np.nan_to_num(x[:, 0]) + np.nan_to_num(x[:, 1]) * (x[:, 2] == 1) + np.isnan(x[:, 3]) - (x[:, 7] == 0)
    y = (signal + rng.normal(size=n) > 1.8).astype(int)
    return x, y


def inputs(rng: np.random.Generator, n: int = 1500) -> np.ndarray:
    x = rng.normal(size=(n, len(NAMES))) * rng.choice([0.5, 1.0, 3.0, 1000.0], size=(1, len(NAMES)))
    x[:, 2] = rng.integers(-1, 5, n)
    x[rng.random(x.shape) < 0.15] = np.nan
    x[rng.random(x.shape) < 0.15] = 0.0
    x[rng.random(x.shape) < 0.03] = np.inf
    x[rng.random(x.shape) < 0.03] = -np.inf
    x[rng.random(x.shape) < 0.03] = 1e-36  # below LightGBM's zero threshold: a zero
    x[rng.random(x.shape) < 0.03] = -0.0
    x[:3] = np.nan
    x[3:6] = 0.0
    return x


@pytest.fixture(scope="module", params=sorted(MODELS))
def trained(request: pytest.FixtureRequest) -> tuple[lgb.Booster, TreeModel]:
    params, rounds = MODELS[request.param]
    rng = np.random.default_rng(sorted(MODELS).index(request.param))
    x, y = training_data(rng)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "seed": 7, "deterministic": True, "num_threads": 1, **params},
        lgb.Dataset(x, y, feature_name=NAMES),
        num_boost_round=rounds,
    )
    artifact = decode_artifact(encode_artifact(NAMES, booster.dump_model(), 0.5))
    return booster, TreeModel.from_artifact(artifact)


def test_the_fixture_covers_every_missing_type_and_sigmoid() -> None:
    seen_missing, seen_sigmoid = set(), set()
    for name in MODELS:
        params, rounds = MODELS[name]
        x, y = training_data(np.random.default_rng(sorted(MODELS).index(name)))
        params = {"objective": "binary", "verbose": -1, "seed": 7, "num_threads": 1, **params}
        booster = lgb.train(params, lgb.Dataset(x, y, feature_name=NAMES), num_boost_round=min(rounds, 20))
        artifact = decode_artifact(encode_artifact(NAMES, booster.dump_model(), 0.5))
        seen_missing |= {m for tree in artifact.trees for m in tree.missing_type}
        seen_sigmoid.add(artifact.sigmoid)
    assert seen_missing == {0, 1, 2}
    assert seen_sigmoid == {1.0, 0.7}


def test_probabilities_and_raw_scores_equal_lightgbm(trained: tuple[lgb.Booster, TreeModel]) -> None:
    booster, model = trained
    x = inputs(np.random.default_rng(11))
    expected = booster.predict(x)
    got = np.array(model.score_matrix(x))
    assert np.max(np.abs(got - expected)) <= TOLERANCE
    assert np.max(np.abs(model.raw_matrix(x) - booster.predict(x, raw_score=True))) <= TOLERANCE
    assert all(0.0 <= p <= 1.0 for p in got)


def test_one_row_at_a_time_equals_the_batch(trained: tuple[lgb.Booster, TreeModel]) -> None:
    _, model = trained
    x = inputs(np.random.default_rng(12), 40)
    batch = model.score_matrix(x)
    assert np.max(np.abs(np.array([model.score(list(row)) for row in x]) - batch)) <= 1e-15
    assert np.max(np.abs(np.array([model.score_matrix([row])[0] for row in x.tolist()]) - batch)) <= 1e-15


def test_contributions_equal_lightgbm_pred_contrib(trained: tuple[lgb.Booster, TreeModel]) -> None:
    booster, model = trained
    x = inputs(np.random.default_rng(13), 60)
    expected = booster.predict(x, pred_contrib=True)
    raw = booster.predict(x, raw_score=True)
    for row, want, row_raw in zip(x, expected, raw, strict=True):
        got = model.contributions(list(row))
        assert [name for name, _ in got] == [*NAMES, BIAS]
        values = np.array([value for _, value in got])
        assert np.max(np.abs(values - want)) <= TOLERANCE
        assert abs(values.sum() - row_raw) <= TOLERANCE


def test_a_batch_of_contributions_equals_lightgbm_and_the_rows_one_at_a_time(
    trained: tuple[lgb.Booster, TreeModel],
) -> None:
    booster, model = trained
    x = inputs(np.random.default_rng(14), 90)
    got = model.contributions_matrix(x)
    assert got.shape == (len(x), len(NAMES) + 1)
    assert np.max(np.abs(got - booster.predict(x, pred_contrib=True))) <= TOLERANCE
    one_at_a_time = np.array([[value for _, value in model.contributions(list(row))] for row in x[::9]])
    assert np.max(np.abs(got[::9] - one_at_a_time)) <= 1e-15
    assert model.contributions_matrix([]).shape == (0, len(NAMES) + 1)


def test_a_batch_explained_in_several_steps_equals_it_explained_at_once(
    trained: tuple[lgb.Booster, TreeModel], monkeypatch: pytest.MonkeyPatch
) -> None:
    booster, model = trained
    x = inputs(np.random.default_rng(15), 25)
    at_once = model.contributions_matrix(x)
    # A step too small for even one row's polynomials: each row is explained alone.
    monkeypatch.setattr(scoring, "EXPLAIN_CELLS", 1)
    stepped = model.contributions_matrix(x)
    assert np.max(np.abs(stepped - at_once)) <= 1e-15
    assert np.max(np.abs(stepped - booster.predict(x, pred_contrib=True))) <= TOLERANCE


def test_python_values_none_and_decimals_read_as_lightgbm_reads_floats(
    trained: tuple[lgb.Booster, TreeModel],
) -> None:
    booster, model = trained
    x = inputs(np.random.default_rng(14), 30)
    as_python: list[list[Any]] = [
        [
            None if math.isnan(v) else (Decimal(str(v)) if i % 3 == 0 and math.isfinite(v) else v)
            for i, v in enumerate(r)
        ]
        for r in x.tolist()
    ]
    as_floats = np.array([[math.nan if v is None else float(v) for v in r] for r in as_python])
    assert np.max(np.abs(np.array(model.score_matrix(as_python)) - booster.predict(as_floats))) <= TOLERANCE


def test_an_empty_batch_scores_nothing(trained: tuple[lgb.Booster, TreeModel]) -> None:
    _, model = trained
    assert model.score_matrix([]) == []


@pytest.mark.parametrize(
    "rows",
    [
        [[1.0, 2.0]],
        [[0.0] * (len(NAMES) + 1)],
        [["a lot"] + [0.0] * (len(NAMES) - 1)],
        [[[1.0]] * len(NAMES)],
        [[10**400] + [0.0] * (len(NAMES) - 1)],
        [[0.0] * len(NAMES), [0.0] * (len(NAMES) - 1)],
    ],
    ids=["too short", "too long", "not a number", "nested", "beyond a float", "ragged"],
)
def test_a_row_of_the_wrong_shape_or_type_is_refused(trained: tuple[lgb.Booster, TreeModel], rows: Any) -> None:
    _, model = trained
    with pytest.raises(ValueError, match=r"row|number"):
        model.score_matrix(rows)


def test_a_model_of_single_leaf_trees_scores_its_constant() -> None:
    rng = np.random.default_rng(5)
    x, y = training_data(rng, 200)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "min_data_in_leaf": 500, "num_threads": 1},
        lgb.Dataset(x, y, feature_name=NAMES),
        num_boost_round=3,
    )
    model = TreeModel.from_artifact(decode_artifact(encode_artifact(NAMES, booster.dump_model(), 0.5)))
    probe = inputs(rng, 20)
    assert np.max(np.abs(np.array(model.score_matrix(probe)) - booster.predict(probe))) <= TOLERANCE
    contributions = model.contributions(list(probe[0]))
    assert (
        np.max(np.abs(np.array([v for _, v in contributions]) - booster.predict(probe[:1], pred_contrib=True)[0]))
        <= TOLERANCE
    )


# Values a feature row may hold: ordinary and extreme numbers, exact and tiny zeros, NaN, infinities, None.
_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=-5, max_value=5),
    st.sampled_from([0.0, -0.0, 1e-36, -1e-36, 1e-35, math.inf, -math.inf, math.nan, None, 1e300, -1e300]),
    st.integers(min_value=-10, max_value=10),
)


@pytest.fixture(scope="module")
def property_model() -> tuple[lgb.Booster, TreeModel]:
    rng = np.random.default_rng(99)
    x, y = training_data(rng, 2000)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 15, "num_threads": 1, "seed": 1},
        lgb.Dataset(x, y, feature_name=NAMES),
        num_boost_round=25,
    )
    return booster, TreeModel.from_artifact(decode_artifact(encode_artifact(NAMES, booster.dump_model(), 0.5)))


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.lists(_VALUE, min_size=len(NAMES), max_size=len(NAMES)), min_size=1, max_size=8))
def test_any_values_score_and_explain_as_lightgbm(property_model: tuple[lgb.Booster, TreeModel], rows: Any) -> None:
    booster, model = property_model
    as_floats = np.array([[math.nan if v is None else float(v) for v in row] for row in rows], dtype=np.float64)
    assert np.max(np.abs(np.array(model.score_matrix(rows)) - booster.predict(as_floats))) <= TOLERANCE
    first = np.array([v for _, v in model.contributions(rows[0])])
    assert np.max(np.abs(first - booster.predict(as_floats[:1], pred_contrib=True)[0])) <= TOLERANCE
    batch = model.contributions_matrix(rows)
    assert np.max(np.abs(batch - booster.predict(as_floats, pred_contrib=True))) <= TOLERANCE
