"""`txguard train`: train a LightGBM model on the stored feature vectors and the labels known at a cutoff, report
it on a validation window against a decision-tree baseline and the current champion, and register it as a
candidate.

    txguard train --until 2018-07-01                     # what was known by then; --name, --seed, --gap-days ...
    txguard train --until 2018-07-01 --features amount,count_24h,merchant_risk_7d --json

The split, the parameters, class imbalance and every metric are described in txguard/models/training.py. The
artifact goes to TXGUARD_MODEL_BUCKET (S3) or TXGUARD_MODEL_DIR (default .txguard/models); the registry row to the
database (--database-url, else DATABASE_URL, else the local `txguard` database). Then `txguard models shadow N` or
`txguard models promote N`.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from typing import Any

from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    add_database_argument,
    database_url,
    integer_argument,
    model_store,
    open_database,
    period_argument,
)


def _features(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one feature, separated by commas")
    return names


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a number") from None
    if not (0 < value < 1e6):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} must be above 0 and below 1,000,000")
    return value


def register(parser: argparse.ArgumentParser) -> None:
    from txguard.models import training

    add_database_argument(parser)
    parser.add_argument(
        "--until",
        type=period_argument,
        required=True,
        help="the cutoff: only transactions before it and labels known before it (labelled_at) are read",
    )
    parser.add_argument("--name", default=None, help="the candidate's name (default: lightgbm-<until>)")
    parser.add_argument("--seed", type=integer_argument(0, 2**31 - 1), default=training.DEFAULT_SEED, help="default 1")
    parser.add_argument(
        "--gap-days",
        type=integer_argument(0, 365),
        default=training.DEFAULT_GAP_DAYS,
        help="days between training and validation, and between validation and the cutoff (default 7)",
    )
    parser.add_argument(
        "--valid-days", type=integer_argument(1, 365), default=training.DEFAULT_VALID_DAYS, help="default 7"
    )
    parser.add_argument(
        "--train-days",
        type=integer_argument(1, 3650),
        default=None,
        help="days of training (default: from the first transaction stored with features)",
    )
    parser.add_argument(
        "--features",
        type=_features,
        default=None,
        help="comma-separated feature names (default: every feature stored with every transaction trained on)",
    )
    parser.add_argument(
        "--rounds", type=integer_argument(1, 10_000), default=training.DEFAULT_ROUNDS, help="boosting rounds"
    )
    parser.add_argument(
        "--scale-pos-weight",
        type=_positive_float,
        default=None,
        help="weight of a fraud against a genuine transaction (default: sqrt(genuine / fraud))",
    )
    parser.add_argument("--k", type=integer_argument(1, 100_000), default=100, help="Card Precision@k (default 100)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class Bars:
    """One tqdm bar per stage (rows read for training, for validation, boosting rounds), on stderr."""

    NAMES = {"train": ("training rows", "row"), "valid": ("validation rows", "row"), "rounds": ("boosting", "round")}

    def __init__(self, disabled: bool) -> None:
        self.disabled = disabled
        self.bars: dict[str, Any] = {}

    def __call__(self, stage: str, advance: int, total: int | None) -> None:
        from tqdm import tqdm

        bar = self.bars.get(stage)
        if bar is None:
            for other in self.bars.values():
                other.close()
            description, unit = self.NAMES.get(stage, (stage, "it"))
            bar = self.bars[stage] = tqdm(
                total=total, desc=description, unit=unit, disable=self.disabled, file=sys.stderr, leave=False
            )
        bar.update(advance)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard.models import training
    from txguard.models.artifact_store import ArtifactUnavailable

    name = args.name or f"lightgbm-{_date(args.until)[:10]}"
    options = training.TrainingOptions(
        until=args.until,
        name=name,
        seed=args.seed,
        gap_days=args.gap_days,
        valid_days=args.valid_days,
        train_days=args.train_days,
        features=args.features,
        rounds=args.rounds,
        scale_pos_weight=args.scale_pos_weight,
        k=args.k,
    )
    bars = Bars(args.no_progress)
    try:
        with open_database(database_url(args)) as conn:
            result = training.train(conn, options, model_store(), bars)
    except training.TrainingError as exc:
        raise CommandError(f"{exc.message}; nothing was registered", exit_code=EXIT_USAGE) from None
    except ArtifactUnavailable as exc:
        raise CommandError(f"{exc.message}; nothing was registered") from None
    except psycopg2.Error as exc:
        raise CommandError(f"{str(exc).strip()}; nothing was registered") from None
    finally:
        bars.close()
    print(json.dumps(result.report, indent=2) if args.json else render_text(result.report))
    return 0


def _date(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _metric(value: Any) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def render_text(report: dict[str, Any]) -> str:
    """The report for a person: windows, the comparison table, the confusion matrix, the strongest features."""
    m = report["metrics"]
    v, w = m["validation"], report["windows"]
    lines = [
        f"model version {report['version']} ({report['name']}) registered as a {report['status']}",
        f"  artifact {report['artifact_sha256']}",
        f"  training   {_date(w['train_from'])} to {_date(w['train_to'])}: {m['training']['rows']:,} transactions, "
        f"{m['training']['frauds']:,} fraud",
        f"  gap        {report['gap_days']} days",
        f"  validation {_date(w['valid_from'])} to {_date(w['valid_to'])}: {v['rows']:,} transactions, "
        f"{v['frauds']:,} fraud",
        f"  labels known before {_date(w['label_cutoff'])}; seed {report['seed']}; {len(report['features'])} features",
        "",
        f"On the validation window     ROC AUC   avg prec   CP@{v['k']:<5}  F1 at its threshold",
    ]
    rows = [("this model", v), ("decision tree (baseline)", m["baseline"]), ("champion", m["champion"])]
    rows.append(("stored decisions", m["stored_decisions"]))
    for label, r in rows:
        if r.get("available", True):
            if "version" in r:
                label = f"champion (version {r['version']})"
            lines.append(
                f"  {label:<26} {_metric(r['roc_auc']):>8} {_metric(r['average_precision']):>10} "
                f"{_metric(r['card_precision_at_k']):>9}  {r['f1']:.4f} (>= {r['threshold']:.4f})"
            )
        else:
            lines.append(f"  {label:<26} not compared: {r['reason']}")
    c = v["confusion_matrix"]
    lines += [
        "",
        f"At the threshold {v['threshold']:.4f} (the best F1 on the validation window): precision "
        f"{v['precision']:.4f}, recall {v['recall']:.4f}, F1 {v['f1']:.4f}",
        "  Confusion matrix        flagged   not flagged",
        f"    fraud        {c['tp']:>14,} {c['fn']:>13,}",
        f"    genuine      {c['fp']:>14,} {c['tn']:>13,}",
        "",
        "Feature importance (share of the total gain)",
    ]
    for item in m["feature_importance"][:15]:
        lines.append(f"  {item['feature']:<24} {item['share']:>7.1%}")
    lines += [
        "",
        f"next: `txguard models show {report['version']}`, `txguard models shadow {report['version']}` or "
        f"`txguard models promote {report['version']}`",
    ]
    return "\n".join(lines)
