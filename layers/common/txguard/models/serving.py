"""Serving models at ingest: a detector version (a rule set, a champion model, shadow models) ready to decide.

How the model and the rules combine (every path that decides: ingest, recompute, backtest, and detect_fraud in SQL):
- r = the rules' score as today: 1 − Π(1 − weight) over the active rules that fire, rounded to four places;
- p = the champion's probability 0–1 (full precision), or 0 when there is no champion or it fell back;
- the decision's score = round4(1 − (1 − p)(1 − r)), half up: with no champion it is exactly r;
- the decision is flagged when r ≥ the rule set's threshold OR p ≥ the champion's threshold (the rule set's
  `model_block_threshold`, else its artifact's); the outcome follows rule_engine's precedence (a rule's action,
  `review_threshold` for r and `model_review_threshold` for p); `model_threshold` records the block threshold used;
- rules may read `model_score` (= p) like any feature: missing when no champion scored, so no comparison with it
  holds then. It reads as the shortest decimal that gives back the same double (Python's repr, PostgreSQL's
  float8 output), so `model_score > 0.8` means the same number here and in SQL;
- shadow models are scored and recorded (`shadow_scores`), and never decide.

The champion and the shadows score a chunk of transactions at once (`TreeModel.score_matrix`); explanations
(TreeSHAP contributions in words, a `model:<version>` reason) are built only for the decisions the champion flags
(p ≥ its threshold), all those of a chunk in one call (`TreeModel.contributions_matrix`): a decision the rules
alone flag is explained by its rules, and TreeSHAP costs far more than scoring (about 1 ms a decision for 300
trees against 10–20 µs a row; `make bench ARGS='--only serving'`, `--only model`).
A model that cannot be loaded (missing, corrupt or mismatched artifact) is never used: the champion's decisions
then fall back to the rules, each recording why in `model_fallback` (`load_models`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal

import numpy as np
import psycopg2.extensions

from txguard.currencies import money
from txguard.domain import Decision, Outcome, Reason
from txguard.feature_columns import FeatureSource, RowColumns
from txguard.features import (
    COUNT_IN_CURRENCY,
    FEATURES,
    FeatureReader,
    Features,
    FeatureValue,
    model_score_feature,
    window_reach_ms,
)
from txguard.models import artifact_store
from txguard.models.artifact import CorruptArtifact, decode_artifact
from txguard.models.artifact_store import ArtifactUnavailable
from txguard.models.scoring import TreeModel
from txguard.observability import logger
from txguard.rule_engine import CompiledRuleSet, Snoozed
from txguard.storage import models
from txguard.storage.detector_versions import DetectorVersion

_FOUR_PLACES = Decimal("0.0001")
# Every four-place score 0.0000 … 1.0000, by its number of ten-thousandths.
_STEPS = [Decimal(k).scaleb(-4) for k in range(10_001)]
_ZERO_SCORE = _STEPS[0]
# 1 − (1 − p)(1 − r) exactly: p has at most 17 significant digits, r four places.
_EXACT = Context(prec=60)
EXPLAINED_FEATURES = 3  # how many of the champion's top contributions an explanation names


@dataclass(frozen=True)
class ServedModel:
    """A registered model version ready to score: its tree model and its decision threshold 0–1."""

    version: int
    model: TreeModel
    threshold: float

    @property
    def features(self) -> tuple[str, ...]:
        return self.model.features


def model_reason_id(version: int) -> str:
    """The rule id of the reason a model's score gives a decision: `model:<version>`."""
    return f"model:{version}"


def combined_score(rules_score: Decimal, model_score: float | None) -> Decimal:
    """round4(1 − (1 − p)(1 − r)), half up, for the rules' four-place score r and the champion's p (None: 0)."""
    if model_score is None:
        return rules_score
    p = Decimal(repr(model_score))
    keep = _EXACT.multiply(1 - p, 1 - rules_score)
    return (1 - keep).quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)


def with_stored_model(by_rules: Decision, stored: Decision, rules: CompiledRuleSet) -> Decision:
    """A candidate rule set's decision (`rules`') combined with the champion score stored on the decision it is
    compared with (what backtests do: the models are not run again), judged against the candidate's model
    thresholds (`model_block_threshold`, else the stored one). The rules must have read `model_score` from
    `stored_model_feature(stored)`. No model reason is built (it needs the model's contributions)."""
    if stored.model_version is None or stored.model_score is None or stored.model_threshold is None:
        return by_rules
    p = stored.model_score
    block_at = rules.model_block_threshold_for(stored.model_threshold)
    outcome = rules.outcome(by_rules.score, rules.actions_fired(by_rules.reasons), p, block_at)
    return Decision(
        outcome == "block",
        combined_score(by_rules.score, p),
        by_rules.reasons,
        by_rules.rule_set_version,
        by_rules.detector_version,
        stored.model_version,
        p,
        block_at,
        outcome=outcome,
    )


