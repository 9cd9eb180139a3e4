"""What a committed result was computed with: the code's commit, the library versions and the machine.

Grids and searches write this beside their tables, so that a reader can regenerate them with the
same code and knows which differences to expect on other versions.
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "pandas", "pillow", "threadpoolctl")


def commit(folder: Path = Path(__file__).resolve().parent) -> str | None:
    """The git commit of the checkout holding `folder` ('+changes' when it has uncommitted ones); None outside git."""
    def git(*args):
        return subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+changes" if dirty else "")


def versions() -> dict[str, str | None]:
    """Python's and each library's installed version (None where one is missing)."""
    found = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def record() -> dict:
    """Commit, versions and machine, as one JSON-ready dict."""
    return {"commit": commit(), "versions": versions(),
            "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                        "cpus": os.cpu_count()}}
