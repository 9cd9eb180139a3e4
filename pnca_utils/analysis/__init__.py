"""Analyses the chapters compute, one module per concept (the figures are in `pnca_utils.plots`).

| module | what it studies | chapters |
|---|---|---|
| `tables` | metrics of runs side by side, a change in words, stored tables | all |
| `embeddings` | embeddings of chosen test classes, their t-SNE maps | 01, 03, 04, 08 |
| `proxy_loss` | ProxyNCA's loss and softmax in closed form, per image; gaps to proxies and neighbours | 01-03 |
| `pooling` | where global pooling looks: feature maps, winning cells, share on the digits | 04 |
| `gradients` | gradients and Adam's steps of the network and the proxies | 05 |
| `batches` | what a batch holds: classes and images per class | 06 |
| `layernorm` | pooled features before and after LayerNorm | 06 |
| `hardening` | HDML's hardened negatives in closed form | 08 |
| `history` | per-step training histories as series, epoch means, how far a value falls over training | 02, 03, 05, 08 |

Every name is also importable from `pnca_utils.analysis` itself, as the chapters do
(`analysis.describe_change(...)`). Everything is deterministic given its `seed`.
"""
from __future__ import annotations

from .tables import METRIC_COLUMNS, metrics_table, describe_change, compare_to_reference, read_table, read_paired
from .embeddings import pick_classes, embed_classes, tsne
from .proxy_loss import (proxy_configuration, proxy_loss_profile, assignment_profile, proxy_gaps,
                         neighbour_gaps, per_image_losses)
from .pooling import feature_maps, box_cell_mask, winner_counts, region_shares
from .gradients import (GRADIENT_KEYS, proxy_gradient_split, adam_step_sizes, proxy_turn_angles, parameter_groups,
                        step_scales)
from .batches import batch_composition
from .layernorm import pooled_features, feature_statistics
from .hardening import hardening_table
from .history import step_series, step_means_per_epoch, fall_over_training

__all__ = ["METRIC_COLUMNS", "metrics_table", "describe_change", "compare_to_reference", "read_table", "read_paired",
           "pick_classes", "embed_classes", "tsne", "proxy_configuration", "proxy_loss_profile",
           "assignment_profile", "proxy_gaps", "neighbour_gaps", "feature_maps", "box_cell_mask",
           "winner_counts", "region_shares", "GRADIENT_KEYS", "proxy_gradient_split", "adam_step_sizes", "proxy_turn_angles",
           "parameter_groups", "step_scales", "batch_composition", "pooled_features", "feature_statistics",
           "hardening_table", "step_series", "step_means_per_epoch", "fall_over_training"]
