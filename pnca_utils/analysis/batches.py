"""What batches hold: classes and images per class (chapter 06)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd


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
