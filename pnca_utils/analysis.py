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


# --------------------------------------------------------------------------- the temperature of the softmax
def assignment_profile(positive_distances, negative_distance: float = 2.0, num_classes: int = 4,
                       temperature: float = 1.0) -> dict[str, np.ndarray]:
    """ProxyNCA++'s softmax over the proxies (the positive in the denominator) as the positive proxy comes closer.

    For each squared distance d_y in `positive_distances` (0 to 4), one unit embedding faces C =
    `num_classes` unit proxies: the positive at d_y, every other one at `negative_distance`. The
    distances are autograd leaves, so `losses.proxy_nca_loss` and backpropagation give the loss's
    derivatives with respect to them. Returns arrays of the same length:

    - "distance": the d_y's;  "probability": p_y = exp(-loss), the probability assigned to the positive;
    - "loss";  "grad_positive": dL/dd_y (the pull);  "grad_negative": dL/dd_z of one negative (minus the push).
    """
    distances = np.asarray(positive_distances, dtype=np.float64).ravel()
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2 (a positive and a negative), got {num_classes}")
    if distances.size == 0 or distances.min() < 0 or distances.max() > 4 or not 0 <= negative_distance <= 4:
        raise ValueError("squared distances of unit vectors lie between 0 and 4")
    rows = {"loss": [], "probability": [], "grad_positive": [], "grad_negative": []}
    for d in distances:
        # Exactly 0 or 4 puts a proxy on the embedding's axis, where the square root below has no derivative.
        dz = torch.tensor([d] + [negative_distance] * (num_classes - 1), dtype=torch.float64).clamp(1e-9, 4 - 1e-9)
        dz.requires_grad_(True)
        cos = 1.0 - dz / 2.0  # ||x - p||^2 = 2 - 2 cos for unit vectors
        x = torch.zeros(1, num_classes + 1, dtype=torch.float64)
        x[0, 0] = 1.0
        # proxy z: cos along x, the rest along an axis of its own
        proxies = torch.cat([cos[:, None], torch.diag(torch.sqrt(1.0 - cos * cos))], dim=1)
        loss = losses.proxy_nca_loss(x, torch.zeros(1, dtype=torch.long), proxies, temperature, True)
        loss.backward()
        rows["loss"].append(loss.item())
        rows["probability"].append(math.exp(-loss.item()))
        rows["grad_positive"].append(dz.grad[0].item())
        rows["grad_negative"].append(dz.grad[1].item())
    return {"distance": distances, **{k: np.array(v) for k, v in rows.items()}}


def proxy_gaps(embeddings, labels, proxies) -> dict[str, np.ndarray]:
    """Per image: squared distance to its own proxy, to the nearest other proxy, and the gap between them.

    Embeddings (N, D) and proxies (C, D) are L2-normalised here, as the loss does; `labels` index the
    proxies. A positive gap means the image's nearest proxy is its own. Returns {"positive",
    "negative", "gap"}, arrays of length N.
    """
    x = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float64), dim=1)
    p = torch.nn.functional.normalize(torch.as_tensor(proxies, dtype=torch.float64).detach(), dim=1)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(x) != len(y) or (len(y) and (y.min() < 0 or y.max() >= len(p))):
        raise ValueError(f"labels must be {len(x)} proxy indices between 0 and {len(p) - 1}")
    d = torch.cdist(x, p).pow(2)
    positive = d.gather(1, y[:, None]).squeeze(1)
    negative = d.scatter(1, y[:, None], float("inf")).min(dim=1).values
    return {"positive": positive.numpy(), "negative": negative.numpy(), "gap": (negative - positive).numpy()}


