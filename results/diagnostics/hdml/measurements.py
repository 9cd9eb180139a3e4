"""The README's first two predictions, read from the HDML runs' per-step records.

Run from the project root after the converged comparison (README, "The converged comparison"):
    .venv/bin/python results/diagnostics/hdml/measurements.py [GRID_FOLDER [OUT_CSV]]
GRID_FOLDER defaults to results/converged/hdml; its runs.csv names the runs, whose history.json is
read from build/runs (where `ablate --runs build/runs` trained them). Nothing trains here.
Writes OUT_CSV (default: `measurements.csv` beside this file): one row per HDML run and epoch, the
epoch's mean of each recorded quantity (`pnca_utils.hdml.HDML.train_step`), and prints the two readings.
"""
import json
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
RUNS = Path("build/runs")
MEASURED = ("d_positive", "d_negative", "d_hardened", "d_synthetic", "nearer_real", "nearer_synthetic",
            "j_recon", "hardening_factor", "synthetic_weight")


def epoch_means(history: dict) -> pd.DataFrame:
    """The mean of every MEASURED quantity over each epoch's steps."""
    steps = pd.DataFrame(history["steps"])
    missing = sorted(set(MEASURED) - set(steps.columns))
    if missing:
        raise SystemExit(f"the run's history has no {', '.join(missing)}: it was trained before they were recorded")
    return steps.groupby("epoch")[list(MEASURED)].mean().reset_index()


def readings(table: pd.DataFrame) -> pd.DataFrame:
    """Per variant, mean over seeds: synthetic against real anchor-negative distance at the last epoch
    (prediction 1: at least 10 % lower), and J_recon at the last epoch over the first (prediction 2: below 0.5)."""
    epochs = table.groupby("variant")["epoch"]  # each variant's own first and last epoch (budgets differ)
    end = table[table["epoch"] == epochs.transform("max")].groupby("variant")
    start = table[table["epoch"] == epochs.transform("min")].groupby("variant")
    return pd.DataFrame({
        "d_synthetic / d_negative (last epoch)": end["d_synthetic"].mean() / end["d_negative"].mean(),
        "nearer than positive: real": end["nearer_real"].mean(),
        "nearer than positive: synthetic": end["nearer_synthetic"].mean(),
        "J_recon last / first epoch": end["j_recon"].mean() / start["j_recon"].mean(),
        "hardening factor (last epoch)": end["hardening_factor"].mean(),
    })


def main(grid_folder: str = "results/converged/hdml", out_csv: str = str(HERE / "measurements.csv")) -> int:
    runs = pd.read_csv(Path(grid_folder) / "runs.csv")
    runs = runs[runs["variant"].str.startswith("HDML")]
    if runs.empty:
        raise SystemExit(f"{grid_folder}/runs.csv holds no HDML run yet")
    parts = []
    for _, run in runs.iterrows():
        path = RUNS / run["key"] / "history.json"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: train the grid with --runs build/runs first")
        parts.append(epoch_means(json.loads(path.read_text())).assign(variant=run["variant"], seed=run["seed"]))
    table = pd.concat(parts, ignore_index=True)[["variant", "seed", "epoch", *MEASURED]]
    table.to_csv(out_csv, index=False)
    print(readings(table).to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
