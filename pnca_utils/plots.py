"""Figures the chapters share: image galleries and labelled 2-D point sets."""
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
