"""`fit`: the one training loop behind the chapters and the CLI."""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from . import distributed, losses
from .config import Config, ConfigError
from .data import RetrievalData, load_data
from .data.base import split_classes
from .hdml import HDML
from .metrics import evaluate, recall_at_k
from .models import EmbeddingNet, build_model
from .samplers import DistributedBatchSampler, make_batch_sampler


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the message says where."""


@dataclass
class FitResult:
    model: EmbeddingNet
    proxies: torch.Tensor | None
    history: dict
    metrics: dict
    config: Config


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)


@torch.no_grad()
def embed(model: nn.Module, dataset, batch_size: int = 64, device: str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """L2-normalised embeddings of a whole data set (eval mode), and its labels.

    The loader seeds itself from a generator of its own: iterating a DataLoader draws a seed from the
    global generator otherwise, and evaluating between epochs would then change the random
    augmentation of the epochs after it.
    """
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, generator=torch.Generator())
    out = torch.cat([model(x.to(device)).float().cpu() for x, _ in loader])
    model.train(was_training)
    return F.normalize(out, dim=1), torch.as_tensor(np.asarray(dataset.labels))


def evaluate_model(model: nn.Module, data: RetrievalData, device: str = "cpu", seed: int = 0) -> dict:
    """Every retrieval metric of `model` on the test classes, in percent."""
    gallery, gallery_labels = embed(model, data.test, device=device)
    if data.query is None:
        return evaluate(gallery, gallery_labels, data.recall_ks, seed=seed)
    query, query_labels = embed(model, data.query, device=device)
    return evaluate(gallery, gallery_labels, data.recall_ks, query, query_labels, seed=seed)


def _recall_at_1(model: nn.Module, data: RetrievalData, device: str = "cpu") -> float:
    """R@1 in percent, searched as `evaluate_model` does (queries in the gallery when there are queries)."""
    gallery, gallery_labels = embed(model, data.test, device=device)
    if data.query is None:
        return 100 * recall_at_k(gallery, gallery_labels, [1])[1]
    query, query_labels = embed(model, data.query, device=device)
    return 100 * recall_at_k(gallery, gallery_labels, [1], query, query_labels)[1]


def _loss(config: Config, emb: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor | None) -> torch.Tensor:
    """The configured metric loss of one batch."""
    if config.method == "proxynca":
        return losses.proxy_nca_loss(emb, labels, proxies, config.temperature, config.positive_in_denominator)
    if config.method == "nca":
        return losses.nca_loss(emb, labels, config.temperature)
    if config.method == "triplet":
        return losses.triplet_loss(emb, labels, margin=config.margin)
    return losses.npair_loss_from_batch(emb, labels)


def _optimizer(config: Config, model: EmbeddingNet, proxies: torch.Tensor | None) -> torch.optim.Adam:
    """Adam with three parameter groups: backbone, embedding layer, proxies (their own, fast, lr)."""
    groups = [{"params": list(model.backbone.parameters()), "lr": config.lr, "name": "backbone"},
              {"params": list(model.embedding.parameters()), "lr": config.embedding_lr or config.lr, "name": "embedding"}]
    if proxies is not None:
        groups.append({"params": [proxies], "lr": config.proxy_lr or config.lr, "name": "proxies"})
    return torch.optim.Adam(groups, eps=config.adam_eps, weight_decay=config.weight_decay)


def _scheduler(config: Config, optimizer: torch.optim.Optimizer):
    if config.lr_schedule == "step":
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(config.lr_milestones), config.lr_gamma)
    if config.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, config.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def _grad_norm(params) -> float:
    grads = [p.grad.detach().norm() for p in params if p.grad is not None]
    return float(torch.stack(grads).norm()) if grads else 0.0


def _save_atomic(obj, path: Path) -> None:
    """Write to a temporary file, then rename: a crash mid-write leaves the old file intact."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _write_json(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def prepare(config: Config, data: RetrievalData | None = None) -> tuple[RetrievalData, RetrievalData]:
    """(data to train on, data to evaluate on): the test classes, or held-out training classes."""
    if data is None:
        data = load_data(config.dataset, config.data_root, config.image_size, config.skip_bad_images)
    if config.eval_split == "test":
        return data, data
    try:
        train, val = split_classes(data.train, config.val_fraction, config.seed)
    except ValueError as err:
        raise ConfigError(f"eval_split='val': {err}") from None
    split = RetrievalData(f"{data.name}-val", train, val, data.recall_ks)
    return split, split


