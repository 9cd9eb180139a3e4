"""Many independent training runs at once: in this process, in local worker processes, or on a Dask cluster.

A grid (the ablations, a learning-rate search) is a list of `Task`s, each a config and a label.
`execute` trains them and hands each finished run back to the caller as it arrives, so a grid
can write its table as it fills. Where the runs train is chosen by two arguments:

- `jobs=1` (the default): one after another in this process;
- `jobs=N`: N local worker processes (spawned, so no thread pool is inherited half-used);
- `scheduler="tcp://host:8786"`: the tasks go to a running Dask scheduler, whose workers may be on
  other machines (dask-jobqueue starts them on SLURM or PBS, dask-kubernetes on Kubernetes).

Where a run trains does not change its numbers. A run's CPU thread count is a config field
(`Config.threads`; grids and searches set it to 1), so the same config computes the same thing in
any of the three places; on a CPU the metrics are bit for bit those of the one-process run. Runs with a `root` train
into the shared run cache through `runs.cached_fit`, which locks each run's folder and writes every
file atomically: a worker killed mid-run leaves only its last finished epoch, which the run's next
attempt resumes from (Dask retries a killed worker's task on another worker).

A run that fails is reported with its label and error; the others carry on, and `execute` returns
the failures for the caller to report at the end.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm.auto import tqdm

import pandas as pd

from ..config import Config, ConfigError
from ..training import bar_options
from .runs import run_key

SCHEDULER_ENV = "PNCA_SCHEDULER"  # a Dask scheduler's address, used when no scheduler is given
GRID_THREADS = 1  # CPU threads per run in grids and searches: parallelism comes from running runs at once


@dataclass(frozen=True)
class Task:
    """One training run of a grid: its config, and how progress bars and failure reports name it."""

    label: str
    config: Config


@dataclass(frozen=True)
class Failure:
    """A run that raised: its label, its config's run key and the error, in one line."""

    label: str
    key: str
    error: str

    def __str__(self) -> str:
        return f"{self.label} ({self.key}): {self.error}"


class RunsFailed(RuntimeError):
    """Some runs of a grid failed; the others finished and were recorded."""

    def __init__(self, failures: list[Failure], total: int):
        self.failures = failures
        super().__init__(f"{len(failures)} of {total} runs failed: " + "; ".join(map(str, failures)))


def train_run(config: Config, root: str | None, data=None) -> dict:
    """Train one run (into the run cache under `root`, or in memory when None): its metrics, times and R@1 curve.

    This is what every worker executes; it reads the data itself when `data` is None.
    """
    from .runs import cached_fit
    from ..training import fit

    started = time.perf_counter()
    if root is None:
        result = fit(config, data, progress=False)
    else:
        result = cached_fit(config, data, root=root, progress=False)
    epochs = result.history["epochs"]
    return {"metrics": result.metrics, "seconds": round(time.perf_counter() - started, 2),
            "train_seconds": round(sum(e["seconds"] for e in epochs), 2),
            "curve": [[e["epoch"], e["R@1"]] for e in epochs if "R@1" in e]}


def check_jobs(tasks: list[Task], jobs: int) -> None:
    """`jobs` local processes fit this machine: at least 1, and jobs × threads per run within its cores."""
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, got {jobs!r}")
    threads = max((t.config.threads or 1) for t in tasks) if tasks else 1
    cores = os.cpu_count() or 1
    if jobs > 1 and jobs * threads > cores:
        raise ConfigError(f"{jobs} jobs x {threads} thread(s) per run exceed this machine's {cores} cores; "
                          f"use --jobs {max(1, cores // threads)} or fewer threads per run (threads=...)")