def stored_model_feature(stored: Decision) -> Decimal | None:
    """`model_score` for the rules, from a stored decision (None: no champion scored it)."""
    if stored.model_version is None or stored.model_score is None:
        return None
    return model_score_feature(stored.model_score)


def feature_row(features: Features, names: Sequence[str]) -> list[float | None]:
    """A transaction's features as a model's input row: floats in `names` order, None where missing."""
    return [None if (value := features.get(name)) is None else float(value) for name in names]


class ModelDetector:
    """A detector version: rules, an optional champion and shadow models, deciding as the module says.

    `fallback` (set when the champion named by the detector version could not be loaded) is recorded on every
    decision, which the rules then take alone; shadows that could not be loaded are left out of `shadow_scores`.
    """

    def __init__(
        self,
        detector_version: int | None,
        rules: CompiledRuleSet,
        champion: ServedModel | None = None,
        shadows: Sequence[ServedModel] = (),
        fallback: str | None = None,
    ) -> None:
        self.detector_version = detector_version
        self.rules = rules
        self.champion = champion
        self.shadows = tuple(shadows)
        self.fallback = fallback
        # Some model named by the detector version could not be loaded: the cache tries again when it re-reads.
        self.incomplete = fallback is not None
        self.version = rules.version
        self.rule_set = rules.rule_set
        self.threshold = rules.threshold
        self.rule_features = rules.rule_features
        self.text_fields = rules.text_fields
        self.list_fields = rules.list_fields
        self.list_names = rules.list_names
        model_features: set[str] = set()
        for served in (*([champion] if champion else []), *self.shadows):
            model_features.update(served.features)
        self.model_features = frozenset(model_features)
        self.needed_features = rules.needed_features | self.model_features
        self.window_reach_ms = window_reach_ms(self.needed_features)
        self.feature_settings = rules.feature_settings

    def decide(
        self, features: Features, merchant_id: str | None, currency: str, snoozed: Snoozed | None = None
    ) -> Decision:
        """One transaction's decision (decide_batch of one)."""
        return self.decide_batch([(features, merchant_id, currency)], None if snoozed is None else [snoozed])[0]

    def decide_batch(
        self, items: Sequence[tuple[Features, str | None, str]], snoozed: Sequence[Snoozed | None] | None = None
    ) -> list[Decision]:
        """Each (features, merchant id, currency)'s decision, in order: the models score all rows at once, then
        the rules decide each with `model_score` among its features (which this adds to each features dict);
        `snoozed`: each one's snoozed rules (rule_engine.CompiledRuleSet.decide)."""
        return self.decide_columns(RowColumns([f for f, _, _ in items]), items, snoozed)

    def decide_columns(
        self,
        columns: FeatureSource,
        items: Sequence[tuple[FeatureReader, str | None, str]],
        snoozed: Sequence[Snoozed | None] | None = None,
    ) -> list[Decision]:
        """decide_batch for a chunk whose features are also given as `columns` (the same rows, in order): the
        models score the columns' matrix, the champion's scores are added to the columns as `model_score`
        (FeatureSource.add_model_scores: in each dict of RowColumns), and the rules' predicates read them
        (rule_engine.decide_columns). An item's features are read only where a rule or the champion explains."""
        shadow_scores: list[dict[int, float]] | None = None
        if self.shadows:
            shadow_scores = [{} for _ in range(len(items))]  # items may make each row when read
            for shadow in self.shadows:
                scores = shadow.model.score_matrix(columns.matrix(shadow.features))
                for row, shadow_score in zip(shadow_scores, scores, strict=True):
                    row[shadow.version] = float(shadow_score)
        if self.champion is None:
            alone = self.rules.decide_columns(columns, items, snoozed)
            if self.fallback is None and shadow_scores is None:
                return alone  # they carry the detector version already
            return [
                self._rules_alone(decision, None if shadow_scores is None else shadow_scores[i])
                for i, decision in enumerate(alone)
            ]
        champion = self.champion
        rules = self.rules
        block_at = rules.model_block_threshold_for(champion.threshold)
        # The champion explains what it blocks and what it sends to review.
        explain_at = block_at if rules.model_review_threshold is None else min(block_at, rules.model_review_threshold)
        matrix = columns.matrix(champion.features)
        probabilities = champion.model.score_matrix(matrix)
        columns.add_model_scores(probabilities)
        by_rules_all = rules.decide_columns(columns, items, snoozed)
        # The decisions the champion flags are explained together: one TreeSHAP call for the chunk.
        flagged = [i for i, p in enumerate(probabilities) if p >= explain_at]
        contributions = champion.model.contributions_matrix(matrix[flagged])
        explained = dict(zip(flagged, contributions.tolist(), strict=True))
        # Where no rule fired and the champion explains nothing, the score and the outcome follow from p alone.
        quiet_scores, quiet_outcomes = self._quiet(probabilities, block_at)
        nothing_found = rules.nothing_found
        decisions = []
        for i, (p, by_rules) in enumerate(zip(probabilities, by_rules_all, strict=True)):
            reasons = by_rules.reasons
            if by_rules is nothing_found and p < explain_at:
                score, outcome = quiet_scores[i], quiet_outcomes[i]
            else:
                score = combined_score(by_rules.score, p)
                outcome = rules.outcome(by_rules.score, rules.actions_fired(reasons), p, block_at)
                if p >= explain_at:
                    features, merchant_id, currency = items[i]
                    reason = self._model_reason(champion, p, block_at, explained[i], features, merchant_id, currency)
                    reasons = (*reasons, reason)
            decisions.append(
                Decision(
                    outcome == "block",
                    score,
                    reasons,
                    self.version,
                    self.detector_version,
                    champion.version,
                    p,
                    block_at,
                    None,
                    None if shadow_scores is None else shadow_scores[i],
                    outcome=outcome,
                )
            )
        return decisions

    def _quiet(self, probabilities: Sequence[float], block_at: float) -> tuple[list[Decimal], list[Outcome]]:
        """For each p, the decision's score and outcome when no rule fired: round4(p) half up (combined_score with
        r = 0: 1 − (1 − p) is p exactly) and rule_engine's outcome for r = 0 and no action. The score is read off
        p × 10⁴ in float64 unless that lies within 1e-6 of a rounding tie, where Decimal decides (p × 10⁴ in
        float64 is within 3e-12 of the exact product of the decimal that reads as p)."""
        p = np.asarray(probabilities, dtype=np.float64)
        scaled = p * 10_000
        near_tie = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
        steps = np.floor(scaled + 0.5).astype(np.int64).tolist()
        scores = [_STEPS[k] for k in steps]
        for i in np.flatnonzero(near_tie).tolist():
            scores[i] = combined_score(_ZERO_SCORE, probabilities[i])
        rules = self.rules
        zero_blocks = rules.threshold <= _ZERO_SCORE
        zero_reviews = rules.review_threshold is not None and rules.review_threshold <= _ZERO_SCORE
        blocks = p >= block_at
        reviews = (
            np.zeros(len(p), dtype=bool) if rules.model_review_threshold is None else p >= rules.model_review_threshold
        )
        outcomes: list[Outcome] = [
            "block" if zero_blocks or b else "review" if zero_reviews or r else "allow"
            for b, r in zip(blocks.tolist(), reviews.tolist(), strict=True)
        ]
        return scores, outcomes

    def _rules_alone(self, decision: Decision, shadow_scores: Mapping[int, float] | None) -> Decision:
        return Decision(
            decision.fraud,
            decision.score,
            decision.reasons,
            decision.rule_set_version,
            self.detector_version,
            None,
            None,
            None,
            self.fallback,
            shadow_scores,
            outcome=decision.outcome,
        )

    def _model_reason(
        self,
        champion: ServedModel,
        p: float,
        block_at: float,
        contributions: Sequence[float],
        features: FeatureReader,
        merchant_id: str | None,
        currency: str,
    ) -> Reason:
        """The champion's reason on a decision it flags: its score against its threshold and the features that
        moved the score most (`contributions`: its row of TreeModel.contributions_matrix, TreeSHAP in log-odds,
        in the model's feature order), with their values in words."""
        named = zip(champion.features, contributions, strict=False)  # the trailing bias has no feature
        known = [(name, value) for name, value in named if name in FEATURES and value != 0]
        known.sort(key=lambda item: (-abs(item[1]), item[0]))
        parts = [
            f"{describe_value(name, features, merchant_id, currency)} "
            f"{'raised' if value > 0 else 'lowered'} the model score"
            for name, value in known[:EXPLAINED_FEATURES]
        ]
        if p >= block_at:
            sentence = f"the model scored {p:.4f}, at least its threshold {block_at:.4f}"
        else:
            review_at = self.rules.model_review_threshold
            sentence = (
                f"the model scored {p:.4f}, at least its review threshold {review_at:.4f}, "
                f"below its threshold {block_at:.4f}"
            )
        if parts:
            sentence += ": " + "; ".join(parts)
        weight = Decimal(repr(p)).quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)
        return Reason(model_reason_id(champion.version), "model", weight, sentence)


