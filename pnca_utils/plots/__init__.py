"""The figures the chapters draw, one module per kind of figure (the numbers are in `pnca_utils.analysis`).

| module | figures | chapters |
|---|---|---|
| `images` | galleries of classes, rows of images, activation maps over images | 00, 04, 06 |
| `points` | labelled point sets, embeddings with proxies, t-SNE panels | 00, 01, 03, 08 |
| `curves` | training histories, sweeps, per-step series, histograms, paired differences and seeds | 01-08 |
| `hardening` | HDML's hardened negatives in the plane | 08 |

Every figure function is also importable from `pnca_utils.plots` itself, as the chapters do.
"""
from __future__ import annotations

from .images import show_gallery, class_gallery, image_rows, activation_overlays
from .points import scatter_classes, embedding_scatter, tsne_panels
from .curves import (training_curves, curves, sweep, step_curves, step_overlay, histograms, delta_bars,
                     paired_seeds)
from .hardening import hardening_picture

__all__ = ["show_gallery", "class_gallery", "image_rows", "activation_overlays", "scatter_classes",
           "embedding_scatter", "tsne_panels", "training_curves", "curves", "sweep", "step_curves",
           "step_overlay", "histograms", "delta_bars", "paired_seeds", "hardening_picture"]
