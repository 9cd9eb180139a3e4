"""Class-balanced against random batches for ProxyNCA++, in two regimes: the ProxyNCA++ half.

Run from the project root: `.venv/bin/python results/diagnostics/balanced-batches/run.py [JOBS]`
(20 runs, 10 of them shared: the balanced runs are the configs of ../fast-proxies designs (b) and (c),
so with that folder's runs in `build/runs` only the 10 random-batch runs train, about 90 core-minutes;
an interrupted run resumes from proxynca++/runs.csv). ProxyNCA++ at size 'converged' (20 epochs, 64 px,
the multi-scale backbone, proxies 0.4), seeds 0 to 4, R@1 on the validation classes: on the embedded
set at the converged preset's backbone rate (4e-2), and on 'embedded-many' at the backbone rate design
(c) chose there (run ../fast-proxies/run_many.py first). Writes runs.csv, ablation.md/csv and grid.json
into proxynca++/. The triplet half follows once results/tuning/curves-converged has chosen the triplet rate.
"""
import importlib.util
import sys
from pathlib import Path

import pandas as pd

from pnca_utils.experiments.ablation import Variant, run_grid, write_summary

HERE = Path(__file__).resolve().parent
OUT = HERE / "proxynca++"
FEW_BALANCED, MANY_BALANCED = "100 classes, balanced", "1,100 classes, balanced"


def many_class_rate() -> float:
    """The backbone rate design (c) of ../fast-proxies chose on 'embedded-many' (its run_many.chosen_rate)."""
    spec = importlib.util.spec_from_file_location("run_many", HERE.parent / "fast-proxies" / "run_many.py")
    run_many = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_many)
    lr = run_many.chosen_rate(pd.read_csv(run_many.SEARCH / "runs.csv"))
    if lr is None:
        raise SystemExit("design (c) found 'embedded-many' untestable: no many-class half to run")
    return lr


def variants(many_lr: float) -> list[Variant]:
    many = dict(dataset="embedded-many", lr=many_lr, proxy_lr=0.4)  # (c)'s configs, so its balanced runs are shared
    return [
        Variant(FEW_BALANCED, "full", description="embedded set, 8 classes x 4 images per batch"),
        Variant("100 classes, random", "removal", removed=("class-balanced batches",), reference=FEW_BALANCED,
                description="embedded set, 32 images drawn at random"),
        Variant(MANY_BALANCED, "full", overrides=many, description="embedded-many, 8 classes x 4 images per batch"),
        Variant("1,100 classes, random", "removal", removed=("class-balanced batches",), reference=MANY_BALANCED,
                overrides=many, description="embedded-many, 32 images drawn at random"),
    ]


def main(jobs: int = 2) -> int:
    grid = variants(many_class_rate())
    runs = run_grid(grid, "converged", 5, OUT, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, grid, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
