"""`txguard backtest --rules FILE [--from T] [--to T]`: what a candidate rule set would have done."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from txguard.backtest import backtest
from txguard.domain import OUTCOMES
from txguard.intake import parse_timestamp_ms
from txguard.labels import GENUINE, UNSPECIFIED_FRAUD, labels_in_force
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import RuleSetError, validate_rule_set
from txguard.scoring import Confusion
from txguard.storage import rule_sets
from txguard_dev.commands.common import add_database_argument, database_url, open_database, read_json_file
from txguard_dev.commands.evaluate import outcome_line


def register(parser: argparse.ArgumentParser) -> None:
    add_database_argument(parser)
    parser.add_argument("--rules", type=Path, required=True, help="candidate rule set (JSON)")
    parser.add_argument("--from", dest="from_", default=None, help="first timestamp evaluated (epoch ms or RFC 3339)")
    parser.add_argument("--to", default=None, help="end of the evaluated period, exclusive (epoch ms or RFC 3339)")
    parser.add_argument(
        "--replay-all",
        action="store_true",
        help="replay the history from its start even when the stored decisions kept every feature the rules read",
    )


def _time(value: str | None) -> int | None:
    return None if value is None else parse_timestamp_ms(value)


def _metric(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _ratio(value: float) -> str:
    return f"{value:6.3f}"


def run(args: argparse.Namespace) -> int:
    try:
        rule_set = validate_rule_set(read_json_file(args.rules))
        from_ms, to_ms = _time(args.from_), _time(args.to)
        if from_ms is not None and to_ms is not None and from_ms > to_ms:
            raise ValueError(f"--from {args.from_[:40]} is after --to {args.to[:40]}; the period would be empty")
    except RuleSetError as exc:
        print("rule set rejected:", *[f"  - {p}" for p in exc.problems], sep="\n", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"cannot backtest: {exc}", file=sys.stderr)
        return 2
    rules = CompiledRuleSet(0, rule_set)
    with open_database(database_url(args)) as conn, conn, conn.cursor() as cur:
        try:
            rule_sets.check_lists(cur, rule_set)
        except RuleSetError as exc:
            print("rule set rejected:", *[f"  - {p}" for p in exc.problems], sep="\n", file=sys.stderr)
            return 1
        # Only the period's labels: a window of a long history does not hold every label in memory.
        labels = {
            tid: (label.reason or UNSPECIFIED_FRAUD) if label.fraud else GENUINE
            for tid, label in labels_in_force(cur, from_ms=from_ms, to_ms=to_ms).items()
        } or None
        report = backtest(cur, rules, from_ms, to_ms, labels, args.replay_all)
    print(f"transactions evaluated   {report.evaluated}   (from {report.method})")
    print(f"flagged (candidate)      {report.flagged}   (stored decisions: {report.stored_flagged})")
    print(
        f"decisions that change    {report.changed}   (+{report.newly_flagged} flagged, "
        f"-{report.no_longer_flagged} cleared)"
    )
    print(
        "outcomes (candidate)     "
        + "   ".join(f"{o} {report.outcomes[o]}" for o in OUTCOMES)
        + "   (stored: "
        + ", ".join(f"{o} {report.stored_outcomes[o]}" for o in OUTCOMES)
        + ")"
    )
    changed = sum(report.outcome_changes.values())
    print(f"outcomes that change     {changed}", end="")
    if changed:
        print("   (" + ", ".join(f"{a} -> {b} {n}" for (a, b), n in sorted(report.outcome_changes.items())) + ")")
    else:
        print()
    print()
    header = f"{'rule':<28} {'mode':<7} {'fires':>7}"
    if labels is not None:
        header += f" {'on fraud':>9} {'on genuine':>10} {'precision':>9} {'recall':>7} {'F1':>7}"
    print(header)
    for rule in rule_set.rules:
        line = f"{rule.id:<28} {rule.mode if rule.enabled else 'off':<7} {report.fired[rule.id]:>7}"
        if labels is not None:
            s = report.per_rule.get(rule.id, Confusion())
            m = s.metrics
            line += f" {s.true_positive:>9} {s.false_positive:>10}"
            line += f" {_ratio(m.precision):>9} {_ratio(m.recall):>7} {_ratio(m.f1):>7}"
        print(line)
    if labels is None:
        print("\nno labels stored: precision, recall and F1 need labels (POST /labels, txguard labels import)")
    else:
        o, m = report.overall, report.overall.metrics
        print(
            f"\noverall on {report.labelled} labelled: precision {_ratio(m.precision)}  recall {_ratio(m.recall)}"
            f"  F1 {_ratio(m.f1)}  (tp {o.true_positive}, fp {o.false_positive}, fn {o.false_negative}, "
            f"tn {o.true_negative})"
        )
        if report.ranking is not None and report.ranking.evaluated:
            r = report.ranking.report()
            cp = r.card_precision
            card = f"Card Precision@{cp.k} {_metric(cp.mean)}" if cp else "Card Precision@k undefined"
            print(
                f"ranking by the candidate's score: ROC AUC {_metric(r.roc_auc)}  average precision "
                f"{_metric(r.average_precision)}  {card}"
            )
            print(outcome_line(r.outcomes))
    return 0
