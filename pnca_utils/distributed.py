"""Scaling `fit` out: data-parallel training over processes (DDP) and mixed precision.

Data parallel. Launch the same script in N processes, e.g.
``torchrun --nproc_per_node 2 -m pnca_utils train ...``; `fit` reads ``WORLD_SIZE``, ``RANK`` and
``LOCAL_RANK``, joins a process group (gloo on CPU, nccl on CUDA) and trains the SAME run as one
process would: ``config.batch_size`` stays the global batch, each process takes its own slice of
it (:class:`pnca_utils.samplers.DistributedBatchSampler`), and gradients are averaged over the
processes, so each step sees the gradient of the whole batch. Three details keep this exact:

* the proxies are a parameter of the wrapped module (:class:`Trainable`), so DDP averages their
  gradients like the model's and every process keeps the same proxies;
* BatchNorm normalises with the statistics of the whole batch (:class:`SyncBatchNorm`), not of
  one process's slice;
* losses over pairs of the batch (NCA, triplet, N-pair) see every process's embeddings
  (:func:`gather_batch`), so their negatives are those of the whole batch. ProxyNCA's loss is a
  mean over images, so each process's mean of its own slice already averages to the batch's.

Rank 0 evaluates and writes checkpoints and metrics; the other processes receive its metrics.
Without ``WORLD_SIZE`` (or with ``WORLD_SIZE=1``) nothing here runs and `fit` is unchanged.

Mixed precision (:class:`MixedPrecision`): on CUDA the model's forward pass runs under autocast
(bf16 where the GPU has it, else fp16 with a GradScaler); the loss stays in float32. On a CPU it
is switched off with a warning.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import socket
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["Context", "world_size", "context", "Trainable", "wrap", "all_reduce_sum", "all_gather_rows",
           "SyncBatchNorm", "convert_sync_batchnorm", "revert_sync_batchnorm", "gather_batch", "MixedPrecision",
           "spawn", "GATHERED_METHODS"]

GATHERED_METHODS = ("nca", "triplet", "npair")  # losses over pairs of the batch: gather every slice
TIMEOUT = datetime.timedelta(minutes=30)  # rank 0 evaluates while the others wait


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name}={value!r} is not an integer") from None


@dataclass(frozen=True)
class Context:
    """Where this process stands: its rank among `world_size` processes (1: plain single-process fit)."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that evaluates, shows progress and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.is_distributed:
            dist.barrier()

    def mean(self, values: list[float], device: str | torch.device = "cpu") -> list[float]:
        """The mean of each value over the processes (one collective for the whole list)."""
        if not self.is_distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def from_main(self, compute: Callable[[], object]):
        """`compute()` on rank 0 only; every process returns rank 0's result."""
        if not self.is_distributed:
            return compute()
        box = [compute() if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_objects(self, obj) -> list:
        """`obj` of every process, in rank order (on every process)."""
        if not self.is_distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def world_size() -> int:
    """The number of processes torchrun started (``WORLD_SIZE``; 1 without torchrun)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def context(device: str = "cpu") -> Context:
    """This process's Context, read from torchrun's environment; joins the process group if needed.

    The backend is nccl when `device` is CUDA (each process then uses GPU ``LOCAL_RANK``, so
    ``"cuda"`` means that GPU) and gloo otherwise. A group the caller already initialised is used as is.
    """
    size = world_size()
    if size == 1:
        return Context()
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    cuda = str(device).startswith("cuda")
    if cuda:
        if not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but this process sees no CUDA device")
        if str(device) != "cuda":
            raise RuntimeError(f"device={device!r}: under torchrun set device='cuda'; each process then uses "
                               "GPU LOCAL_RANK")
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local_rank} but this machine has {torch.cuda.device_count()} GPU(s); "
                               "start at most one process per GPU")
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise RuntimeError(f"WORLD_SIZE={size} but {name} is not set; launch with torchrun "
                                   "(or pnca_utils.distributed.spawn), which sets it")
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=size, timeout=TIMEOUT)
    if (dist.get_rank(), dist.get_world_size()) != (rank, size):
        raise RuntimeError(f"the process group has rank {dist.get_rank()} of {dist.get_world_size()}, "
                           f"the environment says RANK={rank}, WORLD_SIZE={size}")
    return Context(rank, local_rank, size)


class Trainable(nn.Module):
    """The embedding network and its proxies as one module, so that DDP synchronises both.

    ``proxies`` is registered as it is (the same Parameter the optimiser holds). The forward pass
    is the model's: the proxies take part through the loss.
    """

    def __init__(self, model: nn.Module, proxies: nn.Parameter | None):
        super().__init__()
        self.model = model
        self.proxies = proxies

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def wrap(trainable: Trainable, device: str) -> nn.Module:
    """`trainable` under DistributedDataParallel; rank 0's weights and buffers are broadcast to all.

    Only parameters that require a gradient now are synchronised: wrap again when that changes
    (as `fit` does when the backbone is unfrozen after warm-up).
    """
    device_ids = [torch.cuda.current_device()] if str(device).startswith("cuda") else None
    return nn.parallel.DistributedDataParallel(trainable, device_ids=device_ids)


# --------------------------------------------------------------------------- #
# Collectives with gradients
# --------------------------------------------------------------------------- #
class _AllReduceSum(torch.autograd.Function):
    """The sum over processes; its gradient is the sum of every process's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


class _AllGather(torch.autograd.Function):
    """Every process's rows, concatenated in rank order; a process's rows get every process's gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.contiguous()
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor)
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # (not reduce-scatter: gloo has none; the batch is small)
        start = dist.get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum of `tensor` over the processes, differentiable."""
    return _AllReduceSum.apply(tensor)


def all_gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's `tensor` (same shape on each) concatenated along dim 0 in rank order, differentiable."""
    return _AllGather.apply(tensor)


# --------------------------------------------------------------------------- #
# BatchNorm over the whole batch
# --------------------------------------------------------------------------- #
class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are those of the whole batch, over every process.

    torch's SyncBatchNorm (used on CUDA) refuses CPU tensors; this one sums the mean and the
    variance over the processes with autograd-aware all-reduces, so the gradient flows to every
    process's slice as it would in one process. Outside training, or without a process group,
    it is plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        dims = [0, *range(2, input.dim())]
        shape = [1, -1] + [1] * (input.dim() - 2)
        count = torch.tensor([input.numel() / input.shape[1]], dtype=torch.float64, device=input.device)
        dist.all_reduce(count)
        n = float(count)
        mean = all_reduce_sum(input.sum(dims)) / n
        centred = input - mean.view(shape)
        var = all_reduce_sum(centred.pow(2).sum(dims)) / n  # biased, for normalising
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(var.detach() * (n / max(n - 1, 1)), alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


_SYNCED = (SyncBatchNorm, nn.SyncBatchNorm)


def _swap_batchnorm(module: nn.Module, make: Callable[[nn.Module], nn.Module | None]) -> nn.Module:
    """Replace BatchNorm layers by `make(layer)` (None: keep it), sharing parameters and buffers."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        new = make(module)
        if new is not None:
            with torch.no_grad():  # the same Parameter and buffer objects: optimisers stay valid
                if module.affine:
                    new.weight, new.bias = module.weight, module.bias
                if module.track_running_stats:
                    new.running_mean, new.running_var = module.running_mean, module.running_var
                    new.num_batches_tracked = module.num_batches_tracked
            new.train(module.training)
            return new
    for name, child in module.named_children():
        new_child = _swap_batchnorm(child, make)
        if new_child is not child:
            setattr(module, name, new_child)
    return module


def convert_sync_batchnorm(module: nn.Module, device: str | torch.device = "cpu") -> nn.Module:
    """Every BatchNorm layer of `module` synchronised over the processes (in place; returns `module`).

    torch's SyncBatchNorm on CUDA (fused kernels), :class:`SyncBatchNorm` elsewhere.
    """
    kind = nn.SyncBatchNorm if torch.device(device).type == "cuda" else SyncBatchNorm

    def make(bn):
        if isinstance(bn, _SYNCED):
            return None
        new = kind(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        new.plain_class = type(bn)
        return new

    return _swap_batchnorm(module, make)


def revert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Undo :func:`convert_sync_batchnorm`: the original BatchNorm classes, same weights (in place)."""
    def make(bn):
        if not (isinstance(bn, _SYNCED) and hasattr(bn, "plain_class")):
            return None
        return bn.plain_class(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)

    return _swap_batchnorm(module, make)


def gather_batch(emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's embeddings and labels, concatenated in rank order (= the whole batch).

    The embeddings keep their gradient: a process's own rows receive the gradient of every
    process's loss. Every process then holds the same batch loss L; DDP averages the parameter
    gradients over the processes, and the result is the gradient of L, as in one process.
    """
    labels_all = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(labels_all, labels.contiguous())
    return all_gather_rows(emb), torch.cat(labels_all)


# --------------------------------------------------------------------------- #
# Mixed precision
# --------------------------------------------------------------------------- #
class MixedPrecision:
    """Autocast for the forward pass and, for fp16, a GradScaler; everything a no-op when off.

    ``enabled`` asks for it; it is on only on CUDA (a warning says so otherwise). The dtype is
    bf16 where the GPU supports it (no scaler needed), else fp16 with a GradScaler.
    """

    def __init__(self, enabled: bool, device: str | torch.device, reason: str = ""):
        device_type = torch.device(device).type
        if enabled and device_type != "cuda":
            warnings.warn(f"amp=True is ignored on device {str(device)!r}: mixed precision runs only on CUDA; "
                          "training in float32", stacklevel=3)
            enabled = False
        elif enabled and reason:
            warnings.warn(f"amp=True is ignored: {reason}; training in float32", stacklevel=3)
            enabled = False
        self.enabled = enabled
        self.dtype = None
        self.scaler = None
        if enabled:
            self.dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.dtype == torch.float16:
                self.scaler = torch.amp.GradScaler("cuda")

    def autocast(self):
        """The context for the forward pass (a null context when off)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> float:
        """Unscale the parameter gradients in place; returns the factor other gradients are scaled by."""
        if self.scaler is None:
            return 1.0
        self.scaler.unscale_(optimizer)
        return float(self.scaler.get_scale())

    def step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.scaler is None:
            optimizer.step()
        else:  # skips the step when a gradient overflowed, and adapts the scale
            self.scaler.step(optimizer)
            self.scaler.update()

    def state_dict(self) -> dict | None:
        return None if self.scaler is None else self.scaler.state_dict()

    def load_state_dict(self, state: dict | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# --------------------------------------------------------------------------- #
# Local launcher
# --------------------------------------------------------------------------- #
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(local_rank: int, nprocs: int, port: int, threads: int, result_path: str, fn, args, kwargs) -> None:
    os.environ.update({"WORLD_SIZE": str(nprocs), "RANK": str(local_rank), "LOCAL_RANK": str(local_rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(threads)
    try:
        result = fn(*args, **kwargs)
        if local_rank == 0:
            torch.save(result, result_path)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn: Callable, nprocs: int, *args, **kwargs):
    """Run ``fn(*args, **kwargs)`` in `nprocs` local processes, as torchrun would; return rank 0's result.

    For CPU runs (gloo) from a notebook or a test: each process gets the torchrun environment
    and a share of the CPU threads. `fn` and its arguments must be picklable (a module-level
    function such as `pnca_utils.training.fit`).
    """
    import torch.multiprocessing as mp

    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    threads = max(1, torch.get_num_threads() // nprocs)
    with tempfile.TemporaryDirectory() as tmp:
        result_path = str(Path(tmp) / "result.pt")
        mp.spawn(_worker, args=(nprocs, _free_port(), threads, result_path, fn, args, kwargs), nprocs=nprocs)
        return torch.load(result_path, weights_only=False)