def describe_value(name: str, features: FeatureReader, merchant_id: str | None, currency: str) -> str:
    """A feature and its value in words, as explanations write them: "amount 312.00 EUR", "the number of
    transactions in the previous 24 hours (7)"; money in the currency's decimal places."""
    info = FEATURES[name]
    value = features.get(name)
    shown = _shown(value, currency, info.money)
    if name == "amount":
        return f"amount {shown}"
    label = info.label
    if "{" in label:
        count = features.get(COUNT_IN_CURRENCY, features.get("count")) if info.money else features.get("count")
        label = label.format(count=count, merchant_id=merchant_id)
    return f"{label} ({shown})"


def _shown(value: FeatureValue, currency: str, is_money: bool) -> str:
    if value is None:
        return "none"
    if is_money and isinstance(value, Decimal):
        return f"{money(value, currency)} {currency}"
    if isinstance(value, Decimal):
        return format(value.normalize(), "f")
    return str(value)


# Models by (version, artifact sha256): a model is read and built once per execution environment, whatever how
# often its detector version is re-read. Failures are not kept: the next reload tries again.
_LOADED: dict[tuple[int, str], ServedModel] = {}
_LOADED_LIMIT = 8


def load_model(
    cur: psycopg2.extensions.cursor, version: int, store: artifact_store.ArtifactStore | None = None
) -> ServedModel | str:
    """The registered model `version`, ready to score, or why it cannot be used (a sentence: "the artifact ... is
    damaged", "no such model version", ...). An artifact is used only when it reads whole (its bytes hash to the
    registered sha256, it decodes, its features are the registry's and all computable here). Artifacts are read
    from `store` (None: the environment's, artifact_store.store())."""
    try:
        row = models.get(cur, version)
    except models.ModelNotFound:
        return "no such model version"
    key = (row.version, row.artifact_sha256)
    served = _LOADED.get(key)
    if served is not None:
        return served
    try:
        data = (artifact_store.store() if store is None else store).get(row.artifact_sha256)
        artifact = decode_artifact(data)
    except (ArtifactUnavailable, CorruptArtifact) as exc:
        return str(exc) or type(exc).__name__
    except Exception as exc:  # a store that fails otherwise (network, permissions) must not fail ingest
        logger.exception("model artifact could not be read", extra={"model_version": version})
        return f"artifact could not be read ({type(exc).__name__})"
    if tuple(artifact.features) != tuple(row.features) or artifact.features_hash != row.features_hash:
        return "artifact features differ from the registered ones"
    unknown = [name for name in artifact.features if name not in FEATURES]
    if unknown:
        return f"features not computed here: {', '.join(unknown)}"
    try:
        model = TreeModel.from_artifact(artifact)
    except (CorruptArtifact, ValueError, KeyError, TypeError) as exc:
        return f"artifact model unreadable ({type(exc).__name__})"
    served = ServedModel(row.version, model, float(artifact.threshold))
    if len(_LOADED) >= _LOADED_LIMIT:
        _LOADED.pop(next(iter(_LOADED)))
    _LOADED[key] = served
    return served


