"""`txguard backtest [--rules FILE] [--lists FILE] [--from T] [--to T]`: what a candidate rule set, candidate lists,
or both would have done on stored history (txguard.backtest). Without --rules the candidate is the newest stored
rule set; without --lists, the lists as stored. Nothing is written.

The candidate's effect is counted against the baseline, the same window decided by the newest stored rule set with
the lists as stored now: a candidate that changes nothing reports no change. How the baseline differs from the
stored decisions (rule sets applied, lists edited since they were taken) is printed apart, as drift.

--lists FILE is JSON, {"lists": [...]}, each entry a list as it would stand (txguard.lists.check_candidates):

    {"lists": [
      {"name": "stolen_cards", "kind": "card", "action": "block", "items": [{"value": "tok_1", "note": "x"}]},
      {"name": "vip_accounts", "action": "allow", "items_csv": "vip.csv"},
      {"name": "high_risk_mcc", "action": "block"},
      {"name": "old_watchlist", "removed": true}
    ]}

"items" takes the items of POST /lists/{name}/items, "items_csv" a CSV file as `txguard lists import` reads and
`txguard lists export` writes (relative to the JSON file); neither keeps the stored list's items. Every value is
validated as `txguard lists` validates it; any problem refuses the whole file (exit 2).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from txguard import lists
from txguard.backtest import BacktestReport, backtest
from txguard.domain import OUTCOMES
from txguard.errors import said
from txguard.labels import GENUINE, UNSPECIFIED_FRAUD, labels_in_force
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import RuleSetError, validate_rule_set
from txguard.scoring import Confusion
from txguard.storage import lists as list_storage
from txguard.storage import rule_sets
from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_database_argument,
    database_url,
    open_database,
    period_argument,
    read_json_file,
)
from txguard_dev.commands.evaluate import outcome_line
from txguard_dev.commands.lists import MAX_PROBLEMS_SHOWN, validated_items


def register(parser: argparse.ArgumentParser) -> None:
    add_database_argument(parser)
    parser.add_argument(
        "--rules",
        type=Path,
        default=None,
        help="candidate rule set (JSON; default: the newest stored). Changes are counted against the newest stored "
        "rule set with the stored lists (the baseline)",
    )
    parser.add_argument(
        "--lists",
        type=Path,
        default=None,
        help='candidate lists (JSON {"lists": [...]}: added, changed or removed lists; the stored ones are untouched). '
        "Changes are counted against the baseline decided with the stored lists, not against the stored decisions",
    )
    parser.add_argument(
        "--from",
        dest="from_",
        type=period_argument,
        default=None,
        help="first time evaluated (a UTC date, its midnight, epoch ms or RFC 3339)",
    )
    parser.add_argument(
        "--to",
        type=period_argument,
        default=None,
        help="end of the evaluated period, exclusive (a UTC date, its midnight, epoch ms or RFC 3339)",
    )
    parser.add_argument(
        "--replay-all",
        action="store_true",
        help="replay the history from its start even when the stored decisions kept every feature the rules read",
    )


def _describe(candidates: lists.CandidateLists) -> str:
    parts = []
    for name, d in sorted(candidates.definitions.items()):
        if d is None:
            parts.append(f"{name} removed")
            continue
        held = f"{len(candidates.items[name]):,} items" if name in candidates.items else "stored items"
        parts.append(f"{name} ({d.kind}, action {d.action or 'none'}, {held})")
    return "; ".join(parts)


def _shown(ms: int) -> str:
    """A bound read by period_argument, in RFC 3339 (UTC, milliseconds), whichever form it was given in."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _metric(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def _ratio(value: float) -> str:
    return f"{value:6.3f}"


def _candidate_lists(cur: Any, path: Path) -> lists.CandidateLists:
    """The --lists file checked against the stored lists (lists.check_candidates). Raises CommandError (exit 2)."""
    document = read_json_file(path)  # ValueError: the caller's "cannot backtest"
    now_ms = int(time.time() * 1000)

    def read_csv(name: str, kind: str) -> list[lists.ListItem]:
        problems: list[str] = []
        try:
            found = list(validated_items(path.parent / name, kind, now_ms, problems))
        except CommandError as exc:  # a bad header
            raise ValueError(str(exc)) from None
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise ValueError(f"cannot read {path.parent / name}: {exc}") from None
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ValueError("; ".join(problems[:3]) + more)
        return found

    try:
        return lists.check_candidates(document, list_storage.list_definitions(cur), read_csv, now_ms)
    except lists.InvalidList as exc:
        shown = [
            said(
                ".".join(([] if p.index is None else [f"lists[{p.index}]"]) + ([p.field] if p.field else [])) or "file",
                p.value,
                p.reason,
            )
            for p in exc.problems[:MAX_PROBLEMS_SHOWN]
        ]
        more = len(exc.problems) - len(shown)
        raise CommandError(
            f"{path}: candidate lists refused; nothing was backtested\n  "
            + "\n  ".join(shown)
            + (f"\n  ... and {more} more" if more > 0 else ""),
            exit_code=EXIT_USAGE,
        ) from None


