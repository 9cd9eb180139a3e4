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
# Backbone "B" of results/diagnostics/image-scale: the same recipe, each batch at a scale drawn from these.
MULTISCALE = (40, 48, 56, 64)


def pretrained_backbone(spec: EmbeddedSpec = EmbeddedSpec(), cache_dir: Path | str | None = None,
                        progress: bool = True, scales: tuple[int, ...] | None = None) -> Path:
    """Path of the small CNN's backbone weights pretrained on the source task; trained once, then cached.

    By default the source task is seen at PRETRAIN's 48 px only. With `scales` (e.g. MULTISCALE),
    every batch is drawn at one of those sizes instead, so the backbone knows each of them; that
    pretraining runs on one CPU thread, so its weights do not depend on the machine's core count.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    tag = "-".join(f"{k}{v}" for k, v in PRETRAIN.items())
    if scales is not None:
        tag += "-scales" + "_".join(map(str, scales))
    path = cache / f"smallcnn-{spec.key()}-{tag}.pt"
    if path.exists():
        try:
            SmallCNN().load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return path
        except Exception:  # a damaged file is rebuilt
            path.unlink()
    if scales is None:
        backbone = _pretrain({PRETRAIN["image_size"]: load_source_task(PRETRAIN["image_size"], spec, cache)},
                             spec.seed, progress)
    else:
        from .training import cpu_threads

        with cpu_threads(1):
            backbone = _pretrain({size: load_source_task(size, spec, cache) for size in scales}, spec.seed, progress)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(backbone.state_dict(), tmp)
    os.replace(tmp, path)
    return path


def _pretrain(by_size: dict, seed: int, progress: bool) -> SmallCNN:
    """Train a SmallCNN and a 10-way head on the source task; each batch at a size drawn from `by_size`."""
    from .training import bar_options

    sizes = list(by_size)
    data = by_size[sizes[0]]
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    backbone = SmallCNN(data.num_channels)
    net = nn.Sequential(backbone, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(backbone.out_channels, 10))
    opt = torch.optim.Adam(net.parameters(), lr=PRETRAIN["lr"])
    loss_fn = nn.CrossEntropyLoss()
    batches = RandomBatchSampler(len(data), PRETRAIN["batch_size"],
                                 seed=int(torch.randint(1 << 30, (1,), generator=generator)))
    net.train()
    for epoch in range(PRETRAIN["epochs"]):
        batches.set_epoch(epoch)
        bar = tqdm(batches, desc=f"pretrain {epoch + 1}/{PRETRAIN['epochs']}", leave=False, **bar_options(progress))
        for idx in bar:
            if len(sizes) > 1:  # one draw per batch; a single size draws nothing (its weights stay as they were)
                data = by_size[sizes[int(torch.randint(len(sizes), (1,), generator=generator))]]
            x = torch.stack([data[i][0] for i in idx])
            y = torch.as_tensor(data.labels[idx])
            opt.zero_grad()
            loss_fn(net(x), y).backward()
            opt.step()
    return backbone
