#!/usr/bin/env bash
# `make demo`: the paper's grid with mobilenet_025 on SQLite, the final model, the test report.
# Idempotent: run it again and it continues the study where it stopped, then finalizes again.
# Settings come from the environment (the Makefile passes its variables):
#   BIN      folder of the clothopt executable (.venv/bin)
#   DATA     data set folder; fetched there when it does not exist (data)
#   WEIGHTS  imagenet (downloaded by Keras), or a local copy of the weights file
#   STORAGE  SQLAlchemy URL of the studies (sqlite:///studies/clothopt.db)
#   NAME     study name (demo-mobilenet_025)
#   PAPER    folder of the paper's final_test.csv (default: ../shared/paper when it exists)
set -euo pipefail

BIN=${BIN:-.venv/bin}
DATA=${DATA:-data}
WEIGHTS=${WEIGHTS:-imagenet}
STORAGE=${STORAGE:-sqlite:///studies/clothopt.db}
NAME=${NAME:-demo-mobilenet_025}
PAPER=${PAPER:-}
start=$SECONDS

clothopt() { "$BIN/clothopt" "$@"; }
step() { printf '\n== %s (%d s)\n' "$1" $((SECONDS - start)); }

if [ ! -d "$DATA" ]; then
    step "fetching the data set into $DATA"
    clothopt data fetch --dest "$DATA"
fi

# `study show` succeeds only for a study that exists: then this run continues it
if clothopt study show "$NAME" --storage "$STORAGE" --json >/dev/null 2>&1; then
    step "study $NAME exists: continuing it"
else
    step "creating study $NAME"
    clothopt study create --backbone mobilenet_025 --space paper --data "$DATA" \
        --weights "$WEIGHTS" --name "$NAME" --storage "$STORAGE"
fi

step "running the paper's grid (27 trials)"
clothopt study optimize "$NAME" --storage "$STORAGE"

step "final training (5 epochs), test report, exported model"
clothopt study finalize "$NAME" --storage "$STORAGE" ${PAPER:+--paper "$PAPER"}

printf '\ndemo done in %d s\n' $((SECONDS - start))
echo "watch the studies in optuna-dashboard: $BIN/clothopt dashboard --storage $STORAGE"
