"""The training step: a batch of images → embeddings → loss → one update of the network and the proxies.

Chapter 01 shows `train_step` line by line. `training.fit` calls it for every batch of every method
but HDML (whose step, `HDML.train_step`, adds a generator and a classifier); around it, `fit` adds
only machinery: mixed precision, several processes, the history's gradient norms, checkpoints.
"""
from __future__ import annotations

from typing import Callable

import torch

from .distributed import MixedPrecision

FLOAT32 = MixedPrecision(False, "cpu")  # no mixed precision: every call below is the plain one

LossOf = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (embeddings, labels) -> scalar loss


def train_step(net: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, loss_of: LossOf,
               optimizer: torch.optim.Optimizer, precision: MixedPrecision = FLOAT32,
               inspect: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of gradient descent on a batch; returns (embeddings, loss).

    `loss_of` holds the proxies when the method has them (e.g. ProxyNCA++'s softmax over the
    squared distances between the normalised embeddings and every proxy, at temperature T), and
    the optimizer holds them in a parameter group of their own, so this one update moves the
    backbone, the embedding layer and the proxies, each at its own learning rate.
    `inspect(embeddings, loss)` runs after the gradients exist and before the update: the
    training loop logs, checks and clips there.
    """
    with precision.autocast():
        embeddings = net(images)  # (batch, D): backbone → global pooling → [LayerNorm] → linear layer
    embeddings = embeddings.float()  # the loss in float32 (a no-op without mixed precision)
    embeddings.retain_grad()  # keep ∂loss/∂embedding, which the history records
    loss = loss_of(embeddings, labels)
    optimizer.zero_grad(set_to_none=True)  # gradients of the last step are forgotten ...
    precision.backward(loss)  # ... and this batch's are computed: network and proxies alike
    if inspect is not None:
        inspect(embeddings, loss)
    precision.step(optimizer)  # Adam moves every parameter group at its own rate
    return embeddings, loss
