"""`txguard rules list | apply FILE | disable ID | history`: rule sets are versioned data in PostgreSQL."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import psycopg2

from txguard.rule_language import RuleSetError
from txguard.settings import service_settings
from txguard.storage import rule_sets
from txguard_dev.commands.common import add_database_argument, database_url, open_database, read_json_file


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


def run(args: argparse.Namespace) -> int:
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
    print(f"version {stored.version} (threshold {stored.rule_set.threshold}): {stored.comment}")
    for rule in stored.rule_set.rules:
        state = "enabled " if rule.enabled else "disabled"
        print(f"  {rule.id:<28} {state} {rule.mode:<6} score {rule.score}  {rule.when}")
