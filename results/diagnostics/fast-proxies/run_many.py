"""Fast proxies in the many-class regime: design (c).

Run from the project root: `.venv/bin/python results/diagnostics/fast-proxies/run_many.py [JOBS]`
(10 runs of about 6 to 7 min at one thread each: about 35 min with 2 jobs on 2 cores; an interrupted
run resumes from many-class/runs.csv). The pair of design (b), ProxyNCA++ at the calibrated rates
(backbone 4e-2, proxies 0.4) against proxies at the backbone's rate, on 'embedded-many' (1,100
training classes of 5 images; 880 to train on, 220 held out for validation), size 'converged'
(20 epochs, 64 px, the multi-scale backbone), seeds 0 to 4. Writes runs.csv, ablation.md/csv and
grid.json into many-class/ beside this file.
"""
import sys
from pathlib import Path

from pnca_utils.experiments.ablation import Variant, run_grid, write_summary

HERE = Path(__file__).resolve().parent
OUT = HERE / "many-class"
FAST = "many classes, proxies 0.4"
# the converged preset's validated values for the embedded set, stated here: 'embedded-many' has none of its own
CALIBRATED = dict(dataset="embedded-many", lr=4e-2, proxy_lr=0.4)
VARIANTS = [
    Variant(FAST, "full", overrides=CALIBRATED, description="(c) backbone 4e-2, proxies 0.4"),
    Variant("many classes, proxies 4e-2", "removal", removed=("fast proxies",), reference=FAST,
            overrides=CALIBRATED, description="(c) backbone 4e-2, proxies at the backbone's rate"),
]


def main(jobs: int = 2) -> int:
    runs = run_grid(VARIANTS, "converged", 5, OUT, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, VARIANTS, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
