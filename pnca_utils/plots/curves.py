"""Curves and bars: training histories, sweeps, per-step series, histograms, paired differences."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def _finish(ax, xlabel: str, ylabel: str, title: str | None):
    """Axis labels, a light grid, a small legend and the title; returns the axes."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each step (fewer at the start): the trend without the batch noise."""
    values = np.asarray(values, dtype=float)
    sums = np.cumsum(np.insert(values, 0, 0.0))
    lo = np.maximum(np.arange(1, len(values) + 1) - window, 0)
    return (sums[1:] - sums[lo]) / (np.arange(1, len(values) + 1) - lo)


def training_curves(histories: dict, step_keys: Sequence[str] = ("loss",), epoch_key: str = "R@1",
                    smooth: int = 20, baseline: float | None = None, title: str | None = None,
                    labels: dict | None = None):
    """Curves of several `fit` histories ({run name: history}): one panel per step key, then `epoch_key` per epoch.

    Step values are smoothed by a moving average over `smooth` steps (the raw values are drawn faintly).
    `baseline` (e.g. the untrained network's R@1) is drawn as a dashed line in the epoch panel;
    `labels` names the axes of step keys ({key: label}, default: the key). Returns the figure.
    """
    if not histories:
        raise ValueError("histories is empty")
    keys = list(step_keys) + [epoch_key]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.6 * len(keys), 3.4), squeeze=False)
    axes = axes[0]
    for k, (name, history) in enumerate(histories.items()):
        steps = history["steps"]
        for ax, key in zip(axes, step_keys):
            values = np.array([s[key] for s in steps], dtype=float)
            x = np.arange(1, len(values) + 1)
            ax.plot(x, values, color=f"C{k}", alpha=0.2, lw=0.8)
            ax.plot(x, _moving_average(values, smooth), color=f"C{k}", label=name)
        rows = [r for r in history["epochs"] if epoch_key in r]
        axes[-1].plot([r["epoch"] for r in rows], [r[epoch_key] for r in rows], "o-", color=f"C{k}", label=name)
    for ax, key in zip(axes, step_keys):
        ax.set_xlabel(f"training step (moving average of {smooth})")
        ax.set_ylabel((labels or {}).get(key, key))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    if baseline is not None:
        axes[-1].axhline(baseline, color="grey", ls="--", label="untrained")
    axes[-1].set_xlabel("epoch")
    axes[-1].set_ylabel(f"{epoch_key} (%)")
    epochs = sorted({r["epoch"] for h in histories.values() for r in h["epochs"] if epoch_key in r})
    if epochs and len(epochs) <= 20:
        axes[-1].set_xticks(epochs)
    else:
        axes[-1].xaxis.get_major_locator().set_params(integer=True)
    axes[-1].grid(True, alpha=0.3)
    axes[-1].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def curves(x: np.ndarray, ys: dict, xlabel: str, ylabel: str, ax=None, title: str | None = None,
           logy: bool = False, zero_line: bool = False):
    """Several curves over the same `x` ({label: y values}), e.g. a loss against a distance; returns the axes."""
    x = np.asarray(x)
    if ax is None:
        ax = plt.subplots(figsize=(5, 3.6))[1]
    for label, y in ys.items():
        y = np.asarray(y)
        if y.shape != x.shape:
            raise ValueError(f"curve {label!r} has shape {y.shape}, x has {x.shape}")
        ax.plot(x, y, label=label)
    if zero_line:
        ax.axhline(0, color="black", lw=0.8)
    if logy:
        ax.set_yscale("log")
    return _finish(ax, xlabel, ylabel, title)


def sweep(values: Sequence[float], ys: dict, xlabel: str, ylabel: str, ax=None, title: str | None = None,
          logx: bool = True, ticklabels: Sequence[str] | None = None, reference: dict | None = None,
          highlight: float | None = None):
    """A metric against a swept setting: one line with markers per entry of `ys` ({label: values}).

    `ticklabels` names the swept values on the x axis (e.g. '1/9'); `reference` draws dashed
    horizontal lines ({label: y}); `highlight` marks one swept value (e.g. the paper's) with a
    vertical band. Returns the axes.
    """
    x = np.asarray(values, dtype=float)
    if ticklabels is not None and len(ticklabels) != len(x):
        raise ValueError(f"{len(x)} values but {len(ticklabels)} tick labels")
    if ax is None:
        ax = plt.subplots(figsize=(5, 3.6))[1]
    for k, (label, y) in enumerate(ys.items()):
        y = np.asarray(y, dtype=float)
        if y.shape != x.shape:
            raise ValueError(f"{label!r} has {y.shape} values, the sweep has {x.shape}")
        ax.plot(x, y, "o-", color=f"C{k}", label=label)
    for k, (label, y) in enumerate((reference or {}).items()):
        ax.axhline(y, color="grey", ls=["--", ":", "-."][k % 3], lw=1, label=label)
    if highlight is not None:
        ax.axvspan(highlight / 1.15, highlight * 1.15, color="gold", alpha=0.3, lw=0)
    if logx:
        ax.set_xscale("log")
    ax.set_xticks(x)
    ax.set_xticklabels(ticklabels if ticklabels is not None else [f"{v:g}" for v in x])
    ax.minorticks_off()
    return _finish(ax, xlabel, ylabel, title)


