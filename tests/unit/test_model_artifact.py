"""Model artifacts: canonical bytes, content hash, and every way an artifact can be wrong refused with a reason."""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from typing import Any

import lightgbm as lgb
import numpy as np
import orjson
import pytest

from txguard.errors import TxguardError
from txguard.features import FEATURES
from txguard.models.artifact import (
    FORMAT,
    CorruptArtifact,
    artifact_sha256,
    decode_artifact,
    encode_artifact,
    features_hash,
)

NAMES = ["amount", "count_24h", "merchant_risk_7d", "seconds_since_previous"]


def _train(params: dict[str, Any] | None = None, names: list[str] = NAMES, **dataset: Any) -> lgb.Booster:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, len(names)))
    x[rng.random(x.shape) < 0.1] = np.nan
    if dataset.get("categorical_feature"):
        x[:, 1] = rng.integers(0, 5, 600)
    y = (np.nan_to_num(x[:, 0]) + np.isin(x[:, 1], [1, 3]) + rng.normal(size=600) > 1).astype(int)
    return lgb.train(
        {"objective": "binary", "verbose": -1, "num_leaves": 7, "num_threads": 1, **(params or {})},
        lgb.Dataset(x, y, feature_name=names, **dataset),
        num_boost_round=5,
    )


@pytest.fixture(scope="module")
def dump() -> dict[str, Any]:
    return _train().dump_model()


@pytest.fixture(scope="module")
def data(dump: dict[str, Any]) -> bytes:
    return encode_artifact(NAMES, dump, 0.42, lightgbm_version=lgb.__version__)


def _document(data: bytes) -> dict[str, Any]:
    document: dict[str, Any] = orjson.loads(data)
    return document


def _bytes(document: dict[str, Any]) -> bytes:
    return orjson.dumps(document, option=orjson.OPT_SORT_KEYS)


def test_an_artifact_is_canonical_json_and_reads_back(data: bytes, dump: dict[str, Any]) -> None:
    assert data == orjson.dumps(orjson.loads(data), option=orjson.OPT_SORT_KEYS)
    assert b"\n" not in data and b": " not in data
    artifact = decode_artifact(data)
    assert artifact.format == FORMAT
    assert artifact.features == tuple(NAMES)
    assert artifact.features_hash == hashlib.sha256("\n".join(NAMES).encode()).hexdigest() == features_hash(NAMES)
    assert artifact.threshold == 0.42
    assert artifact.created_with == {"lightgbm": lgb.__version__}
    assert artifact.sigmoid == 1.0
    assert len(artifact.trees) == len(dump["tree_info"]) == 5
    assert artifact_sha256(data) == hashlib.sha256(data).hexdigest()
    # The same model always makes the same bytes: the content address is stable.
    assert encode_artifact(NAMES, copy.deepcopy(dump), 0.42, lightgbm_version=lgb.__version__) == data


def test_the_version_of_the_installed_lightgbm_is_recorded_by_default(dump: dict[str, Any]) -> None:
    assert decode_artifact(encode_artifact(NAMES, dump, 0.5)).created_with == {"lightgbm": lgb.__version__}


