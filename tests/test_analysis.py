"""Chapter helpers that are not plots: run tables, prose from numbers, t-SNE, ProxyNCA loss profiles."""
import math

import numpy as np
import pytest
import torch

from pnca_utils import analysis
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
