"""Hyperparameter search on a validation split of the *training* classes (never the test classes)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pandas as pd

from ..config import ConfigError, make_config, parse_overrides
from .parallel import GRID_THREADS, RunsFailed, Task, execute, write_table


def parse_grid(pairs: list[str]) -> dict[str, list]:
    """['lr=1e-3,4e-3', 'adam_eps=1,1e-8'] → {'lr': [0.001, 0.004], 'adam_eps': [1.0, 1e-08]} (typed)."""
    grid = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--grid expects key=v1,v2,..., got {pair!r}")
        key, values = pair.split("=", 1)
        grid[key.strip()] = [parse_overrides([f"{key.strip()}={v}"])[key.strip()] for v in values.split(",")]
    return grid


def grid_search(preset: str, size: str, grid: dict[str, list], seeds: int = 1, out: str | Path | None = None,
                progress: bool = True, data=None, jobs: int = 1, scheduler: str | None = None,
                **fixed) -> pd.DataFrame:
    """Train every grid point (each seed) with eval_split='val'; mean R@1 per point, best first.

    With `out`, rows are appended to `out/search.csv` as they finish and finished runs are
    skipped when the search is run again. Each row keeps the run's validation curve (R@1 at
    every evaluated epoch, as JSON) for choosing an epoch budget. `jobs` local processes or the
    Dask scheduler at `scheduler` train the runs (see `pnca_utils.experiments.parallel`); a failed run is
    reported, the others carry on, and `RunsFailed` lists the failures at the end. Every run uses
    GRID_THREADS CPU threads unless `fixed` sets `threads`.
    """
    fixed.setdefault("threads", GRID_THREADS)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    configs = [make_config(preset, size, **{**fixed, **point, "seed": seed, "eval_split": "val"})
               for point in points for seed in range(seeds)]  # all validated before any training
    table = Path(out) / "search.csv" if out is not None else None
    done = pd.read_csv(table) if table is not None and table.exists() else pd.DataFrame()
    rows = done.to_dict("records")
    finished = {r["key"] for r in rows}
    tasks = [Task(", ".join(f"{k}={getattr(c, k)}" for k in grid) + f", seed {c.seed}", c) for c in configs
             if _search_key(c) not in finished]

    def record(task: Task, outcome: dict) -> None:
        config = task.config
        rows.append({"key": _search_key(config), "preset": preset, "seed": config.seed,
                     **{k: getattr(config, k) for k in grid}, **outcome["metrics"],
                     "val_curve": json.dumps(outcome["curve"]), "train_seconds": outcome["train_seconds"]})
        if table is not None:
            table.parent.mkdir(parents=True, exist_ok=True)
            write_table(rows, table)

    failures = execute(tasks, None, record, jobs=jobs, scheduler=scheduler, data=data, progress=progress,
                       desc=f"search {preset}", done_before=len(configs) - len(tasks))
    if failures:
        raise RunsFailed(failures, len(configs))
    return summarize(pd.DataFrame(rows), list(grid))


def _search_key(config) -> str:
    return json.dumps(config.to_dict(), sort_keys=True)


def summarize(runs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Mean, std and count of validation R@1 per grid point, best first."""
    summary = runs.groupby(keys, dropna=False)["R@1"].agg(["mean", "std", "count"]).reset_index()
    return summary.sort_values("mean", ascending=False).reset_index(drop=True)


def to_markdown(summary: pd.DataFrame) -> str:
    return summary.to_markdown(index=False, floatfmt="g") + "\n"


# --------------------------------------------------------------------------- #
# Epoch budgets from validation curves
# --------------------------------------------------------------------------- #
BUDGET_GAIN = 1.0  # R@1 points: the rest of the curve gains less than this over the best so far ...
BUDGET_WINDOW = 5  # ... and at least this many epochs of it were seen


def epoch_budget(curve: list, gain: float = BUDGET_GAIN, window: int = BUDGET_WINDOW) -> int | None:
    """The first epoch e after which no later epoch beats the best R@1 up to e by `gain` or more.

    `curve` is [[epoch, R@1], ...] with every epoch evaluated. The whole rest of the curve is
    compared, not the next few epochs, so a curve that stays flat for a while and then climbs is
    not cut at its flat start; the best so far (not the last value) is compared, so one noisy
    epoch neither stops nor prolongs training. None when fewer than `window` epochs follow the
    first such e: the curve ends before it has shown that it levelled off.
    """
    values = [r for _, r in sorted(curve)]
    for e in range(1, len(values) - window + 1):
        if max(values[e:]) - max(values[:e]) < gain:
            return e
    return None


def budget_table(folder: str | Path) -> pd.DataFrame:
    """One row per run of every search.csv under `folder`: its grid point, seed, best and last R@1, budget."""
    rows = []
    for table in sorted(Path(folder).glob("*/search.csv")):
        for run in pd.read_csv(table).to_dict("records"):
            curve = json.loads(run["val_curve"])
            point = {k: "" if k not in run or pd.isna(run[k]) else f"{run[k]:g}" for k in ("lr", "proxy_lr")}
            rows.append({"search": table.parent.name, "preset": run["preset"], **point, "seed": run["seed"],
                         "epochs": len(curve),
                         "best R@1": max(r for _, r in curve), "last R@1": curve[-1][1],
                         "budget": epoch_budget(curve)})
    order = ["search", "lr", "proxy_lr", "seed"]
    return pd.DataFrame(rows).sort_values(order, key=lambda c: c.map(_sort_key)).reset_index(drop=True)


def read_curves(folder: str | Path) -> pd.DataFrame:
    """Every validation curve of the search.csv files under `folder`, one row per run and epoch:
    search, preset, lr, proxy_lr, seed, epoch, R@1 (on the validation classes)."""
    rows = []
    for table in sorted(Path(folder).glob("*/search.csv")):
        for run in pd.read_csv(table).to_dict("records"):
            point = {k: run[k] if k in run and not pd.isna(run[k]) else None for k in ("lr", "proxy_lr")}
            rows += [{"search": table.parent.name, "preset": run["preset"], **point, "seed": run["seed"],
                      "epoch": epoch, "R@1": r1} for epoch, r1 in sorted(json.loads(run["val_curve"]))]
    return pd.DataFrame(rows, columns=["search", "preset", "lr", "proxy_lr", "seed", "epoch", "R@1"])


def _sort_key(value):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, str(value))


def write_budgets(folder: str | Path) -> pd.DataFrame:
    """`folder/budgets.md`: `budget_table(folder)` as Markdown ('more' where a curve has not levelled off)."""
    table = budget_table(folder)
    shown = table.assign(budget=[("more" if pd.isna(b) else str(int(b))) for b in table["budget"]],
                         **{c: [f"{v:.2f}" for v in table[c]] for c in ("best R@1", "last R@1")})
    note = (f"\nbudget: the first epoch after which no later epoch gains {BUDGET_GAIN:g} point of validation R@1 "
            f"over the best so far, with at least {BUDGET_WINDOW} epochs seen after it; 'more': the curve ends "
            "before that (`pnca_utils.experiments.tuning.epoch_budget`).\n")
    markdown = shown.astype(str).to_markdown(index=False, disable_numparse=True)
    (Path(folder) / "budgets.md").write_text(markdown + "\n" + note)
    return table
