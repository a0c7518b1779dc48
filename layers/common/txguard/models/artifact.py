"""A model artifact: the one file a trained model is, and the only way serving reads one.

An artifact is canonical JSON bytes (sorted keys, no whitespace) of

    {"format": "txguard-lightgbm-1",
     "features": [feature names, in the model's column order],
     "features_hash": sha256 hex of "\\n".join(features),
     "model": LightGBM's Booster.dump_model() dict,
     "threshold": the chosen decision threshold, a probability 0–1,
     "created_with": {"lightgbm": "<version>"}}

Its address is the SHA-256 of those bytes (`artifact_sha256`). `decode_artifact` checks everything serving relies
on before anything is scored, and refuses with `CorruptArtifact(reason)`: the format, the feature list (names
txguard computes, `model_score` excluded since a model cannot read its own score), the feature hash, and every
tree (numerical `<=` splits only, LightGBM's three missing-value types, consistent node and leaf numbering and
counts), for a binary-objective gradient-boosted model. Categorical splits, linear trees, multi-class and
random-forest (averaged) models are refused: the scorer in `scoring.py` does not implement them.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeGuard

import orjson

from txguard.errors import Conflict
from txguard.features import FEATURES

FORMAT = "txguard-lightgbm-1"
# The model's own score is a feature rules may read, never one a model may be trained on.
EXCLUDED_FEATURES = frozenset({"model_score"})
# Deeper trees would overflow the recursion of contributions; LightGBM's leaf-wise trees of 31 leaves are at most
# 30 deep.
MAX_TREE_DEPTH = 256
MAX_LEAVES = 131_072  # LightGBM's own limit on num_leaves
AVOIDED_INFINITY = 1e300
MISSING_TYPES = ("None", "Zero", "NaN")
MISSING_NONE, MISSING_ZERO, MISSING_NAN = range(3)
_KEYS = frozenset({"format", "features", "features_hash", "model", "threshold", "created_with"})
_SIGMOID = re.compile(r"^binary(?: sigmoid:(?P<sigmoid>\S+))?$")


class CorruptArtifact(Conflict):
    """The bytes are not a model artifact serving can trust: never loaded, never promoted.

    `reason` says what is wrong in words (e.g. "features_hash does not match the feature list")."""

    code = "corrupt_artifact"

    def __init__(self, reason: str) -> None:
        super().__init__(f"corrupt model artifact: {reason}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Tree:
    """One tree as LightGBM holds it (include/LightGBM/tree.h), validated.

    Internal nodes are numbered 0..num_leaves-2 (their `split_index`; 0 is the root), leaves 0..num_leaves-1
    (their `leaf_index`). A child >= 0 is an internal node, a child < 0 is the leaf ~child. Per internal node:
    the feature's column, the threshold (go left when value <= threshold), what a missing value is
    (MISSING_NONE/ZERO/NAN), where it goes (default_left), and how many training rows reached it; per leaf its
    value (log-odds, shrinkage included) and row count. A tree of one leaf has no internal node."""

    num_leaves: int
    split_feature: tuple[int, ...]
    threshold: tuple[float, ...]
    missing_type: tuple[int, ...]
    default_left: tuple[bool, ...]
    left_child: tuple[int, ...]
    right_child: tuple[int, ...]
    internal_count: tuple[int, ...]
    leaf_value: tuple[float, ...]
    leaf_count: tuple[int, ...]
    depth: int


@dataclass(frozen=True, slots=True)
class ModelArtifact:
    """A decoded, validated artifact. `trees` are in LightGBM's order (the order their outputs are summed in);
    `sigmoid` is the objective's parameter: probability = 1 / (1 + exp(-sigmoid × raw score))."""

    features: tuple[str, ...]
    features_hash: str
    threshold: float
    created_with: Mapping[str, str]
    model: Mapping[str, Any]
    sigmoid: float
    trees: tuple[Tree, ...]
    format: str = FORMAT


def features_hash(features: Sequence[str]) -> str:
    """SHA-256 hex of the feature names joined by newlines: what serving compares with what it computes."""
    return hashlib.sha256("\n".join(features).encode()).hexdigest()


def artifact_sha256(data: bytes) -> str:
    """SHA-256 hex of an artifact's bytes: its content address (models/<sha256>.json) and registry key."""
    return hashlib.sha256(data).hexdigest()


