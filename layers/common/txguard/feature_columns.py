"""Where a batch's features are computed as columns, and held as what rule predicates (rule_columns) and models
read at once.

`columnar_features` computes a batch's account, merchant, local-time and attribute features (features.py defines
them) with vectorised group-by-account and group-by-merchant operations, for the common case (one currency, no
late arrivals): each window's count and sum is two binary searches on an (entity, time) int64 key over the
batch's transactions, the stored tails and the stored per-day totals, with prefix sums of amounts in
ten-thousandths; the distinct attribute values of a window are counted from pieces of time per (account, value),
by binary searches too. The result, `FeatureColumns`, holds exact integers (value × 10^places); `rows()` gives the
same features dicts as the row engine, bit for bit, and `json_rows()` the stored features JSON, byte for byte.
detection.decisions_in_time_order takes this path when it can.

`RowColumns` reads the columns from per-transaction feature dicts (features.Features), lazily, one column per
feature asked for, each read once per chunk: what a detector's decide_batch uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from math import isqrt
from operator import attrgetter
from typing import Any, NamedTuple, Protocol, TypeVar, overload

import numpy as np
import numpy.typing as npt

from txguard.domain import Transaction
from txguard.features import (
    ACCOUNT_DAY_FEATURES,
    ATTRIBUTE_FEATURES,
    DAY_MS,
    DAY_WINDOWS,
    DISTINCT_FEATURES,
    LOCAL_TIME_FEATURES,
    LONGEST_DAY_WINDOW,
    MERCHANT_DAY_FEATURES,
    MODEL_SCORE,
    NEW_VALUE_FEATURES,
    NIGHT_UNTIL_HOUR,
    RISK_FEATURES,
    RISK_WINDOWS,
    WINDOWS,
    AccountHistory,
    ConstantTotals,
    FeatureReader,
    Features,
    FeatureSettings,
    FeatureValue,
    Prior,
    Timeline,
    features_json,
    known_frauds,
    local_time_features,
    merchant_days_back,
    merchant_reach_ms,
    model_score_feature,
    to_units,
    window_reach_ms,
)

FloatArray = npt.NDArray[np.float64]
T = TypeVar("T")

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

    def add_model_scores(self, probabilities: Sequence[float]) -> None:
        """Add `model_score` (the champion's probabilities 0-1, one per row, read as
        features.model_score_feature gives them) after the other features of each row."""
        ...


def matrix_of(source: FeatureSource, names: Sequence[str]) -> FloatArray:
    """The columns `names` side by side (FeatureSource.matrix)."""
    if not names:
        return np.empty((source.size, 0), dtype=np.float64)
    return np.column_stack([source.number(name)[0] for name in names])


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

    def values_at(self, name: str, rows: Sequence[int], default: Any = None) -> list[Any]:
        """rows[i].get(name, default) for each position i of `rows`."""
        features = self.rows
        return [features[i].get(name, default) for i in rows]

    def matrix(self, names: Sequence[str]) -> FloatArray:
        """The features `names` as a model's input (FeatureSource.matrix)."""
        return matrix_of(self, names)

    def add_model_scores(self, probabilities: Sequence[float]) -> None:
        """Write `model_score` into each row's dict (FeatureSource.add_model_scores)."""
        for row, p in zip(self.rows, probabilities, strict=True):
            row[MODEL_SCORE] = model_score_feature(p)
        # Rules read the shortest decimal that gives back p: p itself in float64, not exact.
        self._numbers[MODEL_SCORE] = (np.asarray(probabilities, dtype=np.float64), False)


# ----------------------------------------------------------------------------------------- the feature step --
IntArray = npt.NDArray[np.int64]
# A column of exact numbers: each value is `scaled` × 10^-places; `present` False where the feature is missing.
# Integer arithmetic on int64 is exact; the step refuses a chunk (None) where a sum could leave int64's range.
_SAFE = 2**62
_HOURS = 3_600_000


class Column(NamedTuple):
    scaled: IntArray  # int64; Python ints (dtype object) where a value may leave int64's range
    places: int
    present: npt.NDArray[np.bool_] | None = None


