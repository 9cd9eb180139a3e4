"""Pooled features before and after LayerNorm (chapter 06)."""
from __future__ import annotations

import numpy as np
import torch


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
