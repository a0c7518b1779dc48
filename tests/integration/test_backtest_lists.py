"""`txguard backtest --lists FILE`: what candidate lists (added, changed or removed) would have changed on stored
decisions, through the command on the real database, with the stored lists left as they are."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Database
from tests.integration.helpers import T0, apply_rules, rule, store, tx
from txguard_dev.cli import main

pytestmark = pytest.mark.integration


def cli(database: Database, *args: str) -> int:
    return main([*args, "--database-url", database.admin_url])


def lists_cli(database: Database, monkeypatch: pytest.MonkeyPatch, *args: str) -> int:
    monkeypatch.setenv("DATABASE_URL", database.admin_url)
    return main(["lists", *args, "--actor", "tests"] if args[0] not in ("export",) else ["lists", *args])


def candidate(tmp_path: Path, entries: list[Any], name: str = "lists.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps({"lists": entries}))
    return path


def label(database: Database, tid: int, fraud: bool) -> None:
    database.execute(
        "INSERT INTO labels (transaction_id, fraud, source, labelled_at) "
        "VALUES (%s, %s, 'tests', date_trunc('milliseconds', now()))",
        (tid, fraud),
    )


def stored_lists_state(database: Database) -> list[tuple[Any, ...]]:
    return [
        *database.query("SELECT name, kind, action, version FROM lists ORDER BY name"),
        *database.query("SELECT list_name, value, note FROM list_items ORDER BY 1, 2"),
        *database.query("SELECT count(*) FROM list_changes"),
    ]


@pytest.fixture
def history(database: Database) -> list[Any]:
    """Stored: account 40's spike blocked by its rule; three small payments allowed, one at merchant m-bad
    (labelled fraud, missed), two at m-ok (genuine)."""
    apply_rules(database, [rule("spike", "amount > 3 * mean_amount")])
    stored = [tx(40, T0 + i * 1000, amount, "m-40") for i, amount in enumerate(["100.00", "100.00", "900.00"])]
    stored += [tx(41, T0 + 5000, "10.00", "m-bad"), tx(42, T0 + 6000, "10.00", "m-ok"), tx(43, T0 + 7000, "11.00")]
    store(stored)
    label(database, stored[2].transaction_id, True)
    label(database, stored[3].transaction_id, True)
    label(database, stored[4].transaction_id, False)
    return stored


def test_a_new_block_list_shows_the_decisions_it_would_change_and_stores_nothing(
    database: Database, history: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = stored_lists_state(database)
    file = candidate(
        tmp_path,
        [
            {
                "name": "bad_merchants",
                "kind": "merchant",
                "action": "block",
                "items": [{"value": "m-bad", "note": "chargebacks"}],
            }
        ],
    )

    assert cli(database, "backtest", "--lists", str(file)) == 0

    out = capsys.readouterr().out
    assert "candidate lists          bad_merchants (merchant, action block, 1 items)" in out
    assert "outcomes that change     1   (allow -> block 1)" in out
    # the candidate blocks both frauds and nothing genuine; the stored decisions caught one of the two
    assert "outcomes: allow 4 (0 fraud), review 0 (0 fraud), block 2 (2 fraud); precision of block 1.000" in out
    assert "stored decisions outcomes: allow 5 (1 fraud), review 0 (0 fraud), block 1 (1 fraud)" in out
    assert "recall within block + review 0.500" in out.split("stored decisions outcomes")[1]
    assert stored_lists_state(database) == before


def test_a_stored_list_changed_removed_or_refilled_from_an_exported_csv(
    database: Database,
    history: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lists_cli(database, monkeypatch, "create", "watched", "--kind", "merchant") == 0
    assert lists_cli(database, monkeypatch, "add", "watched", "m-ok") == 0
    assert lists_cli(database, monkeypatch, "create", "vip", "--kind", "account", "--action", "allow") == 0
    assert lists_cli(database, monkeypatch, "add", "vip", "40") == 0
    exported = tmp_path / "watched.csv"
    assert lists_cli(database, monkeypatch, "export", "watched", "--out", str(exported)) == 0
    exported.write_text(exported.read_text() + "m-bad,,added for the preview\n")
    before = stored_lists_state(database)
    # The stored allow list (added after the decisions) overrides the stored block of account 40's spike, in every
    # case but the one that removes it.
    # The stored allow list (added after the decisions) overrides the stored block of account 40's spike: drift,
    # the same in every case, and never counted as the candidate's effect.
    drift = "  baseline differs on    1   (block -> allow 1)"
    cases = {
        # the stored items, the action changed: m-ok's genuine payment would be blocked
        "action": ([{"name": "watched", "action": "block"}], "outcomes that change     1   (allow -> block 1)"),
        # the exported file with one more row: both payments blocked
        "csv": (
            [{"name": "watched", "action": "block", "items_csv": "watched.csv"}],
            "outcomes that change     2   (allow -> block 2)\n  with list watched        2   (allow -> block 2)",
        ),
        # without the allow list, the spike is blocked again
        "removed": ([{"name": "vip", "removed": True}], "outcomes that change     1   (allow -> block 1)"),
        "as_stored": ([{"name": "vip", "action": "allow"}], "outcomes that change     0\n"),
    }
    for case, (entries, expected) in cases.items():
        assert cli(database, "backtest", "--lists", str(candidate(tmp_path, entries, f"{case}.json"))) == 0, case
        out = capsys.readouterr().out
        assert expected in out, case
        assert drift in out, case
    assert stored_lists_state(database) == before


def test_candidate_lists_combine_with_a_candidate_rule_set_that_reads_them(
    database: Database, history: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [rule("risky_merchant", "merchant_id IN LIST risky")]}))
    lists = candidate(tmp_path, [{"name": "risky", "kind": "merchant", "items": [{"value": "m-bad"}]}])

    assert cli(database, "backtest", "--rules", str(rules)) == 1  # the list does not exist
    assert "risky" in capsys.readouterr().err
    for how in ([], ["--replay-all"]):  # from the stored features, and by replaying the history
        assert cli(database, "backtest", "--rules", str(rules), "--lists", str(lists), *how) == 0

        out = capsys.readouterr().out
        assert any(line.split()[:3] == ["risky_merchant", "active", "1"] for line in out.splitlines()), out
        assert "(allow -> block 1, block -> allow 1)" in out  # the spike rule is not in the candidate
        assert ("from replay" if how else "from stored features") in out
    assert database.query("SELECT count(*) FROM lists") == [(0,)]


def test_a_bad_candidate_lists_file_is_refused_whole_naming_each_problem(
    database: Database,
    history: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lists_cli(database, monkeypatch, "create", "cards", "--kind", "card") == 0
    before = stored_lists_state(database)
    (tmp_path / "bad.csv").write_text("value,colour\nx,red\n")
    file = candidate(
        tmp_path,
        [
            {"name": "Bad Name", "kind": "card"},
            {
                "name": "countries",
                "kind": "country",
                "action": "deny",
                "items": [{"value": "ZZ"}, {"value": "FR", "x": 1}],
            },
            {"name": "cards", "kind": "merchant"},
            {"name": "gone", "removed": True},
            {"name": "fresh", "kind": "merchant", "items_csv": "bad.csv"},
            {"name": "fresh", "kind": "merchant"},
            {"name": "mcc", "kind": "merchant_category", "items": [{"value": "99999"}]},
        ],
    )

    assert cli(database, "backtest", "--lists", str(file)) == 2

    err = capsys.readouterr().err
    assert "candidate lists refused; nothing was backtested" in err
    for expected in (
        "lists[0].name = 'Bad Name': must be 1-63 lower-case letters",
        "lists[1].action = 'deny': must be allow, block or null",
        "lists[1].items[0].value = 'ZZ'",  # checked although the definition is refused
        "lists[1].items[1].x = 1: unknown field",
        "lists[2].kind = 'merchant': list cards holds card values: a kind never changes",
        "lists[3].name = 'gone': is not a stored list: there is nothing to remove",
        "lists[4].items_csv = 'bad.csv':",
        "lists[5].name = 'fresh': is named by another entry too",
        "lists[6].items[0].value = '99999'",
    ):
        assert expected in err, expected
    assert stored_lists_state(database) == before


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("[]", 'must be an object {"lists"'),
        ('{"lists": []}', "is empty: name at least one list"),
        (
            '{"lists": [{"name": "x", "kind": "card", "items": [{"value": "a"}, {"value": "a", "note": "b"}]}]}',
            "repeats item 0 with another expires_at or note",
        ),
        ("{", "cannot backtest: cannot read"),
    ],
)
def test_a_malformed_candidate_lists_file_is_refused(
    database: Database, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, expected: str
) -> None:
    file = tmp_path / "lists.json"
    file.write_text(content)
    assert cli(database, "backtest", "--lists", str(file)) == 2
    assert expected in capsys.readouterr().err


def test_backtest_needs_rules_or_lists(database: Database, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(database, "backtest") == 2
    assert "give --rules FILE, --lists FILE or both" in capsys.readouterr().err


def drifted(database: Database, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Changes since `history`'s decisions: a rule set that reviews small payments (41, 42 and 43's), and an allow
    list holding account 40 (whose spike was blocked). Returns the rule set's document as applied."""
    document = {
        "threshold": "0.5",
        "review_threshold": "0.2",
        "rules": [rule("spike", "amount > 3 * mean_amount"), rule("small", "amount < 50", "0.3")],
    }
    apply_rules(database, document["rules"], document["threshold"], review_threshold=document["review_threshold"])
    assert lists_cli(database, monkeypatch, "create", "vip", "--kind", "account", "--action", "allow") == 0
    assert lists_cli(database, monkeypatch, "add", "vip", "40") == 0
    return document


