#!/usr/bin/env bash
# Regenerates results/tuning/curves-56px: validation curves (20 held-out training classes, R@1 every
# epoch) with the multi-scale backbone at 56 px, the set-up that results/diagnostics/image-scale chose
# for the converged grids. It searches the rates those grids will use: ProxyNCA++'s backbone and
# proxy rates, and the original ProxyNCA's rate above the 0.5 where results/tuning/curves stopped.
# One CPU thread per run, JOBS runs at once (default 2).
#   bash results/tuning/curves-56px/run.sh            # from the project root, after make setup
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
OUT=results/tuning/curves-56px
tune() { name=$1; shift; "$PY" -m pnca_utils tune --size default --quiet --jobs "$JOBS" --out "$OUT/$name" \
  --set weights=auto-multiscale --set image_size=56 "$@"; }
tune proxynca++-lr --preset proxynca++ --epochs 20 --grid lr=1e-2,2e-2,4e-2 --grid proxy_lr=0.4,4
tune proxynca-lr --preset proxynca --epochs 40 --grid lr=0.5,1,2
"$PY" -c "from pnca_utils.experiments.tuning import write_budgets; write_budgets('$OUT')"
