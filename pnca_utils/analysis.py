"""Non-plot helpers the chapters share: tables of runs, t-SNE of embeddings, loss profiles of ProxyNCA.

Everything here is deterministic given its `seed`, so a chapter's printed numbers and figures are
reproducible; the figures themselves are drawn by `pnca_utils.plots`.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from . import losses

METRIC_COLUMNS = ("R@1", "R@2", "R@4", "R@8", "NMI", "MAP@R", "RP")


# ------------------------------------------------------------------------------------------- tables and prose
def metrics_table(runs: Mapping[str, Mapping[str, float]], columns: Sequence[str] = METRIC_COLUMNS) -> pd.DataFrame:
    """One row per run (in the order given), one column per metric of `columns` that some run has (percent)."""
    if not runs:
        raise ValueError("runs is empty: give at least one {name: metrics} entry")
    present = [c for c in columns if any(c in m for m in runs.values())]
    if not present:
        raise ValueError(f"no run has any of the columns {', '.join(columns)}")
    return pd.DataFrame([{c: m.get(c, float("nan")) for c in present} for m in runs.values()],
                        index=list(runs), columns=present)


def describe_change(before: float, after: float, metric: str = "R@1", digits: int = 1) -> str:
    """'raised R@1 from 4.3 to 6.1 (+1.8 points)', 'lowered ...', or 'left R@1 unchanged at 4.3'.

    Compared at the printed precision, so the words always agree with the numbers shown.
    """
    b, a = round(float(before), digits), round(float(after), digits)
    if a == b:
        return f"left {metric} unchanged at {b:.{digits}f}"
    verb = "raised" if a > b else "lowered"
    return f"{verb} {metric} from {b:.{digits}f} to {a:.{digits}f} ({a - b:+.{digits}f} points)"


# ---------------------------------------------------------------------------------------------------- t-SNE
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

    from .data.base import ClassSubset
    from .training import embed

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


# ------------------------------------------------------------------------------------- ProxyNCA loss profiles
def proxy_configuration(positive_distance: float, negative_distance: float, num_classes: int,
                        dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A unit embedding x (1, D) and unit proxies (C, D), C = `num_classes`, D = C + 1, with
    ||x - p_0||^2 = `positive_distance` (proxy 0 is the positive) and ||x - p_z||^2 = `negative_distance`
    for every other proxy. Squared distances of unit vectors lie in [0, 4].

    x is the first axis; p_0 leans towards the second axis, and each negative towards an axis of its own.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (a positive and a negative), got {num_classes}")
    for name, d in (("positive_distance", positive_distance), ("negative_distance", negative_distance)):
        if not 0 <= d <= 4:
            raise ValueError(f"{name}={d} is not a squared distance of unit vectors (0 to 4)")
    dim = num_classes + 1
    x = torch.zeros(1, dim, dtype=dtype)
    x[0, 0] = 1.0
    proxies = torch.zeros(num_classes, dim, dtype=dtype)
    for z, d in enumerate([positive_distance] + [negative_distance] * (num_classes - 1)):
        cos = 1.0 - d / 2.0  # ||x - p||^2 = 2 - 2 cos(angle) for unit x and p
        proxies[z, 0] = cos
        proxies[z, z + 1] = math.sqrt(max(0.0, 1.0 - cos * cos))
    return x, proxies


def proxy_loss_profile(positive_distances, negative_distance: float = 2.0, num_classes: int = 4,
                       temperature: float = 1.0, positive_in_denominator: bool = False) -> dict[str, np.ndarray]:
    """`losses.proxy_nca_loss` of one embedding as its positive proxy comes closer.

    For each squared distance d in `positive_distances`, builds `proxy_configuration(d, ...)` and returns
    {"distance": the d's, "loss": the loss, "grad": the norm of the loss's gradient with respect to
    the embedding}, each an array of the same length.
    """
    distances = np.asarray(positive_distances, dtype=np.float64).ravel()
    loss_values, grad_norms = [], []
    for d in distances:
        x, proxies = proxy_configuration(float(d), negative_distance, num_classes)
        x.requires_grad_(True)
        loss = losses.proxy_nca_loss(x, torch.zeros(1, dtype=torch.long), proxies, temperature,
                                     positive_in_denominator)
        loss.backward()
        loss_values.append(loss.item())
        grad_norms.append(x.grad.norm().item())
    return {"distance": distances, "loss": np.array(loss_values), "grad": np.array(grad_norms)}
