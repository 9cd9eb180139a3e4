"""What every chapter of the book does after its parameters cell: its output folders and run overrides."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from .paths import checkout


class Workspace(NamedTuple):
    figures: Path  # <out_dir>/figures, every figure the chapter saves
    results: Path  # <out_dir>/results, the chapter's NN.json
    runs: Path  # <out_dir>/runs, the run cache shared by the chapters (pnca_utils.experiments.runs)
    overrides: dict  # config values every run of the chapter takes from its parameters


def workspace(out_dir: str | Path, size: str, epochs: int | None = None, device: str = "cpu") -> Workspace:
    """Create the chapter's output folders and collect its run overrides.

    A relative `out_dir` is taken from the project's root (`paths.checkout`, else the working
    directory), so a chapter opened from `book/` or anywhere else finds the `build/` that `make book`
    filled, run cache included. `epochs`, when given, replaces the size preset's; at size 'ci' (a
    smoke test) runs last 1 epoch otherwise. `device` goes to every run.
    """
    out = project_path(out_dir)
    figures, results = out / "figures", out / "results"
    figures.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    overrides: dict = {"device": device}
    if epochs is not None:
        overrides["epochs"] = epochs
    elif size == "ci":
        overrides["epochs"] = 1
    return Workspace(figures, results, out / "runs", overrides)


def project_path(path: str | Path) -> Path:
    """`path` as given when absolute; else relative to the project's root (the working directory when installed)."""
    path = Path(path)
    return path if path.is_absolute() else (checkout() or Path.cwd()) / path