DRIFT = "  baseline differs on    4   (allow -> review 3, block -> allow 1)"


def test_a_no_op_candidate_changes_nothing_after_rule_set_and_list_changes_since_the_decisions(
    database: Database,
    history: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    newest = drifted(database, monkeypatch)
    rules = tmp_path / "newest.json"
    rules.write_text(json.dumps(newest))
    no_op = candidate(tmp_path, [{"name": "vip", "description": "x"}])
    for args in (
        ["--lists", str(no_op)],
        ["--lists", str(no_op), "--replay-all"],
        ["--rules", str(rules)],  # the newest rule set itself
        ["--rules", str(rules), "--lists", str(no_op)],
    ):
        assert cli(database, "backtest", *args) == 0, args
        out = capsys.readouterr().out
        for expected in (
            "decisions that change    0   (+0 flagged, -0 cleared",
            "outcomes that change     0\n",
            "labelled frauds changing 0   caught 0, lost 0",
            "outcomes (candidate)     allow 3   review 3   block 0   (baseline: allow 3, review 3, block 0)",
            DRIFT,
            "stored outcomes        allow 5, review 0, block 1",
        ):
            assert expected in out, (args, expected, out)
        assert "  with list" not in out


def test_a_candidate_reports_exactly_the_decisions_it_changes_beside_the_drift(
    database: Database,
    history: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    newest = drifted(database, monkeypatch)
    # A block list of m-bad: 41's payment (fraud, in review now) is blocked; nothing else moves.
    blocking = candidate(
        tmp_path, [{"name": "bad", "kind": "merchant", "action": "block", "items": [{"value": "m-bad"}]}]
    )
    # A threshold only: small payments (0.3) no longer reach review (0.4): 41 (fraud), 42 (genuine) and 43 allowed.
    threshold = tmp_path / "threshold.json"
    threshold.write_text(json.dumps(newest | {"review_threshold": "0.4"}))
    cases = {
        "list": (
            ["--lists", str(blocking)],
            [
                "outcomes that change     1   (review -> block 1)",
                "  with list bad            1   (review -> block 1)",
                "labelled frauds changing 1   (review -> block 1)   caught 0, lost 0",
                "decisions that change    1   (+1 flagged, -0 cleared",
            ],
        ),
        "threshold": (
            ["--rules", str(threshold)],
            [
                "outcomes that change     3   (review -> allow 3)",
                "labelled frauds changing 1   (review -> allow 1)   caught 0, lost 1",
                "decisions that change    0   (+0 flagged, -0 cleared",
            ],
        ),
        # The allow list removed: account 40's spike is blocked again, as the newest rules decide it.
        "removed": (
            ["--lists", str(candidate(tmp_path, [{"name": "vip", "removed": True}], "removed.json"))],
            ["outcomes that change     1   (allow -> block 1)", "  with list vip            1   (allow -> block 1)"],
        ),
    }
    for case, (args, expected) in cases.items():
        for how in ([], ["--replay-all"]):
            assert cli(database, "backtest", *args, *how) == 0, case
            out = capsys.readouterr().out
            for line in [*expected, DRIFT]:
                assert line in out, (case, how, line, out)


def test_candidate_items_of_a_list_the_newest_rules_read_change_only_what_they_match(
    database: Database,
    history: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lists_cli(database, monkeypatch, "create", "risky", "--kind", "merchant") == 0
    assert lists_cli(database, monkeypatch, "add", "risky", "m-ok") == 0
    apply_rules(
        database, [rule("spike", "amount > 3 * mean_amount"), rule("risky_merchant", "merchant_id IN LIST risky")]
    )
    # Since the decisions, the rules block m-ok's payment (drift); the candidate moves the list to m-bad.
    moved = candidate(tmp_path, [{"name": "risky", "items": [{"value": "m-bad"}]}])
    for how in ([], ["--replay-all"]):
        assert cli(database, "backtest", "--lists", str(moved), *how) == 0
        out = capsys.readouterr().out
        for expected in (
            "outcomes that change     2   (allow -> block 1, block -> allow 1)",
            "  with list risky          2   (allow -> block 1, block -> allow 1)",
            "  baseline differs on    1   (allow -> block 1)",
            "from replay" if how else "from stored features",
        ):
            assert expected in out, (how, expected, out)


def test_an_exported_list_holding_an_expired_item_previews_as_stored_and_the_expired_item_never_applies(
    database: Database,
    history: list[Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert lists_cli(database, monkeypatch, "create", "watched", "--kind", "merchant", "--action", "block") == 0
    assert lists_cli(database, monkeypatch, "add", "watched", "m-bad", "--expires-at", "2099-01-01T00:00:00Z") == 0
    # m-bad's item has expired
    database.execute("UPDATE list_items SET expires_at = date_trunc('milliseconds', now()) - interval '1 hour'")
    exported = tmp_path / "watched.csv"
    assert lists_cli(database, monkeypatch, "export", "watched", "--out", str(exported)) == 0
    assert exported.read_text().splitlines()[1].startswith("m-bad,20")  # the expired item is exported
    before = stored_lists_state(database)

    as_exported = candidate(tmp_path, [{"name": "watched", "items_csv": "watched.csv"}])
    assert cli(database, "backtest", "--lists", str(as_exported)) == 0

    out = capsys.readouterr().out
    assert "outcomes that change     0\n" in out  # the expired item blocks m-bad's payment on neither side
    assert stored_lists_state(database) == before


def test_the_overall_line_counts_the_labelled_decisions_apart_from_those_without_a_label(
    database: Database, history: list[Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Six decisions, three of them labelled (two frauds, one genuine); the other three count as genuine.
    file = candidate(tmp_path, [{"name": "bad_merchants", "kind": "merchant", "action": "block", "items": []}])

    assert cli(database, "backtest", "--lists", str(file)) == 0

    out = capsys.readouterr().out
    assert "overall on 6 decisions (3 labelled, 3 without a label, counted as genuine): precision" in out
    assert "(tp 1, fp 0, fn 1, tn 4)" in out
