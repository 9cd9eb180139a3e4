"""HDML's hardened negatives, drawn in the plane (chapter 08)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


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