# The small CNN's pretrained backbones: at 48 px only, or over pretrain.MULTISCALE (results/diagnostics/image-scale).
SMALL_CNN_WEIGHTS = ("auto", "auto-multiscale")


def build(config: Config, num_channels: int, num_classes: int) -> tuple[EmbeddingNet, nn.Parameter | None]:
    """The model and, for proxy methods, one proxy per training class, initialised from the seed."""
    weights = config.weights
    if config.arch == "small_cnn" and weights in SMALL_CNN_WEIGHTS:
        if num_channels != 1:
            raise ConfigError(f"weights={weights!r} is a small CNN pretrained on 1-channel digits; this data set has "
                              f"{num_channels} channels: set weights=None, or arch=resnet50 with a weights file")
        from .pretrain import MULTISCALE, pretrained_backbone

        weights = pretrained_backbone(scales=MULTISCALE if weights == "auto-multiscale" else None)
    elif weights in SMALL_CNN_WEIGHTS:
        weights = None
    seed_everything(config.seed)
    model = build_model(config.arch, num_channels, config.embedding_dim, config.pooling, config.layernorm, weights)
    proxies = nn.Parameter(torch.randn(num_classes, config.embedding_dim) / 8) if config.method == "proxynca" else None
    return model.to(config.device), proxies


def _check_resumable(saved: dict, config: Config, epoch: int, path: Path) -> None:
    """A checkpoint resumes `config` if only `epochs` differs (and the schedule does not depend on it)."""
    ignore = {"epochs"} if config.lr_schedule != "cosine" else set()
    current = config.to_dict()
    saved = {**Config().to_dict(), **saved}  # fields added to Config since the checkpoint: their defaults
    if saved.keys() != current.keys() or any(saved[k] != v for k, v in current.items() if k not in ignore):
        raise TrainingError(f"{path} was written by another config; use another --out or delete it")
    if epoch > config.epochs:
        raise TrainingError(f"{path} has {epoch} epochs, more than the {config.epochs} asked for; "
                            "use another --out or delete it")


