"""The champion's block threshold for the Handbook's July, chosen from April-June only (docs/evaluation.md,
"Graded outcomes on the Handbook's July"):

    python tools/handbook_block_threshold.py CHAMPION.json WEEK.json AHEAD.json [--target 0.9]

each file the output of `txguard models show N --json`: CHAMPION the champion (trained to June 10, validated on
June 17-24, 7-14 days after its training window), WEEK a model trained on April 1 - May 11 and validated on May
18-25 (the same 7-14 days after), AHEAD the same model (same window, seed and features: the artifact is the same)
validated on June 1-10 (21-30 days after, as July is for the champion): `txguard train --until 2018-06-01` and
`txguard train --until 2018-07-01 --gap-days 21 --valid-days 9`, seed 1 both. At each score level t of the threshold
tables (0.00, 0.01, ..., 0.99) the month-ahead drop of precision is drop(t) = precision_WEEK(t) -
precision_AHEAD(t) (0 when negative), and the chosen level is the lowest t at which the champion's validation
precision less drop(t) is at least the target. Prints the table and the choice; exits 1 when no level qualifies.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def _table(path: Path) -> tuple[dict[str, Any], dict[float, dict[str, Any]]]:
    model = json.loads(path.read_text(encoding="utf-8"))
    return model, {round(row["score"], 2): row for row in model["thresholds"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("champion", type=Path)
    parser.add_argument("week", type=Path)
    parser.add_argument("ahead", type=Path)
    parser.add_argument("--target", type=float, default=0.9)
    args = parser.parse_args(argv)
    _, at_champion = _table(args.champion)
    week, at_week = _table(args.week)
    ahead, at_ahead = _table(args.ahead)
    # The same training rows, features, parameters and seed give the same trees (deterministic LightGBM); the two
    # artifacts differ only in the decision threshold each picked on its own validation window.
    same = ("train_from", "train_to", "seed", "features_hash", "params")
    differing = [key for key in same if week[key] != ahead[key]]
    if differing:
        print(f"WEEK and AHEAD are not trained alike: {', '.join(differing)} differ", file=sys.stderr)
        return 2
    print(f"{'level':>5} {'champion':>9} {'week':>7} {'ahead':>7} {'drop':>7} {'champion - drop':>15} {'flagged':>8}")
    chosen = None
    for level in sorted(at_champion):
        if level not in at_week or level not in at_ahead:
            continue
        drop = max(at_week[level]["precision"] - at_ahead[level]["precision"], 0.0)
        adjusted = at_champion[level]["precision"] - drop
        if chosen is None and adjusted >= args.target:
            chosen = level
        if level >= 0.80:
            print(
                f"{level:5.2f} {at_champion[level]['precision']:9.3f} {at_week[level]['precision']:7.3f} "
                f"{at_ahead[level]['precision']:7.3f} {drop:7.3f} {adjusted:15.3f} {at_champion[level]['flagged']:8,}"
            )
    if chosen is None:
        print(f"no level reaches {args.target} once the drop is taken off")
        return 1
    print(
        f"model_block_threshold: {chosen:.2f} (the lowest level whose champion precision less the drop is "
        f">= {args.target})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
