"""The rule language: rule sets as validated data, conditions parsed from a small grammar.

    condition  := conjunction ("OR" conjunction)*
    conjunction:= term ("AND" term)*
    term       := "(" condition ")" | comparison
    comparison := FEATURE OP NUMBER | FEATURE OP [NUMBER "*"] FEATURE
                | FIELD ("=" | "!=") STRING
                | FIELD ["NOT"] "IN" "(" STRING ("," STRING)* ")"
                | FIELD ["NOT"] "IN" "LIST" LIST_NAME
    OP         := "<" | "<=" | ">" | ">=" | "=" | "!="
    FIELD      := account_id | merchant_id | channel | country | merchant_category | card_id | ip_address
                | device_id | metadata.KEY
    STRING     := "'" characters, '' for a quote "'"

Examples: `amount < 0.9 * mean_amount`, `amount > 3 * mean_amount AND count >= 5`, `count_1m > 5`,
`model_score > 0.8 AND amount > 100` (`model_score`: the champion model's probability, missing when there is none),
`country NOT IN ('FR', 'DE') AND channel = 'ecommerce'`, `merchant_category IN LIST high_risk_mcc`,
`card_id NOT IN LIST trusted_cards`, `metadata.campaign = 'spring'`.
A rule's `action` (`score` by default, `review`, `block`, `allow`) and the rule set's `review_threshold`,
`model_block_threshold` and `model_review_threshold` give each decision its outcome (rule_engine: the precedence).
User text is tokenised and parsed, never evaluated. The parsed form is stored next to the text
(rule_sets.document) and is what both the Python engine and the SQL function read.

A FIELD is a transaction's attribute (or its account or merchant id) compared as text. Each constant is read as
the field itself is (txguard/attributes.py): `country = 'fr'` means FR, `merchant_category = '742'` means 0742, and
a value the field can never hold (`country = 'XX'`, an MCC of five digits) refuses the rule set. A transaction
without the field (or without that metadata key) makes every comparison on it false, `!=`, `NOT IN` and
`NOT IN LIST` included, as SQL's NULL does. `IN LIST` reads a list's current, unexpired items (the lists API); the
list must exist, and hold values of the field's kind (a `country` list for `country`), when the rule set is applied.

What a rule set may cost is bounded when it is validated (applied, backtested, or loaded from the database),
so that no rule set can make deciding a transaction slow or crash the parser:

| limit | value | why |
| --- | ---: | --- |
| rules in a set | MAX_RULES = 50 | a rule that fires costs the most: its reason is built and stored |
| comparisons in the whole set | MAX_COMPARISONS = 100 | each is evaluated, and explained when it holds |
| characters in a `when` | MAX_WHEN_LENGTH = 2,000 | |
| levels of parentheses in a `when` | MAX_NESTING_DEPTH = 10 | parsing and evaluating recurse per level |
| digits of a constant before the point | MAX_INTEGER_DIGITS = 18 | numbers stay exact in Python and SQL alike |
| decimal places of a constant | MAX_DECIMAL_PLACES = 40 | |
| values in one `IN (...)` | MAX_IN_VALUES = 100 | SQL compares them one by one |
| values of `IN (...)` in the whole set | MAX_SET_VALUES = 1,000 | each is validated and held in memory |
| characters of a text constant | MAX_TEXT_LENGTH = 256 | the longest value a field can hold (metadata) |
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from decimal import Decimal
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator, model_validator

from txguard import attributes, literals
from txguard.features import (
    DEFAULT_LABEL_DELAY_DAYS,
    DEFAULT_TIME_ZONE,
    FEATURES,
    MAX_LABEL_DELAY_DAYS,
    MODEL_SCORE,
    RULE_FEATURES,
    FeatureSettings,
)
from txguard.intake import reason_of
from txguard.lists import LIST_NAME_PATTERN

Operator = Literal["<", "<=", ">", ">=", "=", "!=", "in", "not in", "in list", "not in list"]
# What a rule does when it fires (rule_engine: the precedence of outcomes): `score` adds its weight to the score,
# the others decide the outcome by themselves.
Action = Literal["score", "review", "block", "allow"]
ACTIONS: tuple[str, ...] = ("score", "review", "block", "allow")

MAX_RULES = 50
MAX_COMPARISONS = 100
MAX_WHEN_LENGTH = 2000
MAX_NESTING_DEPTH = 10
MAX_INTEGER_DIGITS = 18
MAX_DECIMAL_PLACES = 40
MAX_IN_VALUES = 100
MAX_SET_VALUES = 1000
MAX_TEXT_LENGTH = attributes.MAX_METADATA_VALUE_LENGTH


class Comparison(BaseModel):
    """One comparison of the parsed form. A feature is compared with a number `value` or with `factor` × `other`;
    a text field (attributes.is_text_field, named by `feature` too) with `text` (= and !=), with `values` (in, not
    in) or with the items of the list `list_name` (in list, not in list)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    feature: str
    op: Operator
    value: Decimal | None = None  # compare with a constant ...
    factor: Decimal | None = None  # ... or with factor * other
    other: str | None = None
    text: str | None = None
    values: tuple[str, ...] | None = None
    list_name: str | None = None

    @property
    def on_text(self) -> bool:
        """Whether this compares a text field (with text, values or a list), not a feature's number."""
        return self.text is not None or self.values is not None or self.list_name is not None


class AllOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    all: list[Condition]


class AnyOf(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    any: list[Condition]


Condition = Comparison | AllOf | AnyOf
AllOf.model_rebuild()
AnyOf.model_rebuild()

RULE_ID = r"^[a-z][a-z0-9_]{0,62}$"


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: Annotated[str, Field(pattern=RULE_ID, description="lower-case letters, digits and underscores")]
    description: Annotated[str, Field(min_length=1, max_length=500)]
    when: Annotated[str, Field(min_length=1, max_length=MAX_WHEN_LENGTH)]
    # The weight (0-1) an active rule of action `score` adds to the score; a rule of another action decides the
    # outcome by itself (see rule_engine), so its weight is optional and never counts.
    score: Annotated[Decimal | None, Field(gt=0, le=1, max_digits=5, decimal_places=4)] = None
    action: Action = "score"
    enabled: bool = True
    mode: Literal["active", "shadow"] = "active"
    condition: Condition | None = None

    @model_validator(mode="after")
    def _weight_of_a_scoring_rule(self) -> Rule:
        if self.action == "score" and self.score is None:
            raise ValueError("score: required for a rule of action `score` (its weight 0-1 in the score)")
        return self

    @property
    def weight(self) -> Decimal:
        """What the rule adds to the score when it fires (0 for a rule of an action other than `score`)."""
        return self.score if self.action == "score" and self.score is not None else Decimal(0)

    @model_validator(mode="after")
    def _parse_when(self) -> Rule:
        try:
            parsed = parse_condition(self.when)
        except ValueError as exc:
            raise ValueError(f"when: {exc}") from None
        if self.condition is not None and self.condition != parsed:
            raise ValueError("condition does not match `when`; give `when` only")
        self.condition = parsed
        return self


_ZONE_NAME = r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$"


class FeatureOptions(BaseModel):
    """The rule set's `features` block: what its features are computed with (pinned with the version)."""

    model_config = ConfigDict(extra="forbid")

    time_zone: Annotated[str, Field(min_length=1, max_length=64, pattern=_ZONE_NAME)] = DEFAULT_TIME_ZONE
    label_delay_days: Annotated[StrictInt, Field(ge=0, le=MAX_LABEL_DELAY_DAYS)] = DEFAULT_LABEL_DELAY_DAYS
    # Features every decision computes and stores whether or not a rule or a model reads them: what models are
    # trained on later (training reads the stored features).
    record: Annotated[list[str], Field(max_length=len(FEATURES))] = []

    @field_validator("record")
    @classmethod
    def _known_features(cls, names: list[str]) -> list[str]:
        for name in names:
            if name == MODEL_SCORE:
                raise ValueError(
                    f"{MODEL_SCORE!r} cannot be recorded: it is the champion's output, stored with each decision "
                    "in its own column, not a feature a model may be trained on"
                )
            if name not in FEATURES:
                raise ValueError(f"unknown feature {name!r}; known: {', '.join(FEATURES)}")
        if len(set(names)) != len(names):
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ValueError(f"{', '.join(repr(n) for n in twice)} named twice")
        return names

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{name!r} is not an IANA time zone name (e.g. UTC, Europe/Paris)") from None
        return name

    def settings(self) -> FeatureSettings:
        return FeatureSettings(self.time_zone, self.label_delay_days)


class RuleSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    threshold: Annotated[Decimal, Field(gt=0, le=1, max_digits=5, decimal_places=4)] = Decimal("0.5")
    # The rules' score at or above it (and below `threshold`) sends a decision to review; None: no review band.
    review_threshold: Annotated[Decimal | None, Field(gt=0, le=1, max_digits=5, decimal_places=4)] = None
    # The champion's probability (0-1) at or above `model_block_threshold` blocks (None: the threshold of its
    # artifact), at or above `model_review_threshold` reviews (None: the champion sends nothing to review).
    model_block_threshold: Annotated[Decimal | None, Field(gt=0, le=1, max_digits=7, decimal_places=6)] = None
    model_review_threshold: Annotated[Decimal | None, Field(gt=0, le=1, max_digits=7, decimal_places=6)] = None
    rules: Annotated[list[Rule], Field(max_length=MAX_RULES)]
    features: FeatureOptions | None = None

    @model_validator(mode="after")
    def _review_below_block(self) -> RuleSet:
        if self.review_threshold is not None and self.review_threshold >= self.threshold:
            raise ValueError(
                f"review_threshold: {self.review_threshold} must be below threshold {self.threshold} "
                "(scores from review_threshold up to threshold are reviewed, from threshold up blocked)"
            )
        if (
            self.model_review_threshold is not None
            and self.model_block_threshold is not None
            and self.model_review_threshold >= self.model_block_threshold
        ):
            raise ValueError(
                f"model_review_threshold: {self.model_review_threshold} must be below model_block_threshold "
                f"{self.model_block_threshold}"
            )
        return self

    def feature_settings(self) -> FeatureSettings:
        """The time zone and label delay of this rule set's features (the defaults when it names none)."""
        return FeatureSettings() if self.features is None else self.features.settings()

    def recorded_features(self) -> frozenset[str]:
        """The features every decision stores besides those its rules and models read (`features.record`)."""
        return frozenset() if self.features is None else frozenset(self.features.record)

    @field_validator("rules")
    @classmethod
    def _unique_ids(cls, rules: list[Rule]) -> list[Rule]:
        seen: set[str] = set()
        for rule in rules:
            if rule.id in seen:
                raise ValueError(f"rule id {rule.id!r} is used twice")
            seen.add(rule.id)
        return rules

    @field_validator("rules")
    @classmethod
    def _within_the_cost_budget(cls, rules: list[Rule]) -> list[Rule]:
        # Disabled rules count too: they are one `rules apply` of an edited file away from being evaluated.
        sizes = sorted(((comparison_count(rule.condition), rule.id) for rule in rules), reverse=True)
        total = sum(size for size, _ in sizes)
        if total > MAX_COMPARISONS:
            largest = ", ".join(f"{rule_id!r} {size}" for size, rule_id in sizes[:3])
            raise ValueError(f"{total} comparisons in all, at most {MAX_COMPARISONS} (the largest rules: {largest})")
        values = sum(len(c.values or ()) for rule in rules for c in comparisons_of(rule.condition))
        if values > MAX_SET_VALUES:
            raise ValueError(f"{values} values in IN (...) lists in all, at most {MAX_SET_VALUES}")
        return rules

    def list_fields(self) -> dict[str, set[str]]:
        """The lists the rules read (IN LIST, enabled rules or not) by name, each with the fields compared with it."""
        found: dict[str, set[str]] = {}
        for rule in self.rules:
            for comparison in comparisons_of(rule.condition):
                if comparison.list_name is not None:
                    found.setdefault(comparison.list_name, set()).add(comparison.feature)
        return found

    def check_lists(self, kinds: Mapping[str, str]) -> None:
        """Refuse (RuleSetError) a rule set naming a list that does not exist, or comparing a field with a list of
        another kind. `kinds`: every existing list's kind by name (storage.lists.list_definitions)."""
        problems = []
        for rule in self.rules:
            for comparison in comparisons_of(rule.condition):
                name = comparison.list_name
                if name is None:
                    continue
                if name not in kinds:
                    problems.append(f"rule {rule.id!r}: the list {name!r} does not exist")
                elif kinds[name] not in attributes.list_kinds_for(comparison.feature):
                    problems.append(
                        f"rule {rule.id!r}: the list {name!r} holds {kinds[name]} values, which {comparison.feature} "
                        f"is never compared with (lists for {comparison.feature}: "
                        f"{', '.join(attributes.list_kinds_for(comparison.feature))})"
                    )
        if problems:
            raise RuleSetError(problems)

    def document(self) -> dict[str, Any]:
        """The stored form: JSON-safe, decimals as strings, each rule with its parsed condition."""
        return self.model_dump(mode="json", exclude_none=True)


class RuleSetError(ValueError):
    """A rule set that cannot be applied; `problems` name each rule and what is wrong with it."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def validate_rule_set(data: Any) -> RuleSet:
    """Validate a whole rule set, or raise RuleSetError naming every broken rule. Nothing is half-applied."""
    try:
        return RuleSet.model_validate(data)
    except ValidationError as exc:
        raise RuleSetError([_describe(error, data) for error in exc.errors()]) from None


def _describe(error: Any, data: Any) -> str:
    loc = list(error["loc"])
    where = "rule set"
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        index = loc[1]
        rules = data.get("rules") if isinstance(data, dict) else None
        rule_id = rules[index].get("id") if isinstance(rules, list) and isinstance(rules[index], dict) else None
        where = f"rule {rule_id!r} (#{index + 1})" if rule_id else f"rule #{index + 1}"
        loc = loc[2:]
    field = ".".join(str(part) for part in loc if not str(part).startswith("function-"))
    # A rule's text may hold a card number (a constant compared with card_id): masked, as every echoed value is.
    message = attributes.mask_card_numbers(reason_of(error))
    return f"{where}: {field + ': ' if field else ''}{message}"


# --- the parser -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    # A number token takes whatever starts like one (any script's digits, a leading '.', an exponent's sign) so
    # that `_constant` judges it whole by the one decimal rule and names it, instead of splitting it into pieces.
    r"\s*(?:(?P<number>\.?\d(?:[\w.]|(?<=[eE])[-+])*)|(?P<op><=|>=|!=|==|<|>|=)"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)?)|(?P<string>'(?:[^']|'')*')|(?P<punct>[(),*]))"
)
_KEYWORDS = ("AND", "OR", "NOT", "IN", "LIST")


def comparison_count(condition: Condition | None) -> int:
    """How many comparisons a condition holds: what evaluating it costs, at most."""
    return len(comparisons_of(condition))


def comparisons_of(condition: Condition | None) -> list[Comparison]:
    """Every comparison of a condition."""
    found, pending = [], [condition]
    while pending:  # a loop, not recursion: a stored document may be deeper than the parser allows
        item = pending.pop()
        if isinstance(item, Comparison):
            found.append(item)
        elif isinstance(item, AllOf | AnyOf):
            pending.extend(item.all if isinstance(item, AllOf) else item.any)
    return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.depth = 0
        self.tokens: list[tuple[str, str, int]] = []
        position = 0
        while position < len(text):
            if text[position:].strip() == "":
                break
            match = _TOKEN.match(text, position)
            if not match:
                raise ValueError(f"unexpected character {text[position:].lstrip()[0]!r} at position {position + 1}")
            kind = match.lastgroup or ""
            value = match.group(kind)
            start = match.start(kind)
            if kind == "word" and value.upper() in _KEYWORDS:
                kind, value = "keyword", value.upper()
            if kind == "string":
                value = value[1:-1].replace("''", "'")
            if kind == "op" and value == "==":
                value = "="
            self.tokens.append((kind, value, start + 1))
            position = match.end()
        self.index = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.index] if self.index < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> tuple[str, str, int]:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            expected = value or kind
            found = f"{token[1]!r} at position {token[2]}" if token else "the end of the condition"
            raise ValueError(f"expected {expected} but found {found}")
        self.index += 1
        return token

    def condition(self) -> Condition:
        parts = [self.conjunction()]
        while (token := self.peek()) and token[:2] == ("keyword", "OR"):
            self.index += 1
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else AnyOf(any=_flatten(parts, AnyOf))

    def conjunction(self) -> Condition:
        parts = [self.term()]
        while (token := self.peek()) and token[:2] == ("keyword", "AND"):
            self.index += 1
            parts.append(self.term())
        return parts[0] if len(parts) == 1 else AllOf(all=_flatten(parts, AllOf))

    def term(self) -> Condition:
        token = self.peek()
        if token and token[:2] == ("punct", "("):
            # Checked before descending: each level costs the parser (and the evaluators) stack frames.
            if self.depth == MAX_NESTING_DEPTH:
                raise ValueError(
                    f"nested too deeply at position {token[2]}: at most {MAX_NESTING_DEPTH} levels of parentheses"
                )
            self.index += 1
            self.depth += 1
            inner = self.condition()
            self.take("punct", ")")
            self.depth -= 1
            return inner
        return self.comparison()

    def feature(self) -> str:
        _, name, position = self.take("word")
        if name not in RULE_FEATURES:
            raise ValueError(f"unknown feature {name!r} at position {position}; known: {', '.join(RULE_FEATURES)}")
        return name

    def comparison(self) -> Comparison:
        token = self.peek()
        if token and token[0] == "word" and attributes.is_text_field(token[1]):
            return self.text_comparison()
        if token and token[0] == "word" and token[1].startswith(attributes.METADATA_FIELD):
            raise ValueError(
                f"{token[1]!r} at position {token[2]}: a metadata key is 1-40 lower-case letters, digits or '_', "
                "from a letter"
            )
        left = self.feature()
        following = self.peek()
        if following and following[0] == "keyword" and following[1] in ("IN", "NOT"):
            raise ValueError(
                f"{left} at position {token[2] if token else 0} is a number: IN compares the text fields "
                f"{', '.join(attributes.TEXT_FIELDS)} and metadata.KEY"
            )
        op = self.take("op")[1]
        token = self.peek()
        if token and token[0] == "string":
            raise ValueError(f"{left} is a number, not text: compare it with a number, not {token[1]!r}")
        token = self.peek()
        if token and token[0] == "number":
            number = _constant(*self.take("number")[1:])
            following = self.peek()
            if following and following[:2] == ("punct", "*"):
                self.index += 1
                return Comparison(feature=left, op=op, factor=number, other=self.feature())
            return Comparison(feature=left, op=op, value=number)
        return Comparison(feature=left, op=op, factor=Decimal(1), other=self.feature())

    def text_comparison(self) -> Comparison:
        _, field, position = self.take("word")
        token = self.peek()
        if token and token[0] == "op":
            op = self.take("op")[1]
            if op not in ("=", "!="):
                raise ValueError(f"{field} at position {position} is text: compare it with =, !=, IN or IN LIST")
            return Comparison(feature=field, op=op, text=self.constant_text(field))
        negated = bool(token and token[:2] == ("keyword", "NOT"))
        if negated:
            self.index += 1
        self.take("keyword", "IN")
        following = self.peek()
        if following and following[:2] == ("keyword", "LIST"):
            self.index += 1
            _, name, at = self.take("word")
            if not re.match(LIST_NAME_PATTERN, name):
                raise ValueError(f"{name!r} at position {at} is not a list name (lower-case letters, digits, '_')")
            if not attributes.list_kinds_for(field):
                raise ValueError(
                    f"{field} at position {position} cannot be compared with a list: no list holds its values"
                )
            return Comparison(feature=field, op="not in list" if negated else "in list", list_name=name)
        self.take("punct", "(")
        values = [self.constant_text(field)]
        while (following := self.peek()) and following[:2] == ("punct", ","):
            self.index += 1
            values.append(self.constant_text(field))
        self.take("punct", ")")
        if len(values) > MAX_IN_VALUES:
            raise ValueError(f"{len(values)} values in IN (...) at position {position}, at most {MAX_IN_VALUES}")
        return Comparison(feature=field, op="not in" if negated else "in", values=tuple(dict.fromkeys(values)))

    def constant_text(self, field: str) -> str:
        """A text constant (or, for a field of digits, a number) read as the field's values are."""
        token = self.peek()
        if token is None or token[0] not in ("string", "number"):
            found = f"{token[1]!r} at position {token[2]}" if token else "the end of the condition"
            raise ValueError(f"expected a quoted value for {field} but found {found}")
        self.index += 1
        _, raw, position = token
        shown = raw if len(raw) <= 60 else f"{raw[:28]}...{raw[-28:]}"
        if len(raw) > MAX_TEXT_LENGTH:
            raise ValueError(f"the value at position {position} has {len(raw)} characters, at most {MAX_TEXT_LENGTH}")
        try:
            return attributes.field_value(field, raw)
        except ValueError as exc:
            raise ValueError(f"the value {shown!r} at position {position} for {field} {exc}") from None


def _flatten(parts: list[Condition], kind: type[AllOf] | type[AnyOf]) -> list[Condition]:
    flat: list[Condition] = []
    for part in parts:
        if isinstance(part, AllOf) and kind is AllOf:
            flat.extend(part.all)
        elif isinstance(part, AnyOf) and kind is AnyOf:
            flat.extend(part.any)
        else:
            flat.append(part)
    return flat


def _constant(text: str, position: int) -> Decimal:
    """A constant of the grammar, written as a JSON number is (the decimal rule of `txguard.literals`: ASCII digits,
    no leading zeros, a digit before the point, an optional exponent), refused beyond the digits that Python and SQL
    both hold exactly. Returned in plain notation (`1e3` → 1000). Raises ValueError naming constant and position."""
    shown = text if len(text) <= 60 else f"{text[:28]}...{text[-28:]}"
    try:
        number = literals.decimal(text)
    except ValueError:
        raise ValueError(
            f"the constant {shown!r} at position {position} is not a number as JSON writes one (ASCII digits, no "
            "leading zeros, a digit before the point, an optional exponent: 12, 0.5, 1e3)"
        ) from None
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # literals.decimal gives finite numbers only
    significant = len("".join(map(str, digits)).lstrip("0"))
    integer_digits = max(significant + exponent, 0)
    places = literals.decimal_places(number)
    if integer_digits > MAX_INTEGER_DIGITS:
        raise ValueError(
            f"the constant {shown} at position {position} has {integer_digits} digits before the decimal point, "
            f"at most {MAX_INTEGER_DIGITS}"
        )
    if places > MAX_DECIMAL_PLACES:
        raise ValueError(
            f"the constant {shown} at position {position} has {places} decimal places, at most {MAX_DECIMAL_PLACES}"
        )
    return Decimal(format(number, "f")) if "e" in text.lower() else number


def parse_condition(text: str) -> Condition:
    parser = _Parser(text)
    if not parser.tokens:
        raise ValueError("the condition is empty")
    condition = parser.condition()
    if parser.peek() is not None:
        token = parser.peek()
        assert token is not None
        raise ValueError(f"unexpected {token[1]!r} at position {token[2]}")
    return condition
