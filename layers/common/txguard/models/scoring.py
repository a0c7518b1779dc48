"""Scoring transactions with a trained model, without the training library.

`TreeModel.from_artifact` compiles a validated artifact (artifact.py) once; `score_matrix` then scores many
feature rows at once (ingest scores a whole batch in one call), `score` one row, and `contributions` explains
one row's score per feature.

**Equal to LightGBM.** Scores equal `lightgbm.Booster.predict` within 1e-9 (in practice within 1e-14: only the
order of adding the trees' outputs differs): the same decision at every node, including LightGBM's missing values
(include/LightGBM/tree.h, `NumericalDecision`): a NaN (None) is treated as 0 unless the node's missing_type is
"NaN"; a zero (|x| <= kZeroThreshold, which LightGBM's prediction input turns into an exact 0) goes the node's
default direction when its missing_type is "Zero", a NaN when it is "NaN"; any other value goes left when
value <= threshold. The probability is 1 / (1 + exp(-sigmoid × raw)), as BinaryLogloss::ConvertOutput has it.

**How a batch is scored.** Exit leaves are found with bit masks rather than by walking each tree, after
QuickScorer (Lucchese et al., "QuickScorer: a fast algorithm to rank documents with additive ensembles of
regression trees", SIGIR 2015): each tree's leaves are numbered left to right, one bit each; a node whose test
sends a row right rules out the leaves of its left subtree; the row's exit leaf is the leftmost leaf no node
rules out. For one feature the nodes that send a value right are those whose threshold is below it: a prefix
of the feature's thresholds in sorted order, so the masks of every prefix are ANDed once when the model is
compiled, and scoring a row costs one binary search per feature (all features in one `searchsorted`), one
table row per feature ANDed per tree, and a lowest-set-bit per tree (a de Bruijn multiplication). All of it is
vectorised over the batch with NumPy: no per-node Python work. Memory: (distinct thresholds + 3 per feature) ×
trees × 4 bytes (LightGBM's 255 bins bound the thresholds: 30 features × 500 trees of 31 leaves, about 11 MB).
Measured against the alternatives on such a model (500 trees): about as fast at a batch of one as generated
Python code (one nested `if` per node, without even the missing-value tests, and most of a second to compile),
2–3 times faster than it at a batch of 1000, and 3 times faster than a NumPy walk of all trees level by level.

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
        # Per feature: the nodes splitting on it as parallel lists (tree, threshold, mask of the leaves a right
        # turn rules out, whether a zero goes right, whether a NaN goes right).
        by_feature: dict[int, tuple[list[int], list[float], list[list[int]], list[bool], list[bool]]] = {}
        # Leaf values by (tree, word, de Bruijn hash of the leaf's bit in that word).
        values = np.zeros((num_trees * words, WORD_BITS), dtype=np.float64)
        for t, tree in enumerate(trees):
            spans, order = _leaf_spans(tree)
            for position, leaf in enumerate(order):
                word, bit = divmod(position, WORD_BITS)
                values[t * words + word, _DEBRUIJN_HASH[bit]] = tree.leaf_value[leaf]
            for node, (low, high) in enumerate(spans):
                threshold = tree.threshold[node]
                missing = tree.missing_type[node]
                default_right = not tree.default_left[node]
                lists = by_feature.setdefault(tree.split_feature[node], ([], [], [], [], []))
                lists[0].append(t)
                lists[1].append(threshold)
                lists[2].append(_clear_bits(words, low, high))
                lists[3].append(default_right if missing == MISSING_ZERO else threshold < 0.0)
                lists[4].append(default_right if missing in (MISSING_NAN, MISSING_ZERO) else threshold < 0.0)

        used = sorted(by_feature)
        keys: list[npt.NDArray[np.complex128]] = []
        tables: list[npt.NDArray[np.uint32]] = []
        table_starts = []
        start = 0
        for slot, feature in enumerate(used):
            tree_of, thresholds, masks, zero_right, nan_right = by_feature[feature]
            distinct, rank = np.unique(np.array(thresholds, dtype=np.float64), return_inverse=True)
            # Rows: the prefixes 0..len(distinct) of the sorted thresholds, then a zero, then a NaN.
            table = np.full((len(distinct) + 3, num_trees, words), 0xFFFFFFFF, dtype=np.uint32)
            node_masks = np.array(masks, dtype=np.uint32)
            tree_index = np.array(tree_of, dtype=np.intp)
            # A value above a node's threshold (every prefix past its rank) turns right there.
            np.bitwise_and.at(table, (rank + 1, tree_index), node_masks)
            prefixes = table[:-2]
            np.bitwise_and.accumulate(prefixes, axis=0, out=prefixes)
            for row, goes_right in ((-2, zero_right), (-1, nan_right)):
                chosen = np.array(goes_right, dtype=bool)
                np.bitwise_and.at(table, (row, tree_index[chosen]), node_masks[chosen])
            tables.append(table.reshape(len(distinct) + 3, num_trees * words))
            # Keys sort by feature slot, then threshold: one binary search finds every feature's prefix.
            key = np.empty(len(distinct), dtype=np.complex128)
            key.real, key.imag = slot, distinct
            keys.append(key)
            table_starts.append(start)
            start += len(distinct) + 3
        self._used = np.array(used, dtype=np.intp)
        self._slots = np.arange(len(used), dtype=np.float64)
        self._keys = np.concatenate(keys) if keys else np.empty(0, dtype=np.complex128)
        self._table = np.concatenate(tables) if tables else np.empty((0, num_trees * words), dtype=np.uint32)
        # searchsorted over all keys counts the keys of earlier slots (3 rows fewer each than their table rows).
        self._key_to_row = 3 * np.arange(len(used), dtype=np.intp)
        ends = np.array([*table_starts[1:], start], dtype=np.intp)
        self._zero_rows = ends - 2
        self._nan_rows = ends - 1
        self._values = values.reshape(-1)
        self._tree_columns = np.arange(num_trees, dtype=np.intp) * words

    # ------------------------------------------------------------------------------------------------ score --
    def raw_matrix(self, rows: Sequence[Sequence[Any]] | FloatArray) -> FloatArray:
        """Raw scores (log-odds), one per row, as `Booster.predict(raw_score=True)` gives them.

        `rows`: a sequence of rows (or a 2-D float array), each `len(features)` values in `features` order:
        numbers (int, float, Decimal, bool), None or NaN for a missing value. Raises ValueError when a row has
        another length or a value that is not a number."""
        x = self._matrix(rows)
        if not len(x):
            return np.zeros(0, dtype=np.float64)
        if len(x) <= CHUNK_ROWS:
            return self._raw_chunk(x)
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
        if len(rows) == 0:
            return np.empty((0, len(self.features)), dtype=np.float64)
        try:
            x = np.array(rows, dtype=np.float64, ndmin=2)
        except (TypeError, ValueError) as error:
            raise ValueError(f"feature rows must hold numbers, None or NaN: {error}") from None
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"each row must hold {len(self.features)} values, in the order of `features`")
        # As LightGBM's prediction input does: tiny magnitudes (and -0.0) are exact zeros.
        x[np.abs(x) <= ZERO_THRESHOLD] = 0.0
        return x

    def _raw_chunk(self, x: FloatArray) -> FloatArray:
        n = len(x)
        columns = x[:, self._used]
        missing = np.isnan(columns)
        query = np.empty(columns.shape, dtype=np.complex128)
        query.real = self._slots
        query.imag = np.where(missing, 0.0, columns)
        rows: npt.NDArray[np.intp] = np.searchsorted(self._keys, query, side="left") + self._key_to_row
        np.copyto(rows, self._zero_rows, where=columns == 0.0)
        np.copyto(rows, self._nan_rows, where=missing)
        # (features, rows, tree words) ANDed over the features: each tree's leaves no node ruled out.
        masks = np.bitwise_and.reduce(self._table[rows.T], axis=0)
        if self._words == 1:
            word = self._tree_columns
        else:
            first = np.argmax(masks.reshape(n, len(self._trees), self._words) != 0, axis=2)
            word = self._tree_columns + first
            masks = np.take_along_axis(masks, word, axis=1)
        # The lowest set bit (the leftmost leaf left), hashed to 0..31 by a de Bruijn multiplication.
        lowest = masks & (~masks + np.uint32(1))
        hashed = (lowest * np.uint32(_DEBRUIJN)) >> np.uint32(27)
        leaf_values = self._values[word * WORD_BITS + hashed]
        raw: FloatArray = leaf_values.sum(axis=1)
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
_DEBRUIJN = 0x077CB531
# bit -> the top 5 bits of (1 << bit) × _DEBRUIJN: distinct for the 32 bits.
_DEBRUIJN_HASH = [(((1 << bit) * _DEBRUIJN) & 0xFFFFFFFF) >> 27 for bit in range(WORD_BITS)]


def _leaf_spans(tree: Tree) -> tuple[list[tuple[int, int]], list[int]]:
    """Per internal node, the left-to-right positions [low, high) of the leaves of its left subtree; and the
    leaves in left-to-right order."""
    order: list[int] = []
    spans = [(0, 0)] * (tree.num_leaves - 1)
    if tree.num_leaves == 1:
        return spans, [0]
    # Iterative in-order walk; (node, True) marks a node whose left subtree is done.
    stack: list[tuple[int, bool]] = [(0, False)]
    starts: dict[int, int] = {}
    while stack:
        node, left_done = stack.pop()
        if node < 0:
            order.append(~node)
        elif left_done:
            spans[node] = (starts[node], len(order))
            stack.append((tree.right_child[node], False))
        else:
            starts[node] = len(order)
            stack.append((node, True))
            stack.append((tree.left_child[node], False))
    return spans, order


def _clear_bits(words: int, low: int, high: int) -> list[int]:
    mask = (1 << (words * WORD_BITS)) - 1
    mask &= ~(((1 << (high - low)) - 1) << low)
    return [(mask >> (word * WORD_BITS)) & 0xFFFFFFFF for word in range(words)]


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
