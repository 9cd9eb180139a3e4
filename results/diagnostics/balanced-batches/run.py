"""Class-balanced against random batches for ProxyNCA++, in two regimes: the ProxyNCA++ half.

Run from the project root: `.venv/bin/python results/diagnostics/balanced-batches/run.py [JOBS]`
(20 runs, 10 of them shared: the balanced runs are the configs of ../fast-proxies designs (b) and (c),
so with that folder's runs in `build/runs` only the 10 random-batch runs train, about 50 core-minutes;
an interrupted run resumes from proxynca++/runs.csv). ProxyNCA++ at size 'converged' (20 epochs, 64 px,
the multi-scale backbone, backbone 4e-2, proxies 0.4), seeds 0 to 4, R@1 on the validation classes, on
the embedded set and on 'embedded-many'. Writes runs.csv, ablation.md/csv and grid.json into proxynca++/.
The triplet half follows once results/tuning/curves-converged has chosen the triplet rate.
"""
import sys
from pathlib import Path

from pnca_utils.experiments.ablation import Variant, run_grid, write_summary

HERE = Path(__file__).resolve().parent
OUT = HERE / "proxynca++"
MANY = dict(dataset="embedded-many", lr=4e-2, proxy_lr=0.4)  # the converged preset's values, as in (c)
FEW_BALANCED, MANY_BALANCED = "100 classes, balanced", "1,100 classes, balanced"
VARIANTS = [
    Variant(FEW_BALANCED, "full", description="embedded set, 8 classes x 4 images per batch"),
    Variant("100 classes, random", "removal", removed=("class-balanced batches",), reference=FEW_BALANCED,
            description="embedded set, 32 images drawn at random"),
    Variant(MANY_BALANCED, "full", overrides=MANY, description="embedded-many, 8 classes x 4 images per batch"),
    Variant("1,100 classes, random", "removal", removed=("class-balanced batches",), reference=MANY_BALANCED,
            overrides=MANY, description="embedded-many, 32 images drawn at random"),
]


def main(jobs: int = 2) -> int:
    runs = run_grid(VARIANTS, "converged", 5, OUT, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, VARIANTS, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
