"""Data-parallel fit (2 CPU processes, gloo) against one process; the distributed sampler; SyncBatchNorm;
mixed precision (ignored on a CPU); the GPU benchmark's smoke run."""
import importlib.util
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pnca_utils import distributed
from pnca_utils.config import ConfigError, make_config
from pnca_utils.models import SmallCNN
from pnca_utils.samplers import ClassBalancedBatchSampler, DistributedBatchSampler, RandomBatchSampler
from pnca_utils.training import fit

LABELS = np.repeat(np.arange(12), 6)  # 12 classes of 6 images
ROOT = Path(__file__).resolve().parents[1]


def tiny_config(preset="proxynca++", **overrides):
    """As tests/test_training.py: from scratch at the paper's lr, batches of 4 classes × 4 images."""
    values = {"weights": None, "epochs": 1, "batch_size": 16, "embedding_dim": 16, **overrides}
    if preset == "proxynca++":
        values = {"lr": 4e-3, "proxy_lr": 4e2, "images_per_class": 4, **values}
    return make_config(preset, "ci", **values)


# --------------------------------------------------------------------------- #
# The distributed sampler
# --------------------------------------------------------------------------- #
def shards(make, world, epoch=0):
    out = []
    for rank in range(world):
        sampler = DistributedBatchSampler(make(), rank, world)
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


@pytest.mark.parametrize("world", [1, 2, 4])
def test_balanced_shares_are_disjoint_and_make_the_single_process_batch(world):
    def make():
        return ClassBalancedBatchSampler(LABELS, classes_per_batch=4, images_per_class=3, num_batches=10, seed=5)

    single = make()
    single.set_epoch(3)
    per_rank = shards(make, world, epoch=3)
    assert all(len(batches) == 10 for batches in per_rank)
    for step, batch in enumerate(single):
        shares = [batches[step] for batches in per_rank]
        assert sum(shares, []) == batch  # in rank order, the union is the one-process batch
        for share in shares:  # each share balanced: 4 / world classes × 3 images
            counts = Counter(LABELS[i] for i in share)
            assert len(counts) == 4 // world and set(counts.values()) == {3}
        for a in range(world):
            for b in range(a + 1, world):
                assert not set(shares[a]) & set(shares[b])


