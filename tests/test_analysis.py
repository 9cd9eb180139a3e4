"""Chapter helpers that are not plots: run tables, prose from numbers, t-SNE, ProxyNCA loss profiles."""
import math

import numpy as np
import pandas as pd
import pytest
import torch

from pnca_utils import analysis, losses
from pnca_utils.config import make_config
from pnca_utils.training import build, embed


def test_metrics_table_rows_in_order_and_missing_as_nan():
    table = analysis.metrics_table({"b": {"R@1": 2.0, "NMI": 9.0}, "a": {"R@1": 1.0, "F1": 3.0}})
    assert list(table.index) == ["b", "a"] and list(table.columns) == ["R@1", "NMI"]
    assert table.loc["a", "R@1"] == 1.0 and math.isnan(table.loc["a", "NMI"])
    with pytest.raises(ValueError, match="empty"):
        analysis.metrics_table({})
    with pytest.raises(ValueError, match="no run"):
        analysis.metrics_table({"a": {"F1": 1.0}})


@pytest.mark.parametrize("before, after, words", [
    (4.31, 6.12, "raised R@1 from 4.3 to 6.1 (+1.8 points)"),
    (6.12, 4.31, "lowered R@1 from 6.1 to 4.3 (-1.8 points)"),
    (4.31, 4.34, "left R@1 unchanged at 4.3"),  # equal at the printed precision
])
def test_describe_change_agrees_with_the_printed_numbers(before, after, words):
    assert analysis.describe_change(before, after) == words


def test_pick_classes_is_seeded_and_checked():
    labels = np.repeat(np.arange(10, 30), 3)
    chosen = analysis.pick_classes(labels, 5, seed=1)
    assert len(set(chosen)) == 5 and set(chosen) <= set(range(10, 30)) and list(chosen) == sorted(chosen)
    assert list(chosen) == list(analysis.pick_classes(labels, 5, seed=1))
    assert list(chosen) != list(analysis.pick_classes(labels, 5, seed=2))
    with pytest.raises(ValueError, match="between"):
        analysis.pick_classes(labels, 21)


