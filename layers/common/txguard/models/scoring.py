"""Scoring transactions with a trained model, without the training library.

`TreeModel.from_artifact` compiles a validated artifact (artifact.py) once; `score_matrix` then scores many
feature rows at once (ingest scores a whole batch in one call), `score` one row, and `contributions` explains
one row's score per feature.

**Equal to LightGBM.** Scores equal `lightgbm.Booster.predict` (to within 1e-9; in practice bit for bit): the
same decision at every node, including LightGBM's missing values (src/io/tree.h, `NumericalDecision`): a NaN
(None) is treated as 0 unless the node's missing_type is "NaN"; a zero (|x| <= kZeroThreshold, which LightGBM's
prediction input turns into an exact 0) goes the node's default direction when its missing_type is "Zero", a
NaN when it is "NaN"; any other value goes left when value <= threshold. The trees' outputs are added in
order from 0.0 as GBDT::PredictRaw adds them, and the probability is 1 / (1 + exp(-sigmoid × raw)) as
BinaryLogloss::ConvertOutput computes it.

**How a batch is scored.** Exit leaves are found with bit masks rather than by walking each tree, after
QuickScorer (Lucchese et al., "QuickScorer: a fast algorithm to rank documents with additive ensembles of
regression trees", SIGIR 2015): each tree's leaves are numbered left to right, one bit each; a node whose test
sends a row right rules out the leaves of its left subtree; the row's exit leaf is the leftmost leaf no node
rules out. For one feature the nodes that send a value right are those whose threshold is below it: a prefix
of the feature's thresholds in sorted order, so the masks of every prefix are ANDed once when the model is
compiled, and scoring a row costs, per feature, a binary search and one row of that table; per tree, an AND
over the features and a lowest-set-bit. It is vectorised over the batch with NumPy: no per-node Python work.
Memory: (distinct thresholds + 3 per feature) × trees × 4 bytes (LightGBM's 255 bins bound the thresholds;
the Handbook model's 30 features × 500 trees: under 16 MB).

**Contributions** are SHAP values by the path-dependent TreeSHAP algorithm (Lundberg, Erion, Lee, "Consistent
Individualized Feature Attribution for Tree Ensembles", 2018, Algorithm 2), computed as LightGBM's
`pred_contrib` computes them (src/io/tree.cpp, Tree::TreeSHAP, with node counts as covers): in log-odds, one per
feature, plus the bias (the trees' expected output); they sum to the raw score.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from txguard.models.artifact import MISSING_NAN, MISSING_ZERO, ModelArtifact, Tree

# LightGBM's kZeroThreshold (1e-35f, as a double): smaller magnitudes are zero at prediction.
ZERO_THRESHOLD = float(np.float32(1e-35))
BIAS = "bias"  # the name of the expected-value entry of `contributions`
WORD_BITS = 32
# Rows scored per step of score_matrix: bounds the temporary (rows × features × trees) table at a few MB.
CHUNK_ROWS = 128

FloatArray = npt.NDArray[np.float64]


class TreeModel:
    """A compiled LightGBM binary model: immutable, safe to share between requests and threads.

    `features` are the column names, in the order every row passed to it must follow."""

    features: tuple[str, ...]
    threshold: float

    def __init__(self, artifact: ModelArtifact) -> None:
        self.features = artifact.features
        self.threshold = artifact.threshold
        self._sigmoid = artifact.sigmoid
        self._trees = artifact.trees
        self._compile()

    @classmethod
    def from_artifact(cls, artifact: ModelArtifact) -> TreeModel:
        """Compile a decoded artifact (decode_artifact validated it)."""
        return cls(artifact)

    # ----------------------------------------------------------------------------------------------- compile --
    def _compile(self) -> None:
        trees = self._trees
        num_trees = len(trees)
        words = max(1, -(-max(tree.num_leaves for tree in trees) // WORD_BITS))
        self._words = words
        # Leaf values by left-to-right position, per tree; positions past a tree's leaves are never reached.
        values = np.zeros((num_trees, words * WORD_BITS), dtype=np.float64)
        # Per feature: the nodes splitting on it as (tree, threshold, mask of the leaves a right turn rules out,
        # where a zero goes (True: right), where a NaN goes).
        by_feature: dict[int, list[tuple[int, float, npt.NDArray[np.uint32], bool, bool]]] = {}
        for t, tree in enumerate(trees):
            order = _leaves_left_to_right(tree)
            for position, leaf in enumerate(order):
                values[t, position] = tree.leaf_value[leaf]
            position_of = {leaf: position for position, leaf in enumerate(order)}
            for node in range(tree.num_leaves - 1):
                low, high = _leaf_span(tree, tree.left_child[node], position_of)
                mask = np.array(_clear_bits(words, low, high), dtype=np.uint32)
                threshold = tree.threshold[node]
                missing = tree.missing_type[node]
                default_right = not tree.default_left[node]
                zero_right = default_right if missing == MISSING_ZERO else threshold < 0.0
                nan_right = default_right if missing in (MISSING_NAN, MISSING_ZERO) else threshold < 0.0
                by_feature.setdefault(tree.split_feature[node], []).append((t, threshold, mask, zero_right, nan_right))

        columns = num_trees * words
        used = sorted(by_feature)
        self._used = np.array(used, dtype=np.intp)
        self._thresholds: list[FloatArray] = []
        offsets = []
        tables = []
        offset = 0
        for feature in used:
            nodes = by_feature[feature]
            distinct = np.unique(np.array([n[1] for n in nodes], dtype=np.float64))
            rows = len(distinct) + 3  # prefixes 0..len(distinct), then zero, then NaN
            table = np.full((rows, num_trees, words), np.uint32(0xFFFFFFFF), dtype=np.uint32)
            zero_row, nan_row = table[-2], table[-1]
            for t, threshold, mask, zero_right, nan_right in nodes:
                rank = int(np.searchsorted(distinct, threshold))
                # A value above this threshold (prefix rank+1 and longer) turns right here.
                table[rank + 1, t] &= mask
                if zero_right:
                    zero_row[t] &= mask
                if nan_right:
                    nan_row[t] &= mask
            np.bitwise_and.accumulate(table[:-2], axis=0, out=table[:-2])
            tables.append(table.reshape(rows, columns))
            self._thresholds.append(distinct)
            offsets.append(offset)
            offset += rows
        self._table = np.concatenate(tables) if tables else np.full((1, columns), 0xFFFFFFFF, dtype=np.uint32)
        self._offsets = np.array(offsets, dtype=np.intp)
        self._zero_rows = np.array([o + len(d) + 1 for o, d in zip(offsets, self._thresholds, strict=True)])
        self._nan_rows = self._zero_rows + 1
        self._values = values
        self._tree_index = np.arange(num_trees, dtype=np.intp)

    # ------------------------------------------------------------------------------------------------ score --
    def raw_matrix(self, rows: Sequence[Sequence[Any]] | FloatArray) -> FloatArray:
        """Raw scores (log-odds), one per row, as `Booster.predict(raw_score=True)` gives them.

        `rows`: a sequence of rows (or a 2-D float array), each `len(features)` values in `features` order:
        numbers (int, float, Decimal, bool), None or NaN for a missing value. Raises ValueError when a row has
        another length or a value that is not a number."""
        x = self._matrix(rows)
        raw = np.empty(len(x), dtype=np.float64)
        for start in range(0, len(x), CHUNK_ROWS):
            raw[start : start + CHUNK_ROWS] = self._raw_chunk(x[start : start + CHUNK_ROWS])
        return raw

    def score_matrix(self, rows: Sequence[Sequence[Any]] | FloatArray) -> list[float]:
        """Fraud probabilities 0–1, one per row, equal to `Booster.predict` (within 1e-9). See `raw_matrix`
        for `rows` and errors."""
        raw = self.raw_matrix(rows)
        probabilities: FloatArray = 1.0 / (1.0 + np.exp(-self._sigmoid * raw))
        result: list[float] = probabilities.tolist()
        return result

    def score(self, values: Sequence[Any]) -> float:
        """One row's fraud probability 0–1 (see `score_matrix`)."""
        return self.score_matrix([values])[0]

    def _matrix(self, rows: Sequence[Sequence[Any]] | FloatArray) -> FloatArray:
        try:
            x = np.array(rows, dtype=np.float64, ndmin=2)
        except (TypeError, ValueError) as error:
            raise ValueError(f"feature rows must hold numbers, None or NaN: {error}") from None
        if len(rows) == 0:
            return np.empty((0, len(self.features)), dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"each row must hold {len(self.features)} values, in the order of `features`")
        # As LightGBM's prediction input does: tiny magnitudes (and -0.0) are exact zeros.
        x[np.abs(x) <= ZERO_THRESHOLD] = 0.0
        return x

    def _raw_chunk(self, x: FloatArray) -> FloatArray:
        n = len(x)
        num_trees = len(self._trees)
        leaves: npt.NDArray[np.intp]
        if not len(self._used):
            leaves = np.zeros((n, num_trees), dtype=np.intp)
        else:
            rows: npt.NDArray[np.intp] = np.empty((n, len(self._used)), dtype=np.intp)
            for j, (feature, distinct) in enumerate(zip(self._used, self._thresholds, strict=True)):
                column = x[:, feature]
                rows[:, j] = np.searchsorted(distinct, column, side="left")
            columns = x[:, self._used]
            rows += self._offsets
            np.copyto(rows, self._zero_rows, where=columns == 0.0)
            np.copyto(rows, self._nan_rows, where=np.isnan(columns))
            masks = np.bitwise_and.reduce(self._table[rows], axis=1).reshape(n, num_trees, self._words)
            leaves = _lowest_set_bit(masks)
        leaf_values = self._values[self._tree_index, leaves]
        # Sequential, from the first tree to the last, as LightGBM adds them.
        raw: FloatArray = np.cumsum(leaf_values, axis=1)[:, -1]
        return raw

    # -------------------------------------------------------------------------------------------- explain --
    def contributions(self, values: Sequence[Any]) -> list[tuple[str, float]]:
        """Each feature's contribution to one row's raw score (log-odds), in `features` order, then
        (BIAS, the expected raw score): SHAP values by path-dependent TreeSHAP, equal to LightGBM's
        `Booster.predict(pred_contrib=True)` (within 1e-9). They sum to the row's raw score. Raises ValueError
        as `raw_matrix` does."""
        x = self._matrix([values])[0].tolist()
        phi = [0.0] * (len(self.features) + 1)
        for tree in self._trees:
            phi[-1] += _expected_value(tree)
            if tree.num_leaves > 1:
                _tree_shap(tree, x, phi)
        return [*zip(self.features, phi[:-1], strict=True), (BIAS, phi[-1])]