def _set(path: tuple[Any, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: tuple[Any, ...]) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        target = document
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


def _rename_feature(old: str, new: str, rehash: bool = True) -> Callable[[dict[str, Any]], None]:
    def change(document: dict[str, Any]) -> None:
        names = [new if n == old else n for n in document["features"]]
        document["features"] = names
        document["model"]["feature_names"] = names
        if rehash:
            document["features_hash"] = features_hash(names)

    return change


def _first_split(document: dict[str, Any]) -> dict[str, Any]:
    node: dict[str, Any] = document["model"]["tree_info"][0]["tree_structure"]
    return node


def _first_leaf(document: dict[str, Any]) -> dict[str, Any]:
    node = _first_split(document)
    while "split_index" in node:
        node = node["left_child"]
    return node


def _change_split(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda document: _first_split(document).update(changes)


def _change_leaf(**changes: Any) -> Callable[[dict[str, Any]], None]:
    return lambda document: _first_leaf(document).update(changes)


TREE = ("model", "tree_info", 0)
CORRUPTIONS: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "unknown format": (_set(("format",), "txguard-xgboost-9"), "unknown format 'txguard-xgboost-9'"),
    "no format": (_delete(("format",)), "unknown format None"),
    "a key missing": (_delete(("threshold",)), r"missing keys \['threshold'\]"),
    "an unknown key": (_set(("extra",), 1), r"unknown keys \['extra'\]"),
    "wrong features hash": (_set(("features_hash",), "0" * 64), "features_hash '0000.* does not match"),
    "features changed, hash kept": (_rename_feature("amount", "count", rehash=False), "does not match the feature"),
    "unknown feature": (_rename_feature("amount", "shoe_size"), "unknown feature 'shoe_size'"),
    "the model's own score as a feature": (_rename_feature("amount", "model_score"), "'model_score' cannot be"),
    "no features": (_set(("features",), []), "non-empty list"),
    "a feature twice": (_rename_feature("count_24h", "amount"), "'amount' is listed twice"),
    "features differ from the model's": (_set(("model", "feature_names"), NAMES[::-1]), "feature_names differ"),
    "threshold above 1": (_set(("threshold",), 1.5), "threshold 1.5 is not a number from 0 to 1"),
    "threshold not a number": (_set(("threshold",), "high"), "threshold 'high'"),
    "threshold true": (_set(("threshold",), True), "threshold True"),
    "no lightgbm version": (_set(("created_with",), {}), "created_with"),
    "not a model": (_set(("model",), [1, 2]), "dump_model"),
    "multi-class": (_set(("model", "num_class"), 3), "multi-class"),
    "regression objective": (_set(("model", "objective"), "regression"), "objective 'regression' is not supported"),
    "bad sigmoid": (_set(("model", "objective"), "binary sigmoid:-2"), "sigmoid parameter must be a positive"),
    "random forest": (_set(("model", "average_output"), True), "random-forest"),
    "no trees": (_set(("model", "tree_info"), []), "no trees"),
    "trees out of order": (_set((*TREE, "tree_index"), 3), "tree 0: tree_index 3 is out of order"),
    "categorical split": (_change_split(decision_type="=="), "categorical splits are not supported"),
    "unknown decision": (_change_split(decision_type="<"), "decision_type '<'"),
    "unknown missing type": (_change_split(missing_type="Maybe"), "missing_type 'Maybe'"),
    "feature out of range": (_change_split(split_feature=9), "uses feature 9"),
    "threshold missing": (_change_split(threshold=None), "no finite threshold"),
    "counts do not add up": (_change_split(internal_count=1), "counts 1 rows, its children"),
    "default_left not a boolean": (_change_split(default_left="yes"), "no boolean default_left"),
    "a child missing": (_change_split(left_child=None), "no left_child"),
    "linear tree": (_change_leaf(leaf_coeff=[0.5], leaf_features=[0]), "linear trees are not supported"),
    "leaf value missing": (_change_leaf(leaf_value="x"), "no finite leaf_value"),
    "leaf index duplicated": (_change_leaf(leaf_index=1), "leaf 1 appears twice|leaf 0 is missing"),
    "too many leaves claimed": (_set((*TREE, "num_leaves"), 8), "split_index|fewer splits|leaf .* is missing"),
    "num_leaves absurd": (_set((*TREE, "num_leaves"), 10**12), "num_leaves 1000000000000 is not an integer"),
}


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_a_corrupt_artifact_is_refused_with_its_reason(data: bytes, name: str) -> None:
    change, reason = CORRUPTIONS[name]
    document = _document(data)
    change(document)
    with pytest.raises(CorruptArtifact, match=reason) as refused:
        decode_artifact(_bytes(document))
    assert refused.value.reason in refused.value.message
    assert isinstance(refused.value, TxguardError)


@pytest.mark.parametrize(
    ("mangle", "reason"),
    [
        (lambda data: data[: len(data) // 2], "not JSON"),
        (lambda data: data[:-1], "not JSON"),
        (lambda data: b"", "not JSON"),
        (lambda data: b"\x89PNG\r\n\x1a\n" + data, "not JSON"),
        (lambda data: data.replace(b'"threshold":0.42', b'"threshold":NaN'), "not JSON"),
        (lambda data: b"[1,2,3]", "expected a JSON object"),
        (lambda data: b'"txguard-lightgbm-1"', "expected a JSON object"),
    ],
    ids=["truncated in half", "last byte lost", "empty", "not text", "NaN literal", "an array", "a string"],
)
def test_bytes_that_are_not_an_artifact_are_refused(data: bytes, mangle: Callable[[bytes], bytes], reason: str) -> None:
    with pytest.raises(CorruptArtifact, match=reason):
        decode_artifact(mangle(data))


def test_a_nesting_deeper_than_any_tree_is_refused_without_recursing(data: bytes) -> None:
    document = _document(data)
    split = _first_split(document)
    # A valid chain of 300 splits: each sends its right side to a leaf of its own.
    node: dict[str, Any] = {"leaf_index": 0, "leaf_value": 0.1, "leaf_count": 1}
    for level in range(299, -1, -1):
        right = {"leaf_index": level + 1, "leaf_value": 0.1, "leaf_count": 1}
        node = {**split, "split_index": level, "internal_count": 301 - level, "left_child": node, "right_child": right}
    tree = document["model"]["tree_info"][0]
    tree["tree_structure"], tree["num_leaves"] = node, 301
    with pytest.raises(CorruptArtifact, match="deeper than 256"):
        decode_artifact(json.dumps(document, separators=(",", ":"), sort_keys=True).encode())


def test_encoding_refuses_what_decoding_would(dump: dict[str, Any]) -> None:
    with pytest.raises(CorruptArtifact, match="unknown feature 'shoe_size'"):
        encode_artifact(["shoe_size", *NAMES[1:]], {**dump, "feature_names": ["shoe_size", *NAMES[1:]]}, 0.5)
    with pytest.raises(CorruptArtifact, match="threshold"):
        encode_artifact(NAMES, dump, float("nan"))


def test_models_lightgbm_trains_with_categorical_or_linear_trees_are_refused() -> None:
    categorical = _train(categorical_feature=[1]).dump_model()
    with pytest.raises(CorruptArtifact, match="categorical"):
        encode_artifact(NAMES, categorical, 0.5)
    linear = _train({"linear_tree": True}).dump_model()
    with pytest.raises(CorruptArtifact, match="linear trees"):
        encode_artifact(NAMES, linear, 0.5)
    forest = _train({"boosting": "rf", "bagging_fraction": 0.5, "bagging_freq": 1}).dump_model()
    with pytest.raises(CorruptArtifact, match="random-forest"):
        encode_artifact(NAMES, forest, 0.5)


def test_every_feature_txguard_computes_may_be_a_model_input() -> None:
    names = sorted(FEATURES)
    assert decode_artifact(encode_artifact(names, _train(names=names).dump_model(), 0.5)).features == tuple(names)