def test_embed_classes_keeps_the_data_sets_class_numbers(tiny_data):
    model, _ = build(make_config("proxynca", "ci", weights=None, embedding_dim=8), 1, tiny_data.num_train_classes)
    test_labels = np.asarray(tiny_data.test.labels)
    chosen = [1, 4]
    emb, labels = analysis.embed_classes(model, tiny_data.test, chosen)
    assert emb.shape == (int(np.isin(test_labels, chosen).sum()), 8)
    assert sorted(set(labels.tolist())) == chosen
    full, _ = embed(model, tiny_data.test)
    np.testing.assert_allclose(emb, full.numpy()[np.isin(test_labels, chosen)], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    few, few_labels = analysis.embed_classes(model, tiny_data.test, chosen, per_class=3)
    assert list(few_labels) == [1, 1, 1, 4, 4, 4]
    np.testing.assert_allclose(few[:3], emb[labels == 1][:3], atol=1e-6)
    with pytest.raises(ValueError, match="per_class"):
        analysis.embed_classes(model, tiny_data.test, chosen, per_class=0)


def test_tsne_shape_and_determinism():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 10
    x = np.concatenate([c + rng.normal(size=(20, 16)) for c in centres])
    a, b = analysis.tsne(x, seed=0), analysis.tsne(x, seed=0)
    assert a.shape == (60, 2)
    np.testing.assert_allclose(a, b)
    # well-separated clusters stay separated: every point's nearest neighbour in the map is in its cluster
    d = ((a[:, None] - a[None]) ** 2).sum(-1) + np.diag([np.inf] * 60)
    assert (d.argmin(1) // 20 == np.arange(60) // 20).all()
    assert analysis.tsne(x[:5], seed=0).shape == (5, 2)  # perplexity lowered for tiny sets
    with pytest.raises(ValueError, match="shape"):
        analysis.tsne(x[:3])


def test_proxy_configuration_has_the_asked_distances():
    x, proxies = analysis.proxy_configuration(0.5, 3.0, num_classes=4)
    assert x.shape == (1, 5) and proxies.shape == (4, 5)
    torch.testing.assert_close(proxies.norm(dim=1), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(((x - proxies) ** 2).sum(1), torch.tensor([0.5, 3.0, 3.0, 3.0], dtype=torch.float64))
    negatives = proxies[1:] - (proxies[1:] @ x.T) * x  # the negatives' parts orthogonal to x are orthogonal
    gram = negatives @ negatives.T
    torch.testing.assert_close(gram - torch.diag(torch.diag(gram)), torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="0 to 4"):
        analysis.proxy_configuration(4.5, 2.0, 3)
    with pytest.raises(ValueError, match="at least 2"):
        analysis.proxy_configuration(1.0, 2.0, 1)


@pytest.mark.parametrize("temperature", [1.0, 1 / 9])
def test_proxy_loss_profile_matches_the_closed_forms(temperature):
    d, dn, c, t = np.linspace(0, 3, 7), 2.0, 5, temperature
    excluded = analysis.proxy_loss_profile(d, dn, c, t, positive_in_denominator=False)
    included = analysis.proxy_loss_profile(d, dn, c, t, positive_in_denominator=True)
    # excluded: d/T + log((C-1) e^{-dn/T}); included: log(1 + (C-1) e^{(d-dn)/T})
    np.testing.assert_allclose(excluded["loss"], d / t - dn / t + math.log(c - 1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(included["loss"], np.log1p((c - 1) * np.exp((d - dn) / t)), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(excluded["distance"], d)
    assert (included["loss"] > 0).all() and (excluded["loss"][0] < 0) == (dn / t > math.log(c - 1))
    # gradient with respect to the embedding: the included (softmax) one is the excluded one times (1 - p_y)
    # at the positive (d = 0), where only the negatives pull
    p_y = 1 / (1 + (c - 1) * math.exp(-dn / t))
    assert included["grad"][0] == pytest.approx((1 - p_y) * excluded["grad"][0], rel=1e-6)
    assert excluded["grad"][0] == pytest.approx(2 / t / math.sqrt(c - 1), rel=1e-6)  # negatives orthogonal to x


# ------------------------------------------------------------------------------------------------ HDML
def test_hardening_table_follows_the_rule_by_hand():
    # anchor at the origin, positive at distance 1, negative at distance 5: d(a, n~) = 1 + 4 exp(-alpha / J_avg)
    table = analysis.hardening_table([0.0, 0.0], [1.0, 0.0], [3.0, 4.0], [0.0, 45.0, 90.0, math.inf], alpha=90.0)
    factor = [0.0, math.exp(-2), math.exp(-1), 1.0]
    np.testing.assert_allclose(table["factor"], factor)
    np.testing.assert_allclose(table["d(a, n~)"], [1 + 4 * f for f in factor])
    np.testing.assert_allclose(table["lambda"], [(1 + 4 * f) / 5 for f in factor])
    np.testing.assert_allclose(table[["x0", "x1"]].to_numpy(), np.outer(table["lambda"], [3.0, 4.0]))
    # a negative nearer than the positive stays where it is
    near = analysis.hardening_table([0.0, 0.0], [3.0, 0.0], [0.0, 1.0], [1.0], alpha=90.0)
    assert near.loc[0, "lambda"] == 1.0 and (near.loc[0, "x0"], near.loc[0, "x1"]) == (0.0, 1.0)
    with pytest.raises(ValueError, match="same length"):
        analysis.hardening_table([0.0, 0.0], [1.0, 0.0, 0.0], [3.0, 4.0], [1.0], alpha=90.0)


def test_step_series_and_epoch_means_skip_missing_values():
    history = {"steps": [{"epoch": 1, "j": None, "w": 0.0}, {"epoch": 1, "j": 2.0, "w": 1.0},
                         {"epoch": 2, "j": 4.0}, {"epoch": 2, "j": 6.0, "w": 3.0}]}
    np.testing.assert_array_equal(analysis.step_series(history, "j"), [np.nan, 2.0, 4.0, 6.0])
    means = analysis.step_means_per_epoch(history, ["j", "w", "absent"])
    assert list(means.index) == [1, 2] and means.index.name == "epoch"
    assert means["j"].tolist() == [2.0, 5.0] and means["w"].tolist() == [0.5, 3.0]
    assert means["absent"].isna().all()
    with pytest.raises(ValueError, match="no steps"):
        analysis.step_means_per_epoch({"steps": []}, ["j"])


def test_fall_over_training_is_the_mean_over_seeds_of_first_over_last():
    rows = pd.DataFrame({"variant": ["a"] * 6 + ["b"] * 2, "seed": [0, 0, 0, 1, 1, 1, 0, 0],
                         "epoch": [3, 1, 2, 1, 2, 3, 1, 2],  # unsorted: the first epoch is found by number
                         "g": [0.5, 10.0, 4.0, 8.0, 8.0, 2.0, 3.0, 3.0]})
    fall = analysis.fall_over_training(rows, "g")
    assert fall.to_dict() == {"a": (10.0 / 0.5 + 8.0 / 2.0) / 2, "b": 1.0}  # (20 + 4) / 2 = 12, not 18 / 2.5


def test_read_table_returns_none_unless_the_file_has_the_columns(tmp_path):
    path = tmp_path / "t.csv"
    assert analysis.read_table(path) is None  # missing
    path.write_text("")
    assert analysis.read_table(path) is None  # empty
    path.write_text("variant,n,R@1 mean\nA,3,40.5\n")
    assert analysis.read_table(path, ["variant", "R@1 mean"])["R@1 mean"].tolist() == [40.5]
    assert analysis.read_table(path, ["variant", "NMI mean"]) is None


def test_read_paired_pairs_each_compared_variant_with_its_reference(tmp_path):
    assert analysis.read_paired(tmp_path) is None
    (tmp_path / "ablation.csv").write_text("variant,reference,R@1 mean,Δ R@1,Δ low,Δ high\n"
                                           "full,,50.0,,,\nfew,full,40.0,-10.0,-12.0,-8.0\n"
                                           "full 2,,30.0,,,\nmany,full 2,35.0,5.0,1.0,9.0\n")
    (tmp_path / "runs.csv").write_text("variant,seed,R@1\nfull,0,49\nfull,1,51\nfew,0,41\nfew,1,39\n"
                                       "full 2,0,30\nfull 2,1,30\nmany,0,34\nmany,1,36\n")
    summary, by_seed, pairs = analysis.read_paired(tmp_path)
    assert pairs == {"few": ("full", "few"), "many": ("full 2", "many")}
    assert summary.loc["many", "Δ R@1"] == 5.0
    assert by_seed.loc[1, "few"] == 39 and by_seed.loc[0, "full 2"] == 30
    assert list(by_seed.index) == [0, 1]


@pytest.mark.parametrize("temperature", [1.0, 1 / 9])
def test_assignment_profile_matches_the_closed_forms(temperature):
    d, dn, c, t = np.linspace(0, 4, 9), 2.0, 6, temperature
    prof = analysis.assignment_profile(d, dn, c, t)
    # P(y|x) = 1 / (1 + (C-1) e^{-(dn - d)/T}); dL/dd_y = (1 - P)/T; dL/dd_z = -P_z/T with P_z = e^{-dn/T} / sum
    p_y = 1 / (1 + (c - 1) * np.exp((d - dn) / t))
    p_z = (1 - p_y) / (c - 1)
    np.testing.assert_array_equal(prof["distance"], d)
    np.testing.assert_allclose(prof["probability"], p_y, rtol=1e-6)
    np.testing.assert_allclose(prof["loss"], -np.log(p_y), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(prof["grad_positive"], (1 - p_y) / t, rtol=1e-5, atol=1e-9)  # ends included
    np.testing.assert_allclose(prof["grad_negative"], -p_z / t, rtol=1e-5, atol=1e-9)
    # the loss the library computes through the embedding agrees with proxy_loss_profile's
    through_embedding = analysis.proxy_loss_profile(d, dn, c, t, True)["loss"]
    np.testing.assert_allclose(prof["loss"], through_embedding, rtol=1e-6, atol=1e-9)


def test_assignment_profile_checks_its_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        analysis.assignment_profile([1.0], 2.0, 1)
    with pytest.raises(ValueError, match="between 0 and 4"):
        analysis.assignment_profile([4.5], 2.0, 4)
    with pytest.raises(ValueError, match="between 0 and 4"):
        analysis.assignment_profile([1.0], -1.0, 4)


def test_proxy_gaps_by_hand():
    emb = np.array([[1.0, 0.0], [0.0, 2.0]])  # normalised inside
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gaps = analysis.proxy_gaps(emb, [0, 2], proxies)
    np.testing.assert_allclose(gaps["positive"], [0.0, 2.0])  # (0, 1) to (-1, 0): 2
    np.testing.assert_allclose(gaps["negative"], [2.0, 0.0])  # nearest other proxy: (0, 1) itself for image 2
    np.testing.assert_allclose(gaps["gap"], [2.0, -2.0])
    with pytest.raises(ValueError, match="proxy indices"):
        analysis.proxy_gaps(emb, [0, 3], proxies)


def test_neighbour_gaps_agree_with_recall_at_1():
    from pnca_utils.metrics import recall_at_k

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 4)
    emb = rng.normal(size=(5, 8))[labels] + rng.normal(size=(20, 8))
    gaps = analysis.neighbour_gaps(emb, labels)
    assert len(gaps["gap"]) == 20
    np.testing.assert_allclose(gaps["gap"], gaps["negative"] - gaps["positive"])
    x = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    r1 = recall_at_k(torch.tensor(x), torch.tensor(labels), [1])[1]
    assert (gaps["gap"] > 0).mean() == pytest.approx(r1)
    lonely = analysis.neighbour_gaps(emb[:5], [0, 0, 1, 1, 2])  # class 2 has no classmate: dropped
    assert len(lonely["gap"]) == 4


def test_feature_maps_are_the_backbones_before_pooling(tiny_data):
    model, _ = build(make_config("proxynca++", "ci", weights=None, embedding_dim=8), 1, tiny_data.num_train_classes)
    model.train()
    maps = analysis.feature_maps(model, tiny_data.test, indices=[0, 3, 5])
    assert maps.shape == (3, model.backbone.out_channels, 4, 4) and model.training  # 32 px / 8; mode restored
    x = torch.stack([tiny_data.test[i][0] for i in [0, 3, 5]])
    model.eval()
    with torch.no_grad():
        np.testing.assert_allclose(maps, model.backbone(x), atol=1e-5)
        np.testing.assert_allclose(model.norm(maps.amax(dim=(2, 3))), model.features(x), atol=1e-5)  # max pooling
    assert analysis.feature_maps(model.backbone, tiny_data.test).shape[0] == len(tiny_data.test)


def test_box_cell_mask_uses_cell_centres():
    # 32-pixel image, 4 x 4 cells of 8 px, centres at 4, 12, 20, 28
    mask = analysis.box_cell_mask(np.array([[0, 0, 13, 21], [5, 5, 6, 6]]), 32, (4, 4))
    assert mask.shape == (2, 4, 4)
    expected = np.zeros((4, 4), bool)
    expected[:2, :3] = True  # rows with centres 4, 12 < 13; columns 4, 12, 20 < 21
    np.testing.assert_array_equal(mask[0], expected)
    assert not mask[1].any()  # a box between centres holds no cell
    touching = analysis.box_cell_mask(np.array([[5, 5, 6, 6]]), 32, (4, 4), margin=4)  # half a cell
    np.testing.assert_array_equal(np.argwhere(touching[0]), [[0, 0]])  # the patch [0, 8) x [0, 8) holds the box
    with pytest.raises(ValueError, match="shape"):
        analysis.box_cell_mask(np.zeros(4), 32, (4, 4))


def test_winner_counts_and_region_shares_by_hand():
    fmaps = torch.zeros(2, 3, 2, 2)
    fmaps[0, 0, 0, 0] = 2.0  # image 0: channels 0 and 1 peak at (0, 0), channel 2 at (1, 1); mass 3 inside of 5
    fmaps[0, 1, 0, 0] = 1.0
    fmaps[0, 2, 1, 1] = 2.0
    fmaps[1, 0, 1, 0] = 1.0  # image 1: one channel, at (1, 0); the other two are zero everywhere
    counts = analysis.winner_counts(fmaps)
    np.testing.assert_array_equal(counts[0], [[2, 0], [0, 1]])
    np.testing.assert_array_equal(counts[1], [[0, 0], [1, 0]])  # silent channels have no winner
    masks = np.zeros((2, 2, 2), bool)
    masks[:, 0, 0] = True
    shares = analysis.region_shares(fmaps, masks)
    assert shares["winners"] == pytest.approx(100 * (2 / 3 + 0) / 2)
    assert shares["mass"] == pytest.approx(100 * (3 / 5 + 0) / 2)
    assert shares["area"] == pytest.approx(25.0) and shares["images"] == 2
    masks[1] = False  # an image without region cells is left out
    assert analysis.region_shares(fmaps, masks)["images"] == 1
    with pytest.raises(ValueError, match="agree"):
        analysis.region_shares(fmaps, masks[:1])
    with pytest.raises(ValueError, match="no image"):
        analysis.region_shares(fmaps, np.zeros((2, 2, 2), bool))
    with pytest.raises(ValueError, match="shape"):
        analysis.winner_counts(fmaps[0])


# ------------------------------------------------------------------------------- chapter 05: gradients and Adam
def test_proxy_gradient_split_matches_the_closed_form():
    # d_iz = ||x_i - p_z||^2 / T on unit vectors; dL/dp_z = 2 / (B T) sum_i (1[z = y_i] - q_iz) (p_z - x_i),
    # projected onto the sphere's tangent at p_z (the loss normalises the proxies).
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(6, 5, generator=g, dtype=torch.float64), dim=1)
    p = torch.nn.functional.normalize(torch.randn(4, 5, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    t = 0.5
    q = torch.softmax(-torch.cdist(x, p).pow(2) / t, dim=1)
    weights = (torch.nn.functional.one_hot(y, 4).double() - q) * 2 / (len(x) * t)  # (B, C)
    grad_p = weights.T.sum(1, keepdim=True) * p - weights.T @ x
    grad_p = grad_p - (grad_p * p).sum(1, keepdim=True) * p
    split = analysis.proxy_gradient_split(x, y, p, temperature=t)
    norms = grad_p.norm(dim=1)
    assert split["positive proxy"] == pytest.approx(norms[:2].mean().item())
    assert split["other proxy"] == pytest.approx(norms[2:].mean().item())
    assert split["all proxies"] == pytest.approx(grad_p.norm().item())
    grad_x = (weights.sum(1, keepdim=True) * x - weights @ p)
    grad_x = grad_x - (grad_x * x).sum(1, keepdim=True) * x
    assert split["embedding"] == pytest.approx(grad_x.norm(dim=1).mean().item())
    assert math.isnan(analysis.proxy_gradient_split(x, torch.tensor([0, 1, 2, 3, 0, 1]), p)["other proxy"])


def test_adam_step_sizes_follow_lr_g_over_g_plus_eps():
    g = np.array([1e-4, 1e-2, 1.0, 1e2])
    for steps in (1, 5):
        np.testing.assert_allclose(analysis.adam_step_sizes(g, lr=2.0, eps=1.0, steps=steps), 2.0 * g / (g + 1.0),
                                   rtol=1e-9)
    np.testing.assert_allclose(analysis.adam_step_sizes(g, lr=1.0, eps=1e-8), g / (g + 1e-8), rtol=1e-9)
    with pytest.raises(ValueError, match="steps"):
        analysis.adam_step_sizes(g, steps=0)


def test_proxy_turn_angles_match_adams_first_step_and_fall_as_length_squared():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    p = torch.randn(4, 5, generator=g, dtype=torch.float64)
    # reference: autograd's gradient, Adam's first step written out value by value, the angle by hand
    raw = p.clone().requires_grad_(True)
    losses.proxy_nca_loss(x, labels, raw, 1 / 9, True).backward()
    expected = []
    for z in range(4):
        stepped = [p[z, k] - 0.3 * raw.grad[z, k] / (abs(raw.grad[z, k]) + 1.0) for k in range(5)]
        stepped = torch.stack(stepped)
        expected.append(math.acos(min(1.0, (p[z] @ stepped / (p[z].norm() * stepped.norm())).item())))
    angles = analysis.proxy_turn_angles(x, labels, p, lr=0.3)
    np.testing.assert_allclose(angles.numpy(), expected, rtol=1e-7)
    # 4 times longer proxies: the same loss, gradients 4 times smaller, angles 16 times smaller (for gradients
    # far below eps = 1, where the step is about lr · g: proxies 1000 times longer than the embeddings here)
    small = analysis.proxy_turn_angles(x, labels, 1000 * p, lr=1e-3)
    longer = analysis.proxy_turn_angles(x, labels, 4000 * p, lr=1e-3)
    np.testing.assert_allclose((small / longer).numpy(), 16.0, rtol=0.01)


def test_parameter_groups_and_step_scales():
    config = make_config("proxynca++", "ci", image_size=16, embedding_dim=8, weights=None)
    model, proxies = build(config, 1, 5)
    groups = analysis.parameter_groups(model, proxies)
    assert list(groups) == ["backbone", "embedding layer", "proxies"]
    assert groups["proxies"]["values"] == 40 and groups["proxies"]["norm"] == pytest.approx(proxies.norm().item())
    assert groups["embedding layer"]["values"] == 128 * 8 + 8
    assert "proxies" not in analysis.parameter_groups(model)
    history = {"steps": [{"grad_backbone": 2.0, "grad_embedding_layer": 1.0, "grad_proxies": 0.5},
                         {"grad_backbone": 4.0, "grad_embedding_layer": 1.0, "grad_proxies": 1.5}]}
    lrs = {"backbone": 0.1, "embedding layer": 0.1, "proxies": 100.0}
    table = analysis.step_scales(history, groups, lrs)
    g = 1.0 / math.sqrt(40)  # mean proxy gradient norm 1.0 over 40 values
    assert table.loc["proxies", "RMS gradient"] == pytest.approx(g)
    assert table.loc["proxies", "Adam step"] == pytest.approx(100 * g / (g + 1))
    assert table.loc["proxies", "step / weight"] == pytest.approx(100 * g / (g + 1) / (proxies.norm().item() / math.sqrt(40)))
    first = analysis.step_scales(history, groups, lrs, steps=slice(0, 1))
    assert first.loc["backbone", "RMS gradient"] == pytest.approx(2.0 / math.sqrt(groups["backbone"]["values"]))
    with pytest.raises(ValueError, match="learning rate"):
        analysis.step_scales(history, groups, {"backbone": 0.1})
    with pytest.raises(ValueError, match="no training steps"):
        analysis.step_scales(history, groups, lrs, steps=slice(5, 6))


# ------------------------------------------------------------------- chapter 06: batches, LayerNorm, comparisons
def test_batch_composition_by_hand():
    labels = np.array([0, 0, 0, 1, 1, 2, 3, 3])
    table = analysis.batch_composition([[0, 1, 2, 3], [3, 5, 6, 7], [4, 5]], labels)
    assert table["classes"].tolist() == [2, 3, 2]
    assert table["images with a classmate"].tolist() == [3, 2, 0]
    assert table["positive pairs"].tolist() == [3, 1, 0]
    assert table["largest class"].tolist() == [3, 2, 1] and table["images"].tolist() == [4, 4, 2]
    with pytest.raises(ValueError, match="no batches"):
        analysis.batch_composition([], labels)


def test_pooled_features_before_and_after_layernorm(tiny_data):
    for layernorm in (True, False):
        config = make_config("proxynca++", "ci", layernorm=layernorm, weights=None)
        model, _ = build(config, 1, tiny_data.num_train_classes)
        before, after = analysis.pooled_features(model, tiny_data.test, num_images=10, seed=1)
        assert before.shape == after.shape == (10, 128)
        centred = before - before.mean(axis=1, keepdims=True)  # LayerNorm without affine, eps 1e-5
        np.testing.assert_allclose(after, centred / np.sqrt(before.var(axis=1, keepdims=True) + 1e-5), atol=1e-4)
        model.eval()
        x = torch.stack([tiny_data.test[i][0] for i in range(len(tiny_data.test))])
        with torch.no_grad():
            features = model.features(x).numpy()  # the model's own output of its (optional) LayerNorm
        index = np.sort(np.random.default_rng(1).choice(len(tiny_data.test), 10, replace=False))
        np.testing.assert_allclose(features[index], after if layernorm else before, atol=1e-5)
        model.train()
        analysis.pooled_features(model, tiny_data.test, num_images=4)
        assert model.training  # the mode is restored
    assert len(analysis.pooled_features(model, tiny_data.test, num_images=10_000)[0]) == len(tiny_data.test)


def test_feature_statistics_by_hand():
    stats = analysis.feature_statistics(np.array([[3.0, 4.0], [6.0, 8.0], [4.0, -3.0]]))
    assert stats["norm"] == pytest.approx(20 / 3)
    assert stats["mean"] == pytest.approx((3.5 + 7 + 0.5) / 3)
    assert stats["norm spread"] == pytest.approx(np.std([5, 10, 5]) / (20 / 3))
    assert stats["cosine"] == pytest.approx((1 + 0 + 0) / 3)  # pairs: (0, 1) parallel, the others orthogonal
    with pytest.raises(ValueError, match="shape"):
        analysis.feature_statistics(np.ones(3))


def test_compare_to_reference_deltas_agree_with_printed_values():
    table = analysis.compare_to_reference({"R@1": 50.04, "NMI": 60.0}, {"a": {"R@1": 48.96, "NMI": 59.0}},
                                          reference_name="full")
    assert list(table.index) == ["full", "a"] and list(table.columns) == ["R@1", "NMI", "Δ R@1"]
    assert table.loc["a", "Δ R@1"] == pytest.approx(49.0 - 50.0) and table.loc["full", "Δ R@1"] == 0
    # 1.95 prints as 1.9 (it is 1.9499...), and 3.5 - 1.9 is 1.6; numpy's round would give 2.0 and 1.5
    table = analysis.compare_to_reference({"R@1": 1.95}, {"a": {"R@1": 3.5}})
    assert f"{table.loc['reference', 'R@1']:.1f}" == "1.9" and table.loc["a", "Δ R@1"] == pytest.approx(1.6)
    with pytest.raises(ValueError, match="MAP@R"):
        analysis.compare_to_reference({"R@1": 1.0}, {"a": {"R@1": 2.0}}, delta="MAP@R")


def test_per_image_losses_by_hand():
    emb = np.array([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: squared distances (0, 2, 4) and (2, 0, 2)
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    excluded = analysis.per_image_losses(emb, [0, 2], proxies, 1.0, False)
    # L = d_y / T + log sum_{z != y} exp(-d_z / T)
    np.testing.assert_allclose(excluded, [0 + np.log(np.exp(-2) + np.exp(-4)), 2 + np.log(np.exp(-0.0) + np.exp(-2))])
    assert excluded[0] < 0 < excluded[1]  # the first image is nearer its own proxy than any other
    included = analysis.per_image_losses(emb, [0, 2], proxies, 1 / 9, True)
    np.testing.assert_allclose(included, [np.log(1 + np.exp(-18) + np.exp(-36)), 18 + np.log(1 + 2 * np.exp(-18))])
    batch = losses.proxy_nca_loss(torch.tensor(emb), torch.tensor([0, 2]), proxies.double(), 1 / 9, True)
    np.testing.assert_allclose(included.mean(), batch.item())
