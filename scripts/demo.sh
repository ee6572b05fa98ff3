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
#   WIDE     1 (default): also search the `wide` space (TPE over the head, 40 five-fold trials:
#            8-22 min on 2 CPU cores), finalize it (a blend of the 5 best raced, 4-25 min) and index
#            the train split for similar items; 0: the paper only
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

# search STUDY SPACE WHAT: create the study unless it exists (`study show` succeeds only for a
# study that exists: then this run continues it), run it, finalize its best trial
search() {
    if clothopt study show "$1" --storage "$STORAGE" --json >/dev/null 2>&1; then
        step "study $1 exists: continuing it"
    else
        step "creating study $1 (space $2)"
        clothopt study create --backbone mobilenet_025 --space "$2" --data "$DATA" \
            --weights "$WEIGHTS" --name "$1" --storage "$STORAGE"
    fi
    step "running $3"
    clothopt study optimize "$1" --storage "$STORAGE"
    step "final training of the best trial, test report, exported model"
    clothopt study finalize "$1" --storage "$STORAGE" ${PAPER:+--paper "$PAPER"}
}

search "$NAME" paper "the paper's grid (27 trials)"

if [ "$WIDE" = 1 ]; then
    WNAME=${NAME%-mobilenet_025}-wide
    [ "$WNAME" != "$NAME" ] || WNAME="$NAME-wide"
    search "$WNAME" wide "TPE over the head, its training and its features (40 five-fold trials)"
    FINAL=$(dirname "${STORAGE#sqlite:///}")/runs/$WNAME/final
    if [ -d "$FINAL" ] && [ -d "$DATA/train" ]; then
        step "indexing the train split for similar items"
        clothopt index build "$FINAL/model.keras" "$DATA/train"
    fi
fi

printf '\ndemo done in %d s\n' $((SECONDS - start))
echo "watch the studies in optuna-dashboard: $BIN/clothopt dashboard --storage $STORAGE"
