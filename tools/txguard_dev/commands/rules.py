"""`txguard rules list | apply FILE | disable ID | history`: rule sets are versioned data in PostgreSQL.

`txguard rules snooze RULE --kind account --value 42 --until TIME|--for-days 7 --note "..." [--by NAME]`,
`txguard rules snoozes RULE [--expired]` and `txguard rules unsnooze RULE --kind account --value 42`: a rule
snoozed for one entity (txguard.snoozes), as POST/GET/DELETE /rules/{rule_id}/snoozes do."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

import psycopg2
from pydantic import ValidationError

from txguard import snoozes
from txguard.attributes import LIST_KINDS, list_value
from txguard.errors import TxguardError, said
from txguard.intake import reason_of
from txguard.rule_language import RuleSetError
from txguard.settings import service_settings
from txguard.snoozes import SnoozeIn
from txguard.storage import rule_sets
from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_database_argument,
    database_url,
    open_database,
    read_json_file,
)


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="rules_command", required=True)
    listing = sub.add_parser("list", help="the rules of the newest version")
    add_database_argument(listing)
    listing.add_argument("--json", action="store_true", help="print the rule set as JSON")
    apply = sub.add_parser("apply", help="validate a rule file and store it as a new version")
    add_database_argument(apply)
    apply.add_argument("file", type=Path)
    apply.add_argument("--comment", default="", help="why this version exists")
    disable = sub.add_parser("disable", help="store a new version with one rule disabled")
    add_database_argument(disable)
    disable.add_argument("rule_id")
    history = sub.add_parser("history", help="every version, newest last")
    add_database_argument(history)
    snooze = sub.add_parser("snooze", help="snooze a rule for one entity until a time")
    unsnooze = sub.add_parser("unsnooze", help="lift a rule's snooze for one entity")
    for parser_ in (snooze, unsnooze):
        add_database_argument(parser_)
        parser_.add_argument("rule_id")
        parser_.add_argument("--kind", required=True, choices=sorted(LIST_KINDS), help="the entity's kind")
        parser_.add_argument("--value", required=True, help="the entity (e.g. an account id, a card token)")
        parser_.add_argument("--by", default=getpass.getuser(), help="who (default: the operating-system user)")
    end = snooze.add_mutually_exclusive_group(required=True)
    end.add_argument("--until", help="epoch ms or an RFC 3339 date-time, in the future")
    end.add_argument("--for-days", type=int, help="the snooze's length in days from now")
    snooze.add_argument("--note", default=None, help="why")
    snoozes = sub.add_parser("snoozes", help="a rule's snoozes in force and its snooze changes")
    add_database_argument(snoozes)
    snoozes.add_argument("rule_id")
    snoozes.add_argument("--expired", action="store_true", help="also the snoozes that ended")


def _snooze_request(args: argparse.Namespace) -> SnoozeIn:
    try:
        return SnoozeIn.model_validate(
            {
                "kind": args.kind,
                "value": args.value,
                "until": args.until,
                "for_days": args.for_days,
                "note": args.note,
                "by": args.by,
            }
        )
    except ValidationError as exc:
        problems = "; ".join(
            said("--" + (".".join(str(p) for p in e["loc"]) or "value"), e.get("input"), reason_of(e))
            for e in exc.errors()
        )
        raise CommandError(f"snooze refused, nothing stored: {problems}", exit_code=EXIT_USAGE) from None


def _run_snoozes(args: argparse.Namespace) -> int:
    request = _snooze_request(args) if args.rules_command == "snooze" else None
    if args.rules_command == "unsnooze":
        try:
            list_value(args.kind, args.value)
        except ValueError as exc:
            raise CommandError(
                said("--value", args.value, f"not a {args.kind} value: {exc}"), exit_code=EXIT_USAGE
            ) from None
    with open_database(database_url(args)) as conn:
        try:
            with conn, conn.cursor() as cur:
                if request is not None:
                    stored, status = snoozes.snooze_with(cur, args.rule_id, request)
                    print(f"{status}: {stored.rule_id} {stored.describe()}")
                elif args.rules_command == "unsnooze":
                    lifted = snoozes.unsnooze_with(cur, args.rule_id, args.kind, args.value, args.by)
                    print(f"lifted: {lifted.rule_id} no longer {lifted.describe()}")
                else:
                    page = snoozes.snoozes_with(cur, args.rule_id, args.expired)
                    found, changes = page.snoozes, page.changes
                    for s in found:
                        print(f"{s.rule_id} {s.describe()}")
                    if not found:
                        print(f"rule {args.rule_id} is not snoozed")
                    for c in changes:
                        print(
                            f"  #{c.change_id} {c.changed_at:%Y-%m-%d %H:%M:%S} {c.change:<8} {c.kind} {c.value} "
                            f"until {c.until.isoformat()} by {c.changed_by}"
                        )
        except TxguardError as exc:
            print(f"refused: {exc.message}", file=sys.stderr)
            return EXIT_USAGE
    return 0


def run(args: argparse.Namespace) -> int:
    if args.rules_command in ("snooze", "snoozes", "unsnooze"):
        return _run_snoozes(args)
    if args.rules_command == "apply":
        try:
            data = read_json_file(args.file)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    with open_database(database_url(args)) as conn:
        try:
            with conn, conn.cursor() as cur:
                if args.rules_command == "apply":
                    version = rule_sets.apply_rule_set(cur, data, args.comment or f"applied {args.file.name}")
                    print(f"rule set version {version} stored; {_picked_up()}")
                elif args.rules_command == "disable":
                    version = rule_sets.disable_rule(cur, args.rule_id)
                    print(f"rule {args.rule_id} disabled in version {version}; {_picked_up()}")
                elif args.rules_command == "list":
                    _print_latest(cur, as_json=args.json)
                else:
                    for stored in rule_sets.history(cur):
                        enabled = sum(rule.enabled for rule in stored.rule_set.rules)
                        print(
                            f"v{stored.version:<4} {stored.created_at:%Y-%m-%d %H:%M:%S} {stored.created_by:<12} "
                            f"{enabled}/{len(stored.rule_set.rules)} rules enabled  {stored.comment}"
                        )
        except RuleSetError as exc:
            print("rule set rejected, nothing changed:", file=sys.stderr)
            for problem in exc.problems:
                print(f"  - {problem}", file=sys.stderr)
            return 1
    return 0


def _picked_up() -> str:
    # Each function caches the rule set it read, so a new version is not in force at once everywhere.
    seconds = service_settings().rules_cache_seconds
    return f"the functions use it within {seconds} s (TXGUARD_RULES_CACHE_SECONDS)"


def _print_latest(cur: psycopg2.extensions.cursor, as_json: bool) -> None:
    stored = rule_sets.latest(cur)
    if stored is None:
        print("no rule set stored; run `txguard db migrate`", file=sys.stderr)
        return
    if as_json:
        print(
            json.dumps(
                stored.rule_set.model_dump(mode="json", exclude={"rules": {"__all__": {"condition"}}}),
                indent=2,
            )
        )
        return
    rs = stored.rule_set
    review = "" if rs.review_threshold is None else f", review from {rs.review_threshold}"
    model = "".join(
        f", model {name} {value}"
        for name, value in (("block", rs.model_block_threshold), ("review", rs.model_review_threshold))
        if value is not None
    )
    print(f"version {stored.version} (threshold {rs.threshold}{review}{model}): {stored.comment}")
    for rule in rs.rules:
        state = "enabled " if rule.enabled else "disabled"
        does = f"score {rule.score}" if rule.action == "score" else rule.action
        print(f"  {rule.id:<28} {state} {rule.mode:<6} {does}  {rule.when}")
