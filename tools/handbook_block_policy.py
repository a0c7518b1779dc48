"""Where a candidate rule set's blocks come from on a window of stored history, judged by the labels known at a
cutoff, and the champion's block threshold the evidence allows (docs/evaluation.md, "The block policy from lower
confidence bounds"):

    python tools/handbook_block_policy.py --rules FILE --from 2018-04-01 --to 2018-06-24 --cutoff 2018-07-01
    python tools/handbook_block_policy.py --rules FILE --from 2018-06-01 --to 2018-06-24 --cutoff 2018-07-01 --model 2

The database and the artifacts are the environment's, as `txguard` reads them (DATABASE_URL, TXGUARD_MODEL_DIR).

A block is the costly outcome (a genuine customer refused); review costs an analyst's look and, for issue #18's
target, no recall (it is measured within block + review). So each source of blocks must show, on data it was not
fitted to, a precision whose Wilson lower bound (95 %, two-sided) reaches the target:

- **rules**: per active scoring rule, its *needed blocks*, the decisions the rules' score blocks (r >= threshold)
  that fall below the threshold without that rule's weight: exactly the blocks its action `review` would send to
  review. A rule whose needed blocks fall short is named (the one with the lowest bound first; the others are judged
  again without it, since a block two weak rules make is needed by both);
- **the model** (`--model N`: registered model N scores each decision's stored features as serving scores them): at
  each level t = 0.50, 0.51, ..., 0.99 the decisions only the model blocks (p >= t, the rules below their
  threshold, no block rule); the level chosen is the lowest from which every level up has a bound that reaches the
  target (a level blocking nothing holds). Beside it, the precision of all blocks, the recall within block + review
  and the share in review with the rule set's review thresholds.

The rules' score is recomputed from the active rules each stored decision records and the candidate's weights: the
candidate must score with the rules the stored decisions were taken by (checked: same conditions), as
rules/handbook-outcomes*.json do. Labels: the latest one labelled before the cutoff; none counts as genuine.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import NamedTuple

Z_95 = 1.959964  # the standard normal's 97.5 % quantile: a two-sided 95 % interval
LEVELS = [round(i / 100, 2) for i in range(50, 100)]
_FOUR_PLACES = Decimal("0.0001")


class Row(NamedTuple):
    """One decision: its label at the cutoff, the active rules that fired, the model's probability (None: none)."""

    fraud: bool
    fired: frozenset[str]
    p: float | None = None


class Policy(NamedTuple):
    """What decides a row: the weights of the active scoring rules, the rules of action block / review (fired ones
    decide by themselves), and the thresholds of the rule set (Decimal 0-1; model ones float or None)."""

    weights: dict[str, Decimal]
    block_rules: frozenset[str]
    review_rules: frozenset[str]
    threshold: Decimal
    review_threshold: Decimal | None
    model_review_threshold: float | None


def wilson_lower_bound(successes: int, n: int, z: float = Z_95) -> float | None:
    """The lower end of the Wilson score interval for a proportion successes / n (Wilson 1927; the interval Brown,
    Cai and DasGupta 2001 recommend for small n and proportions near 0 or 1); None when n is 0."""
    if n == 0:
        return None
    phat = successes / n
    centre = phat + z * z / (2 * n)
    margin = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return (centre - margin) / (1 + z * z / n)


def rules_score(weights: Iterable[Decimal]) -> Decimal:
    """1 - prod(1 - weight), four places half up: the rules' score as rule_engine computes it."""
    keep = Decimal(1)
    for weight in weights:
        keep *= 1 - weight
    return (1 - keep).quantize(_FOUR_PLACES, rounding=ROUND_HALF_UP)


def rules_block(row: Row, policy: Policy) -> bool:
    """Whether the rules alone block the row (a block rule fired, or their score reaches the threshold)."""
    if row.fired & policy.block_rules:
        return True
    return rules_score(policy.weights[r] for r in row.fired if r in policy.weights) >= policy.threshold


def needed_blocks(rows: Sequence[Row], policy: Policy) -> dict[str, tuple[int, int]]:
    """Per scoring rule, (blocks, frauds among them) of the rows the rules' score blocks that fall below the
    threshold without that rule's weight."""
    found: dict[str, tuple[int, int]] = {}
    for row in rows:
        scoring = [r for r in row.fired if r in policy.weights]
        if row.fired & policy.block_rules or rules_score(policy.weights[r] for r in scoring) < policy.threshold:
            continue
        for rule in scoring:
            if rules_score(policy.weights[r] for r in scoring if r != rule) < policy.threshold:
                blocks, frauds = found.get(rule, (0, 0))
                found[rule] = (blocks + 1, frauds + row.fraud)
    return found


