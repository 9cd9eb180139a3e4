"""Proxy assignment's second follow-up (README, "Second follow-up: step size or image weighting?"):
at the paper's rates, the included and excluded losses each rescaled to the other's gradient size.

Run from the project root, after run_regimes.py (whose paper-rates rows the two plain arms share):
`.venv/bin/python results/diagnostics/proxy-assignment/run_step_size.py [JOBS]`. The rows of *included*
and *excluded* are copied by run key from regimes/runs.csv into step-size/runs.csv, so only the 10
rescaled runs train (about 4 min each at one thread); then every run's embedding-gradient norm per
epoch goes to step-size/epochs.csv. An interrupted grid resumes from step-size/runs.csv.
"""
import sys
from pathlib import Path

import pandas as pd

from pnca_utils import analysis
from pnca_utils.experiments.ablation import Variant, grid_fixed, run_grid, shared_rows, write_summary
from pnca_utils.experiments.runs import cached_fit

HERE = Path(__file__).resolve().parent
OUT = HERE / "step-size"
SEEDS = 5
PAPER_RATES = dict(lr=4e-3, proxy_lr=4e2)
SHARED = {"included": "paper rates, included", "excluded": "paper rates, excluded"}  # from regimes/runs.csv


def variants() -> list[Variant]:
    excluded = dict(PAPER_RATES, positive_in_denominator=False)
    return [Variant("included", "full", overrides=PAPER_RATES, description="the positive in, T = 1/9"),
            Variant("excluded", "removal", removed=("proxy assignment",), reference="included",
                    overrides=PAPER_RATES, description="the positive out, T = 1/9"),
            Variant("included at the excluded size", "method", reference="included",
                    overrides=dict(PAPER_RATES, proxy_gradient_size="excluded"),
                    description="the positive in, loss over the batch mean of 1 - p_y"),
            Variant("excluded at the included size", "method", reference="included",
                    overrides=dict(excluded, proxy_gradient_size="included"),
                    description="the positive out, loss times the batch mean of 1 - p_y")]


def main(jobs: int = 2) -> int:
    grid = variants()
    OUT.mkdir(exist_ok=True)
    if not (OUT / "runs.csv").exists():
        shared_rows(HERE / "regimes" / "runs.csv", SHARED, grid, "converged", SEEDS,
                    eval_split="val").to_csv(OUT / "runs.csv", index=False)
    fixed = grid_fixed(grid, "converged", eval_split="val")
    runs = run_grid(grid, "converged", SEEDS, OUT, "build/runs", jobs=jobs, **fixed)
    write_summary(runs, grid, OUT)
    epochs = []
    for variant in grid:
        for seed in range(SEEDS):
            history = cached_fit(variant.config("converged", seed, **fixed), root="build/runs", progress=False).history
            per_epoch = analysis.step_means_per_epoch(history, ["grad_embeddings"]).reset_index()
            epochs.append(per_epoch.assign(variant=variant.name, seed=seed))
    pd.concat(epochs)[["variant", "seed", "epoch", "grad_embeddings"]].to_csv(OUT / "epochs.csv", index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
