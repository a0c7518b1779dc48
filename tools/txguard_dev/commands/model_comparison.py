"""`txguard models compare`: champion against shadow on labelled outcomes, from the scores stored with the
decisions (txguard.models.comparison).

    txguard models compare                                  # the current champion against its first shadow
    txguard models compare --champion 3 --shadow 5 --from 2018-07-01 --to 2018-08-01
"""

from __future__ import annotations

import argparse
import json

from txguard_dev.commands.common import (
    EXIT_USAGE,
    CommandError,
    integer_argument,
    open_database,
    period_argument,
    service_database_url,
)


def register(parser: argparse.ArgumentParser) -> None:
    version = integer_argument(1, 2**31 - 1)
    parser.add_argument("--champion", type=version, help="model version (default: the current champion)")
    parser.add_argument("--shadow", type=version, help="model version (default: the current first shadow)")
    parser.add_argument("--from", dest="from_", type=period_argument, help="first transaction time (inclusive)")
    parser.add_argument("--to", type=period_argument, help="end of the period (exclusive)")
    parser.add_argument("--k", type=integer_argument(1, 100_000), default=100, help="Card Precision@k (default 100)")
    parser.add_argument("--json", action="store_true", help="the comparison as JSON")


def run(args: argparse.Namespace) -> int:
    import psycopg2

    from txguard.labels import labels_in_force
    from txguard.models.comparison import compare, scored_by_both
    from txguard.models.serving import load_model
    from txguard.storage import detector_versions

    if args.from_ is not None and args.to is not None and args.from_ >= args.to:
        raise CommandError("--from must be before --to: the period would be empty", exit_code=EXIT_USAGE)
    try:
        with open_database(service_database_url()) as conn, conn, conn.cursor() as cur:
            current = detector_versions.current(cur)
            champion = args.champion
            if champion is None:
                champion = None if current is None else current.champion_model_version
                if champion is None:
                    raise CommandError("there is no champion: name one with --champion", exit_code=EXIT_USAGE)
            shadow = args.shadow
            if shadow is None:
                shadows = () if current is None else current.shadow_model_versions
                if not shadows:
                    raise CommandError("there is no shadow model: name one with --shadow", exit_code=EXIT_USAGE)
                shadow = shadows[0]
            if champion == shadow:
                raise CommandError(f"--champion and --shadow are both {champion}", exit_code=EXIT_USAGE)
            thresholds: list[float | None] = []
            for number in (champion, shadow):
                loaded = load_model(cur, number)
                if isinstance(loaded, str):
                    if loaded == "no such model version":
                        raise CommandError(f"model version {number} is not registered", exit_code=EXIT_USAGE)
                    print(f"model {number}: {loaded}; no precision or recall for it")
                    thresholds.append(None)
                else:
                    thresholds.append(loaded.threshold)
            result = compare(
                scored_by_both(cur, champion, shadow, args.from_, args.to),
                (champion, shadow),
                (thresholds[0], thresholds[1]),
                lambda ids: {tid: label.fraud for tid, label in labels_in_force(cur, transaction_ids=ids).items()},
                args.k,
                args.from_,
                args.to,
            )
    except psycopg2.Error as exc:
        raise CommandError(str(exc).strip()) from None
    if args.json:
        print(json.dumps(result.as_dict(), indent=2))
        return 0 if result.compared else 1
    if not result.compared:
        print(f"no stored decision was scored by both model {champion} and model {shadow}")
        return 1
    print(render(result.as_dict()))
    return 0


def _ratio(value: object) -> str:
    return "-" if value is None else f"{value:.4f}"


def render(data: dict[str, object]) -> str:
    """The comparison as a table: one column per model."""
    first, second = data["champion"], data["shadow"]
    assert isinstance(first, dict) and isinstance(second, dict)
    rows = [
        f"{data['compared']:,} decisions scored by both models, {data['frauds']:,} labelled fraud "
        "(unlabelled count as genuine)",
        "",
        f"{'':24}{'champion v' + str(first['version']):>16}{'shadow v' + str(second['version']):>16}",
    ]
    for label, key in (
        ("ROC AUC", "roc_auc"),
        ("average precision", "average_precision"),
        (f"Card Precision@{data['k']}", "card_precision_at_k"),
        ("threshold", "threshold"),
        ("precision at threshold", "precision"),
        ("recall at threshold", "recall"),
        ("F1 at threshold", "f1"),
    ):
        rows.append(f"{label:24}{_ratio(first[key]):>16}{_ratio(second[key]):>16}")
    rows.append(f"{'flagged at threshold':24}{first['flagged'] or 0:>16,}{second['flagged'] or 0:>16,}")
    return "\n".join(rows)
