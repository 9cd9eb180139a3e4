"""Proxy assignment at two temperatures: the positive proxy in the softmax's denominator or out of it.

Run from the project root: `.venv/bin/python results/diagnostics/proxy-assignment/run.py [JOBS]`
(20 runs of about 7.5 min at one thread each: about 75 min with 2 jobs on 2 cores; an interrupted
run resumes from runs.csv). Everything as in ProxyNCA++ at size 'converged' (20 epochs, 64 px,
the multi-scale backbone, backbone 4e-2, proxies 0.4), evaluated on the validation classes held
out of the training classes. Writes runs.csv, ablation.md/csv and grid.json beside this file.
"""
import sys
from pathlib import Path

from pnca_utils.experiments.ablation import Variant, run_grid, write_summary

HERE = Path(__file__).resolve().parent
INCLUDED_LOW, INCLUDED_ONE = "included, T = 1/9", "included, T = 1"
VARIANTS = [
    Variant(INCLUDED_LOW, "full", description="ProxyNCA++: the positive in the denominator, T = 1/9"),
    Variant("excluded, T = 1/9", "removal", removed=("proxy assignment",), reference=INCLUDED_LOW,
            description="the positive out of the denominator, T = 1/9"),
    Variant(INCLUDED_ONE, "full", removed=("low temperature",), description="the positive in, T = 1"),
    Variant("excluded, T = 1", "removal", removed=("proxy assignment", "low temperature"), reference=INCLUDED_ONE,
            description="the positive out, T = 1"),
]


def main(jobs: int = 2) -> int:
    runs = run_grid(VARIANTS, "converged", 5, HERE, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, VARIANTS, HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