def encode_artifact(
    features: Sequence[str], dump: Mapping[str, Any], threshold: float, *, lightgbm_version: str | None = None
) -> bytes:
    """The canonical bytes of an artifact for a LightGBM `Booster.dump_model()` dict trained on `features` (in
    column order) with decision threshold `threshold` (0–1).

    `lightgbm_version` defaults to the `"version"` LightGBM writes into the dump's metadata when absent there.
    The result is decoded before it is returned, so a model serving would refuse is never written: raises
    CorruptArtifact with the reason."""
    version = lightgbm_version
    if version is None:
        version = _installed_lightgbm_version()
    document = {
        "format": FORMAT,
        "features": list(features),
        "features_hash": features_hash(list(features)),
        "model": dump,
        "threshold": threshold,
        "created_with": {"lightgbm": version},
    }
    try:
        data = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError) as error:
        raise CorruptArtifact(f"the model dump cannot be written as JSON: {error}") from error
    decode_artifact(data)
    return data


def _installed_lightgbm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lightgbm")
    except PackageNotFoundError:
        return "unknown"


def decode_artifact(data: bytes) -> ModelArtifact:
    """Read and validate an artifact's bytes.

    Raises CorruptArtifact(reason) when they are not JSON, not an object of exactly the six keys, of another
    format, or when the feature list is empty, repeats a name, names a feature txguard does not compute (or
    `model_score`), does not match `features_hash` or the model's own feature names; when the threshold is not a
    number 0–1; when the model is not a binary-objective LightGBM tree model, or any tree is malformed, deeper
    than MAX_TREE_DEPTH, categorical or linear."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise CorruptArtifact(f"expected bytes, got {type(data).__name__}")
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise CorruptArtifact(f"not JSON ({error})") from error
    if not isinstance(document, dict):
        raise CorruptArtifact(f"expected a JSON object, got {type(document).__name__}")
    if document.get("format") != FORMAT:
        raise CorruptArtifact(f"unknown format {_short(document.get('format'))}, expected {FORMAT!r}")
    keys = set(document)
    if keys != _KEYS:
        missing, unknown = sorted(_KEYS - keys), sorted(keys - _KEYS)
        raise CorruptArtifact(
            "; ".join(
                part
                for part in (f"missing keys {missing}" if missing else "", f"unknown keys {unknown}" if unknown else "")
                if part
            )
        )
    features = _features(document["features"])
    declared_hash = document["features_hash"]
    if declared_hash != features_hash(features):
        raise CorruptArtifact(f"features_hash {_short(declared_hash)} does not match the feature list")
    threshold = document["threshold"]
    if not _is_number(threshold) or not 0.0 <= threshold <= 1.0:
        raise CorruptArtifact(f"threshold {_short(threshold)} is not a number from 0 to 1")
    created_with = document["created_with"]
    if not isinstance(created_with, dict) or not isinstance(created_with.get("lightgbm"), str):
        raise CorruptArtifact('created_with must be an object with the "lightgbm" version string')
    model = document["model"]
    sigmoid, trees = _model(model, features)
    return ModelArtifact(
        features=features,
        features_hash=declared_hash,
        threshold=float(threshold),
        created_with=created_with,
        model=model,
        sigmoid=sigmoid,
        trees=trees,
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:80] + "…"


def _is_number(value: Any) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _features(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise CorruptArtifact("features must be a non-empty list of feature names")
    seen: set[str] = set()
    for name in value:
        if not isinstance(name, str):
            raise CorruptArtifact(f"feature name {_short(name)} is not a string")
        if name in EXCLUDED_FEATURES:
            raise CorruptArtifact(f"feature {name!r} cannot be a model's input")
        if name not in FEATURES:
            raise CorruptArtifact(f"unknown feature {_short(name)}: txguard computes no such feature")
        if name in seen:
            raise CorruptArtifact(f"feature {name!r} is listed twice")
        seen.add(name)
    return tuple(value)


def _model(model: Any, features: tuple[str, ...]) -> tuple[float, tuple[Tree, ...]]:
    if not isinstance(model, dict):
        raise CorruptArtifact("model must be a LightGBM dump_model() object")
    if model.get("name") != "tree":
        raise CorruptArtifact(f"model name {_short(model.get('name'))} is not a LightGBM tree model ('tree')")
    if model.get("num_class") != 1 or model.get("num_tree_per_iteration") != 1:
        raise CorruptArtifact("only single-output (binary) models are supported, not multi-class ones")
    objective = model.get("objective")
    matched = _SIGMOID.match(objective) if isinstance(objective, str) else None
    if matched is None:
        raise CorruptArtifact(f"objective {_short(objective)} is not supported: only 'binary' is")
    try:
        sigmoid = float(matched["sigmoid"] or "1")
    except ValueError:
        raise CorruptArtifact(f"objective {objective!r} has an unreadable sigmoid parameter") from None
    if not math.isfinite(sigmoid) or sigmoid <= 0:
        raise CorruptArtifact(f"objective {objective!r}: the sigmoid parameter must be a positive number")
    if model.get("average_output", False) is not False:
        raise CorruptArtifact("random-forest models (average_output) are not supported")
    if model.get("feature_names") != list(features):
        raise CorruptArtifact("the model's feature_names differ from the artifact's feature list")
    if model.get("max_feature_idx") != len(features) - 1:
        raise CorruptArtifact(f"max_feature_idx {_short(model.get('max_feature_idx'))} does not match the features")
    if model.get("pandas_categorical") not in (None, []):
        raise CorruptArtifact("categorical features (pandas_categorical) are not supported")
    tree_info = model.get("tree_info")
    if not isinstance(tree_info, list) or not tree_info:
        raise CorruptArtifact("the model has no trees (tree_info)")
    trees = tuple(_tree(info, index, len(features)) for index, info in enumerate(tree_info))
    return sigmoid, trees


def _tree(info: Any, index: int, num_features: int) -> Tree:
    where = f"tree {index}"
    if not isinstance(info, dict):
        raise CorruptArtifact(f"{where} is not an object")
    if info.get("tree_index") != index:
        raise CorruptArtifact(f"{where}: tree_index {_short(info.get('tree_index'))} is out of order")
    num_leaves = info.get("num_leaves")
    if not isinstance(num_leaves, int) or isinstance(num_leaves, bool) or not 1 <= num_leaves <= MAX_LEAVES:
        raise CorruptArtifact(f"{where}: num_leaves {_short(num_leaves)} is not an integer 1..{MAX_LEAVES}")
    if info.get("num_cat", 0) != 0:
        raise CorruptArtifact(f"{where}: categorical splits are not supported")
    root = info.get("tree_structure")
    if not isinstance(root, dict):
        raise CorruptArtifact(f"{where}: tree_structure is missing")
    if num_leaves == 1:
        return _single_leaf(root, where)

    internal = num_leaves - 1
    split_feature = [-1] * internal
    threshold = [0.0] * internal
    missing_type = [0] * internal
    default_left = [False] * internal
    left_child = [0] * internal
    right_child = [0] * internal
    internal_count = [0] * internal
    leaf_value: list[float | None] = [None] * num_leaves
    leaf_count = [0] * num_leaves
    depth = 0
    # Iterative, so a hostile nesting depth is refused instead of overflowing the stack.
    stack: list[tuple[Any, int]] = [(root, 0)]
    root_is_split = True
    while stack:
        node, node_depth = stack.pop()
        if not isinstance(node, dict):
            raise CorruptArtifact(f"{where}: a node is not an object")
        depth = max(depth, node_depth)
        if depth > MAX_TREE_DEPTH:
            raise CorruptArtifact(f"{where} is deeper than {MAX_TREE_DEPTH}")
        if "split_index" not in node:
            leaf = node.get("leaf_index")
            if not isinstance(leaf, int) or isinstance(leaf, bool) or not 0 <= leaf < num_leaves:
                raise CorruptArtifact(f"{where}: leaf_index {_short(leaf)} is not in 0..{num_leaves - 1}")
            if leaf_value[leaf] is not None:
                raise CorruptArtifact(f"{where}: leaf {leaf} appears twice")
            if "leaf_coeff" in node or "leaf_features" in node:
                raise CorruptArtifact(f"{where}: linear trees are not supported")
            value, count = node.get("leaf_value"), node.get("leaf_count")
            if not _is_number(value):
                raise CorruptArtifact(f"{where}: leaf {leaf} has no finite leaf_value")
            if not _is_count(count) or count == 0:
                raise CorruptArtifact(f"{where}: leaf {leaf} has no positive leaf_count")
            leaf_value[leaf], leaf_count[leaf] = float(value), count
            continue
        split = node["split_index"]
        if not isinstance(split, int) or isinstance(split, bool) or not 0 <= split < internal:
            raise CorruptArtifact(f"{where}: split_index {_short(split)} is not in 0..{internal - 1}")
        if root_is_split and split != 0:
            raise CorruptArtifact(f"{where}: the root is split {split}, not 0")
        root_is_split = False
        if split_feature[split] != -1:
            raise CorruptArtifact(f"{where}: split {split} appears twice")
        feature = node.get("split_feature")
        if not isinstance(feature, int) or isinstance(feature, bool) or not 0 <= feature < num_features:
            raise CorruptArtifact(f"{where}: split {split} uses feature {_short(feature)}, not one of the features")
        decision = node.get("decision_type")
        if decision == "==":
            raise CorruptArtifact(f"{where}: categorical splits are not supported")
        if decision != "<=":
            raise CorruptArtifact(f"{where}: split {split} has decision_type {_short(decision)}, expected '<='")
        if node.get("missing_type") not in MISSING_TYPES:
            raise CorruptArtifact(f"{where}: split {split} has missing_type {_short(node.get('missing_type'))}")
        if not isinstance(node.get("default_left"), bool):
            raise CorruptArtifact(f"{where}: split {split} has no boolean default_left")
        if not _is_number(node.get("threshold")):
            raise CorruptArtifact(f"{where}: split {split} has no finite threshold")
        count = node.get("internal_count")
        if not _is_count(count) or count == 0:
            raise CorruptArtifact(f"{where}: split {split} has no positive internal_count")
        children = []
        for side in ("left_child", "right_child"):
            child = node.get(side)
            if not isinstance(child, dict):
                raise CorruptArtifact(f"{where}: split {split} has no {side}")
            children.append(child)
            stack.append((child, node_depth + 1))
        split_feature[split] = feature
        threshold[split] = _threshold(float(node["threshold"]))
        missing_type[split] = MISSING_TYPES.index(node["missing_type"])
        default_left[split] = node["default_left"]
        internal_count[split] = count
        left_child[split], right_child[split] = (_child_id(child) for child in children)

    if any(feature == -1 for feature in split_feature):
        raise CorruptArtifact(f"{where}: has fewer splits than num_leaves - 1")
    values: list[float] = []
    for leaf, value in enumerate(leaf_value):
        if value is None:
            raise CorruptArtifact(f"{where}: leaf {leaf} is missing")
        values.append(value)
    for split in range(internal):
        below = _count(left_child[split], internal_count, leaf_count) + _count(
            right_child[split], internal_count, leaf_count
        )
        if below != internal_count[split]:
            raise CorruptArtifact(f"{where}: split {split} counts {internal_count[split]} rows, its children {below}")
    return Tree(
        num_leaves=num_leaves,
        split_feature=tuple(split_feature),
        threshold=tuple(threshold),
        missing_type=tuple(missing_type),
        default_left=tuple(default_left),
        left_child=tuple(left_child),
        right_child=tuple(right_child),
        internal_count=tuple(internal_count),
        leaf_value=tuple(values),
        leaf_count=tuple(leaf_count),
        depth=depth,
    )


def _threshold(value: float) -> float:
    # LightGBM writes an infinite threshold (a split of everything but NaN from NaN) as ±1e300
    # (Common::AvoidInf) while the trained model compares with the infinity itself: +inf <= +inf goes left.
    if value >= AVOIDED_INFINITY:
        return math.inf
    if value <= -AVOIDED_INFINITY:
        return -math.inf
    return value


def _child_id(child: dict[str, Any]) -> int:
    # Both indices are validated when the child itself is visited.
    if "split_index" in child:
        split = child["split_index"]
        return split if isinstance(split, int) and not isinstance(split, bool) else 0
    leaf = child.get("leaf_index")
    return ~leaf if isinstance(leaf, int) and not isinstance(leaf, bool) else -1


def _count(node: int, internal_count: list[int], leaf_count: list[int]) -> int:
    return internal_count[node] if node >= 0 else leaf_count[~node]


def _single_leaf(root: dict[str, Any], where: str) -> Tree:
    if "split_index" in root:
        raise CorruptArtifact(f"{where}: num_leaves is 1 but the tree has a split")
    if "leaf_coeff" in root or "leaf_features" in root:
        raise CorruptArtifact(f"{where}: linear trees are not supported")
    value = root.get("leaf_value")
    if not _is_number(value):
        raise CorruptArtifact(f"{where}: the leaf has no finite leaf_value")
    return Tree(
        num_leaves=1,
        split_feature=(),
        threshold=(),
        missing_type=(),
        default_left=(),
        left_child=(),
        right_child=(),
        internal_count=(),
        leaf_value=(float(value),),
        leaf_count=(0,),
        depth=0,
    )