def test_random_shares_see_each_index_once_per_epoch():
    per_rank = shards(lambda: RandomBatchSampler(len(LABELS), batch_size=8, seed=2), world=4, epoch=1)
    seen = [i for batches in per_rank for batch in batches for i in batch]
    assert all(len(batch) == 2 for batches in per_rank for batch in batches)
    assert len(seen) == len(set(seen)) == (len(LABELS) // 8) * 8


def test_shares_depend_on_seed_and_epoch_only():
    def make(seed=0):
        return ClassBalancedBatchSampler(LABELS, 4, 3, num_batches=5, seed=seed)

    assert shards(make, 2) == shards(make, 2)
    assert shards(make, 2) != shards(make, 2, epoch=1)
    assert shards(lambda: make(seed=1), 2) != shards(make, 2)


def test_shares_need_whole_classes_and_full_batches():
    with pytest.raises(ValueError, match="classes_per_batch=3 is not divisible by 2"):
        DistributedBatchSampler(ClassBalancedBatchSampler(LABELS, 3, 2), 0, 2)
    with pytest.raises(ValueError, match="batch_size=10 must be divisible by 4"):
        DistributedBatchSampler(RandomBatchSampler(len(LABELS), 10), 0, 4)
    with pytest.raises(ValueError, match="drop_last"):
        DistributedBatchSampler(RandomBatchSampler(len(LABELS), 8, drop_last=False), 0, 2)
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        DistributedBatchSampler(ClassBalancedBatchSampler(LABELS, 4, 2), 2, 2)


# --------------------------------------------------------------------------- #
# SyncBatchNorm, outside a process group
# --------------------------------------------------------------------------- #
def test_sync_batchnorm_converts_in_place_and_back():
    torch.manual_seed(0)
    net = SmallCNN(1, widths=(4, 8))
    optimizer_params = list(net.parameters())
    x = torch.randn(6, 1, 8, 8)
    before, state = net(x), {k: v.clone() for k, v in net.state_dict().items()}
    distributed.convert_sync_batchnorm(net)
    assert sum(isinstance(m, distributed.SyncBatchNorm) for m in net.modules()) == 4
    assert all(a is b for a, b in zip(net.parameters(), optimizer_params))  # an optimiser stays valid
    net.load_state_dict(state)  # same keys
    assert torch.equal(net(x), before)  # no process group: plain BatchNorm
    distributed.revert_sync_batchnorm(net)
    assert sum(type(m) is nn.BatchNorm2d for m in net.modules()) == 4
    assert all(a is b for a, b in zip(net.parameters(), optimizer_params))


# --------------------------------------------------------------------------- #
# fit in two processes
# --------------------------------------------------------------------------- #
def _fits_in_processes(configs, data, out_dirs, report_dir):
    """In each of the processes: fit every config; a ConfigError is recorded, not raised."""
    results = []
    for config, out in zip(configs, out_dirs):
        try:
            results.append(fit(config, data, out_dir=out, progress=False))
        except ConfigError as err:
            results.append(str(err))
    metrics = [r if isinstance(r, str) else r.metrics for r in results]
    Path(report_dir, f"rank{os.environ['RANK']}.json").write_text(json.dumps(metrics))
    return results


# At the paper's rates from scratch (lr 4e-3, proxies 4e2) the curve of this tiny run is chaotic: a 1e-7
# difference in the order of a float sum (one process or two) grew to 1e-3 by step 7 and 8e-2 by step 11.
# At these calmer rates the curves stay close, but once the backbone trains they still drift apart: the
# channels-last convolutions round differently for a share of 6 images than for the batch of 12, and max
# pooling and ReLU switch at near-ties. Measured with ProxyNCA++: within 1.4e-7 over the warm-up epoch
# (backbone frozen), 4e-6 at the first backbone step, 1.2e-2 by step 12; triplet: within 2.2e-6 over its
# first 3 steps, 4.4e-4 by step 4 (at one thread per process, 2.1e-4 already at step 3). So the test is
# tight where rounding cannot have grown, and loose after.
CALM = {"lr": 1e-3, "proxy_lr": 1.0}


@pytest.fixture(scope="module")
def two_processes(tiny_data, tmp_path_factory):
    """Three configs fitted in 2 processes: ProxyNCA++ (warm-up, then the backbone; with files),
    the triplet loss (gathered batch), and a batch that cannot be cut into 2 balanced shares.
    The first two at CALM rates, where the curves do not amplify rounding differences."""
    configs = [tiny_config(epochs=3, warmup_epochs=1, **CALM), tiny_config("triplet", lr=CALM["lr"]),
               tiny_config(batch_size=12)]
    out = tmp_path_factory.mktemp("ddp")
    results = distributed.spawn(_fits_in_processes, 2, configs, tiny_data, [out / "pp", None, None], out)
    return configs, results, out


def _close(single, parallel, key, steps, rel):
    a, b = [s[key] for s in single.history["steps"]], [s[key] for s in parallel.history["steps"]]
    assert len(a) == len(b)
    assert b[:steps] == pytest.approx(a[:steps], rel=rel, abs=1e-6), key


def test_two_processes_follow_the_one_process_curve(tiny_data, two_processes):
    """Same global batch, same curve: equal up to the order of float sums in the first steps (ProxyNCA++: its
    warm-up epoch; triplet: 3 steps), where a wrong share or an unaveraged gradient would already differ by
    a factor, then within the drift that rounding grows into (see CALM) over all 12 steps."""
    configs, results, _ = two_processes
    for config, parallel, (first, tight, loose) in zip(configs[:2], results[:2], ((4, 1e-5, 5e-2), (3, 1e-3, 1e-2))):
        single = fit(config, tiny_data, progress=False)
        for key in ("loss", "grad_embeddings", "grad_embedding_layer", "grad_backbone", "grad_proxies"):
            _close(single, parallel, key, steps=first, rel=tight)
            _close(single, parallel, key, steps=None, rel=loose)
        assert parallel.metrics["R@1"] == pytest.approx(single.metrics["R@1"], abs=100 * 2 / 64)  # ±2 images
        assert all(type(m) is not distributed.SyncBatchNorm for m in parallel.model.modules())
    assert [s["grad_backbone"] for s in results[0].history["steps"][:4]] == [0.0] * 4  # warm-up epoch


def test_only_rank_0_writes_and_every_rank_gets_its_metrics(two_processes):
    configs, results, out = two_processes
    assert sorted(p.name for p in (out / "pp").iterdir()) == ["checkpoint.pt", "history.json", "metrics.json"]
    saved = json.loads((out / "pp" / "metrics.json").read_text())
    assert saved["R@1"] == results[0].metrics["R@1"] and saved["config"]["warmup_epochs"] == 1
    state = torch.load(out / "pp" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and len(state["rng_ranks"]) == 2
    assert not torch.equal(state["rng_ranks"][0], state["rng_ranks"][1])  # each process its own draws
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0] == ranks[1]


def test_a_batch_without_balanced_shares_is_a_config_error(two_processes):
    message = two_processes[1][2]
    assert "classes_per_batch=3 is not divisible by 2" in message and "WORLD_SIZE=2" in message


def test_hdml_refuses_several_processes(tiny_data, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before any process group is joined
    config = make_config("hdml-triplet", "ci", weights=None, epochs=1, batch_size=16, embedding_dim=16)
    with pytest.raises(ConfigError, match="one process only"):
        fit(config, tiny_data, progress=False)


# --------------------------------------------------------------------------- #
# Mixed precision
# --------------------------------------------------------------------------- #
def test_amp_on_a_cpu_warns_and_trains_in_float32(tiny_data):
    plain = fit(tiny_config(), tiny_data, progress=False)
    with pytest.warns(UserWarning, match="amp=True is ignored on device 'cpu'") as caught:
        mixed = fit(tiny_config(amp=True), tiny_data, progress=False)
    assert sum("amp=True" in str(w.message) for w in caught) == 1
    assert mixed.history["steps"] == plain.history["steps"] and mixed.metrics == plain.metrics


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_amp_on_cuda_trains(tiny_data):
    amp = distributed.MixedPrecision(True, "cuda")
    assert amp.enabled and amp.dtype in (torch.bfloat16, torch.float16)
    result = fit(tiny_config(amp=True, device="cuda", epochs=2), tiny_data, progress=False)
    assert all(np.isfinite(s["loss"]) for s in result.history["steps"])
    assert result.history["epochs"][-1]["loss"] < result.history["epochs"][0]["loss"] * 1.5


# --------------------------------------------------------------------------- #
# benchmarks/gpu_throughput.py
# --------------------------------------------------------------------------- #
@pytest.fixture(scope="module")
def gpu_throughput():
    spec = importlib.util.spec_from_file_location("gpu_throughput", ROOT / "benchmarks" / "gpu_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_throughput_smoke_run_on_a_cpu(gpu_throughput, tmp_path):
    out = tmp_path / "gpu.json"
    args = ["--device", "cpu", "--steps", "2", "--image-size", "64", "--batch-size", "4", "--warmup", "0"]
    assert gpu_throughput.main([*args, "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    assert row["device"].startswith("cpu") and row["torch"] == torch.__version__
    assert (row["batch_size"], row["image_size"], row["steps"], row["amp"]) == (4, 64, 2, False)
    assert row["images_per_s"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the benchmark")
def test_gpu_throughput_without_cuda_writes_nothing(gpu_throughput, tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert gpu_throughput.main(["--out", str(out)]) == 1
    assert "no CUDA device" in capsys.readouterr().err and not out.exists()
