"""Pretraining the small CNN on the source task (single digits on clutter): our stand-in for ImageNet."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from .data.embedded import default_cache, EmbeddedSpec, load_source_task
from .models import SmallCNN
from .samplers import RandomBatchSampler

PRETRAIN = dict(epochs=2, batch_size=64, lr=2e-3, image_size=48, version=1)


def pretrained_backbone(spec: EmbeddedSpec = EmbeddedSpec(), cache_dir: Path | str | None = None,
                        progress: bool = True) -> Path:
    """Path of the small CNN's backbone weights pretrained on the source task; trained once, then cached."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    tag = "-".join(f"{k}{v}" for k, v in PRETRAIN.items())
    path = cache / f"smallcnn-{spec.key()}-{tag}.pt"
    if path.exists():
        try:
            SmallCNN().load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return path
        except Exception:  # a damaged file is rebuilt
            path.unlink()
    data = load_source_task(PRETRAIN["image_size"], spec, cache)
    generator = torch.Generator().manual_seed(spec.seed)
    torch.manual_seed(spec.seed)
    backbone = SmallCNN(data.num_channels)
    net = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10))
    opt = torch.optim.Adam(net.parameters(), lr=PRETRAIN["lr"])
    loss_fn = nn.CrossEntropyLoss()
    batches = RandomBatchSampler(len(data), PRETRAIN["batch_size"], seed=int(torch.randint(1 << 30, (1,), generator=generator)))
    net.train()
    for epoch in range(PRETRAIN["epochs"]):
        batches.set_epoch(epoch)
        for idx in tqdm(batches, desc=f"pretrain {epoch + 1}/{PRETRAIN['epochs']}", disable=not progress, leave=False):
            x = torch.stack([data[i][0] for i in idx])
            y = torch.as_tensor(data.labels[idx])
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(backbone.state_dict(), tmp)
    os.replace(tmp, path)
    return path
