"""fit: history, learning, every method, checkpoints and resuming, determinism, NaN handling, validation split."""
import json
import math

import numpy as np
import pytest
import torch

from pnca_utils import training
from pnca_utils.config import METHOD_PRESETS, ConfigError, make_config
from pnca_utils.data.base import ClassSubset, RetrievalData, TensorImageDataset
from pnca_utils.training import TrainingError, build, evaluate_model, fit, prepare, untrained_metrics

STEPS = 4  # 64 training images / batches of 16


def tiny_config(**overrides):
    """ProxyNCA++ at 32×32 from scratch at the paper's lr, with batches (4 classes × 4 images) the tiny set can fill."""
    return make_config("proxynca++", "ci", **{"weights": None, "epochs": 1, "batch_size": 16, "lr": 4e-3,
                                               "proxy_lr": 4e2, "images_per_class": 4, "embedding_dim": 16,
                                               **overrides})


def _without_seconds(history: dict) -> dict:
    return {**history, "epochs": [{k: v for k, v in row.items() if k != "seconds"} for row in history["epochs"]]}


@pytest.fixture(scope="module")
def two_epochs(tiny_data, tmp_path_factory):
    """An uninterrupted two-epoch run with an output folder."""
    out = tmp_path_factory.mktemp("two_epochs")
    return fit(tiny_config(epochs=2), tiny_data, out_dir=out, progress=False), out


def test_history_has_epoch_and_step_rows(tiny_data):
    config = tiny_config(epochs=3, eval_every=2, lr_schedule="step", lr_milestones=(1,))
    result = fit(config, tiny_data, progress=False)
    rows, steps = result.history["epochs"], result.history["steps"]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert [s["epoch"] for s in steps] == [1] * STEPS + [2] * STEPS + [3] * STEPS
    for row in rows:
        assert math.isfinite(row["loss"]) and row["loss"] > 0
        assert row["loss"] == pytest.approx(np.mean([s["loss"] for s in steps if s["epoch"] == row["epoch"]]))
        for key in ("grad_embeddings", "grad_embedding_layer", "grad_backbone", "grad_proxies"):
            assert row[key] > 0, key
    assert "R@1" not in rows[0] and 0 <= rows[1]["R@1"] <= 100  # every eval_every epochs, and the last
    assert rows[2]["R@1"] == result.metrics["R@1"]
    assert rows[0]["lr"] == pytest.approx([4e-3, 4e-3, 4e2])  # the rates epoch 1 trained with
    assert rows[1]["lr"] == pytest.approx([4e-4, 4e-4, 4e1])
    assert result.proxies.shape == (8, 16)


def test_metrics_are_percentages(two_epochs):
    metrics = two_epochs[0].metrics
    assert set(metrics) == {"R@1", "R@2", "R@4", "R@8", "MAP@R", "RP", "NMI", "F1"}
    assert all(0 <= v <= 100 for v in metrics.values())
    assert metrics["R@1"] <= metrics["R@2"] <= metrics["R@4"] <= metrics["R@8"]


@pytest.mark.parametrize("preset", list(METHOD_PRESETS))
def test_every_method_learns(tiny_data, preset):
    """64 steps from scratch fit the training classes: R@1 on them rises by 10+ points for every method
    (measured at seed 0, from 14.1: ProxyNCA++ 70.3, ProxyNCA 100, NCA 31.2, triplet 92.2, N-pair 26.6;
    HDML equals its base loss here, its synthetic weight being 0 until J_gen's 64-step window is full).

    Evaluated on the training images: from scratch, 8 classes teach nothing that carries over to
    unseen classes (zero-shot R@1 stays at chance), and BatchNorm's running statistics need ~60 steps.
    """
    on_train = RetrievalData("tiny-train", tiny_data.train, tiny_data.train, tiny_data.recall_ks)
    config = make_config(preset, "ci", weights=None, epochs=8, batch_size=8, images_per_class=2, eval_every=8,
                         lr=4e-3, embedding_dim=16, threads=1)
    before = untrained_metrics(config, on_train)["R@1"]
    after = fit(config, on_train, progress=False).metrics["R@1"]
    assert after >= before + 10, (before, after)


@pytest.mark.parametrize("preset", ["proxynca", "nca", "triplet", "npair"])
def test_every_method_trains_one_epoch(tiny_data, preset):
    config = make_config(preset, "ci", weights=None, epochs=1, batch_size=16, embedding_dim=16)
    result = fit(config, tiny_data, progress=False)
    assert len(result.history["steps"]) == STEPS
    assert all(math.isfinite(s["loss"]) and s["grad_backbone"] > 0 for s in result.history["steps"])
    assert (result.proxies is not None) == (preset == "proxynca")
    assert 0 <= result.metrics["R@1"] <= 100