class FeatureColumns:
    """A chunk's features as columns of exact numbers (Column), with values given per row (add_values,
    add_model_scores); see `columnar_features`. `rows()` gives each transaction's features dict, equal (keys,
    values and key order) to the row engine's (features.AccountHistory.features and the rest,
    detection.decisions_in_time_order); `row(i)` reads one of them from the columns on demand (FeatureRow), which
    is all deciding needs for the few rows a rule explains."""

    def __init__(
        self,
        size: int,
        numbers: dict[str, Column],
        names_first: Sequence[str],
        names_later: Sequence[str],
        first: npt.NDArray[np.bool_],
    ) -> None:
        self.size = size
        self.numbers = numbers
        # The keys of a row, in the row engine's order: for an account's first transaction, and the others.
        self._names_first = tuple(names_first)
        self._names_later = tuple(names_later)
        self._first = first
        self._floats: dict[str, tuple[FloatArray, bool]] = {}
        self._given: dict[str, list[FeatureValue]] = {}
        self._scores: list[float] | None = None  # the champion's probabilities, read as model_score
        # Per column read by FeatureRow: its integers and presence as Python lists, its places (negative), and the
        # Decimals built of its rows (rules read a row's feature again to explain it).
        self._lists: dict[str, tuple[list[int], list[bool] | None, int, dict[int, Decimal]]] = {}
        self._keys_first = frozenset(self._names_first)
        self._keys_later = frozenset(self._names_later)

    def part(self, start: int, stop: int) -> FeatureColumns:
        """Rows start..stop-1 as columns of their own (views of these arrays, the values given so far included):
        what a chunk of them is decided on. The whole when it is asked for."""
        if (start, stop) == (0, self.size):
            return self
        numbers = {
            name: Column(c.scaled[start:stop], c.places, None if c.present is None else c.present[start:stop])
            for name, c in self.numbers.items()
        }
        part = FeatureColumns(stop - start, numbers, self._names_first, self._names_later, self._first[start:stop])
        part._given = {name: values[start:stop] for name, values in self._given.items()}
        if self._scores is not None:
            part.add_model_scores(self._scores[start:stop])
        return part

    def add_values(self, name: str, values: list[FeatureValue]) -> None:
        """Add a feature given as one value per row (the stored model scores, a text field, a list membership),
        after the others in each row."""
        self._given[name] = values
        self._add_name(name)

    def add_model_scores(self, probabilities: Sequence[float]) -> None:
        """Add `model_score`: the champion's probabilities 0-1, one per row, each read as
        features.model_score_feature gives it (built only for the rows read) after the other features of each row
        (in place of a `model_score` given by add_values, as a dict's key is written over)."""
        self._scores = list(probabilities)
        # Rules read the shortest decimal that gives back p: p itself in float64, not exact.
        self._floats[MODEL_SCORE] = (np.asarray(probabilities, dtype=np.float64), False)
        self._add_name(MODEL_SCORE)

    def _add_name(self, name: str) -> None:
        if name not in self._keys_later:
            self._names_first += (name,)
            self._names_later += (name,)
            self._keys_first = frozenset(self._names_first)
            self._keys_later = frozenset(self._names_later)

    def _is_given(self, name: str) -> bool:
        return name in self._given or (name == MODEL_SCORE and self._scores is not None)

    def row_names(self, first: bool) -> tuple[str, ...]:
        """The keys of a row, in the row engine's order: an account's first transaction's, or the others'."""
        return self._names_first if first else self._names_later

    def row(self, i: int) -> FeatureRow:
        """Row i's features dict as a mapping read from the columns on demand (the same keys and values)."""
        first = bool(self._first[i])
        return FeatureRow(self, i, first, self._keys_first if first else self._keys_later)

    def items(self, merchant_ids: Sequence[str | None], currency: str) -> ColumnItems:
        """(features, merchant id, currency) per row, as a detector's decide_columns reads them: each row's
        features a FeatureRow built when read."""
        return ColumnItems(self, merchant_ids, currency)

    def value(self, name: str, i: int, first: bool) -> FeatureValue:
        """Row i's value of the feature `name` (a key of the row: see FeatureRow), as rows() gives it."""
        if name == MODEL_SCORE and self._scores is not None:
            return model_score_feature(self._scores[i])
        given = self._given.get(name)
        if given is not None:
            return given[i]
        if first and name == "account_age_seconds":
            return _ZERO
        found = self._lists.get(name)
        if found is None:
            column = self.numbers[name]
            present = None if column.present is None else column.present.tolist()
            found = self._lists[name] = (column.scaled.tolist(), present, -column.places, {})
        values, present, places, built = found
        if present is not None and not present[i]:
            return None
        if not places:
            return values[i]
        value = built.get(i)
        if value is None:
            value = built[i] = Decimal(values[i]).scaleb(places)
        return value

    def values_at(self, name: str, rows: Sequence[int], default: Any = None) -> list[Any]:
        """row(i).get(name, default) for each position i of `rows`, read from the columns at once (the rule engine
        explains the rows where a rule fires column-wise)."""
        index = np.asarray(rows, dtype=np.intp)
        in_first, in_later = name in self._keys_first, name in self._keys_later
        if not (in_first or in_later):
            return [default] * len(index)
        values: list[Any]
        if name == MODEL_SCORE and self._scores is not None:
            scores = self._scores
            values = [model_score_feature(scores[i]) for i in index.tolist()]
        elif name in self._given:
            given = self._given[name]
            values = [given[i] for i in index.tolist()]
        else:
            column = self.numbers[name]
            scaled = column.scaled[index].tolist()
            places = -column.places
            values = [Decimal(v).scaleb(places) for v in scaled] if places else scaled
            if column.present is not None:
                for k in np.flatnonzero(~column.present[index]).tolist():
                    values[k] = None
            if name == "account_age_seconds":
                for k in np.flatnonzero(self._first[index]).tolist():
                    values[k] = _ZERO
        if not (in_first and in_later):
            # The key is in the rows of one kind only (an account's first transaction, or the others).
            for k in np.flatnonzero(self._first[index] != in_first).tolist():
                values[k] = default
        return values

    def number(self, name: str) -> tuple[FloatArray, bool]:
        """The feature as float64 (NaN where missing): the exact value correctly rounded, as float(Decimal) gives
        it; exact for integers up to 2**53."""
        found = self._floats.get(name)
        if found is None and name in self._given:
            found = self._floats[name] = RowColumns([{name: v} for v in self._given[name]]).number(name)
        if found is None:
            column = self.numbers[name]
            values = column.scaled.astype(np.float64)
            if column.places:
                values /= 10.0**column.places
                # Beyond 2**53 the division would round a second time: those few are converted from the exact
                # decimal, as float(Decimal) (the row engine's model input, and PostgreSQL's ::float8) does.
                for i in np.flatnonzero(np.abs(column.scaled) > EXACT_INT).tolist():
                    values[i] = float(Decimal(int(column.scaled[i])).scaleb(-column.places))
            if column.present is not None:
                values[~column.present] = np.nan
            exact = column.places == 0 and (len(values) == 0 or int(np.abs(column.scaled).max()) <= EXACT_INT)
            found = self._floats[name] = (values, exact)
        return found

    def text(self, name: str) -> Sequence[str | int | None]:
        return self._given[name]  # type: ignore[return-value]

    def matrix(self, names: Sequence[str]) -> FloatArray:
        return matrix_of(self, names)

    def python_values(self, name: str) -> list[FeatureValue]:
        """The column as the row engine's values: ints, Decimals (scaled × 10^-places, as from_units, _mean and
        the others build them), None where missing."""
        if name == MODEL_SCORE and self._scores is not None:
            return [model_score_feature(p) for p in self._scores]
        if name in self._given:
            return self._given[name]
        column = self.numbers[name]
        values: list[FeatureValue]
        if column.places == 0:
            values = list(column.scaled.tolist())
        else:
            # Each distinct value is built once (Decimals are immutable): zeros, equal amounts and risks repeat.
            places = -column.places
            distinct, position = np.unique(column.scaled, return_inverse=True)
            built = [Decimal(v).scaleb(places) for v in distinct.tolist()]
            values = [built[i] for i in position.tolist()]
        if column.present is not None:
            for i in np.flatnonzero(~column.present).tolist():
                values[i] = None
        return values

    def rows(self) -> list[Features]:
        """Each transaction's features dict (see the class)."""
        names_first, names_later = self._names_first, self._names_later
        later = {name: self.python_values(name) for name in names_later}
        first_values = {name: later[name] if name in later else self.python_values(name) for name in names_first}
        # A first transaction's account age is Decimal(0) (features.AccountHistory.features), not 0.000.
        first_values["account_age_seconds"] = [_ZERO] * self.size
        columns = zip(*later.values(), strict=True)
        rows: list[Features] = [dict(zip(names_later, values, strict=True)) for values in columns]
        for i in np.flatnonzero(self._first).tolist():
            rows[i] = {name: first_values[name][i] for name in names_first}
        return rows

    def json_rows(self, names: Sequence[str]) -> list[str]:
        """Each row's features.features_json(row, names) (the stored `features` column), byte for byte, written
        from the integer columns without building a Decimal, a dict or a str per value (_json_text): accounts'
        first transactions (other keys, account age Decimal(0)) apart from the others."""
        if not names:
            return ["{}"] * self.size
        first = np.flatnonzero(self._first)
        if not len(first):
            return self._json_text(names, None, False)
        later = np.flatnonzero(~self._first)
        rows = np.empty(self.size, dtype=object)
        rows[later] = self._json_text(names, later, False)
        rows[first] = self._json_text(names, first, True)
        return rows.tolist()

    def _json_text(self, names: Sequence[str], chosen: npt.NDArray[np.intp] | None, first: bool) -> list[str]:
        """features_json of the rows `chosen` (all: None), all accounts' first transactions or none. Every row
        is laid out in one (rows, width) byte matrix written four bytes at a time: each key with its punctuation a
        constant span between the values, each value a few groups of four characters looked up from its digits
        (_decimal_groups), NUL bytes standing for what a shorter value leaves out (leading zeros, the sign of a
        positive value) and padding the keys to whole groups. The matrix is read as one byte string, its NULs
        deleted, and cut into rows at their newlines."""
        n = self.size if chosen is None else len(chosen)
        if not n:
            return []
        keys = self._keys_first if first else self._keys_later
        spans: list[bytes | Groups] = []
        pending = "{"
        for name in names:
            pending += ("," if pending != "{" else "") + '"' + name + '":'
            if name not in keys:
                pending += "null"
                continue
            if name == "account_age_seconds" and first:
                pending += "0"  # Decimal(0), not 0.000
                continue
            groups = self._text_groups(name, chosen)
            if groups is None:
                pending += "null"
                continue
            spans.append(pending.encode())
            spans.append(groups)
            pending = ""
        spans.append((pending + "}\n").encode())
        # Laid out a group of every row at a time (the writes contiguous), then transposed to a row at a time.
        laid_out = [_as_groups(span)[:, None] if isinstance(span, bytes) else span for span in spans]
        by_group = np.empty((sum(len(span) for span in laid_out), n), dtype=np.uint32)
        at = 0
        for span in laid_out:
            by_group[at : at + len(span)] = span
            at += len(span)
        text = np.ascontiguousarray(by_group.T)
        written = text.tobytes().translate(None, b"\0")
        rows = written.decode().split("\n")
        rows.pop()  # after the last row's newline
        if len(rows) != n:  # a newline within a key: cut the rows at their lengths instead
            ends = np.cumsum((text.view(np.uint8) != 0).sum(axis=1)).tolist()
            rows = [written[a : b - 1].decode() for a, b in zip([0, *ends[:-1]], ends, strict=True)]
        return rows

    def _text_groups(self, name: str, chosen: npt.NDArray[np.intp] | None) -> Groups | None:
        """The column `name` as features_json prints it, for the rows `chosen` (all: None): (k, rows) groups of
        four characters (uint32), NUL where a value's text has nothing; None when the column is missing in all of
        them (a merchant's features in a batch without merchants)."""
        every = range(self.size) if chosen is None else chosen
        if self._is_given(name):
            values = self.python_values(name)
            return _text_rows([features_json({name: values[i]}, (name,))[len(name) + 4 : -1] for i in every])
        column = self.numbers[name]
        scaled, present = column.scaled, column.present
        if chosen is not None:
            scaled = scaled[chosen]
            present = None if present is None else present[chosen]
        if present is not None and not present.any():
            return None
        shown = scaled if present is None else scaled[present]
        if scaled.dtype != np.int64 or int(shown.min(initial=0)) == -(2**63):
            return _text_rows([self._json_value(name, int(i)) for i in every])
        return _decimal_groups(scaled, column.places, present)

    def _json_value(self, name: str, i: int) -> str:
        """Row i's value as features_json prints it."""
        if self._is_given(name):
            return features_json({name: self.value(name, i, False)}, (name,))[len(name) + 4 : -1]
        column = self.numbers[name]
        if column.present is not None and not column.present[i]:
            return "null"
        v = int(column.scaled[i])
        if column.places == 0:
            return str(v)
        unit = 10**column.places
        return f"{'-' if v < 0 else ''}{abs(v) // unit}.{abs(v) % unit:0{column.places}d}"