def load_detector(
    cur: psycopg2.extensions.cursor, version: DetectorVersion, rules: CompiledRuleSet
) -> ModelDetector | CompiledRuleSet:
    """The detector version with its models loaded; a champion that cannot be loaded becomes the decisions'
    `model_fallback` ("champion v3 unavailable: artifact hash mismatch"), a shadow that cannot is left out. Each
    model that cannot be loaded is logged as a warning."""
    champion: ServedModel | None = None
    fallback: str | None = None
    if version.champion_model_version is not None:
        loaded = load_model(cur, version.champion_model_version)
        if isinstance(loaded, str):
            fallback = f"champion v{version.champion_model_version} unavailable: {loaded}"
            logger.warning("champion model unavailable", extra={"detector_version": version.version, "why": fallback})
        else:
            champion = loaded
    shadows = []
    missing_shadow = False
    for number in version.shadow_model_versions:
        loaded = load_model(cur, number)
        if isinstance(loaded, str):
            missing_shadow = True
            logger.warning(
                "shadow model unavailable",
                extra={"detector_version": version.version, "why": f"shadow v{number} unavailable: {loaded}"},
            )
        else:
            shadows.append(loaded)
    if champion is None and not shadows and fallback is None and not missing_shadow:
        return rules  # a detector version of rules alone decides as the rule set does
    detector = ModelDetector(version.version, rules, champion, shadows, fallback)
    detector.incomplete = detector.incomplete or missing_shadow
    return detector
