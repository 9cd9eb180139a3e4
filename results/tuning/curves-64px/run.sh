#!/usr/bin/env bash
# Regenerates results/tuning/curves-64px: validation curves (20 held-out training classes, R@1 every
# epoch) of ProxyNCA++ at 64 px, its image size in the converged grid, with the multi-scale backbone.
# One CPU thread per run, JOBS runs at once (default 2; the committed folder ran 12 at once).
#   bash results/tuning/curves-64px/run.sh            # from the project root, after make setup
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
JOBS=${JOBS:-2}
OUT=results/tuning/curves-64px
"$PY" -m pnca_utils tune --size default --quiet --jobs "$JOBS" --out "$OUT/proxynca++-lr" \
  --set weights=auto-multiscale --set image_size=64 --preset proxynca++ --epochs 12 --seeds 2 \
  --grid lr=2e-2,4e-2,8e-2 --grid proxy_lr=0.4,4
"$PY" -c "from pnca_utils.experiments.tuning import write_budgets; write_budgets('$OUT')"
