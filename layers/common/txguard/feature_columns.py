"""Where a chunk's features are held as columns: what rule predicates (rule_columns) and models read at once.

`RowColumns` reads the columns from per-transaction feature dicts (features.Features), lazily, one column per
feature asked for, each read once per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from txguard.features import MODEL_SCORE, Features

FloatArray = npt.NDArray[np.float64]

# Integers up to this magnitude are exactly float64.
EXACT_INT = 2**53


class FeatureSource(Protocol):
    """A chunk's features as columns: what rule predicates read (rule_columns.ColumnSource) and models score."""

    size: int

    def number(self, name: str) -> tuple[FloatArray, bool]:
        """The feature as float64 (NaN where missing) and whether every present value is exactly that float64."""
        ...

    def text(self, name: str) -> Sequence[str | int | None]:
        """A text field's values (or a list membership's 1, 0, None), one per row."""
        ...

    def matrix(self, names: Sequence[str]) -> FloatArray:
        """The features `names` as a model's input: shape (size, len(names)), NaN where missing."""
        ...


def matrix_of(source: FeatureSource, names: Sequence[str]) -> FloatArray:
    """The columns `names` side by side (FeatureSource.matrix)."""
    if not names:
        return np.empty((source.size, 0), dtype=np.float64)
    return np.column_stack([source.number(name)[0] for name in names])


class WithModelScore:
    """A chunk's columns with `model_score` (the champion's probabilities, as rules read it) added."""

    def __init__(self, source: FeatureSource, probabilities: Sequence[float]) -> None:
        self.source = source
        self.size = source.size
        # Rules read the shortest decimal that gives back p, not p itself: not exact in float64.
        self._score = (np.asarray(probabilities, dtype=np.float64), False)

    def number(self, name: str) -> tuple[FloatArray, bool]:
        return self._score if name == MODEL_SCORE else self.source.number(name)

    def text(self, name: str) -> Sequence[str | int | None]:
        return self.source.text(name)

    def matrix(self, names: Sequence[str]) -> FloatArray:
        return self.source.matrix(names)


class RowColumns:
    """The columns of `size` per-transaction feature dicts (rule_columns.ColumnSource)."""

    def __init__(self, rows: Sequence[Features]) -> None:
        self.rows = rows
        self.size = len(rows)
        self._numbers: dict[str, tuple[FloatArray, bool]] = {}

    def number(self, name: str) -> tuple[FloatArray, bool]:
        """The feature as float64 (NaN where missing) and whether every present value is exactly that float64
        (ints below 2**53)."""
        found = self._numbers.get(name)
        if found is None:
            values = [row.get(name) for row in self.rows]
            exact = all(v is None or (type(v) is int and -EXACT_INT <= v <= EXACT_INT) for v in values)
            column = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
            found = self._numbers[name] = (column, exact)
        return found

    def text(self, name: str) -> list[str | int | None]:
        """A text field's values (or a list membership's 1, 0, None), one per row."""
        return [row.get(name) for row in self.rows]  # type: ignore[misc]

    def matrix(self, names: Sequence[str]) -> FloatArray:
        """The features `names` as a model's input (FeatureSource.matrix)."""
        return matrix_of(self, names)
