"""HDML: hardened negatives, J_avg, gradient routing, training through fit, resuming, learning."""
import math

import pytest
import torch

from pnca_utils.config import make_config
from pnca_utils.data.base import RetrievalData
from pnca_utils.hdml import HDML, RunningMean, harden_negative
from pnca_utils.training import build, fit, untrained_metrics

HDML_KEYS = {"j_avg", "j_gen_avg", "hardening_factor", "lambda", "lambda_far", "share_far", "synthetic_weight",
             "synthetic_accuracy", "j_m_real", "j_m_synthetic", "j_gen", "j_recon", "j_soft", "j_cls", "d_positive",
             "d_negative", "d_hardened", "d_synthetic", "nearer_real", "nearer_synthetic"}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These tiny models run fastest on one thread; on a busy machine, more threads only contend."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def hdml_config(preset, **overrides):
    """A preset at 32×32 from scratch on the tiny set: 4 steps of 16 images per epoch, J_avg over 2 steps.

    At the paper's lr: config.CALIBRATED's rates are for the pretrained CNN on the embedded set at 48 px.
    """
    return make_config(preset, "ci", **{"weights": None, "epochs": 1, "batch_size": 16, "embedding_dim": 16,
                                        "lr": 4e-3,
                                        "hdml_window": 2, "hdml_hidden": 32, **overrides})


# --------------------------------------------------------------------------- #
# harden_negative
# --------------------------------------------------------------------------- #
def reference_harden(anchor, positive, negative, j_avg, alpha):
    """The paper's formula, one row at a time in plain Python."""
    out = []
    for a, p, n in zip(anchor.tolist(), positive.tolist(), negative.tolist()):
        d_pos = math.sqrt(sum((ai - pi) ** 2 for ai, pi in zip(a, p)))
        d_neg = math.sqrt(sum((ai - ni) ** 2 for ai, ni in zip(a, n)))
        if d_pos < d_neg:
            lam = (d_pos + (d_neg - d_pos) * math.exp(-alpha / j_avg)) / d_neg
            out.append([ai + lam * (ni - ai) for ai, ni in zip(a, n)])
        else:
            out.append(list(n))
    return torch.tensor(out, dtype=torch.float64)


