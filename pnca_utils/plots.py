"""Figures the chapters share: image galleries, labelled 2-D point sets, embedding maps and training curves."""
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


def tsne_panels(models: dict, dataset, classes: Sequence[int], per_class: int, seed: int = 0,
                device: str = "cpu"):
    """t-SNE maps of the same images of `classes` in `dataset`, embedded by each model ({title: model}).

    One panel per model, side by side, one colour per class; each title gives R@1 among the shown
    images, computed on the embeddings themselves (not on the map). Returns (figure, {title: R@1 %}).
    """
    from . import analysis, metrics

    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4.8), squeeze=False)
    r1 = {}
    for ax, (name, model) in zip(axes[0], models.items()):
        emb, labels = analysis.embed_classes(model, dataset, classes, per_class=per_class, device=device)
        r1[name] = 100 * metrics.recall_at_k(emb, labels, [1])[1]
        embedding_scatter(analysis.tsne(emb, seed=seed), labels, ax=ax, classes=classes,
                          title=f"{name}: R@1 {r1[name]:.1f} among these {len(classes)} classes")
    fig.suptitle(f"t-SNE of {len(classes)} test classes ({per_class} images each), one colour per class")
    fig.tight_layout()
    return fig, r1


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


def activation_overlays(images: np.ndarray, maps: dict, boxes: np.ndarray | None = None,
                        titles: Sequence[str] | None = None, size: float = 1.7, title: str | None = None,
                        cmap: str = "inferno"):
    """Images (N, H, W) in the first row, then one row per entry of `maps` ({row name: (N, h, w) maps}),
    each map stretched over its image; `boxes` (N, 4: top, left, bottom, right, in pixels) are drawn
    on every panel. Each map is scaled to its own maximum. Returns the figure.
    """
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W), got {images.shape}")
    n, height, width = images.shape
    for name, m in maps.items():
        if np.asarray(m).shape[0] != n or np.asarray(m).ndim != 3:
            raise ValueError(f"maps {name!r} must have shape ({n}, h, w), got {np.asarray(m).shape}")
    if boxes is not None and np.asarray(boxes).shape != (n, 4):
        raise ValueError(f"boxes must have shape ({n}, 4), got {np.asarray(boxes).shape}")
    if titles is not None and len(titles) != n:
        raise ValueError(f"{n} images but {len(titles)} titles")
    rows = 1 + len(maps)
    fig, axes = plt.subplots(rows, n, figsize=(n * size, rows * size * 1.05), squeeze=False)
    vmax = 255 if images.dtype == np.uint8 else 1
    for r, (name, m) in enumerate([("image", None)] + list(maps.items())):
        for i in range(n):
            ax = axes[r, i]
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=vmax, extent=(0, width, height, 0))
            if m is not None:
                cell = np.asarray(m[i], dtype=float)
                ax.imshow(cell, cmap=cmap, alpha=0.6, vmin=0, vmax=max(cell.max(), 1e-12),
                          extent=(0, width, height, 0), interpolation="nearest")
            if boxes is not None:
                top, left, bottom, right = np.asarray(boxes, dtype=float)[i]
                ax.add_patch(plt.Rectangle((left, top), right - left, bottom - top, fill=False, color="lime", lw=1.2))
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and titles is not None:
                ax.set_title(titles[i], fontsize=9)
        axes[r, 0].set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def hardening_picture(anchor, positive, negative, hardened: np.ndarray, labels: Sequence[str] | None = None,
                      ax=None, title: str | None = None):
    """HDML's hardening in 2-D: anchor, positive, the negative, and where it moves (`hardened`, (K, 2)).

    The dashed circle of radius d+ = ||anchor - positive|| around the anchor is where the rule puts a
    negative at its hardest; the grey segment from the anchor to the negative is the path it moves
    along. `labels` annotates each hardened point (e.g. its J_avg). Returns the axes.
    """
    a, p, n = (np.asarray(v, dtype=float).ravel() for v in (anchor, positive, negative))
    hardened = np.asarray(hardened, dtype=float)
    if not (a.shape == p.shape == n.shape == (2,)):
        raise ValueError(f"anchor, positive and negative must be 2-D points, got shapes {a.shape}, {p.shape}, {n.shape}")
    if hardened.ndim != 2 or hardened.shape[1] != 2:
        raise ValueError(f"hardened must have shape (K, 2), got {hardened.shape}")
    if labels is not None and len(labels) != len(hardened):
        raise ValueError(f"{len(hardened)} hardened points but {len(labels)} labels")
    if ax is None:
        ax = plt.subplots(figsize=(5, 5))[1]
    ax.plot([a[0], n[0]], [a[1], n[1]], color="grey", lw=1, zorder=1)
    ax.add_patch(plt.Circle(tuple(a), float(np.linalg.norm(p - a)), fill=False, ls="--", color="C0", lw=1))
    ax.scatter(*a, s=120, color="C0", marker="o", edgecolor="black", label="anchor", zorder=3)
    ax.scatter(*p, s=120, color="C0", marker="s", label="positive (same class)", zorder=3)
    ax.scatter(*n, s=120, color="C3", marker="^", label="negative (other class)", zorder=3)
    colours = plt.get_cmap("viridis")(np.linspace(0.1, 0.9, max(len(hardened), 1)))
    ax.scatter(hardened[:, 0], hardened[:, 1], s=45, color=colours, marker="x", label="hardened negative", zorder=4)
    for k, (text, (x, y)) in enumerate(zip(labels or [], hardened)):  # labels alternate sides, so neighbours stay legible
        ax.annotate(text, (x, y), xytext=(8, -4) if k % 2 == 0 else (-8, 4), textcoords="offset points",
                    fontsize=8, ha="left" if k % 2 == 0 else "right")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.set_xlabel("embedding dimension 1")
    ax.set_ylabel("embedding dimension 2")
    ax.legend(loc="best", fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return ax


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


def image_rows(rows: dict, size: float = 1.1, title: str | None = None):
    """One row of images per entry of `rows` ({label: images (N, H, W)}), all drawn at the same display size,
    so rows at different resolutions show their pixels; the row's label and resolution on the left.
    Returns the figure."""
    if not rows:
        raise ValueError("rows is empty")
    counts = {len(images) for images in rows.values()}
    if len(counts) != 1:
        raise ValueError(f"every row needs the same number of images, got {sorted(counts)}")
    ncols = counts.pop()
    fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * size, len(rows) * size * 1.05), squeeze=False)
    for row, (label, images) in enumerate(rows.items()):
        images = np.asarray(images)
        for ax, image in zip(axes[row], images):
            ax.imshow(image, cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1,
                      interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row, 0].set_ylabel(f"{label}\n{images.shape[1]}×{images.shape[2]}", rotation=0, ha="right",
                                va="center", fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


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