def rules_short_of(rows: Sequence[Row], policy: Policy, target: float) -> list[tuple[str, int, int, float]]:
    """The scoring rules whose needed blocks have a lower bound below `target`, in the order they would be sent to
    review: each time the one with the lowest bound, the rest judged again without it. Each (rule, blocks, frauds,
    bound)."""
    weights = dict(policy.weights)
    short: list[tuple[str, int, int, float]] = []
    while True:
        current = Policy(
            weights, policy.block_rules, policy.review_rules, policy.threshold, policy.review_threshold, None
        )
        bounds = [
            (bound, rule, blocks, frauds)
            for rule, (blocks, frauds) in needed_blocks(rows, current).items()
            if (bound := wilson_lower_bound(frauds, blocks)) is not None and bound < target
        ]
        if not bounds:
            return short
        bound, rule, blocks, frauds = min(bounds)
        short.append((rule, blocks, frauds, bound))
        del weights[rule]


class Level(NamedTuple):
    """The outcomes at one model block level t: the rows only the model blocks (and frauds among them), all
    blocks (and frauds), the rows in review, and the frauds in block + review."""

    t: float
    model_blocks: int
    model_frauds: int
    blocks: int
    block_frauds: int
    review: int
    caught: int


def model_levels(rows: Sequence[Row], policy: Policy, levels: Sequence[float] = LEVELS) -> list[Level]:
    """For each level t, the outcomes with model_block_threshold t (rows without a probability: the rules alone)."""
    table = []
    by_rules = [rules_block(row, policy) for row in rows]
    reviewed = [_reviewed(row, policy) for row in rows]
    for t in levels:
        model_blocks = model_frauds = blocks = block_frauds = review = caught = 0
        for row, ruled, seen in zip(rows, by_rules, reviewed, strict=True):
            by_model = not ruled and row.p is not None and row.p >= t
            if by_model:
                model_blocks += 1
                model_frauds += row.fraud
            if ruled or by_model:
                blocks += 1
                block_frauds += row.fraud
                caught += row.fraud
            elif seen:
                review += 1
                caught += row.fraud
        table.append(Level(t, model_blocks, model_frauds, blocks, block_frauds, review, caught))
    return table


def _reviewed(row: Row, policy: Policy) -> bool:
    """Whether the row is reviewed unless blocked (a review rule fired, or a score reaches its review threshold)."""
    if row.fired & policy.review_rules:
        return True
    score = rules_score(policy.weights[r] for r in row.fired if r in policy.weights)
    if policy.review_threshold is not None and score >= policy.review_threshold:
        return True
    return policy.model_review_threshold is not None and row.p is not None and row.p >= policy.model_review_threshold


def lowest_level_holding(table: Sequence[Level], target: float) -> float | None:
    """The lowest level from which every level up has model blocks whose lower bound reaches `target` (a level
    blocking nothing holds); None when even the highest does not."""
    chosen = None
    for level in sorted(table, key=lambda row: row.t, reverse=True):
        bound = wilson_lower_bound(level.model_frauds, level.model_blocks)
        if bound is not None and bound < target:
            break
        chosen = level.t
    return chosen


def policy_of(rule_set: object) -> Policy:
    """The Policy of a validated rule set (txguard.rule_language.RuleSet)."""
    from txguard.rule_language import RuleSet

    assert isinstance(rule_set, RuleSet)
    active = [r for r in rule_set.rules if r.enabled and r.mode == "active"]
    return Policy(
        {r.id: r.weight for r in active if r.action == "score"},
        frozenset(r.id for r in active if r.action == "block"),
        frozenset(r.id for r in active if r.action == "review"),
        rule_set.threshold,
        rule_set.review_threshold,
        None if rule_set.model_review_threshold is None else float(rule_set.model_review_threshold),
    )


