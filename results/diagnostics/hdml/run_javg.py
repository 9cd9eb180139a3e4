"""The J_avg switch (README, "The J_avg switch" and "The J_avg switch: runs and reading rules").

Run from the project root after the converged comparison:
    .venv/bin/python results/diagnostics/hdml/run_javg.py [JOBS]
HDML-Triplet and HDML-N-pair at size 'converged' (each at its baseline's rate and budget from
results/tuning/curves-converged), with J_avg averaging the mean-reduced real loss (`hdml_javg="mean"`,
the default) and the summed one (`"sum"`, the official scale), seeds 0 to 2, R@1 on the validation
classes: 12 runs into javg/ (runs.csv, ablation.md/csv, grid.json; an interrupted grid resumes).
Then the hardness readings of the same runs into javg/measurements.csv:
    .venv/bin/python results/diagnostics/hdml/measurements.py results/diagnostics/hdml/javg \
        results/diagnostics/hdml/javg/measurements.csv
"""
import sys
from pathlib import Path

from pnca_utils.experiments.ablation import Variant, run_grid, write_summary

OUT = Path(__file__).resolve().parent / "javg"
SEEDS = 3


def variants() -> list[Variant]:
    grid = []
    for name, preset in (("HDML-Triplet", "hdml-triplet"), ("HDML-N-pair", "hdml-npair")):
        mean = f"{name}, J_avg of the mean"
        grid += [Variant(mean, "full", preset=preset, description="J_avg of the mean-reduced loss (our default)"),
                 Variant(f"{name}, J_avg of the sum", "removal", preset=preset, reference=mean,
                         overrides={"hdml_javg": "sum"}, description="J_avg of the summed loss (official scale)")]
    return grid


def main(jobs: int = 2) -> int:
    grid = variants()
    runs = run_grid(grid, "converged", SEEDS, OUT, "build/runs", jobs=jobs, eval_split="val")
    write_summary(runs, grid, OUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(*map(int, sys.argv[1:])))
