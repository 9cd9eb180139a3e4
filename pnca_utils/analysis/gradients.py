"""Gradients and optimiser steps of the network and the proxies (chapter 05)."""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from .. import losses


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


def proxy_turn_angles(embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, lr: float,
                      temperature: float = 1 / 9, eps: float = 1.0) -> torch.Tensor:
    """The angle (radians) by which each proxy turns in one `torch.optim.Adam` step (`lr`, `eps`) on
    `losses.proxy_nca_loss` of one batch (the positive in the denominator, as in ProxyNCA++).

    Adam's first step is lr · g / (|g| + eps) per value, so with eps = 1 and small gradients it is
    about lr · g; the raw proxy's gradient falls as 1 / ||p||, and the angle a step turns the proxy by
    as 1 / ||p||², which is why a proxy's rate must grow with ||p||² (chapter 05).
    """
    p = proxies.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([p], lr=lr, eps=eps)
    losses.proxy_nca_loss(embeddings.detach(), torch.as_tensor(labels), p, temperature, True).backward()
    before = p.detach().clone()
    optimizer.step()
    unit = torch.nn.functional.normalize(before, dim=1)
    along = (p.detach() * unit).sum(1)
    across = (p.detach() - along[:, None] * unit).norm(dim=1)
    return torch.atan2(across, along)  # accurate for tiny angles, where acos of the cosine is not


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