def step_curves(histories: dict, keys: Sequence[str], labels: dict | None = None, smooth: int = 20,
                logy: Sequence[str] = (), raw: Sequence[str] = (), title: str | None = None):
    """One panel per step key of `keys` for several `fit` histories ({run name: history}); returns the figure.

    Steps where a key is None or missing (e.g. HDML's J_avg before its window is full) are left as
    gaps; the solid line is a moving average over the last `smooth` recorded values, the faint one
    the raw values. Keys in `raw` are drawn unsmoothed (values that are running means already, or
    that jump); keys in `logy` get a log scale; `labels` names the y axes ({key: label}).
    """
    if not histories:
        raise ValueError("histories is empty")
    if not keys:
        raise ValueError("keys is empty: name at least one step key")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.4 * len(keys), 3.4), squeeze=False)
    for k, (name, history) in enumerate(histories.items()):
        for ax, key in zip(axes[0], keys):
            values = np.array([np.nan if s.get(key) is None else float(s[key]) for s in history["steps"]], dtype=float)
            x = np.arange(1, len(values) + 1)
            ok = np.isfinite(values)
            if not ok.any():
                continue
            if key in raw:
                ax.plot(x, values, color=f"C{k}", label=name)
                continue
            trend = np.full_like(values, np.nan)
            trend[ok] = _moving_average(values[ok], smooth)
            ax.plot(x, values, color=f"C{k}", alpha=0.2, lw=0.8)
            ax.plot(x, trend, color=f"C{k}", label=name)
    for ax, key in zip(axes[0], keys):
        ax.set_xlabel("training step" if key in raw else f"training step (moving average of {smooth})")
        ax.set_ylabel((labels or {}).get(key, key))
        if key in logy:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def step_overlay(history: dict, keys: Sequence[str], labels: dict | None = None, smooth: int = 20, logy: bool = True,
                ax=None, title: str | None = None):
    """Several per-step values of one `fit` history together on one axes ({key: label} in `labels`), e.g. the gradient
    norms of each parameter group; moving average over `smooth` steps, raw values faint. Returns the axes."""
    steps = history["steps"]
    if not steps:
        raise ValueError("the history has no steps")
    missing = [k for k in keys if k not in steps[0]]
    if missing:
        raise ValueError(f"keys {missing} are not in the history's steps ({', '.join(steps[0])})")
    if ax is None:
        ax = plt.subplots(figsize=(5.5, 3.8))[1]
    x = np.arange(1, len(steps) + 1)
    for k, key in enumerate(keys):
        values = np.array([s[key] for s in steps], dtype=float)
        ax.plot(x, values, color=f"C{k}", alpha=0.2, lw=0.8)
        ax.plot(x, _moving_average(values, smooth), color=f"C{k}", label=(labels or {}).get(key, key))
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(f"training step (moving average of {smooth})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def histograms(samples: dict, xlabel: str, bins: int = 30, ax=None, title: str | None = None, density: bool = True):
    """Overlaid histograms of several samples ({label: values}) on shared bins; returns the axes."""
    if not samples:
        raise ValueError("samples is empty")
    values = {label: np.asarray(v, dtype=float).ravel() for label, v in samples.items()}
    lo = min(v.min() for v in values.values())
    hi = max(v.max() for v in values.values())
    edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    if ax is None:
        ax = plt.subplots(figsize=(5, 3.6))[1]
    for k, (label, v) in enumerate(values.items()):
        ax.hist(v, bins=edges, density=density, alpha=0.5, color=f"C{k}", label=label)
    return _finish(ax, xlabel, "density" if density else "count", title)


def delta_bars(deltas: dict, xlabel: str = "Δ R@1 (points)", ax=None, title: str | None = None):
    """Horizontal bars of changes ({label: Δ}), negative in red and positive in green, each labelled with
    its value, and a line at zero; returns the axes."""
    if not deltas:
        raise ValueError("deltas is empty")
    labels, values = list(deltas), np.array([float(v) for v in deltas.values()])
    if ax is None:
        ax = plt.subplots(figsize=(5.5, 0.5 * len(labels) + 1.2))[1]
    y = np.arange(len(labels))[::-1]
    ax.barh(y, values, color=["tab:red" if v < 0 else "tab:green" for v in values], alpha=0.8)
    for yi, v in zip(y, values):
        ax.annotate(f"{v:+.1f}", (v, yi), xytext=(4 if v >= 0 else -4, 0), textcoords="offset points",
                    ha="left" if v >= 0 else "right", va="center", fontsize=9)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    span = max(1.0, np.abs(values).max())
    ax.set_xlim(min(0.0, values.min()) - 0.35 * span, max(0.0, values.max()) + 0.35 * span)
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


def paired_seeds(by_seed, pairs: dict, ticklabels: Sequence[str], ylabel: str = "validation R@1 (%)", ax=None,
                 title: str = "each line one seed"):
    """One line per seed from the first variant of a pair to the second, a colour per pair.

    `by_seed` is a table with a column per variant and a row per seed (e.g. runs.csv pivoted);
    `pairs` is {legend label: (variant, variant)}; `ticklabels` names the two ends. Returns the axes.
    """
    if ax is None:
        ax = plt.subplots(figsize=(6, 4))[1]
    for (label, pair), colour in zip(pairs.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"]):
        for values in np.asarray(by_seed[list(pair)], dtype=float):
            ax.plot([0, 1], values, color=colour, alpha=0.6, marker="o")
        ax.plot([], [], color=colour, label=label)
    ax.set_xticks([0, 1], list(ticklabels))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    return ax
