"""A cache of training runs keyed by their config, shared by the chapters and the ablation grid.

`cached_fit(config, data, root)` trains into `root/<key>/` and, when a finished run with the
same config is already there, only reloads and evaluates it. Two chapters that train the same
config (say, the full ProxyNCA++ model) therefore train it once per `make book`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
from contextlib import contextmanager
from pathlib import Path

from ..config import Config


def _plain(values: dict) -> dict:
    """A config dict as JSON gives it back (tuples become lists)."""
    return json.loads(json.dumps(values))


def essential(values: dict) -> dict:
    """The fields of a config dict that differ from `Config`'s defaults.

    Keys are built from these, so a field added to `Config` later (with a default) changes no
    existing key, and runs saved before it still count as finished.
    """
    defaults = _plain(Config().to_dict())
    return {k: v for k, v in sorted(_plain(values).items()) if defaults.get(k, object()) != v}


def run_key(config: Config) -> str:
    """A readable, stable folder name for `config`: method, seed and a hash of its non-default fields."""
    digest = hashlib.sha256(json.dumps(essential(config.to_dict())).encode()).hexdigest()[:12]
    return f"{config.method}-seed{config.seed}-{digest}"


def run_dir(config: Config, root: str | Path) -> Path:
    """Where `cached_fit` keeps the run of `config` under `root`."""
    return Path(root) / run_key(config)


def is_finished(config: Config, root: str | Path) -> bool:
    """True when `root` holds a finished run of exactly `config`."""
    path = run_dir(config, root) / "metrics.json"
    if not path.is_file():
        return False
    try:
        saved = json.loads(path.read_text()).get("config")
    except json.JSONDecodeError:
        return False
    return isinstance(saved, dict) and essential(saved) == essential(config.to_dict())


@contextmanager
def locked(folder: Path):
    """Hold `folder`'s run lock: one process at a time trains a run, whichever machine it is on.

    The lock is the operating system's (POSIX record lock, which NFS shares too), so it is released
    when its holder dies, however it dies. Files a killed holder left half-written (`*.tmp`: the
    runs write every file to a temporary name, then rename it) are removed once the lock is ours.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.lockf(handle, fcntl.LOCK_EX)  # waits while another process trains this run
        try:
            for partial in folder.glob("*.tmp"):
                partial.unlink()
            yield
        finally:
            fcntl.lockf(handle, fcntl.LOCK_UN)


def cached_fit(config: Config, data=None, root: str | Path = "build/runs", progress: bool = True):
    """`fit(config, data)` with its checkpoint under `root`: a finished run is reloaded, not retrained.

    A run interrupted part-way resumes from its last epoch. Two processes asked for the same run
    (two grid workers, a grid and a chapter) train it once: the second waits for the first, then
    reloads its finished run. Returns fit's `FitResult`.
    """
    from ..training import fit

    folder = run_dir(config, root)
    with locked(folder):
        return fit(config, data, out_dir=folder, progress=progress, resume=True)
