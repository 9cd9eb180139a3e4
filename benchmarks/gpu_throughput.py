"""Training throughput of ProxyNCA++ on one GPU: ResNet-50 at 256 px with mixed precision, the CUB batch.

The paper's CUB settings (`make_config("proxynca++", "paper", dataset="cub")`: batch 32 = 8
classes x 4 images, 2048-d embedding, one proxy per training class, Adam, gradient clipping),
on synthetic images: no data set is read and the weights are random (`weights=None`), so the
number measures the training step alone (forward under autocast, ProxyNCA++ loss in float32,
backward, clipping, Adam), with the backbone trainable as after warm-up. Data loading is not
included. Writes results/gpu.json: device name, torch and CUDA versions, batch, images/s.

    python benchmarks/gpu_throughput.py                      # a CUDA machine
    python benchmarks/gpu_throughput.py --device cpu --steps 2 --image-size 64 --out /tmp/gpu.json

Without CUDA (and the default --device cuda) it exits with a message and writes nothing.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from pnca_utils import distributed, losses
from pnca_utils.config import make_config
from pnca_utils.training import build, make_optimizer

CUB_TRAIN_CLASSES = 100  # classes 1-100 train: one proxy each
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "results" / "gpu.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke test; no AMP)")
    p.add_argument("--steps", type=int, default=50, help="timed training steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (allocator, cuDNN autotune)")
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=None, help="default: the CUB preset's (32)")
    p.add_argument("--no-amp", action="store_true", help="train in float32")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    for name in ("steps", "image_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0:
        p.error("--warmup must be at least 0")
    return args


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def measure(args: argparse.Namespace) -> dict:
    """Time `args.steps` training steps; the result row written to gpu.json."""
    cuda = args.device.startswith("cuda")
    overrides = dict(dataset="cub", data_root="(synthetic)", weights=None, image_size=args.image_size,
                     device=args.device, amp=cuda and not args.no_amp)
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    config = make_config("proxynca++", "paper", **overrides)
    torch.backends.cudnn.benchmark = cuda
    model, proxies = build(config, 3, CUB_TRAIN_CLASSES)
    proxies.data = proxies.data.to(config.device)
    model.train()
    optimizer = make_optimizer(config, model, proxies)  # fit's optimiser: backbone, embedding, proxies
    params = [p for g in optimizer.param_groups for p in g["params"]]
    amp = distributed.MixedPrecision(config.amp, config.device)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(config.batch_size, 3, config.image_size, config.image_size, generator=generator)
    x = x.to(config.device)
    classes = torch.randperm(CUB_TRAIN_CLASSES, generator=generator)[:config.classes_per_batch]
    y = classes.repeat_interleave(config.images_per_class).to(config.device)

    def step() -> torch.Tensor:
        with amp.autocast():
            emb = model(x)
        loss = losses.proxy_nca_loss(emb.float(), y, proxies, config.temperature, config.positive_in_denominator)
        optimizer.zero_grad(set_to_none=True)
        amp.backward(loss)
        amp.unscale(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        amp.step(optimizer)
        return loss

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    seconds = time.perf_counter() - t0
    if not torch.isfinite(loss):
        raise SystemExit(f"gpu_throughput: the loss became {float(loss)}; the number would mean nothing")
    return {
        "device": device_name(config.device), "torch": torch.__version__, "torch_cuda": torch.version.cuda,
        "model": "resnet50 (random weights), ProxyNCA++ CUB settings", "embedding_dim": config.embedding_dim,
        "batch_size": config.batch_size, "image_size": config.image_size,
        "amp": amp.enabled, "amp_dtype": None if amp.dtype is None else str(amp.dtype).removeprefix("torch."),
        "warmup_steps": args.warmup, "steps": args.steps, "seconds": round(seconds, 4),
        "images_per_s": round(args.steps * config.batch_size / seconds, 2),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_throughput: no CUDA device here; this benchmark measures a GPU, so nothing was written. "
              "For a smoke test on a CPU: --device cpu --steps 2 --image-size 64 --out /tmp/gpu.json",
              file=sys.stderr)
        return 1
    row = measure(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(row, indent=2) + "\n")
    print(f"{row['device']}: {row['images_per_s']:.1f} images/s (batch {row['batch_size']}, "
          f"{row['image_size']} px, amp {row['amp_dtype'] or 'off'}) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
