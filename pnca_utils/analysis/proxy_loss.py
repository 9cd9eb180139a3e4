"""ProxyNCA's loss and its softmax in closed form, and the gaps to proxies and neighbours (chapters 01-03)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .. import losses


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


def per_image_losses(embeddings, labels, proxies, temperature: float,
                     positive_in_denominator: bool) -> np.ndarray:
    """`losses.proxy_nca_loss` of each image on its own (the loss's batch mean, taken over a batch of one).

    Under exclusion (`positive_in_denominator=False`) a value below 0 marks an image whose own proxy is
    already nearer than the softmax of all the others: the loss still pulls it on (chapter 02).
    """
    x = torch.as_tensor(embeddings, dtype=torch.float64)
    p = torch.as_tensor(proxies, dtype=torch.float64).detach()
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    return np.array([losses.proxy_nca_loss(x[i:i + 1], y[i:i + 1], p, temperature, positive_in_denominator).item()
                     for i in range(len(x))])