def neighbour_gaps(embeddings, labels) -> dict[str, np.ndarray]:
    """Per image: squared distance to its nearest classmate, to its nearest other-class image, and the gap.

    The image itself is left out, as in retrieval; a positive gap means its nearest neighbour is a
    classmate (so the share of positive gaps is R@1). Images without a classmate are dropped.
    """
    x = torch.nn.functional.normalize(torch.as_tensor(embeddings, dtype=torch.float64), dim=1)
    y = torch.as_tensor(np.asarray(labels))
    d = torch.cdist(x, x).pow(2)
    d.fill_diagonal_(float("inf"))
    same = y[:, None] == y[None, :]
    positive = d.masked_fill(~same, float("inf")).min(dim=1).values
    negative = d.masked_fill(same, float("inf")).min(dim=1).values
    keep = torch.isfinite(positive) & torch.isfinite(negative)
    positive, negative = positive[keep], negative[keep]
    return {"positive": positive.numpy(), "negative": negative.numpy(), "gap": (negative - positive).numpy()}


# --------------------------------------------------------------------- where global pooling looks (chapter 04)
@torch.no_grad()
def feature_maps(model: torch.nn.Module, dataset, indices: Sequence[int] | None = None, batch_size: int = 256,
                 device: str = "cpu") -> torch.Tensor:
    """The backbone's feature maps (N, C, h, w), before global pooling, in eval mode, on the CPU.

    `model` is an `EmbeddingNet` (its `.backbone` is used) or a backbone itself; `indices` picks
    images of `dataset` (default: all, in order).
    """
    from torch.utils.data import DataLoader, Subset

    backbone = getattr(model, "backbone", model)
    was_training = backbone.training
    backbone.eval()
    view = dataset if indices is None else Subset(dataset, [int(i) for i in indices])
    maps = [backbone(x.to(device)).float().cpu() for x, _ in DataLoader(view, batch_size=batch_size, shuffle=False)]
    backbone.train(was_training)
    return torch.cat(maps)


