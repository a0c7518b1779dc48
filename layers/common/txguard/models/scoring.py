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
Individualized Feature Attribution for Tree Ensembles", 2018, Algorithm 2), equal to LightGBM's `pred_contrib`
(src/io/tree.cpp, Tree::TreeSHAP, node counts as covers): in log-odds, one per feature, plus the bias (the trees'
expected output); they sum to the raw score. The algorithm's per-leaf sums are computed for many rows and all
leaves of all trees at once with NumPy, by Gauss–Legendre quadrature (`_Explainer`), compiled on the first
explanation; `contributions_matrix` explains a whole chunk's flagged decisions in one call. Measured on a
300-tree model of 31 leaves (CPU time, against the explainer that walked each leaf's path node by node and kept
the leaves' slots leaf-major): compiling 20 ms instead of 185 (the paths are laid out with NumPy from the parent
links), one row 1.1 ms instead of 3.4, three rows 0.8 ms a row instead of 3.2, 32 rows 0.8 instead of 1.8; equal
to it within 3e-14.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from txguard.models.artifact import MISSING_NAN, MISSING_ZERO, ModelArtifact, Tree

# LightGBM's kZeroThreshold (1e-35f, as a double): smaller magnitudes are zero at prediction.
ZERO_THRESHOLD = float(np.float32(1e-35))
BIAS = "bias"  # the name of the expected-value entry of `contributions`
WORD_BITS = 32
# Rows scored per step of score_matrix: keeps the temporary (features × rows × trees) table near 4 MB for a
# 500-tree model; 16 to 256 rows cost the same per row on this host.
CHUNK_ROWS = 64
# Floats per temporary array of TreeSHAP (rows × leaves × path features) per step of contributions_matrix: 2 MB,
# small enough to stay in cache (larger steps measured slower on a 500-tree model).
EXPLAIN_CELLS = 250_000

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
        # Compiled on the first explanation: most batches explain nothing.
        self._explainer: _Explainer | None = None

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
        # Every internal node of every tree, as flat arrays.
        tree_of = np.repeat(np.arange(num_trees), [tree.num_leaves - 1 for tree in trees])
        feature = np.array([f for tree in trees for f in tree.split_feature], dtype=np.intp)
        threshold = np.array([v for tree in trees for v in tree.threshold], dtype=np.float64)
        missing = np.array([m for tree in trees for m in tree.missing_type], dtype=np.int8)
        default_right = ~np.array([d for tree in trees for d in tree.default_left], dtype=bool)
        spans = np.array([span for tree in trees for span in tree.left_leaves], dtype=np.int64).reshape(-1, 2)
        # Per node and word: the leaves its right turn rules out, cleared from all ones.
        masks = np.empty((len(feature), words), dtype=np.uint32)
        for word in range(words):
            low = np.clip(spans[:, 0] - word * WORD_BITS, 0, WORD_BITS).astype(np.uint64)
            high = np.clip(spans[:, 1] - word * WORD_BITS, 0, WORD_BITS).astype(np.uint64)
            ruled_out = ((np.uint64(1) << (high - low)) - np.uint64(1)) << low
            masks[:, word] = (np.uint64(0xFFFFFFFF) & ~ruled_out).astype(np.uint32)
        zero_right = np.where(missing == MISSING_ZERO, default_right, threshold < 0.0)
        nan_right = np.where((missing == MISSING_NAN) | (missing == MISSING_ZERO), default_right, threshold < 0.0)

        # Leaf values by (tree, word, de Bruijn hash of the leaf's bit in that word).
        values = np.zeros((num_trees * words, WORD_BITS), dtype=np.float64)
        leaf_tree = np.repeat(np.arange(num_trees), [tree.num_leaves for tree in trees])
        position = np.concatenate([np.arange(tree.num_leaves) for tree in trees])
        leaf_value = np.array([tree.leaf_value[leaf] for tree in trees for leaf in tree.leaf_order])
        hashes = np.array(_DEBRUIJN_HASH, dtype=np.intp)
        values[leaf_tree * words + position // WORD_BITS, hashes[position % WORD_BITS]] = leaf_value

        used = np.unique(feature)
        keys: list[npt.NDArray[np.complex128]] = []
        tables: list[npt.NDArray[np.uint32]] = []
        ends = []
        end = 0
        for slot, column in enumerate(used):
            on = feature == column
            distinct, rank = np.unique(threshold[on], return_inverse=True)
            node_tree, node_masks = tree_of[on], masks[on]
            # Rows: the prefixes 0..len(distinct) of the sorted thresholds, then a zero, then a NaN.
            table = np.full((len(distinct) + 3, num_trees, words), 0xFFFFFFFF, dtype=np.uint32)
            # A value above a node's threshold (every prefix past its rank) turns right there.
            np.bitwise_and.at(table, (rank + 1, node_tree), node_masks)
            prefixes = table[:-2]
            np.bitwise_and.accumulate(prefixes, axis=0, out=prefixes)
            for row, goes_right in ((-2, zero_right[on]), (-1, nan_right[on])):
                np.bitwise_and.at(table, (row, node_tree[goes_right]), node_masks[goes_right])
            tables.append(table.reshape(len(distinct) + 3, num_trees * words))
            # Keys sort by feature slot, then threshold: one binary search finds every feature's prefix.
            key = np.empty(len(distinct), dtype=np.complex128)
            key.real, key.imag = slot, distinct
            keys.append(key)
            end += len(distinct) + 3
            ends.append(end)
        self._used = used.astype(np.intp)
        self._slots = np.arange(len(used), dtype=np.float64)
        self._keys = np.concatenate(keys) if keys else np.empty(0, dtype=np.complex128)
        self._table = np.concatenate(tables) if tables else np.empty((0, num_trees * words), dtype=np.uint32)
        # searchsorted over all keys counts the keys of earlier slots (3 rows fewer each than their table rows).
        self._key_to_row = 3 * np.arange(len(used), dtype=np.intp)
        self._zero_rows = np.array(ends, dtype=np.intp) - 2
        self._nan_rows = self._zero_rows + 1
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
        except (TypeError, ValueError, OverflowError) as error:
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
        phi = self.contributions_matrix([values])[0]
        return [*zip(self.features, phi[:-1], strict=True), (BIAS, phi[-1])]

    def contributions_matrix(self, rows: Sequence[Sequence[Any]] | FloatArray) -> FloatArray:
        """Contributions of many rows at once: an array of shape (rows, len(features) + 1), each row its
        features' contributions in `features` order and then the bias, as `contributions` gives them (and as
        `Booster.predict(pred_contrib=True)` does, within 1e-9). One call explains a whole chunk's flagged
        decisions for about the cost of a few single ones. `rows` and errors as in `raw_matrix`."""
        x = self._matrix(rows)
        if not len(x):
            return np.zeros((0, len(self.features) + 1), dtype=np.float64)
        explainer = self._explainer
        if explainer is None:
            explainer = self._explainer = _Explainer(self._trees, len(self.features))
        return explainer.shap_matrix(x)


# ---------------------------------------------------------------------------------------- tree structure --
_DEBRUIJN = 0x077CB531
# bit -> the top 5 bits of (1 << bit) × _DEBRUIJN: distinct for the 32 bits.
_DEBRUIJN_HASH = [(((1 << bit) * _DEBRUIJN) & 0xFFFFFFFF) >> 27 for bit in range(WORD_BITS)]


# ------------------------------------------------------------------------------------------------ TreeSHAP --


class _LeafGroup:
    """The leaves (of every tree) whose paths have `width` distinct features: their runs are `offset` ..
    `offset + width × leaves` of the explainer's, slot-major (run offset + s·leaves + l: leaf l's slot s, the
    slots being the path's distinct features in order of first use), so that a row's o_i of the group are one
    contiguous (width × leaves) block and the product over the slots is width − 1 contiguous multiplications.

    Per slot and leaf: `zero`, the feature's "zero fraction" z_i (the product, over the path's nodes on i, of the
    share of the node's training rows that went the path's way), and z_i (1 − t) at each quadrature node t
    (`zero_parts`); per leaf its value."""

    def __init__(self, width: int, offset: int, zero: FloatArray, value: FloatArray) -> None:
        self.width = width
        self.leaves = len(value)
        self.offset = offset
        self.end = offset + width * self.leaves
        self.value = value
        # Gauss–Legendre nodes and weights on [0, 1]: exact for the degree width − 1 integrands of _Explainer.
        points, point_weights = np.polynomial.legendre.leggauss(-(-width // 2))
        self.nodes_t = ((points + 1.0) / 2.0).tolist()
        self.weights_t = (point_weights / 2.0).tolist()
        self.zero = zero
        self.zero_parts = [(1.0 - t) * zero for t in self.nodes_t]
        self.feature = np.zeros((width, self.leaves), dtype=np.intp)  # each run's feature column


class _Explainer:
    """Path-dependent TreeSHAP for many rows, vectorised over the rows and the leaves of all trees.

    Lundberg et al.'s Algorithm 2 walks each tree keeping, for the path to each leaf, the polynomial
    Π_i (z_i + o_i·y) over the path's D distinct features i (z_i: the share of training rows that followed the
    path through i's splits, o_i: 1 when the row follows it, else 0); a feature j's SHAP value from that leaf is
    value × (o_j − z_j) × Σ_k w(k)·[y^k] Π_{i≠j} (z_i + o_i·y), with the Shapley weights
    w(k) = k!(D−k−1)!/D!. Since w(k) is the Beta integral ∫₀¹ t^k (1−t)^(D−1−k) dt, that sum is
    ∫₀¹ Π_{i≠j} (z_i (1−t) + o_i t) dt: the integral of a polynomial of degree D − 1, which Gauss–Legendre
    quadrature with ⌈D/2⌉ nodes computes exactly (the identity Linear TreeShap, Yu et al. 2022, builds on).
    At each node t the product over all i is formed once and divided by each factor (every factor is > 0 as
    z_i > 0 and 0 < t < 1), so a leaf costs O(D²/2) multiplications for all j at once, with no loop per
    coefficient. Leaves are grouped by D so that every group is one set of rectangular arrays.

    Everything that depends on the model alone is laid out once, when the explainer is built: each (leaf, path
    feature) "run" of path nodes on that feature, with the direction the path takes at each; o for every run of
    every leaf is then one gather of the row's node decisions at each run's first node, ANDed with its later
    nodes a rank at a time (`_repeats`: few ranks, as a feature rarely recurs more than a few times on a path),
    and a group's contributions are summed per feature with one bincount."""

    def __init__(self, trees: tuple[Tree, ...], num_features: int) -> None:
        self.num_features = num_features
        self.bias = sum(_expected_value(tree) for tree in trees)
        split = [tree for tree in trees if tree.num_leaves > 1]
        self.node_feature = _flat([tree.split_feature for tree in split], np.intp)
        self.threshold = _flat([tree.threshold for tree in split], np.float64)
        self.missing = _flat([tree.missing_type for tree in split], np.int8)
        self.default_left = _flat([tree.default_left for tree in split], bool)
        self.groups: list[_LeafGroup] = []
        self._repeats: list[tuple[npt.NDArray[np.intp], npt.NDArray[np.intp], npt.NDArray[np.bool_]]] = []
        if not split:
            self.first_node = self.run_feature = np.empty(0, dtype=np.intp)
            self.first_left = np.empty(0, dtype=bool)
            return
        self._lay_out(split)

    def _lay_out(self, trees: list[Tree]) -> None:
        """The runs of every leaf of every tree (all of them split), with NumPy: each leaf's path from the
        parent links, its nodes grouped by feature (a run), the runs numbered slot-major within the leaf's group
        (_LeafGroup), and each run's first node, feature and zero fraction (the product of its nodes' shares, in
        path order, as Tree::TreeSHAP multiplies them)."""
        nodes_per_tree = np.array([tree.num_leaves - 1 for tree in trees])
        node_base = np.concatenate([[0], np.cumsum(nodes_per_tree)[:-1]])
        leaf_base = node_base + np.arange(len(trees))  # a tree of L leaves has L − 1 nodes
        counts = _flat([tree.internal_count for tree in trees], np.float64)
        leaf_counts = _flat([tree.leaf_count for tree in trees], np.float64)
        values = _flat([tree.leaf_value for tree in trees], np.float64)
        num_nodes, num_leaves = len(counts), len(values)
        # Each node's and leaf's parent (−1: the root), the direction taken from it, and the parent's share of
        # training rows that went that way.
        node_parent = np.full(num_nodes, -1, dtype=np.intp)
        node_left = np.zeros(num_nodes, dtype=bool)
        leaf_parent = np.empty(num_leaves, dtype=np.intp)
        leaf_left = np.empty(num_leaves, dtype=bool)
        parent = np.arange(num_nodes)
        tree_of = np.repeat(np.arange(len(trees)), nodes_per_tree)
        for went_left, child in (
            (True, _flat([tree.left_child for tree in trees], np.intp)),
            (False, _flat([tree.right_child for tree in trees], np.intp)),
        ):
            inner = child >= 0
            node_parent[node_base[tree_of[inner]] + child[inner]] = parent[inner]
            node_left[node_base[tree_of[inner]] + child[inner]] = went_left
            child_leaf = leaf_base[tree_of[~inner]] + ~child[~inner]
            leaf_parent[child_leaf] = parent[~inner]
            leaf_left[child_leaf] = went_left
        node_share = np.ones(num_nodes, dtype=np.float64)
        has_parent = node_parent >= 0
        node_share[has_parent] = counts[has_parent] / counts[node_parent[has_parent]]
        leaf_share = leaf_counts / counts[leaf_parent]
        # Every (leaf, path node) pair, walking up from the leaves: its depth above the leaf orders the path.
        steps_leaf: list[npt.NDArray[Any]] = []
        steps_node: list[npt.NDArray[Any]] = []
        steps_left: list[npt.NDArray[Any]] = []
        steps_share: list[npt.NDArray[Any]] = []
        steps_up: list[npt.NDArray[Any]] = []
        leaf: npt.NDArray[Any] = np.arange(num_leaves)
        node: npt.NDArray[Any] = leaf_parent
        left: npt.NDArray[Any] = leaf_left
        share: npt.NDArray[Any] = leaf_share
        up = 0
        while len(leaf):
            steps_leaf.append(leaf)
            steps_node.append(node)
            steps_left.append(left)
            steps_share.append(share)
            steps_up.append(np.full(len(leaf), up))
            left, share, node = node_left[node], node_share[node], node_parent[node]
            keep = node >= 0
            leaf, node, left, share = leaf[keep], node[keep], left[keep], share[keep]
            up += 1
        step_leaf = np.concatenate(steps_leaf)
        step_node = np.concatenate(steps_node)
        step_left = np.concatenate(steps_left)
        step_share = np.concatenate(steps_share)
        step_feature = self.node_feature[step_node]
        # Runs: a leaf's nodes on one feature, root first.
        order = np.lexsort((-np.concatenate(steps_up), step_feature, step_leaf))
        step_leaf, step_node, step_left = step_leaf[order], step_node[order], step_left[order]
        step_share, step_feature = step_share[order], step_feature[order]
        new_run = np.r_[True, (step_leaf[1:] != step_leaf[:-1]) | (step_feature[1:] != step_feature[:-1])]
        run_start = np.flatnonzero(new_run)
        run_of_step = np.cumsum(new_run) - 1
        run_leaf, run_feature = step_leaf[run_start], step_feature[run_start]
        run_zero = np.multiply.reduceat(step_share, run_start)
        # Slots: a leaf's runs in the order their first node comes on the path (root first).
        run_depth = np.concatenate(steps_up)[order][run_start]
        by_use = np.lexsort((-run_depth, run_leaf))
        width = np.bincount(run_leaf, minlength=num_leaves)
        leaf_first_run = np.concatenate([[0], np.cumsum(width)[:-1]])
        slot = np.empty(len(run_start), dtype=np.intp)
        slot[by_use] = np.arange(len(run_start)) - leaf_first_run[run_leaf[by_use]]
        # Groups of leaves by width; the run's number: its group's offset + slot × leaves + the leaf's rank.
        widths, group_of_leaf, group_sizes = np.unique(width, return_inverse=True, return_counts=True)
        group_offsets = np.concatenate([[0], np.cumsum(widths * group_sizes)[:-1]])
        leaf_rank = np.empty(num_leaves, dtype=np.intp)
        for g in range(len(widths)):
            members = group_of_leaf == g
            leaf_rank[members] = np.arange(group_sizes[g])
        run_group = group_of_leaf[run_leaf]
        number = group_offsets[run_group] + slot * group_sizes[run_group] + leaf_rank[run_leaf]
        offset = int(group_offsets[-1] + widths[-1] * group_sizes[-1])
        zero_of_run = np.empty(offset, dtype=np.float64)
        zero_of_run[number] = run_zero
        for g, (w, size) in enumerate(zip(widths.tolist(), group_sizes.tolist(), strict=True)):
            start = int(group_offsets[g])
            zero = zero_of_run[start : start + w * size].reshape(w, size)
            self.groups.append(_LeafGroup(w, start, zero, values[group_of_leaf == g]))
        self.first_node = np.empty(offset, dtype=np.intp)
        self.first_left = np.empty(offset, dtype=bool)
        self.run_feature = np.empty(offset, dtype=np.intp)
        self.first_node[number] = step_node[run_start]
        self.first_left[number] = step_left[run_start]
        self.run_feature[number] = run_feature
        for group in self.groups:
            group.feature = self.run_feature[group.offset : group.end].reshape(group.width, group.leaves)
        # Later nodes of a run, by their rank in it (1, 2, ...): within a rank each run appears once.
        rank = np.arange(len(step_node)) - run_start[run_of_step]
        for k in range(1, int(rank.max()) + 1):
            at = rank == k
            self._repeats.append((number[run_of_step[at]], step_node[at], step_left[at]))

    def shap_matrix(self, x: FloatArray) -> FloatArray:
        """x: rows × features (tiny magnitudes already zero) -> rows × (SHAP values per feature, then the bias).
        Rows are explained about EXPLAIN_CELLS cells at a time: each takes (rows × runs) floats at once."""
        n = len(x)
        phi = np.zeros((n, self.num_features + 1), dtype=np.float64)
        phi[:, -1] = self.bias
        if not n or not len(self.node_feature):
            return phi
        step = max(1, EXPLAIN_CELLS // len(self.first_node))
        for start in range(0, n, step):
            phi[start : start + step, :-1] = self._values(x[start : start + step])
        return phi

    def _decisions(self, x: FloatArray) -> npt.NDArray[np.bool_]:
        # NumericalDecision for every row and node at once: rows × nodes.
        value = np.take(x, self.node_feature, axis=1)
        nan = np.isnan(value)
        value = np.where(nan & (self.missing != MISSING_NAN), 0.0, value)
        by_default = ((self.missing == MISSING_ZERO) & (value == 0.0)) | ((self.missing == MISSING_NAN) & nan)
        with np.errstate(invalid="ignore"):
            compared = value <= self.threshold
        result: npt.NDArray[np.bool_] = np.where(by_default, self.default_left, compared)
        return result

    def _values(self, x: FloatArray) -> FloatArray:
        """x: rows × features -> rows × features, the SHAP values of every leaf summed."""
        n = len(x)
        goes_left = self._decisions(x)
        # o_i of every run: the row follows the path through every node on feature i.
        # np.take and flat indices: NumPy's fancy indexing along the second axis of a few rows is several times
        # slower.
        follows = np.take(goes_left, self.first_node, axis=1) == self.first_left
        flat, row_start = follows.reshape(-1), np.arange(n)[:, None] * follows.shape[1]
        for runs, nodes, lefts in self._repeats:
            flat[(row_start + runs).ravel()] &= (np.take(goes_left, nodes, axis=1) == lefts).ravel()
        phi = np.zeros(n * self.num_features, dtype=np.float64)
        row_bins = np.arange(n)[:, None, None] * self.num_features
        for group in self.groups:
            # A group at a time, so that its arrays stay in cache.
            og = follows[:, group.offset : group.end].reshape(n, group.width, group.leaves).astype(np.float64)
            # ∫ Π_{i≠j} f_i(t) dt for every j (= Σ_k w(k)·[y^k] Π_{i≠j} (z_i + o_i·y)), a quadrature node at a
            # time, f_i(t) = z_i (1 − t) + o_i t: rows × slots × leaves, > 0, so dividing the product by one
            # factor is safe.
            weighted = np.zeros_like(og)
            for t, weight, zero_part in zip(group.nodes_t, group.weights_t, group.zero_parts, strict=True):
                factors = og * t
                factors += zero_part
                product = factors.prod(axis=1)
                product *= weight
                weighted += product[:, None, :] / factors
            contribution = group.value * (og - group.zero)
            contribution *= weighted
            # Summed per (row, feature) in one bincount: row r's features are bins r·F .. r·F + F - 1.
            bins = (row_bins + group.feature).ravel()
            phi += np.bincount(bins, weights=contribution.ravel(), minlength=n * self.num_features)
        values = phi
        return values.reshape(n, self.num_features).astype(np.float64, copy=False)


def _flat(parts: Sequence[Sequence[Any]], dtype: Any) -> npt.NDArray[Any]:
    """Concatenated per-tree tuples as one array."""
    return np.array([value for part in parts for value in part], dtype=dtype)


def _expected_value(tree: Tree) -> float:
    # Tree::ExpectedValue: leaf values weighted by their share of the root's training rows, in leaf order.
    if tree.num_leaves == 1:
        return tree.leaf_value[0]
    total = float(tree.internal_count[0])
    expected = 0.0
    for count, value in zip(tree.leaf_count, tree.leaf_value, strict=True):
        expected += (count / total) * value
    return expected
