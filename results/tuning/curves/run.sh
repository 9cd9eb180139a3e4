#!/usr/bin/env bash
# Regenerates results/tuning/curves: validation curves (R@1 on 20 classes held out of the 100 training
# classes, every epoch) for the epoch budgets and the rates that the final grids will use.
# Every run trains on one CPU thread; JOBS runs at once (default 2). 28 runs, 1.8 h of training time
# summed over runs (train_seconds in the search.csv files, evaluation not counted), 12 min of wall time
# on 15 cores of the lent machine; on 2 cores with JOBS=2, about an hour (estimated, not measured).
#   bash results/tuning/curves/run.sh            # from the project root, after make setup
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
OUT=results/tuning/curves
tune() { name=$1; shift; "$PY" -m pnca_utils tune --size default --quiet --jobs "$JOBS" --out "$OUT/$name" "$@"; }
tune proxynca++-proxy_lr --preset proxynca++ --epochs 20 --seeds 2 \
  --grid proxy_lr=0.125,0.4,1.25,4,12.5,40,125,400
tune proxynca-lr --preset proxynca --epochs 20 --grid lr=2e-3,5e-3,1e-2,2e-2,5e-2
tune proxynca-lr-40 --preset proxynca --epochs 40 --grid lr=0.1,0.2,0.5
tune triplet-40 --preset triplet --epochs 40 --grid lr=1e-1
tune npair-40 --preset npair --epochs 40 --grid lr=2e-2
tune hdml-triplet --preset hdml-triplet --epochs 16 --grid lr=1e-1
tune hdml-npair --preset hdml-npair --epochs 16 --grid lr=2e-2
"$PY" -c "from pnca_utils.experiments.tuning import write_budgets; write_budgets('$OUT')"
