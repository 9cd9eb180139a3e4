"""Proxy assignment's follow-up (README, "Follow-up: the regime"): excluded against included at
T = 1/9, at the paper's optimiser settings and on the many-class set.

Run from the project root: `.venv/bin/python results/diagnostics/proxy-assignment/run_regimes.py [JOBS]`.
The included variants are the configs of fast-proxies design (a) "paper rates, proxies 4e2" and
design (c) "backbone 0.004, proxies 0.4"; their rows are copied, by run key, from those folders'
runs.csv into regimes/runs.csv before the grid starts, so only the 10 excluded runs train (about 4 and
6 min each at one thread). An interrupted grid resumes from regimes/runs.csv.
"""
import sys
from pathlib import Path

import pandas as pd

from pnca_utils.config import make_config
from pnca_utils.experiments.ablation import Variant, run_grid, write_summary
from pnca_utils.experiments.runs import run_key

HERE = Path(__file__).resolve().parent
OUT = HERE / "regimes"
FAST_PROXIES = HERE.parent / "fast-proxies"
SEEDS = 5
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


def shared_rows() -> pd.DataFrame:
    """The included arms' rows from the folders that trained them, renamed to this grid's variants;
    each key is checked against this grid's own config for that seed."""
    rows = []
    for regime, (overrides, folder, source) in REGIMES.items():
        runs = pd.read_csv(folder / "runs.csv")
        runs = runs[runs["variant"] == source]
        for seed in range(SEEDS):
            key = run_key(make_config("proxynca++", "converged", seed=seed, eval_split="val", threads=1,
                                      eval_every=20, **overrides))
            match = runs[runs["key"] == key]
            if len(match) != 1:
                raise SystemExit(f"{folder}/runs.csv has no run {key} ({source}, seed {seed}): train it first")
            rows.append(match.assign(variant=f"{regime}, included"))
    return pd.concat(rows, ignore_index=True)


def main(jobs: int = 2) -> int:
    OUT.mkdir(exist_ok=True)
    if not (OUT / "runs.csv").exists():
        shared_rows().to_csv(OUT / "runs.csv", index=False)
    grid = variants()
    runs = run_grid(grid, "converged", SEEDS, OUT, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, grid, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
