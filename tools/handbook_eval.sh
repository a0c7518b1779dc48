#!/usr/bin/env bash
# The Handbook protocol of docs/evaluation.md, end to end, with txguard's own commands (make handbook-eval):
#   1. a fresh database (HANDBOOK_DB, dropped and created again), migrated: the default rule set records the
#      features models train on;
#   2. April-June replayed through ingest, each label released 7 days (event time) after its transaction;
#   3. a model trained on what was known by 2018-07-01 (txguard train --until 2018-07-01) and promoted;
#   4. July replayed through ingest, decided live by that champion and the rules (labels still 7 days late);
#   5. txguard evaluate on July (ranked by the decision score, ties broken by the model's score).
#   6. graded outcomes: rules/handbook-outcomes.json (thresholds chosen on April-June, docs/evaluation.md) backtested
#      on April-June and on July (decisions per outcome, precision of block, recall within block + review);
#      then rules/handbook-outcomes-lower-bound.json (blocks kept only where April-June shows 0.9 precision at a 95 %
#      lower bound: docs/evaluation.md, "The block policy from lower confidence bounds") on July.
# Every figure printed comes from these commands; nothing is written into the docs by this script.
#
# Settings (environment): HANDBOOK_DATA (the file), HANDBOOK_DB (database name, default txguard_handbook),
# SEED (training seed, default 1), TRAIN_ARGS (more `txguard train` options), TXGUARD_MODEL_DIR (artifacts,
# default .txguard/handbook-models), PGHOST/PGPORT/PGUSER (default 127.0.0.1, 5432, postgres).
# About 25 minutes on the 2-CPU development machine.
set -euo pipefail

DATA=${HANDBOOK_DATA:-../shared/data/handbook-dev-2018-04-to-07.csv.gz}
DB=${HANDBOOK_DB:-txguard_handbook}
SEED=${SEED:-1}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
TXGUARD=${TXGUARD:-.venv/bin/txguard}
CUTOFF=2018-07-01T00:00:00Z

if [[ ! -f $DATA ]]; then
    echo "handbook-eval: $DATA not found (set HANDBOOK_DATA)" >&2
    exit 2
fi
export DATABASE_URL="postgresql://$PGUSER@$PGHOST:$PGPORT/$DB"
export TXGUARD_MODEL_DIR=${TXGUARD_MODEL_DIR:-$PWD/.txguard/handbook-models}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}

step() { printf '\n== %s (%s)\n' "$1" "$(date -u +%H:%M:%S)"; }

step "fresh database $DB"
dropdb -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" --if-exists "$DB"
createdb -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" "$DB"
$TXGUARD db migrate --database-url "$DATABASE_URL"

step "replay April-June (labels 7 days late)"
$TXGUARD replay --preset handbook --label-delay-days 7 --no-progress --until "$CUTOFF" "$DATA"

step "train on what was known by $CUTOFF, seed $SEED"
# shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
$TXGUARD train --until 2018-07-01 --seed "$SEED" --name handbook --no-progress ${TRAIN_ARGS:-}
$TXGUARD models promote latest

step "replay July, decided live by the champion (labels 7 days late)"
$TXGUARD replay --preset handbook --label-delay-days 7 --no-progress --from "$CUTOFF" "$DATA"

step "evaluate July"
$TXGUARD evaluate --from 2018-07-01 --to 2018-08-01

step "graded outcomes: rules/handbook-outcomes.json on April-June, then July"
$TXGUARD backtest --rules rules/handbook-outcomes.json --from 2018-04-01T00:00:00Z --to "$CUTOFF"
$TXGUARD backtest --rules rules/handbook-outcomes.json --from "$CUTOFF" --to 2018-08-01T00:00:00Z

step "graded outcomes: rules/handbook-outcomes-lower-bound.json on July"
$TXGUARD backtest --rules rules/handbook-outcomes-lower-bound.json --from "$CUTOFF" --to 2018-08-01T00:00:00Z
