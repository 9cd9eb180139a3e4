#!/usr/bin/env bash
# Design (d) of this diagnostic: the proxy rate swept at D = 64 and D = 256 in the converged set-up
# (64 px, the multi-scale backbone, 20 epochs, backbone 4e-2), 2 seeds, on the validation classes.
# One CPU thread per run, JOBS runs at once (default 2); about 2 hours of run time (28 runs), an
# interrupted sweep resumes from proxy-rate/search.csv.
#   bash results/diagnostics/fast-proxies/sweep.sh      # from the project root, after make setup
set -euo pipefail
cd "$(dirname "$0")/../../.."
PY=${PY:-.venv/bin/python}
"$PY" -m pnca_utils tune --preset proxynca++ --size converged --quiet --jobs "${JOBS:-2}" --seeds 2 \
  --out results/diagnostics/fast-proxies/proxy-rate \
  --grid embedding_dim=64,256 --grid proxy_lr=0.0625,0.25,1,4,16,64,256
