"""Figures the chapters share: image galleries, labelled 2-D point sets, embedding maps and training curves."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def show_gallery(images: np.ndarray, titles: Sequence[str] | None = None, ncols: int = 8,
                 size: float = 1.1, title: str | None = None):
    """Images (N, H, W) or (N, H, W, C) in a grid of `ncols` columns, one optional title each; returns the figure."""
    images = np.asarray(images)
    if titles is not None and len(titles) != len(images):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    nrows = max(1, -(-len(images) // ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * size, nrows * size * 1.15), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def class_gallery(images: np.ndarray, labels: np.ndarray, classes: Sequence[int], per_class: int = 8,
                  class_names: Sequence[str] | None = None, size: float = 1.0, title: str | None = None):
    """One row per class of `classes`: its first `per_class` images, the row labelled with the class name."""
    labels = np.asarray(labels)
    rows = []
    for c in classes:
        index = np.flatnonzero(labels == c)[:per_class]
        if len(index) < per_class:
            raise ValueError(f"class {c} has {len(index)} images, fewer than per_class={per_class}")
        rows.append(index)
    fig, axes = plt.subplots(len(rows), per_class, figsize=(per_class * size, len(rows) * size), squeeze=False)
    for row, (c, index) in enumerate(zip(classes, rows)):
        for ax, i in zip(axes[row], index):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1)
            ax.set_xticks([])
            ax.set_yticks([])
        name = class_names[c] if class_names is not None else str(c)
        axes[row, 0].set_ylabel(name, rotation=0, ha="right", va="center", fontsize=10)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def scatter_classes(points: np.ndarray, labels: np.ndarray, point_names: Sequence[str] | None = None,
                    class_names: Sequence[str] | None = None, ax=None, title: str | None = None):
    """2-D points coloured by class (`class_names[c]` names class c), each optionally annotated; returns the axes."""
    points, labels = np.asarray(points), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"points must have shape (N, 2), got {points.shape}")
    if ax is None:
        ax = plt.subplots(figsize=(4.5, 4.5))[1]
    for k, c in enumerate(np.unique(labels)):
        at = labels == c
        name = class_names[int(c)] if class_names is not None else f"class {c}"
        ax.scatter(points[at, 0], points[at, 1], s=80, color=f"C{k}", label=name, zorder=2)
    for name, (x, y) in zip(point_names or [], points):
        ax.annotate(name, (x, y), xytext=(6, 4), textcoords="offset points")
    ax.set_xlabel("embedding dimension 1")
    ax.set_ylabel("embedding dimension 2")
    ax.set_aspect("equal")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    if title:
        ax.set_title(title)
    return ax


def embedding_scatter(points: np.ndarray, labels: np.ndarray, title: str | None = None, ax=None,
                      proxies: np.ndarray | None = None, proxy_labels: np.ndarray | None = None,
                      classes: Sequence[int] | None = None, class_names: Sequence[str] | dict | None = None,
                      legend: bool = False, size: float = 12):
    """2-D embeddings (e.g. a t-SNE map) as dots coloured by class, with optional proxies as stars; returns the axes.

    Colours follow the class's position in `classes` (default: every class shown, sorted), so panels
    that show the same classes colour them alike; up to 20 classes get distinct colours. `class_names`
    (a sequence indexed by class, or a dict) names classes in the legend; `legend=True` draws one.
    """
    points, labels = np.asarray(points), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(f"points must have shape (N, 2) and labels (N,), got {points.shape} and {labels.shape}")
    if (proxies is None) != (proxy_labels is None):
        raise ValueError("give proxies and proxy_labels together")
    shown = labels if proxy_labels is None else np.concatenate([labels, np.asarray(proxy_labels)])
    classes = list(np.unique(shown)) if classes is None else list(classes)
    missing = set(shown.tolist()) - set(int(c) for c in classes)
    if missing:
        raise ValueError(f"labels {sorted(missing)[:5]} are not in classes")
    if ax is None:
        ax = plt.subplots(figsize=(4.5, 4.5))[1]
    cmap = plt.get_cmap("tab20")
    order = list(range(0, 20, 2)) + list(range(1, 20, 2))  # the ten strong colours first, then their light pairs
    colour = {int(c): cmap(order[k % 20]) for k, c in enumerate(classes)}
    for c in classes:
        at = labels == c
        if at.any():
            name = class_names[int(c)] if class_names is not None else f"class {c}"
            ax.scatter(points[at, 0], points[at, 1], s=size, color=colour[int(c)], label=name, zorder=2)
    if proxies is not None:
        for p, c in zip(np.asarray(proxies), np.asarray(proxy_labels)):
            ax.scatter(p[0], p[1], s=size * 12, marker="*", color=colour[int(c)], edgecolor="black", zorder=3)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal", adjustable="datalim")
    if legend:
        ax.legend(loc="best", fontsize=8)
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
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax
