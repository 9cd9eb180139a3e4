"""`fit`: the one training loop behind the chapters and the CLI."""
from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
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
from .step import train_step


def bar_options(progress: bool) -> dict:
    """tqdm's keyword for `progress`: off when False, or when TQDM_DISABLE=1 (what the book's headless
    kernel sets). tqdm's console bar reads that variable itself; its notebook bar, the one `tqdm.auto`
    picks inside a kernel, does not, so it is read here."""
    disabled = not progress or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true")
    return {"disable": True} if disabled else {}


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
        loss = losses.proxy_nca_loss(emb, labels, proxies, config.temperature, config.positive_in_denominator)
        if config.proxy_gradient_size == "own":
            return loss
        factor = losses.assignment_factor(emb, labels, proxies, config.temperature)
        return loss * factor if config.proxy_gradient_size == "included" else loss / factor
    if config.method == "nca":
        return losses.nca_loss(emb, labels, config.temperature)
    if config.method == "triplet":
        return losses.triplet_loss(emb, labels, margin=config.margin)
    return losses.npair_loss_from_batch(emb, labels)


def make_optimizer(config: Config, model: EmbeddingNet, proxies: torch.Tensor | None) -> torch.optim.Adam:
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
    # the small CNN is pretrained on greyscale digits; colour images: see models.colour_from_grey
    if config.arch == "small_cnn" and weights in SMALL_CNN_WEIGHTS:
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

    The loop reads as its parts: `_start` builds the run; each epoch trains every batch with
    `step.train_step` (`_train_epoch`), evaluates (`_evaluate`) and checkpoints (`_save`).
    Under torchrun (``WORLD_SIZE`` > 1) every process runs this same call: data-parallel over
    the processes with the same global batch (see `pnca_utils.distributed`); rank 0 evaluates
    and writes the files, and every process returns the same metrics. The run uses
    `config.threads` CPU threads.
    """
    config.validate()
    with cpu_threads(config.threads):
        started = time.perf_counter()
        run = _start(config, data, out_dir)
        start_epoch = _resume(run) if resume and run.out is not None else 0
        metrics = None
        for epoch in range(start_epoch, config.epochs):
            row = _train_epoch(run, epoch, progress)
            metrics = _evaluate(run, epoch, row)
            run.history["epochs"].append(row)
            _save(run, epoch)
        if metrics is None:  # resumed from a checkpoint that had every epoch
            metrics = run.ctx.from_main(lambda: evaluate_model(run.model, run.eval_data, config.device, config.seed))
        return _finish(run, metrics, started)


@dataclass
class _Run:
    """Everything one training run holds between its steps."""

    config: Config
    ctx: distributed.Context
    train_data: RetrievalData
    eval_data: RetrievalData
    model: EmbeddingNet
    proxies: nn.Parameter | None
    optimizer: torch.optim.Adam
    scheduler: object
    hdml: HDML | None
    precision: distributed.MixedPrecision
    batches: object
    loader: DataLoader
    out: Path | None
    net: nn.Module = None  # what the forward pass goes through: the model, or the model under DDP
    trainable: object = None  # distributed runs: the model and proxies DDP wraps
    wrapped_frozen: bool | None = None  # the warm-up state `net` was wrapped for
    history: dict = field(default_factory=lambda: {"epochs": [], "steps": []})

    @property
    def metric_params(self) -> list:
        return [p for g in self.optimizer.param_groups for p in g["params"]]

    def loss_of(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The configured loss of a batch; across processes, on the whole batch where the method needs its pairs."""
        if self.ctx.is_distributed and self.config.method in distributed.GATHERED_METHODS:
            emb, labels = distributed.gather_batch(emb, labels)
        return _loss(self.config, emb, labels, self.proxies)


def _start(config: Config, data: RetrievalData | None, out_dir: str | Path | None) -> _Run:
    """Data, model, proxies, optimisers (HDML's too), mixed precision and batches, in a fixed order of draws."""
    processes = distributed.world_size()
    if processes > 1 and config.method.startswith("hdml-"):
        raise ConfigError(f"method {config.method!r} trains in one process only (its generator and classifier "
                          f"have their own optimisers); run it without torchrun (WORLD_SIZE={processes})")
    ctx = distributed.context(config.device)
    train_data, eval_data = prepare(config, data)
    model, proxies = build(config, train_data.num_channels, train_data.num_train_classes)
    if proxies is not None:
        proxies.data = proxies.data.to(config.device)
    trainable = None
    if ctx.is_distributed:
        if ctx.rank > 0:  # other random draws (augmentation) than rank 0's; DDP copies rank 0's weights
            torch.manual_seed(config.seed + 1_000_003 * ctx.rank)
        distributed.convert_sync_batchnorm(model, config.device)  # batch statistics of the whole batch
        trainable = distributed.Trainable(model, proxies)
    optimizer = make_optimizer(config, model, proxies)
    scheduler = _scheduler(config, optimizer)
    # HDML: generator, classifier, their optimisers and J_avg; the metric optimiser stays the one above
    hdml = HDML.from_config(config, model, train_data.num_train_classes) if config.method.startswith("hdml-") else None
    precision = distributed.MixedPrecision(config.amp, config.device,
                                           "HDML has no mixed-precision path" if hdml is not None else "")
    batches = _batches(config, train_data, ctx)
    loader = DataLoader(train_data.train, batch_sampler=batches, num_workers=config.num_workers)
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    return _Run(config, ctx, train_data, eval_data, model, proxies, optimizer, scheduler, hdml, precision,
                batches, loader, out, net=model, trainable=trainable)


def _batches(config: Config, train_data: RetrievalData, ctx):
    """The epoch's batches (class-balanced or random), this process's slice of each under torchrun."""
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
    if ctx.is_distributed:
        try:
            batches = DistributedBatchSampler(batches, ctx.rank, ctx.world_size)
        except ValueError as err:
            raise ConfigError(f"{err} (batch_size={config.batch_size} is the global batch, "
                              f"WORLD_SIZE={ctx.world_size})") from None
    return batches


def _resume(run: _Run) -> int:
    """Load `out/checkpoint.pt` when there is one; the epoch to go on from (0 without one)."""
    ckpt = run.out / "checkpoint.pt"
    if not ckpt.exists():
        return 0
    config, ctx = run.config, run.ctx
    state = torch.load(ckpt, map_location=config.device, weights_only=True)
    _check_resumable(state["config"], config, state["epoch"], ckpt)
    run.model.load_state_dict(state["model"])
    if run.proxies is not None:
        run.proxies.data.copy_(state["proxies"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.hdml is not None:
        run.hdml.load_checkpoint(state["hdml"])
    run.precision.load_state_dict(state.get("scaler"))
    ranks = state.get("rng_ranks") or []
    torch.set_rng_state((ranks[ctx.rank] if len(ranks) == ctx.world_size else state["rng"]).cpu())
    run.history = state["history"]
    return state["epoch"]


def _enter_epoch(run: _Run, epoch: int) -> None:
    """Train mode; during warm-up the backbone is frozen (statistics included); DDP rewrapped when that changes."""
    frozen = epoch < run.config.warmup_epochs
    run.model.train()
    for p in run.model.backbone.parameters():
        p.requires_grad_(not frozen)
    if frozen:
        run.model.backbone.eval()
    if run.ctx.is_distributed and frozen != run.wrapped_frozen:  # DDP syncs the parameters trainable now
        run.net, run.wrapped_frozen = None, frozen
        run.net = distributed.wrap(run.trainable, run.config.device)
    run.batches.set_epoch(epoch)


def _train_epoch(run: _Run, epoch: int, progress: bool) -> dict:
    """Every batch of one epoch through `train_step` (HDML: `HDML.train_step`); the epoch's history row."""
    config = run.config
    _enter_epoch(run, epoch)
    t0, first = time.perf_counter(), len(run.history["steps"])
    bar = tqdm(run.loader, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False,
               **bar_options(progress and run.ctx.is_main))
    for step, (x, y) in enumerate(bar):
        x, y = x.to(config.device), y.to(config.device)
        record = {"epoch": epoch + 1}
        inspect = partial(_after_backward, run, record, epoch, step)
        if run.hdml is None:
            train_step(run.net, x, y, run.loss_of, run.optimizer, run.precision, inspect)
        else:
            record.update(run.hdml.train_step(run.model, x, y, run.optimizer, run.metric_params, inspect)[1])
        run.history["steps"].append(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}")
    steps = run.history["steps"][first:]
    row = {"epoch": epoch + 1, "loss": float(np.mean([s["loss"] for s in steps])),
           "seconds": time.perf_counter() - t0,
           "lr": [g["lr"] for g in run.optimizer.param_groups]}  # the rates this epoch trained with
    run.scheduler.step()
    for key in ("grad_embeddings", "grad_embedding_layer", "grad_backbone", "grad_proxies"):
        row[key] = float(np.mean([s[key] for s in steps]))
    return row


def _after_backward(run: _Run, record: dict, epoch: int, step: int, emb: torch.Tensor, loss: torch.Tensor) -> None:
    """Between the gradients and the update: stop on a non-finite loss, log the gradient norms, clip."""
    ctx, proxies, model = run.ctx, run.proxies, run.model
    if not ctx.is_distributed:  # processes check on the batch's loss, after averaging it
        _check_finite(loss.item(), epoch, step, run.out)
    scale = run.precision.unscale(run.optimizer)
    # over processes: the batch's loss; each process's embedding gradients are world_size times
    # one process's (its loss is a mean over its slice, or the gathered batch's loss on every process)
    loss_value, grad_embeddings = ctx.mean(
        [loss.item(), float(emb.grad.norm(dim=1).mean()) / (scale * ctx.world_size)], run.config.device)
    if ctx.is_distributed:
        _check_finite(loss_value, epoch, step, run.out)
    record.update({"loss": loss_value, "grad_embeddings": grad_embeddings,
                   "grad_embedding_layer": _grad_norm(model.embedding.parameters()),
                   "grad_backbone": _grad_norm(model.backbone.parameters()),
                   "grad_proxies": _grad_norm([proxies]) if proxies is not None else 0.0})
    if run.config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(run.metric_params, run.config.grad_clip)


def _evaluate(run: _Run, epoch: int, row: dict) -> dict | None:
    """After the last epoch every metric (returned); every `eval_every` epochs R@1 only, into `row`."""
    config, model, data = run.config, run.model, run.eval_data
    if epoch + 1 == config.epochs:  # the final evaluation gives the last epoch's R@1
        metrics = run.ctx.from_main(lambda: evaluate_model(model, data, config.device, config.seed))
        row["R@1"] = metrics["R@1"]
        return metrics
    if (epoch + 1) % config.eval_every == 0:
        row["R@1"] = run.ctx.from_main(lambda: _recall_at_1(model, data, config.device))
    return None


def _save(run: _Run, epoch: int) -> None:
    """`out/checkpoint.pt` after each epoch: everything a bit-identical resume needs (rank 0 writes it)."""
    if run.out is None:
        return
    ctx, proxies = run.ctx, run.proxies
    rng_ranks = ctx.all_objects(torch.get_rng_state()) if ctx.is_distributed else None
    state = {"model": run.model.state_dict(), "proxies": None if proxies is None else proxies.detach(),
             "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
             "rng": torch.get_rng_state(), "history": run.history, "epoch": epoch + 1,
             "hdml": None if run.hdml is None else run.hdml.checkpoint(), "config": run.config.to_dict()}
    if rng_ranks is not None:
        state["rng_ranks"] = rng_ranks
    if run.precision.scaler is not None:
        state["scaler"] = run.precision.state_dict()
    if ctx.is_main:
        _save_atomic(state, run.out / "checkpoint.pt")


def _finish(run: _Run, metrics: dict, started: float) -> FitResult:
    """Undo the distributed set-up; write history.json and metrics.json (rank 0); the result."""
    ctx, out = run.ctx, run.out
    if ctx.is_distributed:
        distributed.revert_sync_batchnorm(run.model)
    if out is not None and ctx.is_main:
        _write_json(run.history, out / "history.json")
        _write_json({**metrics, "config": run.config.to_dict(), "seconds": time.perf_counter() - started},
                    out / "metrics.json")
    ctx.barrier()  # the files are there before any process goes on
    return FitResult(run.model, run.proxies, run.history, metrics, run.config)


def untrained_metrics(config: Config, data: RetrievalData | None = None) -> dict:
    """Metrics of the network before any metric-learning step (the baseline a run must beat)."""
    with cpu_threads(config.threads):
        train_data, eval_data = prepare(config, data)
        model, _ = build(config, train_data.num_channels, train_data.num_train_classes)
        return evaluate_model(model, eval_data, config.device, config.seed)
