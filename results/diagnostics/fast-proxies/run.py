"""Fast proxies at the paper's optimiser settings and at the calibrated ones: designs (a) and (b).

Run from the project root: `.venv/bin/python results/diagnostics/fast-proxies/run.py [JOBS]`
(20 runs of about 4 min at one thread each: about 45 min with 2 jobs on 2 cores; an interrupted
run resumes from runs.csv). Everything as in ProxyNCA++ at size 'converged' (20 epochs, 64 px,
the multi-scale backbone), evaluated on the validation classes held out of the training classes.
Writes runs.csv, ablation.md/csv and grid.json beside this file.
"""
import sys
from pathlib import Path

from pnca_utils.experiments.ablation import Variant, run_grid, write_summary

HERE = Path(__file__).resolve().parent
PAPER_FAST, CALIBRATED_FAST = "paper rates, proxies 4e2", "calibrated rates, proxies 0.4"
PAPER_RATES = dict(lr=4e-3, proxy_lr=4e2)  # the paper's backbone and proxy rates (Adam, eps = 1)
VARIANTS = [
    Variant(PAPER_FAST, "full", overrides=PAPER_RATES, description="(a) backbone 4e-3, proxies 4e2"),
    Variant("paper rates, proxies 4e-3", "removal", removed=("fast proxies",), reference=PAPER_FAST,
            overrides=PAPER_RATES, description="(a) backbone 4e-3, proxies at the backbone's rate"),
    Variant(CALIBRATED_FAST, "full", description="(b) backbone 4e-2, proxies 0.4 (the converged grid's)"),
    Variant("calibrated rates, proxies 4e-2", "removal", removed=("fast proxies",), reference=CALIBRATED_FAST,
            description="(b) backbone 4e-2, proxies at the backbone's rate"),
]


def main(jobs: int = 2) -> int:
    runs = run_grid(VARIANTS, "converged", 5, HERE, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, VARIANTS, HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