def execute(tasks: list[Task], root: str | Path | None, on_done: Callable[[Task, dict], None], jobs: int = 1,
            scheduler: str | None = None, data=None, progress: bool = True, desc: str = "runs",
            done_before: int = 0) -> list[Failure]:
    """Train every task; call `on_done(task, outcome)` in this process as each run finishes.

    `outcome` is `train_run`'s dict. `scheduler` (or the PNCA_SCHEDULER environment variable)
    sends the runs to a Dask scheduler; else `jobs` local processes train them. `data`, when
    given, is shipped to every worker once; without it each worker reads the config's data set
    (a shared folder on a cluster). One progress bar counts `done_before` + finished runs out of
    `done_before` + len(tasks). Returns the runs that failed.
    """
    scheduler = scheduler or os.environ.get(SCHEDULER_ENV) or None
    if scheduler is None:
        check_jobs(tasks, jobs)
    root = None if root is None else str(Path(root).resolve())
    bar = tqdm(total=done_before + len(tasks), initial=done_before, desc=desc, unit="run", **bar_options(progress))
    failures = []

    def finished(task: Task, outcome: dict | None, error: BaseException | None) -> None:
        if error is None:
            on_done(task, outcome)
            bar.set_postfix_str(task.label)
        else:
            failures.append(Failure(task.label, run_key(task.config), _one_line(error)))
            bar.write(f"failed: {failures[-1]}")
        bar.update()

    try:
        if scheduler is not None:
            _on_dask(tasks, root, data, scheduler, finished)
        elif jobs == 1:
            for task in tasks:
                outcome, error = _attempt(train_run, task.config, root, data)
                finished(task, outcome, error)
        else:
            _on_processes(tasks, root, data, jobs, finished)
    finally:
        bar.close()
    return failures


def write_table(rows: list[dict], path: Path) -> None:
    """A grid's rows as CSV, written to a temporary name and renamed: a reader never sees half a table."""
    tmp = path.with_name(path.name + ".tmp")
    pd.DataFrame(rows).to_csv(tmp, index=False)
    tmp.replace(path)


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".replace("\n", " ")


def _attempt(fn, *args):
    """(fn(*args), None), or (None, the exception) for any error but an interrupt."""
    try:
        return fn(*args), None
    except Exception as err:  # a failed run is reported; the grid carries on
        return None, err


# --------------------------------------------------------------------------- #
# Local worker processes
# --------------------------------------------------------------------------- #
_WORKER_DATA = None  # the data set a local worker was given when it started


def _start_worker(data) -> None:
    global _WORKER_DATA
    _WORKER_DATA = data


def _train_in_worker(config: Config, root: str | None) -> dict:
    return train_run(config, root, _WORKER_DATA)


def _on_processes(tasks: list[Task], root: str | None, data, jobs: int, finished) -> None:
    """Train the tasks in `jobs` spawned processes, reporting each as it completes."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context, initializer=_start_worker, initargs=(data,)) as pool:
        futures = {pool.submit(_train_in_worker, task.config, root): task for task in tasks}
        try:
            for future in as_completed(futures):
                outcome, error = _attempt(future.result)
                finished(futures[future], outcome, error)
        except BaseException:  # an interrupt: drop the runs not yet started
            for future in futures:
                future.cancel()
            raise


# --------------------------------------------------------------------------- #
# Dask
# --------------------------------------------------------------------------- #
def _on_dask(tasks: list[Task], root: str | None, data, scheduler: str, finished) -> None:
    """Submit the tasks to the Dask scheduler at `scheduler`; report each as it completes."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ConfigError("a Dask scheduler needs the 'distributed' package: pip install 'pnca_utils[cluster]'") \
            from None
    with Client(scheduler) as client:
        shipped = client.scatter(data, broadcast=True) if data is not None else None
        futures = {client.submit(train_run, task.config, root, shipped, key=f"pnca-{run_key(task.config)}",
                                 pure=False): task for task in tasks}
        try:
            for future in as_completed(futures):
                outcome, error = _attempt(future.result)
                finished(futures[future], outcome, error)
        except BaseException:
            client.cancel(list(futures))
            raise