def box_cell_mask(boxes, image_size: int, grid: tuple[int, int], margin: float = 0.0) -> np.ndarray:
    """(N, h, w) booleans: the cells of an h × w feature map whose centre lies inside each image's box.

    `boxes` (N, 4) are (top, left, bottom, right) in pixels of `image_size`-pixel images, as
    `data.embedded.digit_boxes(split, image_size)` returns them; cell (i, j) covers rows
    i·S/h to (i+1)·S/h and the same for columns. `margin` grows every box by that many pixels on
    each side first; half a cell's side selects the cells whose patch touches the box at all.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    boxes = boxes + np.array([-margin, -margin, margin, margin])
    h, w = grid
    rows = (np.arange(h) + 0.5) * image_size / h
    cols = (np.arange(w) + 0.5) * image_size / w
    inside_rows = (rows[None, :] >= boxes[:, :1]) & (rows[None, :] < boxes[:, 2:3])  # (N, h)
    inside_cols = (cols[None, :] >= boxes[:, 1:2]) & (cols[None, :] < boxes[:, 3:4])  # (N, w)
    return inside_rows[:, :, None] & inside_cols[:, None, :]


def winner_counts(fmaps) -> np.ndarray:
    """(N, h, w): for each cell, how many channels have their maximum there (the cells max pooling reads).

    A channel that is zero (or negative) everywhere in an image has no winner and is not counted.
    """
    f = torch.as_tensor(fmaps)
    if f.ndim != 4:
        raise ValueError(f"fmaps must have shape (N, C, h, w), got {tuple(f.shape)}")
    n, c, h, w = f.shape
    flat = f.reshape(n, c, h * w)
    peak, where = flat.max(dim=2)
    counts = torch.zeros(n, h * w, dtype=torch.int64)
    counts.scatter_add_(1, where, (peak > 0).long())
    return counts.reshape(n, h, w).numpy()


def region_shares(fmaps, masks) -> dict[str, float]:
    """How much of what global pooling reads lies inside a region (e.g. the digits), in percent.

    - "winners": the share of channel maxima (`winner_counts`) that fall inside the region, the
      cells max pooling takes its values from;
    - "mass": the share of the summed activation inside the region, what average pooling adds up
      (activations after a ReLU are non-negative);
    - "area": the share of the cells inside the region, what either would give if it ignored where
      the digits are;
    - "images": how many images the shares average over, those whose region holds at least one cell.
    """
    f = torch.as_tensor(fmaps).double()
    m = torch.as_tensor(np.asarray(masks), dtype=torch.bool)
    if f.ndim != 4 or m.shape != (f.shape[0], f.shape[2], f.shape[3]):
        raise ValueError(f"fmaps (N, C, h, w) and masks (N, h, w) must agree, "
                         f"got {tuple(f.shape)} and {tuple(m.shape)}")
    keep = m.flatten(1).any(dim=1)
    if not keep.any():
        raise ValueError("no image has a cell inside its region")
    counts = torch.as_tensor(winner_counts(f)).double()
    mass = f.clamp_min(0).sum(dim=1)  # (N, h, w)
    m, counts, mass = m[keep].double(), counts[keep], mass[keep]

    def share(values):
        total = values.flatten(1).sum(dim=1)
        inside = (values * m).flatten(1).sum(dim=1)
        ok = total > 0
        return float(100 * (inside[ok] / total[ok]).mean())

    return {"winners": share(counts), "mass": share(mass), "area": float(100 * m.flatten(1).mean(dim=1).mean()),
            "images": int(keep.sum())}


# ------------------------------------------------------------------------------------------------ HDML
def hardening_table(anchor, positive, negative, j_avgs: Sequence[float], alpha: float) -> pd.DataFrame:
    """Where `hdml.harden_negative` puts one negative for each J_avg of `j_avgs` (one row each).

    `anchor`, `positive`, `negative` are points of the same dimension (sequences or 1-D tensors).
    Columns: `J_avg`, `factor` = exp(-alpha / J_avg), `lambda` (the share of its distance to the
    anchor the negative keeps), `d(a, n~)` (its new distance to the anchor), and the coordinates
    `x0`, `x1`, ... of the hardened negative.
    """
    from .hdml import harden_negative

    rows = [torch.as_tensor(v, dtype=torch.float64).reshape(1, -1) for v in (anchor, positive, negative)]
    a, p, n = rows
    if not a.shape == p.shape == n.shape:
        raise ValueError(f"anchor, positive and negative must have the same length, got "
                         f"{a.shape[1]}, {p.shape[1]}, {n.shape[1]}")
    d_neg = float(torch.linalg.vector_norm(n - a))
    out = []
    for j in j_avgs:
        hard = harden_negative(a, p, n, float(j), alpha)[0]
        d_new = float(torch.linalg.vector_norm(hard - a[0]))
        factor = 0.0 if j == 0 else math.exp(-alpha / j)
        out.append({"J_avg": float(j), "factor": factor, "lambda": d_new / d_neg if d_neg > 0 else 1.0,
                    "d(a, n~)": d_new, **{f"x{k}": float(v) for k, v in enumerate(hard)}})
    return pd.DataFrame(out)


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


def read_table(path, required: Sequence[str] = ()) -> pd.DataFrame | None:
    """The CSV at `path` as a DataFrame, or None when it is missing, unreadable, empty or lacks a column
    of `required` (so a chapter can fall back to its own runs)."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        return None
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return None
    if table.empty or any(c not in table.columns for c in required):
        return None
    return table


# ------------------------------------------------------------------------ gradients and optimiser steps (chapter 05)
GRADIENT_KEYS = ("grad_embeddings", "grad_embedding_layer", "grad_backbone", "grad_proxies")


