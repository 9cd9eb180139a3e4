"""Images: galleries of classes, rows of images, activation maps over images (chapters 00, 04, 06)."""
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