# ---------------------------------------------------------------------------------------- tree structure --
def _leaves_left_to_right(tree: Tree) -> list[int]:
    if tree.num_leaves == 1:
        return [0]
    order: list[int] = []
    stack = [0]
    while stack:
        node = stack.pop()
        if node < 0:
            order.append(~node)
        else:
            stack.append(tree.right_child[node])
            stack.append(tree.left_child[node])
    return order


def _leaf_span(tree: Tree, node: int, position_of: dict[int, int]) -> tuple[int, int]:
    """The left-to-right positions [low, high) of the leaves under a node (they are contiguous)."""
    if node < 0:
        position = position_of[~node]
        return position, position + 1
    low, _ = _leaf_span(tree, tree.left_child[node], position_of)
    _, high = _leaf_span(tree, tree.right_child[node], position_of)
    return low, high


def _clear_bits(words: int, low: int, high: int) -> list[int]:
    mask = [0xFFFFFFFF] * words
    for position in range(low, high):
        mask[position // WORD_BITS] &= ~(1 << (position % WORD_BITS)) & 0xFFFFFFFF
    return mask


def _lowest_set_bit(masks: npt.NDArray[np.uint32]) -> npt.NDArray[np.intp]:
    """masks (rows, trees, words) -> the position of each tree's lowest set bit (its exit leaf)."""
    word = np.argmax(masks != 0, axis=2)
    chosen = np.take_along_axis(masks, word[:, :, None], axis=2)[:, :, 0].astype(np.int64)
    isolated = chosen & -chosen
    # A power of two is exact in a double: frexp's exponent is its bit position + 1.
    bit = np.frexp(isolated.astype(np.float64))[1] - 1
    result: npt.NDArray[np.intp] = (word * WORD_BITS + bit).astype(np.intp)
    return result


# ------------------------------------------------------------------------------------------------ TreeSHAP --
def _decision(tree: Tree, value: float, node: int) -> int:
    """The child a value goes to: LightGBM's NumericalDecision (value already has tiny magnitudes zeroed)."""
    missing = tree.missing_type[node]
    if math.isnan(value) and missing != MISSING_NAN:
        value = 0.0
    if (missing == MISSING_ZERO and value == 0.0) or (missing == MISSING_NAN and math.isnan(value)):
        return tree.left_child[node] if tree.default_left[node] else tree.right_child[node]
    return tree.left_child[node] if value <= tree.threshold[node] else tree.right_child[node]


def _expected_value(tree: Tree) -> float:
    # Tree::ExpectedValue: leaf values weighted by their share of the root's training rows, in leaf order.
    if tree.num_leaves == 1:
        return tree.leaf_value[0]
    total = float(tree.internal_count[0])
    expected = 0.0
    for count, value in zip(tree.leaf_count, tree.leaf_value, strict=True):
        expected += (count / total) * value
    return expected


def _tree_shap(tree: Tree, x: list[float], phi: list[float]) -> None:
    """Add one tree's SHAP values to phi (Lundberg et al. 2018, Algorithm 2, as LightGBM's Tree::TreeSHAP).

    The unique path is three parallel lists (feature, zero fraction, one fraction) plus the path weights;
    each recursion level works on its own copy, as the C++ does on its slice of preallocated memory."""

    def count(node: int) -> float:
        return float(tree.internal_count[node] if node >= 0 else tree.leaf_count[~node])

    def recurse(
        node: int,
        depth: int,
        features: list[int],
        zeros: list[float],
        ones: list[float],
        weights: list[float],
        zero_fraction: float,
        one_fraction: float,
        feature: int,
    ) -> None:
        features = [*features[:depth], feature]
        zeros = [*zeros[:depth], zero_fraction]
        ones = [*ones[:depth], one_fraction]
        weights = [*weights[:depth], 1.0 if depth == 0 else 0.0]
        # ExtendPath
        for i in range(depth - 1, -1, -1):
            weights[i + 1] += one_fraction * weights[i] * (i + 1) / (depth + 1)
            weights[i] = zero_fraction * weights[i] * (depth - i) / (depth + 1)

        if node < 0:
            leaf_value = tree.leaf_value[~node]
            for i in range(1, depth + 1):
                phi[features[i]] += (
                    _unwound_path_sum(zeros, ones, weights, depth, i) * (ones[i] - zeros[i]) * leaf_value
                )
            return

        split_feature = tree.split_feature[node]
        hot = _decision(tree, x[split_feature], node)
        cold = tree.right_child[node] if hot == tree.left_child[node] else tree.left_child[node]
        w = count(node)
        hot_zero_fraction = count(hot) / w
        cold_zero_fraction = count(cold) / w
        incoming_zero_fraction = 1.0
        incoming_one_fraction = 1.0
        if split_feature in features:
            # Already split on this feature above: undo that split so that this node redoes it.
            path_index = features.index(split_feature)
            incoming_zero_fraction = zeros[path_index]
            incoming_one_fraction = ones[path_index]
            _unwind_path(features, zeros, ones, weights, depth, path_index)
            depth -= 1
        recurse(
            hot, depth + 1, features, zeros, ones, weights,
            hot_zero_fraction * incoming_zero_fraction, incoming_one_fraction, split_feature,
        )  # fmt: skip
        recurse(
            cold, depth + 1, features, zeros, ones, weights,
            cold_zero_fraction * incoming_zero_fraction, 0.0, split_feature,
        )  # fmt: skip

    recurse(0, 0, [], [], [], [], 1.0, 1.0, -1)


def _unwind_path(
    features: list[int], zeros: list[float], ones: list[float], weights: list[float], depth: int, path_index: int
) -> None:
    one_fraction = ones[path_index]
    zero_fraction = zeros[path_index]
    next_one_portion = weights[depth]
    for i in range(depth - 1, -1, -1):
        if one_fraction != 0:
            kept = weights[i]
            weights[i] = next_one_portion * (depth + 1) / ((i + 1) * one_fraction)
            next_one_portion = kept - weights[i] * zero_fraction * (depth - i) / (depth + 1)
        else:
            weights[i] = (weights[i] * (depth + 1)) / (zero_fraction * (depth - i))
    for i in range(path_index, depth):
        features[i] = features[i + 1]
        zeros[i] = zeros[i + 1]
        ones[i] = ones[i + 1]


def _unwound_path_sum(
    zeros: list[float], ones: list[float], weights: list[float], depth: int, path_index: int
) -> float:
    one_fraction = ones[path_index]
    zero_fraction = zeros[path_index]
    next_one_portion = weights[depth]
    total = 0.0
    for i in range(depth - 1, -1, -1):
        if one_fraction != 0:
            tmp = next_one_portion * (depth + 1) / ((i + 1) * one_fraction)
            total += tmp
            next_one_portion = weights[i] - tmp * zero_fraction * ((depth - i) / (depth + 1))
        else:
            total += (weights[i] / zero_fraction) / ((depth - i) / (depth + 1))
    return total