def proxy_gradient_split(embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
                         temperature: float = 1 / 9, positive_in_denominator: bool = True) -> dict[str, float]:
    """Gradient norms of `losses.proxy_nca_loss` (the batch mean) on one batch, split by who receives them.

    Returns {"embedding": mean norm of the gradient per embedding, "positive proxy": mean norm per
    proxy whose class is in the batch, "other proxy": mean norm per proxy whose class is not (nan if
    every class is in the batch), "all proxies": norm of the whole (C, D) proxy gradient}.
    """
    x = embeddings.detach().clone().requires_grad_(True)
    p = proxies.detach().clone().requires_grad_(True)
    labels = torch.as_tensor(labels)
    losses.proxy_nca_loss(x, labels, p, temperature, positive_in_denominator).backward()
    per_proxy = p.grad.norm(dim=1)
    present = torch.zeros(len(p), dtype=torch.bool)
    present[labels.unique()] = True
    other = per_proxy[~present]
    return {"embedding": x.grad.norm(dim=1).mean().item(), "positive proxy": per_proxy[present].mean().item(),
            "other proxy": other.mean().item() if len(other) else float("nan"),
            "all proxies": p.grad.norm().item()}


def adam_step_sizes(gradients, lr: float = 1.0, eps: float = 1.0, steps: int = 1,
                    betas: tuple[float, float] = (0.9, 0.999)) -> np.ndarray:
    """Size of the `steps`-th step `torch.optim.Adam` takes on a parameter that receives the same gradient g
    at every step, for each g of `gradients`.

    With a constant gradient Adam's bias-corrected averages are exactly g and g², so the step is
    lr · |g| / (|g| + eps): about lr for |g| ≫ eps (the usual tiny eps), about lr · |g| for |g| ≪ eps.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    sizes = []
    for g in np.asarray(gradients, dtype=np.float64).ravel():
        w = torch.zeros(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([w], lr=lr, eps=eps, betas=betas)
        before = 0.0
        for _ in range(steps):
            before = w.item()
            w.grad = torch.full_like(w, float(g))
            opt.step()
        sizes.append(abs(w.item() - before))
    return np.array(sizes)


def parameter_groups(model: torch.nn.Module, proxies: torch.Tensor | None = None) -> dict[str, dict[str, float]]:
    """{group: {"values": how many numbers, "norm": their L2 norm}} for the groups `fit`'s optimiser trains
    with their own learning rates: "backbone", "embedding layer" and (if given) "proxies"."""
    groups = {"backbone": list(model.backbone.parameters()), "embedding layer": list(model.embedding.parameters())}
    if proxies is not None:
        groups["proxies"] = [proxies]
    return {name: {"values": float(sum(p.numel() for p in params)),
                   "norm": float(torch.sqrt(sum(p.detach().float().pow(2).sum() for p in params)))}
            for name, params in groups.items()}


def step_scales(history: dict, groups: Mapping[str, Mapping[str, float]], lrs: Mapping[str, float],
                eps: float = 1.0, steps: slice = slice(None)) -> pd.DataFrame:
    """How far one Adam step moves each parameter group, from `fit`'s per-step gradient norms.

    `groups` is `parameter_groups(...)` (sizes and weight norms, e.g. at the start of training), `lrs`
    the learning rate of each group; `steps` picks the training steps to average (default: all).
    Per group, returns one row: the learning rate, the RMS gradient per value (the recorded gradient
    norm / √values, averaged over the steps), the step per value Adam takes for a constant gradient of
    that size (lr · g / (g + eps), see `adam_step_sizes`), the RMS weight per value, and the step
    relative to the weight. A typical value, not each one: Adam steps every value by its own gradient.
    """
    keys = {"backbone": "grad_backbone", "embedding layer": "grad_embedding_layer", "proxies": "grad_proxies"}
    chosen = history["steps"][steps]
    if not chosen:
        raise ValueError("no training steps selected")
    rows = {}
    for name, info in groups.items():
        if name not in keys or name not in lrs:
            raise ValueError(f"group {name!r} needs a gradient key ({', '.join(keys)}) and a learning rate")
        g = float(np.mean([s[keys[name]] for s in chosen])) / math.sqrt(info["values"])
        step = lrs[name] * g / (g + eps)
        weight = info["norm"] / math.sqrt(info["values"])
        rows[name] = {"lr": lrs[name], "RMS gradient": g, "Adam step": step, "RMS weight": weight,
                      "step / weight": step / weight}
    return pd.DataFrame(rows).T


# ----------------------------------------------------------- batches, LayerNorm, run comparisons (chapter 06)
def batch_composition(batches: Iterable[Sequence[int]], labels) -> pd.DataFrame:
    """One row per batch of indices into `labels`: its size, distinct classes, images that have a classmate
    in the batch, same-class pairs, and the size of its largest class."""
    labels = np.asarray(labels)
    rows = []
    for batch in batches:
        _, counts = np.unique(labels[np.asarray(batch, dtype=np.int64)], return_counts=True)
        rows.append({"images": int(counts.sum()), "classes": len(counts),
                     "images with a classmate": int(counts[counts > 1].sum()),
                     "positive pairs": int((counts * (counts - 1) // 2).sum()), "largest class": int(counts.max())})
    if not rows:
        raise ValueError("no batches given")
    return pd.DataFrame(rows)


@torch.no_grad()
def pooled_features(model: torch.nn.Module, dataset, num_images: int = 512, seed: int = 0,
                    device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Globally pooled backbone features of `num_images` images of `dataset` (drawn with `seed`), in eval mode:
    (before LayerNorm, after LayerNorm), each (N, F).

    "After" is `F.layer_norm` without affine parameters, what `EmbeddingNet` applies with
    layernorm=True; it is computed whether or not `model` itself uses LayerNorm.
    """
    from torch.utils.data import DataLoader, Subset

    num_images = min(num_images, len(dataset))
    index = np.sort(np.random.default_rng(seed).choice(len(dataset), num_images, replace=False))
    was_training = model.training
    model.eval()
    loader = DataLoader(Subset(dataset, index.tolist()), batch_size=256, shuffle=False)
    pooled = torch.cat([model.pool(model.backbone(x.to(device))).float().cpu() for x, _ in loader])
    model.train(was_training)
    normed = torch.nn.functional.layer_norm(pooled, pooled.shape[1:])
    return pooled.numpy(), normed.numpy()


