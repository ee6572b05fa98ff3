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
#   WIDE     1 (default): also search the `wide` space (TPE over the head, ~10 min on 2 CPU
#            cores), finalize it and index the train split for similar items; 0: the paper only
set -euo pipefail

BIN=${BIN:-.venv/bin}
DATA=${DATA:-data}
WEIGHTS=${WEIGHTS:-imagenet}
STORAGE=${STORAGE:-sqlite:///studies/clothopt.db}
NAME=${NAME:-demo-mobilenet_025}
PAPER=${PAPER:-}
WIDE=${WIDE:-1}
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

if [ "$WIDE" = 1 ]; then
    WNAME=${NAME%-mobilenet_025}-wide
    [ "$WNAME" != "$NAME" ] || WNAME="$NAME-wide"
    if clothopt study show "$WNAME" --storage "$STORAGE" --json >/dev/null 2>&1; then
        step "study $WNAME exists: continuing it"
    else
        step "creating study $WNAME (space wide: the head, its training and its features)"
        clothopt study create --backbone mobilenet_025 --space wide --data "$DATA" \
            --weights "$WEIGHTS" --name "$WNAME" --storage "$STORAGE"
    fi
    step "searching the wide space (TPE, 60 trials)"
    clothopt study optimize "$WNAME" --storage "$STORAGE"
    step "final training of the best wide trial, test report, exported model"
    clothopt study finalize "$WNAME" --storage "$STORAGE" ${PAPER:+--paper "$PAPER"}
    FINAL=$(dirname "${STORAGE#sqlite:///}")/runs/$WNAME/final
    if [ -d "$FINAL" ] && [ -d "$DATA/train" ]; then
        step "indexing the train split for similar items"
        clothopt index build "$FINAL/model.keras" "$DATA/train"
    fi
fi

printf '\ndemo done in %d s\n' $((SECONDS - start))
echo "watch the studies in optuna-dashboard: $BIN/clothopt dashboard --storage $STORAGE"