def _check_finite(loss: float, epoch: int, step: int, out: Path | None) -> None:
    if not math.isfinite(loss):
        kept = f"{out / 'checkpoint.pt'} keeps the last good epoch. " if out is not None else ""
        raise TrainingError(f"loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                            f"{kept}Lower the learning rates or clip gradients.")


@contextmanager
def cpu_threads(threads: int | None):
    """torch's and the BLAS libraries' CPU threads set to `threads` inside the block (None: left as they are).

    A CPU run's numbers depend on its thread count (reductions split differently), so a run
    fixes it: the same config then gives the same numbers on any machine, alone or beside others.
    """
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(threads):
            yield
    finally:
        torch.set_num_threads(before)


def fit(config: Config, data: RetrievalData | None = None, out_dir: str | Path | None = None,
        progress: bool = True, resume: bool = True) -> FitResult:
    """Train `config` and evaluate it; with `out_dir`, checkpoint each epoch, resume, write metrics.json.

    Under torchrun (``WORLD_SIZE`` > 1) every process runs this same call: data-parallel over
    the processes with the same global batch (see `pnca_utils.distributed`); rank 0 evaluates
    and writes the files, and every process returns the same metrics. The run uses
    `config.threads` CPU threads.
    """
    config.validate()
    with cpu_threads(config.threads):
        return _train(config, data, out_dir, progress, resume)


def _train(config: Config, data: RetrievalData | None, out_dir: str | Path | None, progress: bool,
           resume: bool) -> FitResult:
    """The body of `fit`, run inside its thread setting."""
    started = time.perf_counter()
    processes = distributed.world_size()
    if processes > 1 and config.method.startswith("hdml-"):
        raise ConfigError(f"method {config.method!r} trains in one process only (its generator and classifier "
                          f"have their own optimisers); run it without torchrun (WORLD_SIZE={processes})")
    ctx = distributed.context(config.device)
    train_data, eval_data = prepare(config, data)
    model, proxies = build(config, train_data.num_channels, train_data.num_train_classes)
    if proxies is not None:
        proxies.data = proxies.data.to(config.device)
    if ctx.is_distributed:
        if ctx.rank > 0:  # other random draws (augmentation) than rank 0's; DDP copies rank 0's weights
            torch.manual_seed(config.seed + 1_000_003 * ctx.rank)
        distributed.convert_sync_batchnorm(model, config.device)  # batch statistics of the whole batch
        trainable, wrapped_frozen = distributed.Trainable(model, proxies), None
    net = model  # what the forward pass goes through: the model, or the model under DDP
    optimizer = _optimizer(config, model, proxies)
    scheduler = _scheduler(config, optimizer)
    metric_params = [p for g in optimizer.param_groups for p in g["params"]]
    # HDML: generator, classifier, their optimisers and J_avg; the metric optimiser stays the one above
    hdml = HDML.from_config(config, model, train_data.num_train_classes) if config.method.startswith("hdml-") else None
    amp = distributed.MixedPrecision(config.amp, config.device,
                                     "HDML has no mixed-precision path" if hdml is not None else "")
    try:
        batches = make_batch_sampler(train_data.train.labels, config.sampler, config.batch_size,
                                     config.images_per_class, config.seed,
                                     getattr(train_data.train, "classes", None))
    except ValueError as err:
        raise ConfigError(f"{err} (training set: {len(train_data.train)} images, "
                          f"{train_data.num_train_classes} classes)") from None
    if len(batches) == 0:
        raise ConfigError(f"batch_size={config.batch_size} is larger than the training set "
                          f"({len(train_data.train)} images)")
    if ctx.is_distributed:  # this process's slice of each global batch
        try:
            batches = DistributedBatchSampler(batches, ctx.rank, ctx.world_size)
        except ValueError as err:
            raise ConfigError(f"{err} (batch_size={config.batch_size} is the global batch, "
                              f"WORLD_SIZE={ctx.world_size})") from None
    loader = DataLoader(train_data.train, batch_sampler=batches, num_workers=config.num_workers)
    history = {"epochs": [], "steps": []}
    out = Path(out_dir) if out_dir is not None else None
    start_epoch, metrics = 0, None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / "checkpoint.pt"
        if resume and ckpt.exists():
            state = torch.load(ckpt, map_location=config.device, weights_only=True)
            _check_resumable(state["config"], config, state["epoch"], ckpt)
            model.load_state_dict(state["model"])
            if proxies is not None:
                proxies.data.copy_(state["proxies"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if hdml is not None:
                hdml.load_checkpoint(state["hdml"])
            amp.load_state_dict(state.get("scaler"))
            ranks = state.get("rng_ranks") or []
            torch.set_rng_state((ranks[ctx.rank] if len(ranks) == ctx.world_size else state["rng"]).cpu())
            history, start_epoch = state["history"], state["epoch"]

    for epoch in range(start_epoch, config.epochs):
        frozen = epoch < config.warmup_epochs
        model.train()
        for p in model.backbone.parameters():
            p.requires_grad_(not frozen)
        if frozen:
            model.backbone.eval()
        if ctx.is_distributed and frozen != wrapped_frozen:  # DDP syncs the parameters trainable now
            net, wrapped_frozen = None, frozen
            net = distributed.wrap(trainable, config.device)
        batches.set_epoch(epoch)
        t0, epoch_losses = time.perf_counter(), []
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", disable=not (progress and ctx.is_main),
                   leave=False)
        for step, (x, y) in enumerate(bar):
            x, y = x.to(config.device), y.to(config.device)
            if hdml is None:
                with amp.autocast():
                    emb = net(x)
                emb = emb.float()  # the loss in float32 (a no-op without amp)
                emb.retain_grad()
                if ctx.is_distributed and config.method in distributed.GATHERED_METHODS:
                    loss = _loss(config, *distributed.gather_batch(emb, y), proxies)  # the whole batch's pairs
                else:
                    loss = _loss(config, emb, y, proxies)
            else:
                terms = hdml.losses(model, x, y)
                emb, loss = terms.embeddings, terms.metric
            if not ctx.is_distributed:  # processes check after the backward pass, on the batch's loss
                _check_finite(loss.item(), epoch, step, out)
            optimizer.zero_grad(set_to_none=True)
            if hdml is None:
                amp.backward(loss)
                extra = {}
            else:  # each HDML loss reaches only its own parameters; steps the generator and classifier
                extra = hdml.backward(terms, metric_params)
            scale = amp.unscale(optimizer)
            # over processes: the batch's loss; each process's embedding gradients are world_size times
            # one process's (its loss is a mean over its slice, or the gathered batch's loss on every process)
            loss_value, grad_embeddings = ctx.mean(
                [loss.item(), float(emb.grad.norm(dim=1).mean()) / (scale * ctx.world_size)], config.device)
            if ctx.is_distributed:
                _check_finite(loss_value, epoch, step, out)
            record = {"epoch": epoch + 1, "loss": loss_value, "grad_embeddings": grad_embeddings,
                      "grad_embedding_layer": _grad_norm(model.embedding.parameters()),
                      "grad_backbone": _grad_norm(model.backbone.parameters()),
                      "grad_proxies": _grad_norm([proxies]) if proxies is not None else 0.0, **extra}
            if config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(metric_params, config.grad_clip)
            amp.step(optimizer)
            history["steps"].append(record)
            epoch_losses.append(record["loss"])
            bar.set_postfix(loss=f"{record['loss']:.3f}")
        row = {"epoch": epoch + 1, "loss": float(np.mean(epoch_losses)), "seconds": time.perf_counter() - t0,
               "lr": [g["lr"] for g in optimizer.param_groups]}  # the rates this epoch trained with
        scheduler.step()
        for key in ("grad_embeddings", "grad_embedding_layer", "grad_backbone", "grad_proxies"):
            row[key] = float(np.mean([s[key] for s in history["steps"][-len(epoch_losses):]]))
        if epoch + 1 == config.epochs:  # the final evaluation gives the last epoch's R@1
            metrics = ctx.from_main(lambda: evaluate_model(model, eval_data, config.device, config.seed))
            row["R@1"] = metrics["R@1"]
        elif (epoch + 1) % config.eval_every == 0:
            row["R@1"] = ctx.from_main(lambda: _recall_at_1(model, eval_data, config.device))
        history["epochs"].append(row)
        if out is not None:
            rng_ranks = ctx.all_objects(torch.get_rng_state()) if ctx.is_distributed else None
            state = {"model": model.state_dict(), "proxies": None if proxies is None else proxies.detach(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "rng": torch.get_rng_state(), "history": history, "epoch": epoch + 1,
                     "hdml": None if hdml is None else hdml.checkpoint(), "config": config.to_dict()}
            if rng_ranks is not None:
                state["rng_ranks"] = rng_ranks
            if amp.scaler is not None:
                state["scaler"] = amp.state_dict()
            if ctx.is_main:
                _save_atomic(state, out / "checkpoint.pt")

    if metrics is None:  # resumed from a checkpoint that had every epoch
        metrics = ctx.from_main(lambda: evaluate_model(model, eval_data, config.device, config.seed))
    if ctx.is_distributed:
        distributed.revert_sync_batchnorm(model)
    result = FitResult(model, proxies, history, metrics, config)
    if out is not None and ctx.is_main:
        metrics_out = {**metrics, "config": config.to_dict(), "seconds": time.perf_counter() - started}
        _write_json(history, out / "history.json")
        _write_json(metrics_out, out / "metrics.json")
    ctx.barrier()  # the files are there before any process goes on
    return result


def untrained_metrics(config: Config, data: RetrievalData | None = None) -> dict:
    """Metrics of the network before any metric-learning step (the baseline a run must beat)."""
    with cpu_threads(config.threads):
        train_data, eval_data = prepare(config, data)
        model, _ = build(config, train_data.num_channels, train_data.num_train_classes)
        return evaluate_model(model, eval_data, config.device, config.seed)