def _read_rows(url: str, rule_set: object, from_ms: int, to_ms: int, cutoff_ms: int, model: int | None) -> list[Row]:
    """The window's decisions as Rows (see the module docstring), scored by model `model` when given."""
    import numpy as np

    from txguard.models.serving import load_model
    from txguard.rule_language import RuleSet
    from txguard.storage import rule_sets, training_data
    from txguard_dev.commands.common import model_store, open_database

    assert isinstance(rule_set, RuleSet)
    with open_database(url) as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT DISTINCT rule_set_version FROM transactions
               WHERE ts >= txguard_ms_to_ts(%s) AND ts < txguard_ms_to_ts(%s)""",
            (from_ms, to_ms),
        )
        wanted = {r.id: r.when for r in rule_set.rules if r.enabled and r.mode == "active"}
        for (version,) in cur.fetchall():
            stored = rule_sets.version(cur, version)
            assert stored is not None
            taken = {r.id: r.when for r in stored.rule_set.rules if r.enabled and r.mode == "active"}
            differ = [rule for rule, when in wanted.items() if taken.get(rule) != when]
            if differ:
                raise SystemExit(f"rule set {version} decided the window with other rules than the candidate: {differ}")
        cur.execute(
            """SELECT transaction_id,
                      ARRAY(SELECT r ->> 'rule_id' FROM jsonb_array_elements(reasons) r WHERE r ->> 'mode' = 'active')
               FROM transactions WHERE ts >= txguard_ms_to_ts(%s) AND ts < txguard_ms_to_ts(%s)""",
            (from_ms, to_ms),
        )
        fired = {tid: frozenset(ids) for tid, ids in cur.fetchall()}
        served = None
        if model is not None:
            loaded = load_model(cur, model, model_store())
            if isinstance(loaded, str):
                raise SystemExit(f"model {model}: {loaded}")
            served = loaded
        features = served.features if served is not None else ("amount",)
        rows: list[Row] = []
        for chunk in training_data.labelled_rows(conn, features, from_ms, to_ms, cutoff_ms):
            scores: Sequence[float | None] = [None] * len(chunk.values)
            if served is not None:
                # as training reads the stored features: float64, a missing value NaN
                scores = served.model.score_matrix(np.array(chunk.values, dtype=np.float64))
            rows.extend(
                Row(fraud, fired.get(tid, frozenset()), p)
                for tid, fraud, p in zip(chunk.transaction_ids, chunk.fraud, scores, strict=True)
            )
        conn.rollback()
    return rows


def _bound_text(successes: int, n: int) -> str:
    bound = wilson_lower_bound(successes, n)
    return "    -" if bound is None else f"{bound:5.3f}"


def main(argv: list[str] | None = None) -> int:
    from txguard.rule_language import validate_rule_set
    from txguard_dev.commands.common import CommandError, decimal_argument, period_argument, read_json_file

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", type=Path, required=True, help="the candidate rule set (JSON)")
    parser.add_argument("--from", dest="from_", type=period_argument, required=True)
    parser.add_argument("--to", type=period_argument, required=True)
    parser.add_argument("--cutoff", type=period_argument, required=True, help="labels labelled before it count")
    parser.add_argument("--model", type=int, default=None, help="a registered model version to score the window")
    parser.add_argument(
        "--target",
        type=decimal_argument(Decimal(0), Decimal(1)),
        default=Decimal("0.9"),
        help="the precision every source of blocks must reach (more than 0, at most 1)",
    )
    args = parser.parse_args(argv)
    if args.from_ >= args.to:
        parser.error("--from must be before --to")
    target = float(args.target)
    try:
        rule_set = validate_rule_set(read_json_file(args.rules))
    except ValueError as exc:  # unreadable, not JSON, or not a valid rule set (RuleSetError)
        parser.error(f"--rules {str(args.rules)!r}: {exc}")
    policy = policy_of(rule_set)
    url = os.environ.get("DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/txguard")
    try:
        rows = _read_rows(url, rule_set, args.from_, args.to, args.cutoff, args.model)
    except CommandError as exc:  # the database cannot be reached, or is not migrated
        raise SystemExit(str(exc)) from None
    if not rows:
        raise SystemExit("no decision is stored in the window: nothing to judge")
    frauds = sum(row.fraud for row in rows)
    ruled = [row for row in rows if rules_block(row, policy)]
    ruled_frauds = sum(row.fraud for row in ruled)
    print(f"{len(rows):,} decisions, {frauds:,} frauds labelled before the cutoff")
    print(
        f"the rules block {len(ruled):,}, {ruled_frauds:,} frauds: precision "
        f"{ruled_frauds / max(len(ruled), 1):.3f}, lower bound {_bound_text(ruled_frauds, len(ruled))}"
    )
    print(f"\n{'rule':<28} {'needed blocks':>13} {'frauds':>7} {'precision':>9} {'bound':>5}")
    for rule, (blocks, caught) in sorted(needed_blocks(rows, policy).items()):
        print(f"{rule:<28} {blocks:13,} {caught:7,} {caught / blocks:9.3f} {_bound_text(caught, blocks)}")
    short = rules_short_of(rows, policy, target)
    for rule, blocks, caught, bound in short:
        print(f"to review: {rule} ({blocks:,} needed blocks, {caught:,} frauds, bound {bound:.3f} < {target})")
    if not short:
        print(f"every rule's needed blocks reach {target} at their lower bound")
    if args.model is None:
        return 0
    table = model_levels(rows, policy)
    print(
        f"\n{'level':>5} {'model blocks':>12} {'frauds':>7} {'precision':>9} {'bound':>5} "
        f"{'all blocks':>10} {'precision':>9} {'recall b+r':>10} {'in review':>9}"
    )
    for level in table:
        if level.t < 0.8:
            continue
        print(
            f"{level.t:5.2f} {level.model_blocks:12,} {level.model_frauds:7,} "
            f"{level.model_frauds / max(level.model_blocks, 1):9.3f} "
            f"{_bound_text(level.model_frauds, level.model_blocks)} {level.blocks:10,} "
            f"{level.block_frauds / max(level.blocks, 1):9.3f} {level.caught / max(frauds, 1):10.3f} "
            f"{level.review / len(rows):9.2%}"
        )
    chosen = lowest_level_holding(table, target)
    if chosen is None:
        print(f"no level's model blocks reach {target} at their lower bound")
        return 1
    print(f"model_block_threshold: {chosen:.2f} (the lowest level from which every level up reaches {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