def test_warmup_freezes_the_backbone(tiny_data):
    config = tiny_config(warmup_epochs=1)
    before = build(config, 1, 8)[0].backbone.state_dict()
    result = fit(config, tiny_data, progress=False)
    after = result.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm statistics
    assert all(s["grad_backbone"] == 0 for s in result.history["steps"])
    assert not torch.equal(build(config, 1, 8)[0].embedding.weight, result.model.embedding.weight)


def test_checkpoint_resume_is_bit_identical(tiny_data, two_epochs, tmp_path):
    full, full_out = two_epochs
    fit(tiny_config(epochs=1), tiny_data, out_dir=tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    resumed = fit(tiny_config(epochs=2), tiny_data, out_dir=tmp_path, progress=False)
    assert [s["loss"] for s in resumed.history["steps"]] == [s["loss"] for s in full.history["steps"]]
    assert _without_seconds(resumed.history) == _without_seconds(full.history)
    assert resumed.metrics == full.metrics
    assert json.loads((tmp_path / "history.json").read_text())["steps"] == full.history["steps"]


def test_checkpoint_loads_with_weights_only(tiny_data, two_epochs):
    result, out = two_epochs
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and state["config"] == result.config.to_dict()
    assert torch.equal(state["proxies"], result.proxies.detach())
    model, _ = build(result.config, 1, 8)
    model.load_state_dict(state["model"])
    assert evaluate_model(model, tiny_data, seed=result.config.seed) == result.metrics


def test_resume_refuses_another_config(tiny_data, two_epochs):
    out = two_epochs[1]
    with pytest.raises(TrainingError, match="another config"):
        fit(tiny_config(epochs=2, temperature=0.5), tiny_data, out_dir=out, progress=False)
    with pytest.raises(TrainingError, match="more than the 1"):
        fit(tiny_config(epochs=1), tiny_data, out_dir=out, progress=False)


def test_same_seed_same_metrics_json(tiny_data, two_epochs, tmp_path):
    first = json.loads((two_epochs[1] / "metrics.json").read_text())
    fit(tiny_config(epochs=2), tiny_data, out_dir=tmp_path, progress=False)
    again = json.loads((tmp_path / "metrics.json").read_text())
    assert first.pop("seconds") > 0 and again.pop("seconds") > 0
    assert first == again
    other = fit(tiny_config(epochs=1, seed=1), tiny_data, progress=False)
    assert other.history["steps"][0]["loss"] != two_epochs[0].history["steps"][0]["loss"]


def test_evaluating_between_epochs_leaves_training_unchanged(tiny_data):
    """Evaluation draws no random numbers from the global generator that random augmentation (the photo
    pipeline's crops and flips) draws from: a run evaluated after every epoch trains exactly as the same
    run evaluated only at the end."""
    from torchvision import transforms as T

    train = tiny_data.train
    augmented = TensorImageDataset(train.images.numpy(), [train.classes[i] for i in train.labels],
                                   T.Compose([train.transform, T.RandomHorizontalFlip()]))
    data = RetrievalData(tiny_data.name, augmented, tiny_data.test, tiny_data.recall_ks)
    every = fit(tiny_config(epochs=2, eval_every=1), data, progress=False)
    once = fit(tiny_config(epochs=2, eval_every=2), data, progress=False)
    assert "R@1" in every.history["epochs"][0] and "R@1" not in once.history["epochs"][0]
    assert [s["loss"] for s in once.history["steps"]] == [s["loss"] for s in every.history["steps"]]
    assert once.metrics == every.metrics


def test_nan_loss_stops_with_epoch_and_step(tiny_data, tmp_path, monkeypatch):
    calls = []
    loss = training._loss

    def nan_at_epoch_2_step_2(*args):
        calls.append(1)
        return loss(*args) * (math.nan if len(calls) == STEPS + 2 else 1.0)  # a NaN inside the graph, as in real runs

    monkeypatch.setattr(training, "_loss", nan_at_epoch_2_step_2)
    with pytest.raises(TrainingError, match="epoch 2, step 2"):
        fit(tiny_config(epochs=3), tiny_data, out_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["history"]["steps"]) == STEPS
    assert not (tmp_path / "metrics.json").exists()


def test_val_split_evaluates_held_out_training_classes(tiny_data, monkeypatch):
    config = tiny_config(eval_split="val", val_fraction=0.25)
    train, val = prepare(config, tiny_data)
    assert train is val and len(train.train.classes) == 6 and len(train.test.classes) == 2
    assert not set(train.train.classes) & set(train.test.classes)
    embedded = []
    embed = training.embed

    def spy(model, dataset, *args, **kwargs):
        embedded.append(dataset)
        return embed(model, dataset, *args, **kwargs)

    monkeypatch.setattr(training, "embed", spy)
    result = fit(config, tiny_data, progress=False)
    assert result.proxies.shape[0] == 6  # one proxy per remaining training class
    assert embedded and all(isinstance(d, ClassSubset) and d.dataset is tiny_data.train for d in embedded)
    assert all(len(d) == 16 and set(d.classes) == set(train.test.classes) for d in embedded)


def test_configs_the_data_cannot_serve_are_config_errors(tiny_data):
    with pytest.raises(ConfigError, match="eval_split='val'"):
        fit(tiny_config(eval_split="val", val_fraction=0.01), tiny_data, progress=False)  # no validation class
    with pytest.raises(ConfigError, match="classes_per_batch=10"):
        fit(tiny_config(batch_size=40), tiny_data, progress=False)  # 10 classes, the set has 8
    with pytest.raises(ConfigError, match="batch_size=128"):
        fit(make_config("proxynca", "ci", weights=None, batch_size=128), tiny_data, progress=False)


def test_multiscale_pretraining_sees_every_scale_and_is_cached_apart(tmp_path, monkeypatch):
    from pnca_utils import pretrain
    from pnca_utils.data.embedded import EmbeddedSpec

    spec = EmbeddedSpec(num_classes=4, images_per_class=2, source_images=40, image_size=32)

    monkeypatch.setitem(pretrain.PRETRAIN, "batch_size", 8)  # the tiny source task has few images
    seen = []

    class Recording(pretrain.SmallCNN):
        def forward(self, x):
            seen.append(x.shape[-1])
            return super().forward(x)

    monkeypatch.setattr(pretrain, "SmallCNN", Recording)
    multi = pretrain.pretrained_backbone(spec, tmp_path, progress=False, scales=(24, 32))
    assert set(seen) == {24, 32} and "scales24_32" in multi.name
    seen.clear()
    single = pretrain.pretrained_backbone(spec, tmp_path, progress=False)
    assert set(seen) == {pretrain.PRETRAIN["image_size"]} and single != multi
    seen.clear()
    assert pretrain.pretrained_backbone(spec, tmp_path, progress=False, scales=(24, 32)) == multi
    assert not seen  # cached: nothing trained again


@pytest.mark.parametrize("name", list(__import__("reference.fit_runs", fromlist=["RUNS"]).RUNS))
def test_fit_trains_bit_for_bit_as_the_committed_reference(tiny_data, name):
    """Every method, warm-up, clipping and a schedule: the same losses, gradients and metrics as
    tests/reference/fit_runs.json, written before `fit` was split into named parts (one CPU thread)."""
    from reference import fit_runs

    expected = json.loads(fit_runs.REFERENCE.read_text())[name]
    got = json.loads(json.dumps(fit_runs.numbers(fit(fit_runs.config(name), tiny_data, progress=False))))
    # every number the reference holds, unchanged; measurements recorded since (e.g. HDML's anchor
    # distances) may be added to a step, but never change what trains
    got["steps"] = [{k: step[k] for k in reference if k in step} for step, reference in zip(got["steps"],
                                                                                            expected["steps"])]
    assert got == expected


@pytest.mark.parametrize("module", ["tqdm.auto", "tqdm.notebook"])
@pytest.mark.parametrize("env, shown", [("", True), ("1", False)])
def test_progress_bars_follow_tqdm_disable(env, shown, module):
    """progress=True shows bars unless TQDM_DISABLE=1 (the book's headless kernel); progress=False never does.
    tqdm reads the variable when it is imported, hence a fresh interpreter; the notebook bar (what
    tqdm.auto gives inside a kernel) ignores it, which bar_options makes up for."""
    import os
    import subprocess
    import sys

    code = (f"import io; from {module} import tqdm; from pnca_utils.training import bar_options; "
            "print([not tqdm(range(1), file=io.StringIO(), **bar_options(p)).disable for p in (True, False)])")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "TQDM_DISABLE": env},
                         capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    assert out == str([shown, False])  # the last line: outside a kernel the notebook bar falls back to stdout


@pytest.mark.parametrize("positive_in, size", [(False, "included"), (True, "excluded")])
def test_a_rescaled_proxy_loss_is_its_loss_times_or_over_the_assignment_factor(positive_in, size):
    from pnca_utils import losses

    g = torch.Generator().manual_seed(0)
    emb, proxies, labels = torch.randn(8, 16, generator=g), torch.randn(4, 16, generator=g), torch.arange(8) % 4
    config = tiny_config(positive_in_denominator=positive_in, proxy_gradient_size=size)
    own = losses.proxy_nca_loss(emb, labels, proxies, config.temperature, positive_in)
    factor = losses.assignment_factor(emb, labels, proxies, config.temperature)
    expected = own * factor if size == "included" else own / factor
    assert training._loss(config, emb, labels, proxies).item() == pytest.approx(expected.item(), rel=1e-12)
    assert training._loss(tiny_config(positive_in_denominator=positive_in), emb, labels, proxies).item() == own.item()

