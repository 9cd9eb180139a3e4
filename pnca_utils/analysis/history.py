"""Per-step training histories as series, per-epoch means and how far a value falls over training
(chapters 02, 03, 05, 08)."""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd


def step_series(history: Mapping, key: str) -> np.ndarray:
    """The values of `key` over a `fit` history's steps as floats; NaN where a step has None or no `key`
    (e.g. HDML's J_avg before its window is full)."""
    return np.array([np.nan if s.get(key) is None else float(s[key]) for s in history["steps"]], dtype=float)


def step_means_per_epoch(history: Mapping, keys: Sequence[str]) -> pd.DataFrame:
    """The mean of each step key of `keys` over each epoch's steps (NaNs skipped), one row per epoch."""
    steps = history["steps"]
    if not steps:
        raise ValueError("the history has no steps")
    epochs = np.array([s["epoch"] for s in steps])
    table = {}
    for key in keys:
        values = step_series(history, key)
        table[key] = [float(np.nanmean(values[epochs == e])) if np.isfinite(values[epochs == e]).any() else math.nan
                      for e in np.unique(epochs)]
    return pd.DataFrame(table, index=pd.Index(np.unique(epochs), name="epoch"))


def fall_over_training(per_epoch: pd.DataFrame, key: str) -> pd.Series:
    """How many times smaller `key` is at each run's last epoch than at its first, averaged over seeds: one
    value per variant, from per-epoch rows with 'variant', 'seed', 'epoch' and `key` (an epochs.csv)."""
    ordered = per_epoch.sort_values("epoch").groupby(["variant", "seed"], sort=False)[key]
    return (ordered.first() / ordered.last()).groupby(level="variant", sort=False).mean()
