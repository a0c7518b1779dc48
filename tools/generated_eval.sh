#!/usr/bin/env bash
# Generated traffic, rules only, as docs/evaluation.md ("Generated traffic") measures it: for each seed and size, a
# fresh database (dropped and created again), migrated (the default rule set), then `txguard generate --direct`
# and `txguard evaluate --json`; one table line per run, with the recall of each fraud pattern.
#
#   tools/generated_eval.sh                 # seeds 1 2 3 at 5,000 / 500, 20,000 / 500 and 2,000 / 500
#   SIZES="5000/500" tools/generated_eval.sh 21 22 23
#
# Settings (environment): SIZES (transactions/accounts, space-separated), MEAN_GAP (seconds, default 28800),
# START (default 2026-01-01T00:00:00Z), RULES (a rule file applied after migrating, in place of the default set),
# DB_PREFIX (default txguard_geneval; one database per run, dropped at the end unless KEEP=1),
# PGHOST/PGPORT/PGUSER (default 127.0.0.1, 5432, postgres). About 5 s a run of 5,000 on the 2-CPU machine.
set -euo pipefail

SIZES=${SIZES:-"5000/500 20000/500 2000/500"}
MEAN_GAP=${MEAN_GAP:-28800}
START=${START:-2026-01-01T00:00:00Z}
DB_PREFIX=${DB_PREFIX:-txguard_geneval}
PGHOST=${PGHOST:-127.0.0.1}
PGPORT=${PGPORT:-5432}
PGUSER=${PGUSER:-postgres}
TXGUARD=${TXGUARD:-.venv/bin/txguard}
PYTHON=${PYTHON:-.venv/bin/python}
SEEDS=("$@")
[[ ${#SEEDS[@]} -gt 0 ]] || SEEDS=(1 2 3)

printf '| run (transactions / accounts) | precision | recall | **F1** | ROC AUC | AP | TP | FP | recall per pattern |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n'
for size in $SIZES; do
    transactions=${size%/*}
    accounts=${size#*/}
    for seed in "${SEEDS[@]}"; do
        db="${DB_PREFIX}_${seed}_${transactions}_${accounts}"
        export DATABASE_URL="postgresql://$PGUSER@$PGHOST:$PGPORT/$db"
        dropdb -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" --if-exists "$db" 2>/dev/null
        createdb -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" "$db"
        "$TXGUARD" db migrate --database-url "$DATABASE_URL" >/dev/null
        if [[ -n ${RULES:-} ]]; then
            "$TXGUARD" rules apply --database-url "$DATABASE_URL" --comment "generated_eval RULES" "$RULES" >/dev/null
        fi
        "$TXGUARD" generate --direct --num-transactions "$transactions" --num-accounts "$accounts" --seed "$seed" \
            --mean-gap "$MEAN_GAP" --start "$START" --no-progress >/dev/null
        "$TXGUARD" evaluate --json | "$PYTHON" -c '
import json, sys
seed, transactions, accounts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(sys.stdin)
f, c = r["flag"], r["confusion_matrix"]
patterns = ", ".join("%s %d/%d" % (name, p["flagged"], p["frauds"]) for name, p in sorted(r["reasons"].items()))
cells = [f["precision"], f["recall"], f["f1"], r["roc_auc"], r["average_precision"], c["tp"], c["fp"], patterns]
print("| seed %s, %s / %s | %.3f | %.3f | **%.3f** | %.3f | %.3f | %d | %d | %s |"
      % (seed, format(transactions, ","), format(accounts, ","), *cells))
' "$seed" "$transactions" "$accounts"
        if [[ ${KEEP:-0} != 1 ]]; then
            dropdb -h "$PGHOST" -p "$PGPORT" -U "$PGUSER" "$db"
        fi
    done
done
