"""What every chapter of the book does after its parameters cell: its output folders and run overrides."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple


class Workspace(NamedTuple):
    figures: Path  # <out_dir>/figures, every figure the chapter saves
    results: Path  # <out_dir>/results, the chapter's NN.json
    runs: Path  # <out_dir>/runs, the run cache shared by the chapters (pnca_utils.experiments.runs)
    overrides: dict  # config values every run of the chapter takes from its parameters


def workspace(out_dir: str | Path, size: str, epochs: int | None = None, device: str = "cpu") -> Workspace:
    """Create the chapter's output folders and collect its run overrides.

    `epochs`, when given, replaces the size preset's; at size 'ci' (a smoke test) runs last 1 epoch
    otherwise. `device` goes to every run.
    """
    out = Path(out_dir)
    figures, results = out / "figures", out / "results"
    figures.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    overrides: dict = {"device": device}
    if epochs is not None:
        overrides["epochs"] = epochs
    elif size == "ci":
        overrides["epochs"] = 1
    return Workspace(figures, results, out / "runs", overrides)