def feature_statistics(features) -> dict[str, float]:
    """Scale statistics of feature vectors (N, F), one per image, averaged over the images.

    "mean" and "std": of each vector's F values; "norm": its L2 norm; "norm spread": the std of the
    norms over their mean (0 when every image has the same norm); "cosine": the mean cosine
    similarity between the vectors of two different images (near 1 when they share a large common part).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features must have shape (N, F) with N >= 2, got {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    unit = x / np.maximum(norms[:, None], 1e-12)
    n = len(x)
    cosine = (np.square(unit.sum(axis=0)).sum() - n) / (n * (n - 1))  # mean over the pairs i != j
    return {"mean": float(x.mean(axis=1).mean()), "std": float(x.std(axis=1).mean()), "norm": float(norms.mean()),
            "norm spread": float(norms.std() / norms.mean()), "cosine": float(cosine)}


def compare_to_reference(reference: Mapping[str, float], runs: Mapping[str, Mapping[str, float]],
                         reference_name: str = "reference", columns: Sequence[str] = METRIC_COLUMNS,
                         delta: str = "R@1", digits: int = 1) -> pd.DataFrame:
    """`metrics_table` of the reference run and `runs`, with a column "Δ <delta>": each run minus the reference.

    Δ is taken between the values rounded to `digits`, so it always agrees with the printed table.
    """
    table = metrics_table({reference_name: reference, **runs}, columns)
    if delta not in table.columns:
        raise ValueError(f"no run has {delta!r}")
    rounded = table[delta].map(lambda v: round(float(v), digits))  # Python's round, as f"{v:.{digits}f}" prints
    table[f"Δ {delta}"] = (rounded - rounded.iloc[0]).round(digits)
    return table
