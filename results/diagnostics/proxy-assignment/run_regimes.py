"""Proxy assignment's follow-up (README, "Follow-up: the regime"): excluded against included at
T = 1/9, at the paper's optimiser settings and on the many-class set.

Run from the project root, in this order:
- `.venv/bin/python results/diagnostics/proxy-assignment/run_regimes.py [JOBS]`: the included variants
  are the configs of fast-proxies design (a) "paper rates, proxies 4e2" and design (c) "backbone
  0.004, proxies 0.4"; their rows are copied, by run key, from those folders' runs.csv into
  regimes/runs.csv before the grid starts, so only the 10 excluded runs train (about 4 and 6 min each
  at one thread). An interrupted grid resumes from regimes/runs.csv.
- `.venv/bin/python results/diagnostics/proxy-assignment/run_regimes.py records [JOBS]`: Q3's records.
  The included runs are retrained into build/runs (regimes/retrained/ keeps their R@1, which must
  match the copied rows), then every run's embedding-gradient norm per epoch goes to regimes/epochs.csv.
"""
import json
import sys
from pathlib import Path

import pandas as pd

from pnca_utils import analysis
from pnca_utils.experiments.ablation import Variant, grid_fixed, run_grid, shared_rows, write_summary
from pnca_utils.experiments.runs import cached_fit

HERE = Path(__file__).resolve().parent
OUT = HERE / "regimes"
FAST_PROXIES = HERE.parent / "fast-proxies"
SEEDS = 5
TOLERANCE = 0.5  # R@1 points, as tests/test_committed_runs.py
REGIMES = {  # regime: (its overrides, the folder and variant whose runs are the included arm)
    "paper rates": (dict(lr=4e-3, proxy_lr=4e2), FAST_PROXIES, "paper rates, proxies 4e2"),
    "many classes": (dict(dataset="embedded-many", lr=4e-3, proxy_lr=0.4), FAST_PROXIES / "many-class",
                     "backbone 0.004, proxies 0.4"),
}


def variants() -> list[Variant]:
    grid = []
    for regime, (overrides, _, _) in REGIMES.items():
        included = f"{regime}, included"
        grid += [Variant(included, "full", overrides=overrides, description=f"{regime}: the positive in, T = 1/9"),
                 Variant(f"{regime}, excluded", "removal", removed=("proxy assignment",), reference=included,
                         overrides=overrides, description=f"{regime}: the positive out, T = 1/9")]
    return grid


def fixed() -> dict:
    """The config values the grid fixes for every run (validation classes, run_grid's threads and evaluation)."""
    return grid_fixed(variants(), "converged", eval_split="val")


def included_rows() -> pd.DataFrame:
    """The included arms' rows from the folders that trained them (same configs, by run key), renamed."""
    return pd.concat([shared_rows(folder / "runs.csv", {f"{regime}, included": source}, variants(), "converged", SEEDS,
                                  eval_split="val") for regime, (_, folder, source) in REGIMES.items()],
                     ignore_index=True)


def main(jobs: int = 2) -> int:
    OUT.mkdir(exist_ok=True)
    if not (OUT / "runs.csv").exists():
        included_rows().to_csv(OUT / "runs.csv", index=False)
    grid = variants()
    runs = run_grid(grid, "converged", SEEDS, OUT, "build/runs", jobs=jobs, **fixed())
    write_summary(runs, grid, OUT)
    return 0


def records(jobs: int = 2) -> int:
    """Q3: retrain the included arms for their records (R@1 checked against the copied rows), then write
    every run's mean embedding-gradient norm per epoch to regimes/epochs.csv."""
    grid = variants()
    included = [v for v in grid if v.kind == "full"]
    retrained = run_grid(included, "converged", SEEDS, OUT / "retrained", "build/runs", jobs=jobs, **fixed())
    copied = pd.read_csv(OUT / "runs.csv").set_index(["variant", "seed"])["R@1"]
    again = retrained.set_index(["variant", "seed"])["R@1"]
    gap = (again - copied.reindex(again.index)).abs()
    print(f"retrained included runs: largest R@1 difference from the copied rows {gap.max():.3f} points")
    if gap.max() > TOLERANCE:
        raise SystemExit(f"a retrained run differs from its copied row by more than {TOLERANCE} points:\n{gap}")
    epochs = []
    for variant in grid:
        for seed in range(SEEDS):
            history = cached_fit(variant.config("converged", seed, **fixed()), root="build/runs", progress=False).history
            per_epoch = analysis.step_means_per_epoch(history, ["grad_embeddings"]).reset_index()
            epochs.append(per_epoch.assign(variant=variant.name, seed=seed))
    pd.concat(epochs)[["variant", "seed", "epoch", "grad_embeddings"]].to_csv(OUT / "epochs.csv", index=False)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["records"]:
        sys.exit(records(*map(int, sys.argv[2:])))
    sys.exit(main(*map(int, sys.argv[1:])))
