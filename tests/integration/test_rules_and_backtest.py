"""Rules as versioned data through the CLI, and backtests of candidate rule sets on stored history."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, Database, load_event, project_template
from tests.integration.helpers import T0, apply_rules, rule, store, tx
from txguard import db
from txguard.backtest import BacktestReport, backtest, on_stored_features, replay, stored_features_cover
from txguard.detection import detector_cache as rule_cache
from txguard.queries import flagged_transactions
from txguard.rule_engine import CompiledRuleSet
from txguard.rule_language import MAX_COMPARISONS, MAX_NESTING_DEPTH, MAX_RULES, RuleSetError, validate_rule_set
from txguard.storage.rule_sets import latest
from txguard_dev.cli import main
from txguard_dev.local.runner import FunctionRunner

pytestmark = pytest.mark.integration


def cli(database: Database, *args: str) -> int:
    return main([*args, "--database-url", database.admin_url])


def test_the_seed_rule_file_applied_through_the_cli_shows_in_the_reasons(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    apply_rules(database, [rule("never", "amount > 1000000")])
    assert cli(database, "rules", "apply", str(ROOT / "rules" / "seed.json")) == 0
    out = capsys.readouterr().out
    assert "stored; the functions use it within 10 s (TXGUARD_RULES_CACHE_SECONDS)" in out
    assert "is now active" not in out
    rule_cache.clear()
    store([tx(5, T0, "100.00"), tx(5, T0 + 1000, "50.00")])
    page = db.run_in_transaction(lambda cur: flagged_transactions(cur, 5, 10, None))
    (flagged,) = page.items
    assert flagged.decision.reasons[0].rule_id == "below_account_mean"
    # ... and through the API, as GET /is_fraud/5 answers it
    event = load_event("is_fraud.json") | {"path": "/is_fraud/5", "pathParameters": {"account": "5"}}
    runner = FunctionRunner(project_template(), database_url=database.service_url)
    answer = json.loads(json.loads(runner.call("DetectFunction", event).output)["body"])
    (reason,) = answer["events"][0]["reasons"]
    assert answer["fraud"] is True and reason["rule_id"] == "below_account_mean"
    assert reason["explanation"] == "amount 50.00 is less than 0.9 × the mean of the 1 previous transactions (100.00)"


def test_every_change_is_a_new_version_and_decisions_record_theirs(
    database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    first = store([tx(6, T0, "10.00")])[0].decision.rule_set_version
    assert cli(database, "rules", "disable", "below_account_mean") == 0
    rule_cache.clear()
    second = store([tx(6, T0 + 1, "1.00")])[0]
    assert second.decision.rule_set_version == first + 1 and not second.decision.fraud
    capsys.readouterr()
    assert cli(database, "rules", "history") == 0
    out = capsys.readouterr().out
    assert f"v{first} " in out and f"v{first + 1} " in out and "disable below_account_mean" in out
    assert cli(database, "rules", "list") == 0
    assert "disabled" in capsys.readouterr().out


def test_a_malformed_rule_file_is_rejected_whole_naming_the_rule(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    versions = database.query("SELECT count(*) FROM rule_sets")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rules": [rule("ok", "amount > 1"), rule("broken", "amount > 2 * nothing")]}))
    assert cli(database, "rules", "apply", str(bad)) == 1
    assert "rule 'broken' (#2): when: unknown feature 'nothing'" in capsys.readouterr().err
    assert database.query("SELECT count(*) FROM rule_sets") == versions


def test_a_backtest_counts_flags_changes_and_scores_against_labels(database: Database) -> None:
    apply_rules(database, [rule("low", "amount < 0.9 * mean_amount")])
    history = [tx(8, T0 + i * 1000, amount) for i, amount in enumerate(["100.00", "100.00", "20.00", "900.00"])]
    store(history)
    candidate = CompiledRuleSet(0, validate_rule_set({"rules": [rule("spike", "amount > 3 * mean_amount")]}))
    labels = {history[3].transaction_id: "amount_spike"}
    report = db.run_in_transaction(lambda cur: backtest(cur, candidate, labels=labels))
    assert report.evaluated == 4
    assert (report.flagged, report.stored_flagged, report.changed) == (1, 1, 2)
    assert report.fired["spike"] == 1
    assert (report.overall.metrics.precision, report.overall.metrics.recall) == (1.0, 1.0)
    assert report.ranking is not None
    ranking = report.ranking.report()
    assert ranking.roc_auc == 1.0 and ranking.average_precision == 1.0 and ranking.reasons["amount_spike"].flagged == 1
    window = db.run_in_transaction(lambda cur: backtest(cur, candidate, from_ms=T0 + 3000, to_ms=T0 + 3001))
    assert window.evaluated == 1 and window.flagged == 1


def test_a_backtest_reports_how_many_stored_decisions_would_change_outcome_from_and_to(database: Database) -> None:
    apply_rules(database, [rule("spike", "amount > 3 * mean_amount")])
    history = [tx(18, T0 + i * 1000, amount) for i, amount in enumerate(["100.00", "100.00", "400.00", "900.00"])]
    store(history)  # stored: the last two blocked
    candidate = CompiledRuleSet(
        0,
        validate_rule_set(
            {
                "threshold": "0.9",
                "review_threshold": "0.4",
                "rules": [
                    rule("spike", "amount > 3 * mean_amount", "0.5"),
                    rule("huge", "amount > 800", None, action="block"),
                ],
            }
        ),
    )
    labels = {history[3].transaction_id: "amount_spike"}
    report = db.run_in_transaction(lambda cur: backtest(cur, candidate, labels=labels))
    assert report.stored_outcomes == {"allow": 2, "block": 2}
    assert report.outcomes == {"allow": 2, "review": 1, "block": 1}
    assert report.outcome_changes == {("block", "review"): 1}
    assert report.ranking is not None
    outcomes = report.ranking.report().outcomes
    assert (outcomes.block_precision, outcomes.recall_block_review, outcomes.review_share) == (1.0, 1.0, 0.25)


def test_a_block_list_and_a_snooze_added_since_the_decisions_are_drift_not_the_candidates_effect(
    database: Database,
) -> None:
    import psycopg2

    from txguard.lists import ListItem
    from txguard.storage import lists as list_storage

    apply_rules(database, [rule("spike", "amount > 3 * mean_amount")])
    history = [tx(28, T0 + i * 1000, amount, "m-28") for i, amount in enumerate(["100.00", "100.00", "900.00"])]
    history.append(tx(29, T0 + 5000, "10.00", "m-bad"))
    store(history)  # stored: the spike blocked, the rest allowed
    conn = psycopg2.connect(database.admin_url)
    try:
        with conn, conn.cursor() as cur:
            list_storage.create(cur, "bad_merchants", "merchant", "block", None, "tests")
            list_storage.add_items(cur, "bad_merchants", [ListItem("m-bad")], "tests")
            cur.execute(
                "INSERT INTO rule_snoozes (rule_id, kind, value, until, created_by) "
                "VALUES ('spike', 'account', '28', now() + interval '1 day', 'tests')"
            )
    finally:
        conn.close()
    candidate = CompiledRuleSet(0, validate_rule_set({"rules": [rule("spike", "amount > 3 * mean_amount")]}))
    for replay_all in (False, True):
        report = db.run_in_transaction(lambda cur, r=replay_all: backtest(cur, candidate, replay_all=r))
        # The newest rules with the lists and snoozes as they stand now decide as the candidate does ...
        assert report.outcome_changes == {} and report.changed == 0, replay_all
        assert report.baseline_outcomes == report.outcomes == {"allow": 3, "block": 1}, replay_all
        # ... and otherwise than the stored decisions did: the block list and the snooze, since.
        assert report.drift == {("allow", "block"): 1, ("block", "allow"): 1}, replay_all
        # A candidate with another rule set is compared with the same baseline.
        other = CompiledRuleSet(0, validate_rule_set({"rules": [rule("tiny", "amount < 50")]}))
        report = db.run_in_transaction(lambda cur, r=replay_all, o=other: backtest(cur, o, replay_all=r))
        assert report.outcome_changes == {}, replay_all  # m-bad's payment: blocked by the list either way
        assert report.fired["tiny"] == 1 and report.drift == {("allow", "block"): 1, ("block", "allow"): 1}


def test_the_backtest_command_prints_per_rule_counts_and_scores(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store([tx(9, T0, "100.00"), tx(9, T0 + 1000, "100.00"), tx(9, T0 + 2000, "900.00")])
    candidate = tmp_path / "candidate.json"
    candidate.write_text(json.dumps({"rules": [rule("spike", "amount > 3 * mean_amount")]}))
    assert cli(database, "backtest", "--rules", str(candidate)) == 0
    out = capsys.readouterr().out
    assert "transactions evaluated   3   (from stored features)" in out
    assert any(line.split()[:3] == ["spike", "active", "1"] for line in out.splitlines())


def test_db_status_lists_every_migration_as_applied(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(database, "db", "status") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all("applied" in line for line in lines)
    assert lines[0].startswith("0001_core_schema")


# --- rule sets beyond the cost limits: refused on every path, nothing stored ---------------------------

_COSTLY = {
    "nested": (
        {"rules": [rule("deep", "(" * 330 + "amount > 1" + ")" * 330)]},
        f"rule 'deep' (#1): when: nested too deeply at position {MAX_NESTING_DEPTH + 1}: "
        f"at most {MAX_NESTING_DEPTH} levels of parentheses",
    ),
    "comparisons": (
        {"rules": [rule(f"r{i}", " AND ".join(["count > 1"] * 10)) for i in range(11)]},
        f"rule set: rules: 110 comparisons in all, at most {MAX_COMPARISONS}",
    ),
    "rules": (
        {"rules": [rule(f"r{i}", "amount > 1") for i in range(MAX_RULES + 1)]},
        f"rule set: rules: must hold at most {MAX_RULES} items",
    ),
    "constant": (
        {"rules": [rule("third", "amount > 0." + "3" * 41 + " * mean_amount")]},
        f"rule 'third' (#1): when: the constant 0.{'3' * 41} at position 10 has 41 decimal places, at most 40",
    ),
}


@pytest.mark.parametrize("kind", sorted(_COSTLY))
def test_rules_apply_refuses_a_costly_rule_set_naming_the_limit_and_stores_nothing(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    document, complaint = _COSTLY[kind]
    versions = database.query("SELECT version, document FROM rule_sets ORDER BY version")
    path = tmp_path / "costly.json"
    path.write_text(json.dumps(document))
    assert cli(database, "rules", "apply", str(path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("rule set rejected, nothing changed:") and complaint in err
    assert "Traceback" not in err
    assert database.query("SELECT version, document FROM rule_sets ORDER BY version") == versions


@pytest.mark.parametrize("kind", sorted(_COSTLY))
def test_backtest_refuses_a_costly_rule_set_naming_the_limit(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    document, complaint = _COSTLY[kind]
    store([tx(11, T0, "10.00")])
    path = tmp_path / "costly.json"
    path.write_text(json.dumps(document))
    assert cli(database, "backtest", "--rules", str(path)) == 1
    captured = capsys.readouterr()
    assert complaint in captured.err and "Traceback" not in captured.err
    assert "transactions evaluated" not in captured.out


@pytest.mark.parametrize("command", [["rules", "apply"], ["backtest", "--rules"]])
def test_a_rules_file_nested_too_deeply_for_json_is_refused_and_nothing_stored(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    versions = database.query("SELECT count(*) FROM rule_sets")
    path = tmp_path / "deep.json"
    path.write_text("[" * 200_000 + "]" * 200_000)
    assert cli(database, *command, str(path)) == 2
    assert capsys.readouterr().err.strip().endswith(f"cannot read {path}: its JSON is nested too deeply")
    assert database.query("SELECT count(*) FROM rule_sets") == versions


def _store_unchecked(database: Database, document: dict[str, object]) -> int:
    """A version written straight into the table, as one stored before today's limits would be, and the detector
    version that decides with it (as migration 0015 pinned the rule set a database had)."""
    rows = database.query(
        "INSERT INTO rule_sets (version, document, comment) SELECT max(version) + 1, %s, 'by hand' FROM rule_sets "
        "RETURNING version",
        (json.dumps(document),),
    )
    database.execute(
        "INSERT INTO detector_versions (version, rule_set_version, comment) "
        "SELECT coalesce(max(version), 0) + 1, %s, 'by hand' FROM detector_versions",
        (rows[0][0],),
    )
    return int(rows[0][0])


def test_a_stored_version_beyond_the_limits_is_refused_by_the_loader_and_the_api_answers_503(
    database: Database,
) -> None:
    costly = validate_rule_set({"rules": [rule("big", " AND ".join(["count >= 0"] * 60))]}).document()
    costly["rules"].append({**costly["rules"][0], "id": "big2"})  # 120 comparisons: over the budget
    version = _store_unchecked(database, costly)
    rule_cache.clear()
    with pytest.raises(RuleSetError) as refused:
        store([tx(12, T0, "10.00")])
    assert refused.value.problems == [
        f"stored version {version}: rule set: rules: 120 comparisons in all, at most {MAX_COMPARISONS} "
        "(the largest rules: 'big2' 60, 'big' 60)"
    ]
    runner = FunctionRunner(project_template(), database_url=database.service_url)
    answer = json.loads(runner.call("IngestFunction", load_event("store_data.json")).output)
    assert answer["statusCode"] == 503
    assert json.loads(answer["body"])["error"]["code"] == "rules_unavailable"
    assert database.query("SELECT count(*) FROM transactions") == [(0,)]


def test_a_window_is_backtested_on_the_stored_features_with_the_decisions_a_replay_gives(database: Database) -> None:
    apply_rules(
        database,
        [rule("low", "amount < 0.9 * mean_amount"), rule("busy", "count_1h >= 2 OR merchant_count_1m >= 1", "0.5")],
    )
    history = [tx(20 + i % 4, T0 + i * 7_000, f"{10 + (i * 37) % 90}.00", merchant_id=f"m{i % 3}") for i in range(60)]
    store(history)
    window = (T0 + 20 * 7_000, T0 + 50 * 7_000)
    covered = CompiledRuleSet(
        0, validate_rule_set({"rules": [rule("spike", "amount > 1.5 * mean_amount AND count_1h >= 1")]})
    )

    def both(rules: CompiledRuleSet) -> tuple[BacktestReport, list[Any], list[Any]]:
        def work(cur: Any) -> tuple[BacktestReport, list[Any], list[Any]]:
            report = backtest(cur, rules, *window)
            stored = [(t.transaction_id, d) for t, _, d in on_stored_features(cur, rules, *window)]
            replayed = [(t.transaction_id, d) for t, _, d in replay(cur, rules, window[1]) if t.ts >= window[0]]
            return report, stored, replayed

        return db.run_in_transaction(work)

    report, stored, replayed = both(covered)
    assert report.method == "stored features" and report.evaluated == 30
    assert stored == replayed and any(d.fraud for _, d in stored)
    # A feature the stored decisions did not keep: the window is replayed from the start of the history.
    uncovered = CompiledRuleSet(0, validate_rule_set({"rules": [rule("top", "amount > max_amount")]}))
    assert db.run_in_transaction(lambda cur: stored_features_cover(cur, uncovered, *window)) is False
    assert db.run_in_transaction(lambda cur: backtest(cur, uncovered, *window)).method == "replay"
    forced = db.run_in_transaction(lambda cur: backtest(cur, covered, *window, replay_all=True))
    assert forced.method == "replay" and forced.flagged == report.flagged and forced.fired == report.fired
    assert forced.outcome_changes == report.outcome_changes and forced.drift == report.drift == {}
    # One replay computes the features of both sides (the baseline reads merchant_count_1m, the candidate
    # max_amount): each side decides as its own replay does.
    for candidate in (covered, uncovered):

        def sides(cur: Any, rules: CompiledRuleSet = candidate) -> tuple[BacktestReport, list[Any], list[Any]]:
            stored = latest(cur)
            assert stored is not None
            newest = CompiledRuleSet(stored.version, stored.rule_set)
            alone = [d.outcome for t, _, d in replay(cur, rules, window[1]) if t.ts >= window[0]]
            now = [d.outcome for t, _, d in replay(cur, newest, window[1]) if t.ts >= window[0]]
            return backtest(cur, rules, *window, replay_all=True), alone, now

        both_sides, alone, now = db.run_in_transaction(sides)
        assert both_sides.outcomes == Counter(alone) and both_sides.baseline_outcomes == Counter(now)
        assert sum(both_sides.outcome_changes.values()) == sum(a != b for a, b in zip(now, alone, strict=True)) > 0
    # Another time zone: the candidate's features are its own, replayed beside the baseline's.
    elsewhere = CompiledRuleSet(
        0,
        validate_rule_set(
            {
                "features": {"time_zone": "Pacific/Kiritimati"},  # T0 is 22:13 UTC, 12:13 there
                "rules": [rule("daytime", "hour_of_day < 20", None, action="review")],
            }
        ),
    )
    assert elsewhere.feature_settings != covered.feature_settings
    both_sides, alone, now = db.run_in_transaction(lambda cur: sides(cur, elsewhere))
    assert both_sides.method == "replay" and both_sides.outcomes == Counter(alone) == {"review": 30}
    assert both_sides.baseline_outcomes == Counter(now)
    assert sum(both_sides.outcome_changes.values()) == sum(a != b for a, b in zip(now, alone, strict=True)) > 0
