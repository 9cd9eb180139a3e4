#!/usr/bin/env bash
# Regenerates results/tuning/curves-converged: validation curves (20 held-out training classes, R@1 every
# epoch) of the triplet and N-pair losses in the converged grids' set-up (multi-scale backbone, 56 px).
# One CPU thread per run, JOBS runs at once (default 2).
#   bash results/tuning/curves-converged/run.sh       # from the project root, after make setup
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
OUT=results/tuning/curves-converged
tune() { name=$1; shift; "$PY" -m pnca_utils tune --size default --quiet --jobs "$JOBS" --out "$OUT/$name" \
  --set weights=auto-multiscale --set image_size=56 --epochs 40 --seeds 2 "$@"; }
tune triplet-lr --preset triplet --grid lr=3e-2,1e-1,3e-1
tune npair-lr --preset npair --grid lr=1e-2,2e-2,4e-2
tune triplet-lr-edge --preset triplet --grid lr=1,3  # the edge step (README, "Reading, and an edge")
"$PY" -c "from pnca_utils.experiments.tuning import write_budgets; write_budgets('$OUT')"