def mixed_rows(seed=0, rows=12, dim=5):
    """Random triplets where about half the negatives are farther than the positive, plus a tie."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(rows, dim, generator=g, dtype=torch.float64)
    p = a + 0.5 * torch.randn(rows, dim, generator=g, dtype=torch.float64)
    scale = torch.where(torch.arange(rows) % 2 == 0, 2.0, 0.1).to(torch.float64)[:, None]
    n = a + scale * torch.randn(rows, dim, generator=g, dtype=torch.float64)
    n[-1] = a[-1] + (p[-1] - a[-1]).flip(0)  # d- == d+: left unchanged
    return a, p, n


@pytest.mark.parametrize("j_avg", [0.05, 1.0, 30.0, torch.tensor(4.0)])
def test_harden_negative_matches_the_formula_row_by_row(j_avg):
    a, p, n = mixed_rows()
    d_pos, d_neg = (a - p).norm(dim=1), (a - n).norm(dim=1)
    assert (d_pos < d_neg).any() and (d_pos >= d_neg).any()  # both branches in one batch
    out = harden_negative(a, p, n, j_avg, alpha=2.0)
    expected = reference_harden(a, p, n, float(j_avg), 2.0)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    unchanged = d_pos >= d_neg
    assert torch.equal(out[unchanged], n[unchanged])


def test_harden_negative_by_hand():
    # exp(-alpha / j_avg) = 1/2
    a = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    p = torch.tensor([[3.0, 4.0], [1.0, 5.0], [0.0, 1.0]])
    n = torch.tensor([[0.0, 10.0], [4.0, 1.0], [-3.0, -4.0]])
    out = harden_negative(a, p, n, j_avg=1.0, alpha=math.log(2))
    # row 0: d+ = 5, d- = 10, lambda = (5 + 5/2)/10 = 0.75; row 1: d+ = 4 >= d- = 3, unchanged;
    # row 2: d+ = 1, d- = 5, lambda = (1 + 4/2)/5 = 0.6
    torch.testing.assert_close(out, torch.tensor([[0.0, 7.5], [4.0, 1.0], [-1.8, -2.4]]))


def test_large_j_avg_leaves_the_negatives_unchanged():
    a, p, n = mixed_rows(1)
    assert torch.equal(harden_negative(a, p, n, math.inf, 90.0), n)
    assert torch.equal(harden_negative(a, p, n, torch.tensor(math.inf), 90.0), n)
    torch.testing.assert_close(harden_negative(a, p, n, 1e12, 90.0), n, rtol=0, atol=1e-8)


@pytest.mark.parametrize("j_avg", [0, 0.0, torch.tensor(0.0), 1e-6])
def test_small_j_avg_moves_negatives_to_distance_d_plus_on_the_segment(j_avg):
    a, p, n = mixed_rows(2)
    out = harden_negative(a, p, n, j_avg, 90.0)
    assert torch.isfinite(out).all()
    d_pos, d_neg = (a - p).norm(dim=1), (a - n).norm(dim=1)
    hard = d_pos < d_neg
    torch.testing.assert_close((out - a).norm(dim=1)[hard], d_pos[hard], rtol=0, atol=1e-10)
    # on the segment a-n: out - a = t (n - a) with t = d+/d- in (0, 1)
    t = d_pos[hard] / d_neg[hard]
    assert ((t > 0) & (t < 1)).all()
    torch.testing.assert_close(out[hard], a[hard] + t[:, None] * (n[hard] - a[hard]), rtol=0, atol=1e-10)
    assert torch.equal(out[~hard], n[~hard])


def test_harden_negative_gradients_are_finite_where_the_negative_is_the_anchor():
    a = torch.tensor([[0.0, 0.0], [0.0, 0.0]], requires_grad=True)
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    n = torch.tensor([[0.0, 0.0], [0.0, 3.0]], requires_grad=True)  # row 0: d- = 0 (unchanged branch)
    harden_negative(a, p, n, 0.0, 90.0).sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (a, p, n))
    assert n.grad[0].tolist() == [1.0, 1.0]  # the unchanged negative passes gradients straight through


@pytest.mark.parametrize("args, match", [
    ((torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(2, 2), 1.0, 1.0), "same shape"),
    ((torch.zeros(3), torch.zeros(3), torch.zeros(3), 1.0, 1.0), "anchor"),
    ((torch.zeros(3, 2, dtype=torch.long),) * 3 + (1.0, 1.0), "anchor"),
    ((torch.zeros(3, 2),) * 3 + (1.0, 0.0), "alpha"),
    ((torch.zeros(3, 2),) * 3 + (1.0, math.inf), "alpha"),
    ((torch.zeros(3, 2),) * 3 + (-1.0, 1.0), "j_avg"),
    ((torch.zeros(3, 2),) * 3 + (math.nan, 1.0), "j_avg"),
    ((torch.zeros(3, 2),) * 3 + (torch.ones(2), 1.0), "j_avg"),
    ((torch.zeros(3, 2),) * 3 + ("1", 1.0), "j_avg"),
])
def test_harden_negative_rejects_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        harden_negative(*args)


# --------------------------------------------------------------------------- #
# RunningMean
# --------------------------------------------------------------------------- #
def test_running_mean_waits_for_a_full_window_then_slides():
    mean = RunningMean(3)
    assert mean.value == math.inf
    for v in (1.0, 2.0):
        mean.update(v)
        assert mean.value == math.inf  # nothing hardened before `window` losses
    mean.update(6.0)
    assert mean.value == 3.0
    mean.update(7.0)
    assert mean.value == 5.0  # (2 + 6 + 7) / 3: the oldest value left the window
    again = RunningMean(3, initial=0.0)
    again.load_state_dict(mean.state_dict())
    assert again.value == 5.0 and again.state_dict() == mean.state_dict()
    assert RunningMean(2, initial=1e6).value == 1e6
    with pytest.raises(ValueError, match="finite"):
        mean.update(math.nan)
    with pytest.raises(ValueError, match="window"):
        RunningMean(0)
    with pytest.raises(ValueError, match="window"):
        RunningMean(4).load_state_dict(mean.state_dict())


# --------------------------------------------------------------------------- #
# One HDML step: which loss reaches which parameters
# --------------------------------------------------------------------------- #
def _batch(preset):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(8).repeat_interleave(2) if preset == "hdml-npair" else torch.arange(4).repeat_interleave(4)
    return torch.rand(16, 1, 32, 32, generator=g), labels


def _grads(loss, params):
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


def _norm(grads):
    return float(torch.stack([g.norm() for g in grads]).norm())


@pytest.mark.parametrize("preset", ["hdml-triplet", "hdml-npair"])
def test_each_loss_reaches_only_its_own_parameters(preset):
    config = hdml_config(preset, hdml_window=1)
    model, _ = build(config, 1, 8)
    hdml = HDML.from_config(config, model, 8)
    hdml.j_avg.update(1.0)  # hardening on
    hdml.j_gen.update(1e4)  # synthetic weight 1 - 1/e
    x, y = _batch(preset)
    terms = hdml.losses(model, x, y)
    assert terms.synthetic_weight == pytest.approx(1 - math.exp(-1)) and float(terms.lambdas.min()) < 1
    metric = list(model.parameters())
    gen, cls = list(hdml.generator.parameters()), list(hdml.classifier.parameters())
    everything = metric + gen + cls
    d_metric, d_gen, d_cls = (_grads(t, everything) for t in (terms.metric, terms.gen, terms.cls))
    k, m = len(metric), len(metric) + len(gen)
    # without routing, the losses would mix: J_metric depends on the generator, J_gen on the backbone
    assert _norm(d_metric[k:m]) > 0 and _norm(d_gen[:k]) > 0
    assert _norm(d_metric[m:]) == 0 and _norm(d_gen[m:]) == 0  # the classifier is frozen in J_soft
    assert _norm(d_cls[:m]) == 0 and _norm(d_cls[m:]) > 0  # J_cls sees detached features
    before = {id(p): p.detach().clone() for p in everything}

    record = hdml.backward(terms, metric)
    for p, g in zip(metric, d_metric[:k]):
        torch.testing.assert_close(p.grad, g)  # J_metric only
    for p, g in zip(gen, d_gen[k:m]):
        torch.testing.assert_close(p.grad, g)  # J_gen only
    for p, g in zip(cls, d_cls[m:]):
        torch.testing.assert_close(p.grad, g)  # J_cls only
    assert _norm([p.grad for p in model.backbone.parameters()]) > 0 and model.embedding.weight.grad.norm() > 0
    assert terms.embeddings.grad is not None and terms.embeddings.grad.norm() > 0
    # HDML steps the generator and the classifier; the backbone and head are the caller's optimiser's
    assert all(not torch.equal(p, before[id(p)]) for p in gen if p.ndim == 2)
    assert all(not torch.equal(p, before[id(p)]) for p in cls)
    assert all(torch.equal(p, before[id(p)]) for p in metric)
    assert record["j_gen"] == pytest.approx(record["j_recon"] + config.hdml_softmax_factor * record["j_soft"])
    assert record["j_avg"] == 1.0 and record["j_gen_avg"] == 1e4
    assert record["hardening_factor"] == pytest.approx(math.exp(-config.hdml_alpha))
    assert 0 <= record["synthetic_accuracy"] <= 1
    assert hdml.j_avg.value == pytest.approx(terms.real.item()) and hdml.j_gen.value == pytest.approx(terms.gen.item())


def test_hdml_rejects_batches_it_cannot_use():
    config = hdml_config("hdml-npair")
    model, _ = build(config, 1, 8)
    hdml = HDML.from_config(config, model, 8)
    x, y = _batch("hdml-npair")
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        hdml.losses(model, x, y + 1)
    with pytest.raises(ValueError, match="2 images per class"):
        hdml.losses(model, x, torch.arange(4).repeat_interleave(4))
    with pytest.raises(ValueError, match="loss"):
        HDML("contrastive", 128, 16, 8)
    with pytest.raises(ValueError, match="hdml-triplet"):
        HDML.from_config(hdml_config("triplet"), model, 8)


# --------------------------------------------------------------------------- #
# Training through fit
# --------------------------------------------------------------------------- #
@pytest.mark.parametrize("preset", ["triplet", "npair", "hdml-triplet", "hdml-npair"])
def test_fit_runs_every_triplet_and_npair_variant(tiny_data, preset):
    config = hdml_config(preset)
    steps = fit(config, tiny_data, progress=False).history["steps"]
    assert len(steps) == 4 and all(math.isfinite(s["loss"]) and s["grad_backbone"] > 0 for s in steps)
    if not preset.startswith("hdml-"):
        assert not HDML_KEYS & set(steps[0])
        return
    assert all(HDML_KEYS <= set(s) for s in steps)
    # J_avg needs 2 losses: nothing is hardened and the synthetic weight is 0 for the first 2 steps
    assert [s["j_avg"] is None for s in steps] == [True, True, False, False]
    assert [s["lambda"] for s in steps[:2]] == [1.0, 1.0] and [s["synthetic_weight"] for s in steps[:2]] == [0, 0]
    assert [s["hardening_factor"] for s in steps[:2]] == [1.0, 1.0] and [s["lambda_far"] for s in steps[:2]] == [1, 1]
    assert [s["j_gen_avg"] is None for s in steps] == [True, True, False, False]
    assert steps[2]["j_avg"] == pytest.approx((steps[0]["j_m_real"] + steps[1]["j_m_real"]) / 2)
    assert steps[3]["j_gen_avg"] == pytest.approx((steps[1]["j_gen"] + steps[2]["j_gen"]) / 2)
    assert all(0 < s["lambda"] < 1 and 0 < s["synthetic_weight"] < 1 for s in steps[2:])
    for s in steps[2:]:
        assert s["hardening_factor"] == pytest.approx(math.exp(-config.hdml_alpha / s["j_avg"]))
        assert s["synthetic_weight"] == pytest.approx(1 - math.exp(-config.hdml_beta / s["j_gen_avg"]))
        # lambda = (d+ + (d- - d+) factor) / d- lies between the factor and 1 for a negative farther than the positive
        assert s["hardening_factor"] <= s["lambda_far"] < 1 and 0 < s["share_far"] <= 1
    for s in steps:
        # the negatives nearer than the positive keep lambda = 1
        assert s["lambda"] == pytest.approx(s["share_far"] * s["lambda_far"] + 1 - s["share_far"])
        assert 0 <= s["synthetic_accuracy"] <= 1
        w = s["synthetic_weight"]
        assert s["loss"] == pytest.approx((1 - w) * s["j_m_real"] + w * s["j_m_synthetic"], rel=1e-5)
        assert s["j_gen"] == pytest.approx(s["j_recon"] + config.hdml_softmax_factor * s["j_soft"], rel=1e-5)


def test_hdml_warmup_freezes_the_backbone(tiny_data):
    config = hdml_config("hdml-npair", warmup_epochs=1)
    before = build(config, 1, 8)[0].backbone.state_dict()
    result = fit(config, tiny_data, progress=False)
    after = result.model.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(s["grad_backbone"] == 0 and s["grad_embedding_layer"] > 0 for s in result.history["steps"])


def test_hdml_resume_is_bit_identical(tiny_data, tmp_path):
    straight = fit(hdml_config("hdml-npair", epochs=2), tiny_data, out_dir=tmp_path / "straight", progress=False)
    fit(hdml_config("hdml-npair", epochs=1), tiny_data, out_dir=tmp_path / "resumed", progress=False)
    state = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1 and len(state["hdml"]["j_avg"]["values"]) == 2
    resumed = fit(hdml_config("hdml-npair", epochs=2), tiny_data, out_dir=tmp_path / "resumed", progress=False)
    assert resumed.history["steps"] == straight.history["steps"]  # J_avg, generator, classifier all carried over
    assert resumed.metrics == straight.metrics
    a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["hdml"]
    b = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)["hdml"]
    assert all(torch.equal(a["modules"][k], b["modules"][k]) for k in a["modules"])
    assert a["j_avg"] == b["j_avg"] and a["j_gen"] == b["j_gen"]


def test_short_hdml_triplet_run_beats_the_untrained_network(tiny_data):
    """64 steps fit the training classes (measured: R@1 ~14 -> ~97), as ProxyNCA++ in test_training.

    Evaluated on the training images, as there: from scratch, 8 classes teach nothing that carries
    over to unseen classes, and BatchNorm's running statistics need ~60 steps.
    """
    on_train = RetrievalData("tiny-train", tiny_data.train, tiny_data.train, tiny_data.recall_ks)
    config = hdml_config("hdml-triplet", epochs=8, batch_size=8, images_per_class=2, eval_every=8, hdml_window=4)
    before = untrained_metrics(config, on_train)["R@1"]
    result = fit(config, on_train, progress=False)
    steps = result.history["steps"]
    assert min(s["lambda"] for s in steps) < 1 and max(s["synthetic_weight"] for s in steps) > 0.1
    assert result.metrics["R@1"] >= before + 30, (before, result.metrics["R@1"])


def test_a_non_finite_generator_loss_updates_nothing():
    config = hdml_config("hdml-triplet")
    model, _ = build(config, 1, 8)
    hdml = HDML.from_config(config, model, 8)
    terms = hdml.losses(model, *_batch("hdml-triplet"))
    terms.gen = terms.gen * math.inf
    before = [p.detach().clone() for p in hdml.parameters()]
    with pytest.raises(FloatingPointError, match="hdml_generator_lr"):
        hdml.backward(terms, list(model.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(before, hdml.parameters()))
    assert all(p.grad is None for p in model.parameters())
    assert len(hdml.j_avg.values) == len(hdml.j_gen.values) == 0  # the running means are untouched


@pytest.mark.parametrize("preset, share", [("hdml-triplet", 1 / 4), ("hdml-npair", 1 / 8)])
def test_synthetic_accuracy_counts_the_negatives_class(preset, share):
    """A classifier that always answers class 0 is right for exactly the negatives of class 0."""
    config = hdml_config(preset)
    model, _ = build(config, 1, 8)
    hdml = HDML.from_config(config, model, 8)
    with torch.no_grad():
        hdml.classifier.weight.zero_()
        hdml.classifier.bias.copy_(torch.arange(8, 0, -1, dtype=torch.float32))
    terms = hdml.losses(model, *_batch(preset))
    # triplet: every class is the negative of 3 of the 4 anchor classes equally often; N-pair: p_0 in 7 of 56 rows
    assert terms.synthetic_accuracy == pytest.approx(share)
    assert terms.far.dtype == torch.bool and terms.far.shape == terms.lambdas.shape


def test_anchor_distances_by_hand():
    from pnca_utils.hdml import anchor_distances

    # unit-length rows after normalisation: the anchor (1, 0); the positive at 90 degrees (distance sqrt 2);
    # the real negative opposite (distance 2), hardened to 90 degrees the other way, synthetic at the anchor
    a = torch.tensor([[2.0, 0.0]])
    p = torch.tensor([[0.0, 3.0]])
    n = torch.tensor([[-1.0, 0.0]])
    h = torch.tensor([[0.0, -5.0]])
    s = torch.tensor([[4.0, 0.0]])
    d = anchor_distances(a, p, n, h, s)
    assert d["d_positive"] == pytest.approx(2 ** 0.5) and d["d_negative"] == pytest.approx(2.0)
    assert d["d_hardened"] == pytest.approx(2 ** 0.5) and d["d_synthetic"] == pytest.approx(0.0)
    assert d["nearer_real"] == 0.0 and d["nearer_synthetic"] == 1.0


@pytest.mark.parametrize("preset, tuples", [("hdml-triplet", 16 * 3 * 12), ("hdml-npair", 8)])
def test_javg_sum_averages_the_real_loss_summed_over_its_tuples(preset, tuples):
    """4 classes x 4 images: 16 anchors x 3 positives x 12 negatives = 576 triplets; 8 pairs: 8 N-pair rows."""
    records = {}
    for javg in ("mean", "sum"):
        config = hdml_config(preset, hdml_window=1, hdml_javg=javg)
        torch.manual_seed(0)
        model, _ = build(config, 1, 8)
        hdml = HDML.from_config(config, model, 8)
        terms = hdml.losses(model, *_batch(preset))
        hdml.backward(terms, list(model.parameters()))
        records[javg] = (terms.tuples, terms.real.item(), hdml.j_avg.value)
    (n_mean, real_mean, avg_mean), (n_sum, real_sum, avg_sum) = records["mean"], records["sum"]
    assert n_mean == n_sum == tuples and real_mean == pytest.approx(real_sum)
    assert avg_mean == pytest.approx(real_mean) and avg_sum == pytest.approx(tuples * real_sum)


def test_javg_must_be_mean_or_sum():
    from pnca_utils.config import ConfigError

    with pytest.raises(ConfigError, match="hdml_javg"):
        hdml_config("hdml-triplet", hdml_javg="total")
    with pytest.raises(ValueError, match="javg"):
        HDML("triplet", 8, 4, 3, javg="total")
