"""Points in the plane: labelled point sets, embeddings with proxies, t-SNE panels (chapters 00, 01, 03, 08)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


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
    from .. import metrics
    from ..analysis.embeddings import embed_classes, tsne

    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 4.8), squeeze=False)
    r1 = {}
    for ax, (name, model) in zip(axes[0], models.items()):
        emb, labels = embed_classes(model, dataset, classes, per_class=per_class, device=device)
        r1[name] = 100 * metrics.recall_at_k(emb, labels, [1])[1]
        embedding_scatter(tsne(emb, seed=seed), labels, ax=ax, classes=classes,
                          title=f"{name}: R@1 {r1[name]:.1f} among these {len(classes)} classes")
    fig.suptitle(f"t-SNE of {len(classes)} test classes ({per_class} images each), one colour per class")
    fig.tight_layout()
    return fig, r1
