"""`txguard models list | show V | shadow V | promote V | retire V | rollback`: the model registry.

V is a version number or `latest` (the highest). Each change is one database transaction that also writes the
detector version it leaves (txguard/storage/models.py); the functions pick it up within their cache period. A
version becomes shadow or champion only if its artifact (TXGUARD_MODEL_BUCKET, else TXGUARD_MODEL_DIR, else
.txguard/models) reads back intact and matches its registered features.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from typing import Any

from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_database_argument,
    database_url,
    model_store,
    open_database,
)


def _version(text: str) -> int | str:
    from txguard.storage.models import InvalidModelVersion, parse_version

    try:
        return parse_version(text)
    except InvalidModelVersion as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="models_command", required=True)
    listing = sub.add_parser("list", help="every version, newest first")
    add_database_argument(listing)
    listing.add_argument("--json", action="store_true")
    for name, help_text in (
        ("show", "one version: windows, metrics, threshold table"),
        ("shadow", "score a version beside the champion, never deciding"),
        ("promote", "make a version the champion (the current one is retired)"),
        ("retire", "set a version aside (retiring the champion leaves the rules alone)"),
    ):
        command = sub.add_parser(name, help=help_text)
        add_database_argument(command)
        command.add_argument("version", type=_version, help="a version number, or `latest`")
        command.add_argument("--json", action="store_true")
    rollback = sub.add_parser("rollback", help="retire the champion; the champion it replaced returns")
    add_database_argument(rollback)
    rollback.add_argument("--json", action="store_true")


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard.errors import TxguardError
    from txguard.settings import service_settings
    from txguard.storage import models

    command = args.models_command
    try:
        with open_database(database_url(args)) as conn, conn, conn.cursor() as cur:
            if command == "list":
                listed = models.list_versions(cur)
                if args.json:
                    print(json.dumps([m.as_dict(with_details=False) for m in listed], indent=2))
                else:
                    print(render_list(listed))
                return 0
            if command == "show":
                model = models.get(cur, args.version)
                print(json.dumps(model.as_dict(), indent=2) if args.json else render_model(model))
                return 0
            store = model_store()
            if command == "shadow":
                change = models.set_shadow(cur, args.version, store)
            elif command == "promote":
                change = models.promote(cur, args.version, store)
            elif command == "retire":
                change = models.retire(cur, args.version)
            else:
                change = models.rollback(cur, store)
    except models.ModelNotFound as exc:
        raise CommandError(f"{exc.message}; `txguard models list` shows the versions") from None
    except models.InvalidModelVersion as exc:
        raise CommandError(exc.message, exit_code=EXIT_USAGE) from None
    except TxguardError as exc:  # IllegalTransition, UnusableModel, NoRuleSet
        raise CommandError(f"{exc.message}; nothing changed") from None
    except psycopg2.Error as exc:
        raise CommandError(f"{str(exc).strip()}; nothing changed") from None
    if args.json:
        print(
            json.dumps(
                {
                    "changes": [{"version": c.version, "before": c.before, "after": c.after} for c in change.changes],
                    "detector": change.detector.as_dict(),
                    "notes": list(change.notes),
                },
                indent=2,
            )
        )
        return 0
    for c in change.changes:
        print(f"model version {c.version}: {c.before} -> {c.after}")
    for note in change.notes:
        print(note)
    d = change.detector
    shadows = ", ".join(str(v) for v in d.shadow_model_versions) or "none"
    print(
        f"detector version {d.version}: rule set {d.rule_set_version}, champion "
        f"{d.champion_model_version or 'none'}, shadows {shadows}; the functions use it within "
        f"{service_settings().rules_cache_seconds} s (TXGUARD_RULES_CACHE_SECONDS)"
    )
    return 0


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M")


def _metric(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"


def render_list(listed: list[Any]) -> str:
    if not listed:
        return "no model is registered; `txguard train --until DATE` trains one"
    lines = [f"{'version':>7}  {'status':<9} {'name':<24} {'trained until':<16}  {'AP':>6}  {'CP@k':>6}  created"]
    for m in listed:
        valid = (m.metrics or {}).get("validation", {})
        lines.append(
            f"{m.version:>7}  {m.status:<9} {m.name[:24]:<24} {_time(m.train_to):<16}  "
            f"{_metric(valid.get('average_precision')):>6}  {_metric(valid.get('card_precision_at_k')):>6}  "
            f"{m.created_at:%Y-%m-%d %H:%M} by {m.created_by}"
        )
    return "\n".join(lines)


def render_model(m: Any) -> str:
    valid = m.metrics.get("validation", {})
    lines = [
        f"model version {m.version} ({m.name}): {m.status}",
        f"  artifact      {m.artifact_sha256}",
        f"  features      {', '.join(m.features)}",
        f"  training      {_time(m.train_from)} to {_time(m.train_to)}, gap {m.gap_days} days",
        f"  validation    {_time(m.valid_from)} to {_time(m.valid_to)}; labels known before {_time(m.label_cutoff)}",
        f"  seed          {m.seed}",
        f"  created       {m.created_at:%Y-%m-%d %H:%M:%S} by {m.created_by}",
    ]
    if m.previous_champion is not None:
        lines.append(f"  replaced      champion {m.previous_champion} (what a rollback brings back)")
    if valid:
        lines += [
            "",
            f"  ROC AUC {_metric(valid.get('roc_auc'))}   average precision {_metric(valid.get('average_precision'))}"
            f"   CP@{valid.get('k', 100)} {_metric(valid.get('card_precision_at_k'))}",
            f"  at {_metric(valid.get('threshold'))}: precision {_metric(valid.get('precision'))}, recall "
            f"{_metric(valid.get('recall'))}, F1 {_metric(valid.get('f1'))}",
        ]
    rows = [r for r in (m.thresholds or []) if isinstance(r, dict)]
    if rows:
        lines += ["", "  score   flagged   precision  recall   false-positive rate"]
        for r in rows[::10]:
            lines.append(
                f"  {r['score']:>5.2f} {r['flagged']:>9,}   {r['precision']:>9.4f}  {r['recall']:>6.4f}   "
                f"{r['fpr']:.6f}"
            )
        lines.append("  (every 0.10; `--json` gives all 100 levels)")
    return "\n".join(lines)