def run(args: argparse.Namespace) -> int:
    if args.rules is None and args.lists is None:
        raise CommandError("give --rules FILE, --lists FILE or both", exit_code=EXIT_USAGE)
    try:
        rule_set = None if args.rules is None else validate_rule_set(read_json_file(args.rules))
        from_ms, to_ms = args.from_, args.to
        if from_ms is not None and to_ms is not None and from_ms > to_ms:
            raise ValueError(f"--from {_shown(from_ms)} is after --to {_shown(to_ms)}; the period would be empty")
    except RuleSetError as exc:
        print("rule set rejected:", *[f"  - {p}" for p in exc.problems], sep="\n", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"cannot backtest: {exc}", file=sys.stderr)
        return 2
    with open_database(database_url(args)) as conn, conn, conn.cursor() as cur:
        try:
            candidates = None if args.lists is None else _candidate_lists(cur, args.lists)
        except ValueError as exc:
            print(f"cannot backtest: {exc}", file=sys.stderr)
            return 2
        if rule_set is None:
            newest = rule_sets.latest(cur)
            if newest is None:
                raise CommandError("no rule set is stored; give --rules FILE (or run `txguard db migrate`)")
            rule_set = newest.rule_set
        try:
            if candidates is None:
                rule_sets.check_lists(cur, rule_set)
            elif rule_set.list_fields():
                stored = list_storage.list_definitions(cur)
                rule_set.check_lists({name: d.kind for name, d in candidates.over(stored).items()})
        except RuleSetError as exc:
            print("rule set rejected:", *[f"  - {p}" for p in exc.problems], sep="\n", file=sys.stderr)
            return 1
        rules = CompiledRuleSet(0, rule_set)
        # Only the period's labels: a window of a long history does not hold every label in memory.
        labels = {
            tid: (label.reason or UNSPECIFIED_FRAUD) if label.fraud else GENUINE
            for tid, label in labels_in_force(cur, from_ms=from_ms, to_ms=to_ms).items()
        } or None
        report = backtest(cur, rules, from_ms, to_ms, labels, args.replay_all, candidates)
    _print_effect(report, candidates, labels is not None)
    _print_drift(report)
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
            f"\noverall on {report.evaluated:,} decisions ({report.labelled:,} labelled, "
            f"{report.evaluated - report.labelled:,} without a label, counted as genuine): precision "
            f"{_ratio(m.precision)}  recall {_ratio(m.recall)}  F1 {_ratio(m.f1)}  (tp {o.true_positive}, "
            f"fp {o.false_positive}, fn {o.false_negative}, tn {o.true_negative})"
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
            if report.baseline_ranking is not None:
                print("baseline " + outcome_line(report.baseline_ranking.report().outcomes))
            if report.stored_ranking is not None:
                print("stored decisions " + outcome_line(report.stored_ranking.report().outcomes))
    return 0


def _transitions(changes: Counter[tuple[str, str]]) -> str:
    """`allow -> block 12, block -> review 3`: outcome changes (from, to) -> decisions, in order."""
    return ", ".join(f"{a} -> {b} {n}" for (a, b), n in sorted(changes.items()))


def _counted(total: int, changes: Counter[tuple[str, str]]) -> str:
    return f"{total}" + (f"   ({_transitions(changes)})" if total else "")


def _print_effect(report: BacktestReport, candidates: lists.CandidateLists | None, labelled: bool) -> None:
    """The candidate against the baseline (the same window, decided now with the newest rules and stored lists):
    the candidate's effect alone."""
    if candidates is not None:
        print("candidate lists          " + _describe(candidates))
    baseline = "the candidate's rule set (no rule set is stored)"
    if report.baseline_version is not None:
        baseline = f"rule set v{report.baseline_version} (the newest)"
    print(f"baseline                 {baseline} with the lists as stored now, on the same window")
    print(f"transactions evaluated   {report.evaluated}   (from {report.method})")
    print(f"flagged (candidate)      {report.flagged}   (baseline: {report.baseline_flagged})")
    print(
        f"decisions that change    {report.changed}   (+{report.newly_flagged} flagged, "
        f"-{report.no_longer_flagged} cleared; candidate against baseline)"
    )
    print(
        "outcomes (candidate)     "
        + "   ".join(f"{o} {report.outcomes[o]}" for o in OUTCOMES)
        + "   (baseline: "
        + ", ".join(f"{o} {report.baseline_outcomes[o]}" for o in OUTCOMES)
        + ")"
    )
    print(f"outcomes that change     {_counted(sum(report.outcome_changes.values()), report.outcome_changes)}")
    for name in sorted(report.list_changes):
        changes = report.list_changes[name]
        print(f"  with list {name:<14} {_counted(sum(changes.values()), changes)}")
    if labelled:
        caught = sum(n for (a, b), n in report.fraud_changes.items() if a == "allow")
        lost = sum(n for (a, b), n in report.fraud_changes.items() if b == "allow")
        print(
            f"labelled frauds changing {_counted(sum(report.fraud_changes.values()), report.fraud_changes)}"
            f"   caught {caught}, lost {lost} (out of allow / back to allow)"
        )


def _print_drift(report: BacktestReport) -> None:
    """How the baseline differs from the stored decisions: rule sets applied and lists edited since they were
    taken, which the comparison above leaves out."""
    versions = ", ".join(f"v{v} ({n})" for v, n in sorted(report.stored_versions.items()))
    print()
    print("drift since the stored decisions (not the candidate's effect: rule sets applied, lists edited since)")
    print(
        "  stored outcomes        "
        + ", ".join(f"{o} {report.stored_outcomes[o]}" for o in OUTCOMES)
        + f"   (taken by rule set {versions or '-'}; flagged {report.stored_flagged})"
    )
    print(f"  baseline differs on    {_counted(sum(report.drift.values()), report.drift)}")