# The stored JSON is written four characters at a time (json_rows): a group is a uint32 of four bytes.
Groups = npt.NDArray[np.uint32]


def _as_groups(text: bytes) -> Groups:
    """`text` NUL-padded in front to whole groups, as groups."""
    return np.frombuffer(text.rjust(-(-len(text) // 4) * 4, b"\0"), dtype=np.uint32)


def _digit_table(count: int, places: int, least: int, prefix: bytes = b"") -> Groups:
    """The group of each of 0 .. count-1: `prefix` then its `places` digits with the leading zeros beyond the
    last `least` digits left out (NUL), right-aligned (NULs in front)."""
    values = np.arange(count)
    chars = np.zeros((count, 4), dtype=np.uint8)
    chars[:, 4 - places :] = _ZERO_CHAR + values[:, None] // 10 ** np.arange(places - 1, -1, -1) % 10
    if least < places:
        shown = np.maximum(np.searchsorted(_POWERS_OF_TEN[1:], values, side="right") + 1, least)
        shown[values == 0] = least
        chars[np.arange(4) < (4 - shown)[:, None]] = 0
    if prefix:
        chars[:, 4 - places - len(prefix) : 4 - places] = np.frombuffer(prefix, dtype=np.uint8)
    return chars.view(np.uint32).ravel()


_POWERS_OF_TEN = np.array([10**k for k in range(19)], dtype=np.int64)
_ZERO_CHAR = ord("0")
# A group of an integer's digits, from 0 to 9999 plus 10000 × (whether no higher digit follows): all four digits
# when a higher group is written, else without leading zeros; the lowest group writes "0" for 0, a higher one
# nothing.
_HIGHER = np.concatenate((_digit_table(10_000, 4, 4), _digit_table(10_000, 4, 0)))
_LOWEST = np.concatenate((_digit_table(10_000, 4, 4), _digit_table(10_000, 4, 1)))
# The point and the first 0-3 decimal places (places mod 4), then whole groups of four.
_POINTED = {k: _digit_table(10**k, k, k, b".") for k in range(4)}
_MINUS = _as_groups(b"-")[0]
_NULL = _as_groups(b"null")[0]


def _decimal_groups(scaled: IntArray, places: int, present: npt.NDArray[np.bool_] | None) -> Groups:
    """Each value scaled × 10^-places written as features_json writes the Decimal (plain notation: sign, the
    integer part without leading zeros, then `places` digits; "null" where not present), as groups (json_rows):
    the sign, the integer part's groups, the point with the first places, the other places. Values not present
    may be anything (int64's minimum, whose magnitude is no int64, only there)."""
    shown = scaled if present is None else scaled[present]
    # As many integer groups and a sign as the values shown need: the others' are cut, then written over.
    integer_groups = -(-len(str(int(np.abs(shown).max(initial=0)))) // 4)
    signed = bool((shown < 0).any())
    magnitude = np.abs(scaled)
    whole, fraction = np.divmod(magnitude, 10**places) if places else (magnitude, magnitude)
    fraction_groups = (places + 3) // 4 + (places % 4 == 0 and places > 0)  # the point with places mod 4, 4 each
    groups = np.empty((signed + integer_groups + fraction_groups, len(scaled)), dtype=np.uint32)
    at = len(groups)
    if places:
        for _ in range(places // 4):
            fraction, last = np.divmod(fraction, 10_000)
            at -= 1
            _HIGHER.take(last, out=groups[at])
        at -= 1
        _POINTED[places % 4].take(fraction, out=groups[at])
    rest = whole
    for k in range(integer_groups):
        rest, last = np.divmod(rest, 10_000)
        at -= 1
        (_LOWEST if k == 0 else _HIGHER).take(last + 10_000 * (rest == 0), out=groups[at])
    if signed:
        groups[0] = np.where(scaled < 0, _MINUS, 0)
    if present is not None and not present.all():
        missing = ~present
        groups[:, missing] = 0
        groups[-1, missing] = _NULL
    return groups


def _text_rows(texts: Sequence[str]) -> Groups:
    """Texts (without NUL) as (k, len) groups, each NUL-padded after it to the longest one's whole groups
    (json_rows)."""
    encoded = [t.encode() for t in texts]
    width = -(-max(map(len, encoded), default=1) // 4) * 4 or 4
    by_row = np.frombuffer(np.array(encoded, dtype=f"S{width}").tobytes(), dtype=np.uint32).reshape(len(texts), -1)
    return by_row.T


class FeatureRow(Mapping[str, FeatureValue]):
    """One row of a FeatureColumns as a read-only mapping: the keys of the row's features dict (FeatureColumns.rows),
    each value read from the columns when asked for (rules read a few features of the rows they explain)."""

    __slots__ = ("_columns", "_first", "_i", "_keys")

    def __init__(self, columns: FeatureColumns, i: int, first: bool, keys: frozenset[str]) -> None:
        self._columns = columns
        self._i = i
        self._first = first
        self._keys = keys

    def __getitem__(self, name: str) -> FeatureValue:
        if name not in self._keys:
            raise KeyError(name)
        return self._columns.value(name, self._i, self._first)

    @overload
    def get(self, name: str, /) -> FeatureValue: ...

    @overload
    def get(self, name: str, /, default: FeatureValue | T) -> FeatureValue | T: ...

    def get(self, name: str, /, default: Any = None) -> Any:
        if name not in self._keys:
            return default
        return self._columns.value(name, self._i, self._first)

    def __contains__(self, name: object) -> bool:
        return name in self._keys

    def __iter__(self) -> Iterator[str]:
        return iter(self._columns.row_names(self._first))

    def __len__(self) -> int:
        return len(self._keys)


Item = tuple[FeatureReader, str | None, str]


class ColumnItems(Sequence[Item]):
    """The (features, merchant id, currency) of each row of a FeatureColumns, each row's features a FeatureRow
    made when the item is read (FeatureColumns.items)."""

    def __init__(self, columns: FeatureColumns, merchant_ids: Sequence[str | None], currency: str) -> None:
        self._columns = columns
        self.merchant_ids = merchant_ids  # per row
        self.currency = currency  # of every row

    def __len__(self) -> int:
        return self._columns.size

    @overload
    def __getitem__(self, i: int) -> Item: ...

    @overload
    def __getitem__(self, i: slice) -> Sequence[Item]: ...

    def __getitem__(self, i: int | slice) -> Item | Sequence[Item]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(i)
        i %= len(self)
        return self._columns.row(i), self.merchant_ids[i], self.currency


class _Entries:
    """Entries (group, time, count, units), sorted by (group, time): sums over [low, high) of a group's, by two
    binary searches per query on one int64 key (group × span + time)."""

    def __init__(self, groups: IntArray, times: IntArray, counts: IntArray, units: IntArray, span: int) -> None:
        keys = groups * span + times
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.span = span
        self.count_prefix = np.concatenate(([0], np.cumsum(counts[order])))
        self.unit_prefix = np.concatenate(([0], np.cumsum(units[order])))

    def between(
        self, groups: IntArray, low: IntArray, high: IntArray, order: npt.NDArray[np.intp] | None = None
    ) -> tuple[IntArray, IntArray]:
        """Count and sum of units of each query's group's entries with low <= time < high. `order`: a permutation
        of the queries by group, then time (the same results): NumPy's binary searches start from the previous
        one's result when the queries come in increasing order, about 5 times faster than in random order."""
        if order is not None:
            groups, low, high = groups[order], low[order], high[order]
        base = groups * self.span
        start = np.searchsorted(self.keys, base + np.clip(low, 0, self.span), side="left")
        end = np.searchsorted(self.keys, base + np.clip(high, 0, self.span), side="left")
        end = np.maximum(end, start)
        count, units = (
            self.count_prefix[end] - self.count_prefix[start],
            self.unit_prefix[end] - self.unit_prefix[start],
        )
        if order is None:
            return count, units
        in_place_count, in_place_units = np.empty_like(count), np.empty_like(units)
        in_place_count[order], in_place_units[order] = count, units
        return in_place_count, in_place_units


def _entries(groups: list[int], times: list[int], units: list[int], low_time: int, span: int) -> _Entries:
    """Stored transactions as _Entries, those outside [low_time, low_time + span) left out (no query reaches
    them, and their keys would fall among another group's)."""
    relative = np.array(times, dtype=np.int64) - low_time
    inside = (relative >= 0) & (relative < span)
    return _Entries(
        np.array(groups, dtype=np.int64)[inside],
        relative[inside],
        np.ones(int(inside.sum()), dtype=np.int64),
        np.array(units, dtype=np.int64)[inside],
        span,
    )


def _codes(values: Sequence[Any]) -> tuple[IntArray, list[Any]]:
    """Each value's index among the distinct values (in order of appearance), and those values."""
    distinct = list(dict.fromkeys(values))
    index = {value: code for code, value in enumerate(distinct)}
    return np.fromiter(map(index.__getitem__, values), dtype=np.int64, count=len(values)), distinct


def _running_max(groups: IntArray, values: IntArray) -> IntArray:
    """Inclusive running maximum within each run of equal `groups` (sorted), by doubling steps (Hillis–Steele)."""
    result = values.copy()
    step = 1
    while step < len(result):
        previous = result.copy()
        same = groups[step:] == groups[:-step]
        result[step:] = np.where(same, np.maximum(previous[step:], previous[:-step]), previous[step:])
        step *= 2
    return result


def _mean_millionths(total: IntArray, count: IntArray) -> IntArray:
    """features._mean in int64: |total| × 100 ÷ count rounded half up, with total's sign (count > 0)."""
    millionths = (2 * np.abs(total) * 100 + count) // (2 * count)
    return np.where(total < 0, -millionths, millionths)


def _amount_units(transactions: Sequence[Transaction]) -> IntArray | None:
    """features.to_units of each transaction's amount, as int64; None when one is 2^62 or more in magnitude.

    The amounts' plain notation (str(Decimal): an optional minus, digits, an optional point and digits) is read
    at once: the text of all of them in one byte string, cut into a (rows, width) matrix, whose digits are
    summed column by column. An amount written otherwise (an exponent), with more than four places or more than
    14 integer digits is converted by to_units (which raises as it does for more than four places)."""
    n = len(transactions)
    joined = np.frombuffer(("\n".join([str(t.amount) for t in transactions]) + "\n").encode(), dtype=np.uint8)
    ends = np.flatnonzero(joined == _NEWLINE)
    starts = np.concatenate(([0], ends[:-1] + 1))
    length = ends - starts
    column = np.arange(int(length.max()))
    chars = joined[np.minimum(starts[:, None] + column, len(joined) - 1)]
    chars[column >= length[:, None]] = 0
    digit = (chars >= _ZERO_CHAR) & (chars <= _ZERO_CHAR + 9)
    point = chars == _POINT_CHAR
    negative = chars[:, 0] == _MINUS_CHAR
    digits, points = digit.sum(axis=1), point.sum(axis=1)
    places = np.where(points > 0, length - 1 - point.argmax(axis=1), 0)
    plain = (digits + points + negative == length) & (points <= 1) & (digits > 0) & (places <= 4)
    plain &= digits - places <= 14  # below 10^14 × 10^4 units: int64 throughout
    value: IntArray = np.zeros(n, dtype=np.int64)
    numerals = chars.astype(np.int64) - _ZERO_CHAR
    for j in column.tolist():
        value = np.where(digit[:, j], value * 10 + numerals[:, j], value)
    magnitude = value * 10 ** (4 - np.where(plain, places, 4))
    units: IntArray = np.where(negative, -magnitude, magnitude)
    others = np.flatnonzero(~plain).tolist()
    exact = [to_units(transactions[i].amount) for i in others]  # each, as the row path converts every one
    if any(abs(u) >= _SAFE for u in exact):
        return None
    units[others] = exact
    return units


_NEWLINE, _POINT_CHAR, _MINUS_CHAR = ord("\n"), ord("."), ord("-")


_WRAP = 2**64
_WRAPPED = 2**64 - 1


def _std_millionths(
    count: IntArray,
    total: IntArray,
    stored_squares: Sequence[int],
    account_codes: IntArray,
    sorted_units: IntArray,
    group_start: IntArray,
    before: IntArray,
) -> IntArray:
    """features._std per row in millionths (0 where count is 0): count × sum of squares - total², its square
    root and the rounding, exactly. Row i's sum of squares is its account's stored one (stored_squares, per
    account code) plus the squares of sorted_units[group_start[i] : group_start[i] + before[i]].

    The spread S = count × squares - total² can leave int64's range: it is computed modulo 2^64 (uint64 products
    wrap, exactly) and in float64, whose error is bounded; the float says how many times 2^64 to add. Then
    floor(sqrt(40,000 × S)) is the float square root corrected by comparing squares, again modulo 2^64: m² -
    40,000 × S is small, so its int64 residue is its value. Rows whose bounds do not hold (amounts near 10^12)
    are computed as features._std computes them, in Python integers. A stored sum of squares is at most its count
    × (10^16)² (amounts below 10^12 with four places), so each result, at most 100 × the largest amount in
    millionths, fits int64."""
    n = len(count)
    # Squares and their prefix sums modulo 2^64 (two's complement: the residues of the integers'), and in float64.
    wrapped_units = sorted_units.astype(np.uint64)
    square_prefix = np.concatenate((np.zeros(1, np.uint64), np.cumsum(wrapped_units * wrapped_units)))
    float_units = sorted_units.astype(np.float64)
    float_prefix = np.concatenate(([0.0], np.cumsum(float_units * float_units)))
    low, high = group_start, group_start + before
    stored_wrapped = np.array([q & _WRAPPED for q in stored_squares], dtype=np.uint64)[account_codes]
    stored_float = np.array([float(q) for q in stored_squares], dtype=np.float64)[account_codes]
    squares = stored_wrapped + square_prefix[high] - square_prefix[low]
    wrapped_count, wrapped_total = count.astype(np.uint64), total.astype(np.uint64)
    spread = wrapped_count * squares - wrapped_total * wrapped_total  # S mod 2^64
    float_count, float_total = count.astype(np.float64), total.astype(np.float64)
    estimate = float_count * (stored_float + float_prefix[high] - float_prefix[low]) - float_total * float_total
    # Each float64 operation errs by at most 2^-53 of its result; the prefix sums by n × 2^-53 of the largest.
    error = (float_count * (stored_float + 2 * float_prefix[-1]) + float_total * float_total) * ((n + 16) * 2.0**-51)
    wraps = np.rint((estimate - spread.astype(np.float64)) / _WRAP)
    whole = wraps * _WRAP + spread.astype(np.float64)  # S, within about 2^-52 of it
    root = np.sqrt(40_000 * np.maximum(whole, 0.0))
    exact = (error < 2.0**60) & (root < 2.0**50) & (count > 0)
    m = np.where(exact, np.floor(root), 0).astype(np.int64)
    m[exact & (wraps < 0)] = 0  # max(S, 0)
    target = np.where(exact & (wraps >= 0), spread * np.uint64(40_000), 0).astype(np.uint64)  # 40,000 S mod 2^64

    def above(candidate: IntArray) -> npt.NDArray[np.bool_]:
        """candidate² > 40,000 S: |candidate² - 40,000 S| < 2^63, so its residue is it."""
        wrapped = candidate.astype(np.uint64)
        return (wrapped * wrapped - target).view(np.int64) > 0

    while (lower := above(m)).any():
        m -= lower
    while (higher := ~above(m + 1) & exact).any():
        m += higher
    std: IntArray = (m + count) // (2 * np.maximum(count, 1))
    for i in np.flatnonzero(~exact & (count > 0)).tolist():
        c, k = int(count[i]), int(group_start[i])
        q = stored_squares[account_codes[i]] + sum(u * u for u in sorted_units[k : k + int(before[i])].tolist())
        s = int(total[i])
        std[i] = (isqrt(40_000 * max(c * q - s * s, 0)) + c) // (2 * c)
    return std


def _simple_timeline(timeline: Timeline | None, currency: str) -> bool:
    return timeline is None or (timeline.by_currency is None and timeline.currency in (None, currency))


def columnar_features(
    transactions: Sequence[Transaction],
    histories: Mapping[int, AccountHistory],
    merchants: Mapping[str, Timeline],
    needed: frozenset[str],
    settings: FeatureSettings,
) -> FeatureColumns | None:
    """The features of `transactions` (sorted by time) as detection.decisions_in_time_order computes them one by
    one, computed as columns with vectorised group-by-account and group-by-merchant operations: counts and sums
    over windows by binary searches on (entity, time) keys and prefix sums of int64 amounts in ten-thousandths,
    "before" being a strictly earlier time (equal times: side='left'). Histories and merchants are not changed.

    None (the caller then takes the row path) unless the chunk is the common case: one currency (in the chunk, the
    accounts' stored totals and tails, the merchants' timelines), every account's stored transactions older than
    its first one in the chunk (features.ConstantTotals, nothing added yet), and sums within int64's range. The
    attribute features read the accounts' recent values and first uses (AccountHistory.recent_values, first_use)
    as the row engine does. std_amount's products, which may exceed int64, are exact modulo 2^64 with a float64
    estimate (_std_millionths); amounts are read from their text at once (_amount_units). Per row (Python ints):
    std_amount and the amounts beyond those bounds (near 10^12), amount_to_mean_30d when a numerator may exceed
    int64; local-time features outside UTC; merchant risk's frauds, once per merchant and day.
    """
    n = len(transactions)
    if n == 0:
        return None
    currency = transactions[0].currency
    if any(t.currency != currency for t in transactions):
        return None
    account_ids = [t.account_id for t in transactions]
    account_codes, accounts = _codes(account_ids)
    stored: list[tuple[Prior, Prior]] = []
    for account_id in accounts:
        history = histories[account_id]
        totals = history.stored_before
        if (
            not isinstance(totals, ConstantTotals)
            or history.added_count
            or not _simple_timeline(history.tail, currency)
            or any(c != currency for c in totals.by_currency)
            or totals.by_currency.get(currency, Prior()).count != totals.whole.count
        ):
            return None
        stored.append((totals.whole, totals.by_currency.get(currency, Prior())))
    wants_merchant = any(name.startswith("merchant_") and name != "merchant_used_before" for name in needed)
    merchant_ids = [t.merchant_id for t in transactions]
    if wants_merchant and not all(_simple_timeline(merchants.get(m), currency) for m in set(merchant_ids) if m):
        return None

    ts = np.fromiter((t.ts for t in transactions), dtype=np.int64, count=n)
    units = _amount_units(transactions)
    if units is None:
        return None
    largest = int(np.abs(units).max())
    wants_days = not needed.isdisjoint(ACCOUNT_DAY_FEATURES)
    days_back = merchant_days_back(needed, settings) if wants_merchant else 0
    reach = window_reach_ms(needed)
    low_time = int(ts[0]) - max(reach, (max(days_back, LONGEST_DAY_WINDOW) + 1) * DAY_MS)
    span = int(ts[-1]) - low_time + 1
    day_low = low_time // DAY_MS
    day_span = int(ts[-1]) // DAY_MS - day_low + 1

    # The stored entries of each account: its tail, and its per-day totals (for the day windows).
    bound = largest * n
    tail_groups: list[int] = []
    tail_ts: list[int] = []
    tail_units: list[int] = []
    day_groups: list[int] = []
    day_numbers: list[int] = []
    day_counts: list[int] = []
    day_units: list[int] = []
    first_new: dict[int, int] = {}
    for t in transactions:
        first_new.setdefault(t.account_id, t.ts)
    for code, account_id in enumerate(accounts):
        tail = histories[account_id].tail
        earliest = first_new[account_id]
        # As Timeline.window and whole_days refuse a window the history loaded does not cover.
        if tail.complete_from > earliest - max(reach, earliest % DAY_MS + 1 if wants_days else 0) + 1:
            return None
        first_day = earliest // DAY_MS - (LONGEST_DAY_WINDOW - 1)
        tail_groups.extend([code] * len(tail.ts))
        tail_ts.extend(tail.ts)
        tail_units.extend(tail.units)
        bound += sum(abs(u) for u in tail.units) + abs(stored[code][1].sum_units)
        if wants_days:
            if tail.days is None or tail.days_from > first_day:
                return None
            for day_number, (day_count, day_total) in tail.days.items():
                if day_low <= day_number:
                    day_groups.append(code)
                    day_numbers.append(day_number)
                    day_counts.append(day_count)
                    day_units.append(day_total)
                    bound += abs(day_total)
    if bound * 200 >= _SAFE or len(accounts) * max(span, day_span) >= _SAFE:
        return None

    def array(values: list[int]) -> IntArray:
        return np.array(values, dtype=np.int64)

    ones = np.ones(n, dtype=np.int64)
    relative = ts - low_time
    new = _Entries(account_codes, relative, ones, units, span)
    tail_entries = _entries(tail_groups, tail_ts, tail_units, low_time, span)

    numbers: dict[str, Column] = {"amount": Column(units, 4)}
    # The account's new transactions strictly before each one, and their sums.
    order = np.argsort(account_codes, kind="stable")  # by account, then time
    before, before_sum = new.between(account_codes, np.zeros(n, np.int64), relative, order)
    whole_count = array([w.count for w, _ in stored])[account_codes]
    count = whole_count + before
    numbers["count"] = Column(count, 0)
    first = count == 0
    later = ~first
    total = array([c.sum_units for _, c in stored])[account_codes] + before_sum
    safe_count = np.where(later, count, 1)
    if "mean_amount" in needed:
        numbers["mean_amount"] = Column(_mean_millionths(total, safe_count), 6, later)
    sorted_codes = account_codes[order]
    group_start = np.searchsorted(sorted_codes, account_codes, side="left")
    last_before = group_start + before - 1  # in `order`: the latest new transaction of the account before
    has_new_before = before > 0
    at = np.where(has_new_before, last_before, 0)
    if "std_amount" in needed:
        stored_squares = [c.sum_sq_units for _, c in stored]
        numbers["std_amount"] = Column(
            _std_millionths(count, total, stored_squares, account_codes, units[order], group_start, before), 6, later
        )
    if "max_amount" in needed:
        running = _running_max(sorted_codes, units[order])
        stored_max = array([(_SENTINEL if c.max_units is None else c.max_units) for _, c in stored])[account_codes]
        new_max = np.where(has_new_before, running[at], _SENTINEL)
        numbers["max_amount"] = Column(np.maximum(stored_max, new_max), 4, later)
    sorted_ts = ts[order]
    if "seconds_since_previous" in needed:
        stored_last = array([(_SENTINEL if w.last_ts is None else w.last_ts) for w, _ in stored])[account_codes]
        previous = np.maximum(stored_last, np.where(has_new_before, sorted_ts[at], _SENTINEL))
        numbers["seconds_since_previous"] = Column(np.where(later, ts - previous, 0), 3, later)
    # account_age_seconds is always there for a first transaction (Decimal 0, set in rows()).
    stored_first = [histories[a].first_ts for a in accounts]
    first_ts = array(
        [
            (int(sorted_ts[s]) if f is None else f)
            for f, s in zip(stored_first, np.searchsorted(sorted_codes, np.arange(len(accounts))).tolist(), strict=True)
        ]
    )
    numbers["account_age_seconds"] = Column(np.where(later, ts - first_ts[account_codes], 0), 3)
    numbers["is_first_transaction"] = Column(first.astype(np.int64), 0)
    names_later = ["amount", "count"] + [
        name for name in ("mean_amount", "std_amount", "max_amount", "seconds_since_previous") if name in needed
    ]
    if "account_age_seconds" in needed:
        names_later.append("account_age_seconds")
    names_later.append("is_first_transaction")
    names_first = ["amount", "count", "account_age_seconds", "is_first_transaction"]
    window_names: list[str] = []

    def window(width: int, groups: IntArray, entries: Sequence[_Entries]) -> tuple[IntArray, IntArray]:
        counts = np.zeros(n, np.int64)
        sums = np.zeros(n, np.int64)
        for found in entries:
            c, s = found.between(groups, relative - width + 1, relative, order)
            counts += c
            sums += s
        return counts, sums

    for name, width in WINDOWS:
        if f"count_{name}" in needed or f"sum_{name}" in needed or (name == "24h" and "mean_amount_24h" in needed):
            c, s = window(width, account_codes, (new, tail_entries))
            if f"count_{name}" in needed or f"sum_{name}" in needed:
                numbers[f"count_{name}"] = Column(c, 0)
                numbers[f"sum_{name}"] = Column(s, 4)
                window_names += [f"count_{name}", f"sum_{name}"]
            if name == "24h" and "mean_amount_24h" in needed:
                numbers["mean_amount_24h"] = Column(_mean_millionths(s, np.maximum(c, 1)), 6, c > 0)
                window_names.append("mean_amount_24h")
    if wants_days:
        days = _Entries(array(day_groups), array(day_numbers) - day_low, array(day_counts), array(day_units), day_span)
        day = ts // DAY_MS
        day_start = day * DAY_MS - low_time
        today_count, today_sum = tail_entries.between(account_codes, day_start, relative, order)
        for name, width in DAY_WINDOWS:
            whole_count_, whole_sum = days.between(account_codes, day - width + 1 - day_low, day - day_low, order)
            new_count, new_sum = new.between(account_codes, day_start - (width - 1) * DAY_MS, relative, order)
            c = whole_count_ + new_count + today_count
            s = whole_sum + new_sum + today_sum
            numbers[f"count_{name}"] = Column(c, 0)
            numbers[f"sum_{name}"] = Column(s, 4)
            numbers[f"mean_amount_{name}"] = Column(_mean_millionths(s, np.maximum(c, 1)), 6, c > 0)
            window_names += [f"count_{name}", f"sum_{name}", f"mean_amount_{name}"]
        if "amount_to_mean_30d" in needed:
            counts, sums = numbers["count_30d"].scaled, numbers["sum_30d"].scaled
            with_mean = (counts > 0) & (sums > 0)
            exact_ratio: npt.NDArray[Any]
            if largest * (int(counts.max()) * 2_000_000 + 1) + int(np.abs(sums).max()) < _SAFE:
                # Every numerator fits int64 (the usual case): the same floor division, vectorised.
                divisor = 2 * np.where(with_mean, sums, 1)
                exact_ratio = np.where(with_mean, (2 * units * counts * 1_000_000 + divisor // 2) // divisor, 0)
            else:
                ratio = [
                    ((2 * u * c * 1_000_000 + s) // (2 * s)) if c and s > 0 else 0
                    for u, c, s in zip(units.tolist(), counts.tolist(), sums.tolist(), strict=True)
                ]
                # A ratio to a tiny mean can leave int64's range: then the column holds Python ints (exact still).
                exact_ratio = array(ratio) if max(map(abs, ratio), default=0) < _SAFE else np.array(ratio, dtype=object)
            numbers["amount_to_mean_30d"] = Column(exact_ratio, 6, with_mean)
            window_names.append("amount_to_mean_30d")
    if "merchant_used_before" in needed:
        pair_codes, pairs = _codes(list(zip(account_ids, merchant_ids, strict=True)))
        pair_entries = _Entries(pair_codes, relative, ones, units, span)
        used_new, _ = pair_entries.between(pair_codes, np.zeros(n, np.int64), relative)
        stored_used = array(
            [_SENTINEL_HIGH if m is None or (f := histories[a].merchant_first.get(m)) is None else f for a, m in pairs]
        )[pair_codes]
        numbers["merchant_used_before"] = Column(
            ((used_new > 0) | (stored_used < ts)).astype(np.int64), 0, np.array([m is not None for m in merchant_ids])
        )
        window_names.append("merchant_used_before")
    names_first += window_names
    names_later += window_names

    if wants_merchant:
        merchant_names = _merchant_columns(
            transactions, merchants, needed, settings, numbers, ts, units, relative, low_time, span, day_low, day_span
        )
        if merchant_names is None:
            return None
        names_first += merchant_names
        names_later += merchant_names
    if not needed.isdisjoint(LOCAL_TIME_FEATURES):
        if settings.time_zone == "UTC":
            hour = (ts // _HOURS) % 24
            weekday = (ts // DAY_MS + 3) % 7  # 1970-01-01 was a Thursday (weekday 3)
        else:
            local = [local_time_features(t, LOCAL_TIME_FEATURES, settings.time_zone) for t in ts.tolist()]
            hour = array([int(f["hour_of_day"]) for f in local])  # type: ignore[arg-type]
            weekday = array([5 if f["is_weekend"] else 0 for f in local])
        local_names = []
        if "hour_of_day" in needed:
            numbers["hour_of_day"] = Column(hour, 0)
            local_names.append("hour_of_day")
        if "is_night" in needed:
            numbers["is_night"] = Column((hour <= NIGHT_UNTIL_HOUR).astype(np.int64), 0)
            local_names.append("is_night")
        if "is_weekend" in needed:
            numbers["is_weekend"] = Column((weekday >= 5).astype(np.int64), 0)
            local_names.append("is_weekend")
        names_first += local_names
        names_later += local_names
    if not needed.isdisjoint(ATTRIBUTE_FEATURES):
        attribute_names = _attribute_columns(transactions, histories, accounts, account_codes, needed, numbers)
        if attribute_names is None:
            return None
        names_first += attribute_names
        names_later += attribute_names
    return FeatureColumns(n, numbers, names_first, names_later, first)


def _attribute_columns(
    transactions: Sequence[Transaction],
    histories: Mapping[int, AccountHistory],
    accounts: Sequence[int],
    account_codes: IntArray,
    needed: frozenset[str],
    numbers: dict[str, Column],
) -> list[str] | None:
    """features.AccountHistory.attribute_features as columns, added to `numbers`; their names in the row engine's
    order, or None when a key could leave int64's range.

    distinct_*_24h: a value of the account is in (t - 24 h, t) when one of its uses s (stored, in the account's
    recent values, or new) has s < t <= s + 24 h - 1. Per (account, value), in time order, each use covers
    (max(s, the previous use's end), s + 24 h - 1]: disjoint pieces whose union is where the value is in the
    window. The distinct values before t are then the pieces of the account starting before t less those ending
    before t (two binary searches), plus the transaction's own value unless its latest use before t is in the
    window. new_country and new_device: 1 unless the account's first use of the value (stored, or a new
    transaction's) is strictly before t; missing without a value.
    """
    n = len(transactions)
    ts = np.fromiter((t.ts for t in transactions), dtype=np.int64, count=n)
    names: list[str] = []
    for name, attribute in DISTINCT_FEATURES.items():
        if name not in needed:
            continue
        own = list(map(attrgetter(attribute), transactions))
        entry_accounts: list[int] = []
        entry_ts: list[int] = []
        entry_values: list[str] = []
        for code, account_id in enumerate(accounts):
            recent = histories[account_id].recent_values.get(attribute)
            if recent is not None and recent.ts:
                entry_accounts.extend([code] * len(recent.ts))
                entry_ts.extend(recent.ts)
                entry_values.extend(recent.values)
        stored_count = len(entry_ts)
        with_value = [i for i, value in enumerate(own) if value is not None]
        codes, times_list = account_codes.tolist(), ts.tolist()
        for i in with_value:
            entry_accounts.append(codes[i])
            entry_ts.append(times_list[i])
            entry_values.append(own[i])
        pair_codes, _ = _codes(list(zip(entry_accounts, entry_values, strict=True)))
        times = np.array(entry_ts, dtype=np.int64)
        width = DAY_MS - 1
        low = min(int(times.min(initial=ts[0])), int(ts[0]))
        span = max(int(times.max(initial=ts[-1])), int(ts[-1])) + width - low + 1
        if (len(accounts) + len(pair_codes) + 1) * span >= _SAFE:
            return None
        times -= low
        query = ts - low
        # Each use's piece (start, end], in (value, time) order.
        order = np.lexsort((times, pair_codes))
        pairs, starts = pair_codes[order], times[order]
        ends = starts + width
        previous_end = np.concatenate(([_SENTINEL], ends[:-1]))
        same = np.concatenate(([False], pairs[1:] == pairs[:-1]))
        starts = np.where(same, np.maximum(starts, previous_end), starts)
        groups = np.array(entry_accounts, dtype=np.int64)[order]
        count = _before(groups, starts, account_codes, query, span) - _before(groups, ends, account_codes, query, span)
        # The transaction's own value, unless its latest use before t (of the same value) is within the window.
        keys = pairs * span + times[order]
        own_pairs = np.full(n, -1, dtype=np.int64)
        own_pairs[with_value] = pair_codes[stored_count:]
        base = own_pairs * span
        latest = np.searchsorted(keys, base + query, side="left") - 1
        latest_key = keys[np.maximum(latest, 0)] if len(keys) else np.zeros(n, np.int64)
        within = (latest >= 0) & (latest_key >= base) & (latest_key - base >= query - width)
        count += (own_pairs >= 0) & ~within
        numbers[name] = Column(count, 0)
        names.append(name)
    for name, attribute in NEW_VALUE_FEATURES.items():
        if name not in needed:
            continue
        own = list(map(attrgetter(attribute), transactions))
        present = np.array([v is not None for v in own])
        pair_codes, pairs = _codes(list(zip(account_codes.tolist(), own, strict=True)))
        span = int(ts[-1]) - int(ts[0]) + 1
        if (len(pairs) + 1) * span >= _SAFE:
            return None
        used_new = _before(pair_codes, ts - ts[0], pair_codes, ts - ts[0], span)
        stored_first = np.array(
            [
                _SENTINEL_HIGH
                if v is None or (f := histories[accounts[a]].first_use.get(attribute, {}).get(v)) is None
                else f
                for a, v in pairs
            ],
            dtype=np.int64,
        )[pair_codes]
        used = (used_new > 0) | (stored_first < ts)
        numbers[name] = Column((~used).astype(np.int64), 0, present)
        names.append(name)
    return names


def _before(groups: IntArray, times: IntArray, query_groups: IntArray, query_times: IntArray, span: int) -> IntArray:
    """For each query, how many entries of its group have a time strictly before its time (times in [0, span))."""
    keys = np.sort(groups * span + times)
    base = query_groups * span
    return np.searchsorted(keys, base + query_times, side="left") - np.searchsorted(keys, base, side="left")


_ZERO = Decimal(0)
_SENTINEL = -(2**62)
_SENTINEL_HIGH = 2**62


def _merchant_columns(
    transactions: Sequence[Transaction],
    merchants: Mapping[str, Timeline],
    needed: frozenset[str],
    settings: FeatureSettings,
    numbers: dict[str, Column],
    ts: IntArray,
    units: IntArray,
    relative: IntArray,
    low_time: int,
    span: int,
    day_low: int,
    day_span: int,
) -> list[str] | None:
    """features.merchant_features as columns, added to `numbers`; their names in the row engine's order, or None
    when a merchant's timeline does not reach back far enough (the row path then raises as it does)."""
    n = len(transactions)
    merchant_ids = [t.merchant_id for t in transactions]
    codes, distinct = _codes(merchant_ids)
    ones = np.ones(n, dtype=np.int64)
    known = np.array([m is not None for m in merchant_ids])
    new_groups = np.where(known, codes, len(distinct))  # transactions without a merchant in a group of their own
    new = _Entries(new_groups, relative, ones, units, span)
    # A merchant is there when deciding a transaction if it was given, or an earlier transaction added it.
    order = np.argsort(new_groups, kind="stable")  # by merchant, then time (_Entries.between)
    earlier, _ = new.between(new_groups, np.zeros(n, np.int64), relative, order)
    given = np.array([m is not None and m in merchants for m in distinct] + [False])[new_groups]
    present = known & (given | (earlier > 0))
    stored_groups: list[int] = []
    stored_ts: list[int] = []
    stored_units: list[int] = []
    day_groups: list[int] = []
    day_numbers: list[int] = []
    day_counts: list[int] = []
    wants_days = not needed.isdisjoint(MERCHANT_DAY_FEATURES | RISK_FEATURES)
    reach = merchant_reach_ms(needed)
    first_ts = {}
    for i, m in enumerate(merchant_ids):
        if m is not None and m not in first_ts:
            first_ts[m] = int(ts[i])
    back = merchant_days_back(needed, settings)
    for code, m in enumerate(distinct):
        timeline = merchants.get(m) if m is not None else None
        if timeline is None:
            continue
        # As Timeline.window refuses a window the merchant's loaded transactions do not cover (the day windows
        # read from the start of the transaction's day; merchant risk reads per-day totals alone).
        from_day_start = first_ts[m] % DAY_MS + 1 if not needed.isdisjoint(MERCHANT_DAY_FEATURES) else 0
        low = first_ts[m] - max(reach, from_day_start) + 1
        if timeline.complete_from > low:
            return None
        stored_groups.extend([code] * len(timeline.ts))
        stored_ts.extend(timeline.ts)
        stored_units.extend(timeline.units)
        if wants_days:
            if timeline.days is None or timeline.days_from > first_ts[m] // DAY_MS - back:
                return None
            for day_number, (day_count, _) in timeline.days.items():
                if day_number >= day_low:
                    day_groups.append(code)
                    day_numbers.append(day_number)
                    day_counts.append(day_count)
    if sum(abs(u) for u in stored_units) + int(np.abs(units).sum()) >= _SAFE:
        return None

    def array(values: list[int]) -> IntArray:
        return np.array(values, dtype=np.int64)

    stored = _entries(stored_groups, stored_ts, stored_units, low_time, span)
    names: list[str] = []
    day = ts // DAY_MS
    day_start = day * DAY_MS - low_time
    if wants_days:
        day_totals = _Entries(
            array(day_groups),
            array(day_numbers) - day_low,
            array(day_counts),
            np.zeros(len(day_counts), np.int64),
            day_span,
        )

        def whole_days(first: IntArray, until: IntArray) -> IntArray:
            """features.Timeline.whole_days' count: stored per-day counts plus the new transactions."""
            c, _ = day_totals.between(new_groups, first - day_low, until - day_low, order)
            added, _ = new.between(new_groups, first * DAY_MS - low_time, until * DAY_MS - low_time, order)
            return c + added

    if not needed.isdisjoint(MERCHANT_DAY_FEATURES):
        today = (
            stored.between(new_groups, day_start, relative, order)[0]
            + new.between(new_groups, day_start, relative, order)[0]
        )
        for name, width in DAY_WINDOWS:
            numbers[f"merchant_count_{name}"] = Column(whole_days(day - width + 1, day) + today, 0, present)
            names.append(f"merchant_count_{name}")
    if not needed.isdisjoint(RISK_FEATURES):
        end = day - settings.label_delay_days
        frauds = _frauds(merchant_ids, day.tolist(), merchants, settings.label_delay_days)
        for w, (name, width) in enumerate(RISK_WINDOWS):
            count = whole_days(end - width, end)
            fraud = array([f[w] for f in frauds])
            risk = (2 * fraud * 1_000_000 + count) // (2 * np.maximum(count, 1))
            numbers[f"merchant_risk_{name}"] = Column(np.where(count > 0, risk, 0), 6, present)
            names.append(f"merchant_risk_{name}")
    for name, width in WINDOWS:
        if f"merchant_count_{name}" not in needed and f"merchant_sum_{name}" not in needed:
            continue
        c1, s1 = stored.between(new_groups, relative - width + 1, relative, order)
        c2, s2 = new.between(new_groups, relative - width + 1, relative, order)
        numbers[f"merchant_count_{name}"] = Column(c1 + c2, 0, present)
        numbers[f"merchant_sum_{name}"] = Column(s1 + s2, 4, present)
        names += [f"merchant_count_{name}", f"merchant_sum_{name}"]
    return names


def _frauds(
    merchant_ids: Sequence[str | None], days: Sequence[int], merchants: Mapping[str, Timeline], delay: int
) -> list[tuple[int, ...]]:
    """For each transaction, the frauds features.Timeline.risk counts per RISK_WINDOWS (0 without a merchant):
    once per merchant and day."""
    found: dict[tuple[str, int], tuple[int, ...]] = {}
    result = []
    zero = (0,) * len(RISK_WINDOWS)
    for m, day in zip(merchant_ids, days, strict=True):
        timeline = merchants.get(m) if m is not None else None
        if timeline is None or not timeline.label_steps:
            result.append(zero)
            continue
        assert m is not None
        key = (m, day)
        frauds = found.get(key)
        if frauds is None:
            frauds = found[key] = known_frauds(timeline.label_steps, day, delay)
        result.append(frauds)
    return result
