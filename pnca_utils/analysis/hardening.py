"""HDML's hardening of negatives, in closed form (chapter 08)."""
from __future__ import annotations

import math
from typing import Sequence

import pandas as pd
import torch


def hardening_table(anchor, positive, negative, j_avgs: Sequence[float], alpha: float) -> pd.DataFrame:
    """Where `hdml.harden_negative` puts one negative for each J_avg of `j_avgs` (one row each).

    `anchor`, `positive`, `negative` are points of the same dimension (sequences or 1-D tensors).
    Columns: `J_avg`, `factor` = exp(-alpha / J_avg), `lambda` (the share of its distance to the
    anchor the negative keeps), `d(a, n~)` (its new distance to the anchor), and the coordinates
    `x0`, `x1`, ... of the hardened negative.
    """
    from ..hdml import harden_negative

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
