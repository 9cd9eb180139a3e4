"""Where the project's folders are, from a source checkout or from an installed package.

In a checkout (this package beside `pyproject.toml` and `book/`), the data cache, the results and the
book are the checkout's `data/`, `results/` and `book/`. Installed (`pip install .`), the package
sits in site-packages, so the data cache goes to the user's cache folder and results to the working
directory. Environment variables override both: `PNCA_DATA_DIR` (data cache) and
`PNCA_RESULTS_DIR` (committed results).
"""
from __future__ import annotations

import os
from pathlib import Path


def checkout() -> Path | None:
    """The source checkout this package runs from, or None when it is installed."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "book").is_dir() else None


def data_dir() -> Path:
    """$PNCA_DATA_DIR; else the checkout's data/; else $XDG_CACHE_HOME/pnca-book (default ~/.cache/pnca-book)."""
    if os.environ.get("PNCA_DATA_DIR"):
        return Path(os.environ["PNCA_DATA_DIR"])
    root = checkout()
    if root is not None:
        return root / "data"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pnca-book"


def results_dir() -> Path:
    """$PNCA_RESULTS_DIR; else the checkout's results/; else results/ in the working directory."""
    if os.environ.get("PNCA_RESULTS_DIR"):
        return Path(os.environ["PNCA_RESULTS_DIR"])
    root = checkout()
    return root / "results" if root is not None else Path.cwd() / "results"
