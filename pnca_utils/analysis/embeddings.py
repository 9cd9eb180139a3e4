"""Embeddings of chosen test classes and their t-SNE maps (chapters 01, 03, 04 and 08)."""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch


def pick_classes(labels, num_classes: int, seed: int = 0) -> np.ndarray:
    """`num_classes` distinct classes of `labels`, drawn with `seed`, in increasing order."""
    classes = np.unique(np.asarray(labels))
    if not 0 < num_classes <= len(classes):
        raise ValueError(f"num_classes={num_classes} must be between 1 and the {len(classes)} classes present")
    return np.sort(np.random.default_rng(seed).choice(classes, num_classes, replace=False))


def embed_classes(model: torch.nn.Module, dataset, classes: Iterable[int], per_class: int | None = None,
                  device: str = "cpu"):
    """L2-normalised embeddings (N, D) and labels (N,) of the images of `classes` in `dataset`.

    `per_class` keeps only the first that many images of each class (all by default). Labels are
    the data set's own class numbers (not renumbered), so several models embedded with the same
    `classes` can share colours in a figure.
    """
    from torch.utils.data import Subset

    from ..data.base import ClassSubset
    from ..training import embed

    classes = [int(c) for c in classes]
    subset = ClassSubset(dataset, classes)
    keep = np.arange(len(subset))
    if per_class is not None:
        if per_class < 1:
            raise ValueError(f"per_class must be at least 1, got {per_class}")
        keep = np.concatenate([np.flatnonzero(subset.labels == k)[:per_class] for k in range(len(subset.classes))])
    view = Subset(subset, keep.tolist())
    view.labels = subset.labels[keep]
    embeddings, local = embed(model, view, device=device)
    original = np.asarray(subset.classes)[local.numpy()]
    return embeddings.numpy(), original


def tsne(embeddings, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """A 2-D t-SNE map (N, 2) of `embeddings` (N, D): PCA initialisation, fixed `seed`.

    t-SNE keeps neighbourhoods, not distances: read which points sit together, not how far apart
    the groups are. The perplexity is lowered to (N - 1) / 3 for small N, as scikit-learn requires.
    """
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or len(x) < 4:
        raise ValueError(f"embeddings must have shape (N, D) with N >= 4, got {x.shape}")
    perplexity = min(float(perplexity), (len(x) - 1) / 3)
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed).fit_transform(x)
