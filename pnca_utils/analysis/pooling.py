"""Where global pooling looks: feature maps, their winning cells and the share on the digits (chapter 04)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


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
