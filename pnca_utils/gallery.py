"""Retrieval galleries: each query beside its nearest neighbours, correct ones marked."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch


def nearest_neighbours(embeddings: torch.Tensor, k: int) -> np.ndarray:
    """(N, k) indices of each item's k nearest other items by Euclidean distance; ties go to the lower index."""
    x = torch.as_tensor(embeddings, dtype=torch.float64)
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} must be between 1 and the number of items minus one ({len(x) - 1})")
    d = torch.cdist(x, x).pow(2)
    d.fill_diagonal_(float("inf"))  # never the query itself
    # a stable sort keeps equal distances in index order
    return torch.sort(d, dim=1, stable=True).indices[:, :k].numpy()


def plot_retrieval(images: np.ndarray, labels: Sequence[int], queries: Sequence[int], neighbours: np.ndarray,
                   title: str | None = None):
    """One row per query: the query, then its neighbours framed green (same class) or red (another class)."""
    labels = np.asarray(labels)
    images = np.asarray(images)
    if images.ndim == 4:  # (N, C, H, W) → (N, H, W) for one channel, (N, H, W, C) otherwise
        images = images[:, 0] if images.shape[1] == 1 else images.transpose(0, 2, 3, 1)
    k = neighbours.shape[1]
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.3 * (k + 1), 1.4 * len(queries)), squeeze=False)
    for row, q in enumerate(queries):
        cells = [(q, "black", "query")] + [
            (int(n), "tab:green" if labels[n] == labels[q] else "tab:red", f"{i + 1}")
            for i, n in enumerate(neighbours[q])]
        for ax, (index, colour, name) in zip(axes[row], cells):
            ax.imshow(images[index], cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3)
            if row == 0:
                ax.set_title(name, fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
