"""Tests for pnca_utils.losses.

Every loss is checked three ways:
1. against a naive reference written here loop by loop in plain Python
   (lists of floats, math.exp / math.log) -- value, and gradient by central
   finite differences of that reference vs torch.autograd of the library;
2. on small hand-checkable cases (2-D points on the unit circle) whose numbers
   are worked out in the comments;
3. against pytorch-metric-learning where it computes the same quantity.
"""

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from pnca_utils.losses import (
    assignment_factor,
    nca_loss,
    npair_loss,
    npair_loss_from_batch,
    npair_loss_terms,
    proxy_nca_loss,
    triplet_loss,
    triplet_loss_terms,
)

SEEDS = [0, 1, 2]


# =========================================================================== #
# Plain-Python helpers (no torch) for the naive references
# =========================================================================== #
def _unit(v):
    n = math.sqrt(sum(c * c for c in v))
    return [c / n for c in v]


def _sqdist(u, v):
    return sum((a - b) ** 2 for a, b in zip(u, v))


def _dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def _lists(t):
    return t.detach().double().tolist()


def finite_diff_grads(f, arrays, h=1e-6):
    """Central differences of f(*arrays) w.r.t. every entry of every array.

    arrays are nested lists (1-, 2- or 3-D) of floats; returns float64 tensors.
    """
    grads = []
    for k, arr in enumerate(arrays):
        t = torch.tensor(arr, dtype=torch.float64)
        g = torch.zeros_like(t)
        for idx in itertools.product(*[range(s) for s in t.shape]):
            def at(delta):
                pert = t.clone()
                pert[tuple(idx)] += delta
                args = list(arrays)
                args[k] = pert.tolist()
                return f(*args)

            g[tuple(idx)] = (at(h) - at(-h)) / (2 * h)
        grads.append(g)
    return grads


def library_grads(loss, tensors):
    return torch.autograd.grad(loss, tensors)


def assert_close(actual, expected, atol=1e-8, rtol=1e-6):
    torch.testing.assert_close(
        torch.as_tensor(actual, dtype=torch.float64),
        torch.as_tensor(expected, dtype=torch.float64),
        atol=atol,
        rtol=rtol,
    )


def rand(*shape, seed, dtype=torch.float64, requires_grad=True):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).requires_grad_(requires_grad)


def rand_labels(n, num_classes, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    return torch.randint(0, num_classes, (n,), generator=g)


# =========================================================================== #
# Naive references
# =========================================================================== #
def naive_proxy_nca(emb, labels, proxies, temperature, positive_in_denominator):
    """-log( exp(-d(x,p_y)/T) / sum_{z in Z} exp(-d(x,p_z)/T) ), batch mean."""
    total = 0.0
    for x, y in zip(emb, labels):
        x = _unit(x)
        numerator = math.exp(-_sqdist(x, _unit(proxies[y])) / temperature)
        denominator = 0.0
        for z, p in enumerate(proxies):
            if z == y and not positive_in_denominator:
                continue
            denominator += math.exp(-_sqdist(x, _unit(p)) / temperature)
        total += -math.log(numerator / denominator)
    return total / len(emb)


def naive_nca(emb, labels, temperature):
    """-mean_i log( sum_{j!=i, y_j=y_i} e^{-d_ij/T} / sum_{k!=i} e^{-d_ik/T} ) over i with a positive."""
    xs = [_unit(x) for x in emb]
    terms = []
    for i in range(len(xs)):
        num = 0.0
        den = 0.0
        has_positive = False
        for j in range(len(xs)):
            if j == i:
                continue
            w = math.exp(-_sqdist(xs[i], xs[j]) / temperature)
            den += w
            if labels[j] == labels[i]:
                num += w
                has_positive = True
        if has_positive:
            terms.append(-math.log(num / den))
    return sum(terms) / len(terms)


def naive_triplet_terms(anchor, positive, negative, margin):
    return [
        max(0.0, math.sqrt(_sqdist(a, p)) - math.sqrt(_sqdist(a, n)) + margin)
        for a, p, n in zip(anchor, positive, negative)
    ]


def naive_triplet(emb, labels, margin, reduction):
    xs = [_unit(x) for x in emb]
    terms = []
    for a in range(len(xs)):
        for p in range(len(xs)):
            if p == a or labels[p] != labels[a]:
                continue
            for n in range(len(xs)):
                if labels[n] == labels[a]:
                    continue
                terms.append(naive_triplet_terms([xs[a]], [xs[p]], [xs[n]], margin)[0])
    if reduction == "nonzero":
        terms = [t for t in terms if t > 0]
    return sum(terms) / len(terms)


def naive_npair_terms(anchors, positives, negatives):
    """L_i = log(1 + sum_{j != i} exp(a_i.n_ij - a_i.p_i))."""
    out = []
    for i, (a, p) in enumerate(zip(anchors, positives)):
        s = 0.0
        for j in range(len(anchors)):
            if j != i:
                s += math.exp(_dot(a, negatives[i][j]) - _dot(a, p))
        out.append(math.log(1.0 + s))
    return out


def naive_npair(anchors, positives, l2_reg):
    n = len(anchors)
    negatives = [[positives[j] for j in range(n)] for _ in range(n)]
    loss = sum(naive_npair_terms(anchors, positives, negatives)) / n
    reg_a = sum(_dot(a, a) for a in anchors) / n
    reg_p = sum(_dot(p, p) for p in positives) / n
    return loss + 0.25 * l2_reg * (reg_a + reg_p)


# =========================================================================== #
# proxy_nca_loss
# =========================================================================== #
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("positive_in_denominator", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 1 / 9, 0.5])
def test_proxy_nca_matches_naive_value_and_grad(seed, positive_in_denominator, temperature):
    B, C, D = 6, 5, 4
    emb = rand(B, D, seed=seed)
    proxies = rand(C, D, seed=seed + 100)
    labels = rand_labels(B, C, seed)

    loss = proxy_nca_loss(emb, labels, proxies, temperature, positive_in_denominator)
    lab = labels.tolist()

    def ref(e, p):
        return naive_proxy_nca(e, lab, p, temperature, positive_in_denominator)

    assert_close(loss.item(), ref(_lists(emb), _lists(proxies)), atol=1e-10)
    g_emb, g_prox = library_grads(loss, (emb, proxies))
    n_emb, n_prox = finite_diff_grads(ref, [_lists(emb), _lists(proxies)])
    assert_close(g_emb, n_emb, atol=1e-7)
    assert_close(g_prox, n_prox, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_assignment_factor_is_the_naive_mean_of_one_minus_p_y(seed):
    emb, proxies, labels = rand(6, 4, seed=seed), rand(5, 4, seed=seed + 100), rand_labels(6, 5, seed)
    factor = assignment_factor(emb, labels, proxies, 1 / 9)
    p_y = [math.exp(-naive_proxy_nca([x], [y], _lists(proxies), 1 / 9, True))
           for x, y in zip(_lists(emb), labels.tolist())]
    assert_close(factor.item(), sum(1 - p for p in p_y) / len(p_y), atol=1e-12)
    assert not factor.requires_grad  # a scale, never a path for the gradient


def test_assignment_factor_gives_each_rule_the_others_size_on_identical_images():
    # Four copies of one image: every p_y is the same, so the included gradient is exactly the excluded
    # one times the factor, and the included one divided by it is exactly the excluded one.
    emb = rand(1, 4, seed=3).detach().repeat(4, 1).requires_grad_(True)
    proxies, labels = rand(5, 4, seed=4), torch.tensor([2, 2, 2, 2])
    factor = assignment_factor(emb, labels, proxies, 1 / 9)
    assert 0 < factor.item() < 1
    excluded = library_grads(proxy_nca_loss(emb, labels, proxies, 1 / 9) * factor, (emb, proxies))
    included = library_grads(proxy_nca_loss(emb, labels, proxies, 1 / 9, True), (emb, proxies))
    for a, b in zip(excluded, included):
        assert_close(a, b, atol=1e-12)
    rescaled = library_grads(proxy_nca_loss(emb, labels, proxies, 1 / 9, True) / factor, (emb, proxies))
    for a, b in zip(rescaled, library_grads(proxy_nca_loss(emb, labels, proxies, 1 / 9), (emb, proxies))):
        assert_close(a, b, atol=1e-12)


def test_proxy_nca_hand_computed():
    # Embedding x = (1,0) (given as (3,0): the loss normalises), proxies
    # p0 = (1,0), p1 = (0,1), p2 = (-1,0) (given unnormalised too).
    # Squared distances: d(x,p0) = 0, d(x,p1) = 1+1 = 2, d(x,p2) = 2^2 = 4.
    emb = torch.tensor([[3.0, 0.0], [3.0, 0.0]], dtype=torch.float64)
    proxies = torch.tensor([[2.0, 0.0], [0.0, 5.0], [-1.0, 0.0]], dtype=torch.float64)
    lab0 = torch.tensor([0])
    # Original ProxyNCA, T=1, label 0 (positive excluded from denominator):
    #   -log( e^0 / (e^-2 + e^-4) ) = log(e^-2 (1 + e^-2)) = -2 + log(1.135335) = -1.873072
    assert_close(proxy_nca_loss(emb[:1], lab0, proxies), -1.8730719890, atol=1e-9)
    # ProxyNCA++, T=1: -log( 1 / (1 + e^-2 + e^-4) ) = log(1.153652) = 0.142932
    assert_close(
        proxy_nca_loss(emb[:1], lab0, proxies, positive_in_denominator=True), 0.1429316285, atol=1e-9
    )
    # Label 1 (positive p1 at d=2, others at d=0 and d=4), original ProxyNCA:
    #   -log( e^-2 / (e^0 + e^-4) ) = 2 + log(1.018316) = 2.018150
    # batch [label 0, label 1] -> mean(-1.873072, 2.018150) = 0.072539
    assert_close(proxy_nca_loss(emb, torch.tensor([0, 1]), proxies), 0.0725389695, atol=1e-9)
    # T = 1/9 (scale 3): distances become 0, 18, 36.
    #   ProxyNCA:   -log( 1 / (e^-18 + e^-36) ) = -18 + log(1 + e^-18) = -17.99999998
    #   ProxyNCA++: log(1 + e^-18 + e^-36) = 1.523e-8
    assert_close(proxy_nca_loss(emb[:1], lab0, proxies, temperature=1 / 9), -17.99999998477, atol=1e-9)
    assert_close(
        proxy_nca_loss(emb[:1], lab0, proxies, temperature=1 / 9, positive_in_denominator=True),
        1.5229979828e-08,
        atol=1e-15,
        rtol=1e-8,
    )


def test_original_proxy_nca_can_be_negative_and_proxynca_pp_is_not():
    # Embedding sitting on its own proxy, far from the others: the original
    # ProxyNCA numerator exp(0)=1 exceeds the denominator (sum over the other
    # proxies only), so -log(num/den) < 0.
    proxies = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    emb = torch.tensor([[1.0, 0.01]], dtype=torch.float64)
    labels = torch.tensor([0])
    assert proxy_nca_loss(emb, labels, proxies) < 0
    assert proxy_nca_loss(emb, labels, proxies, positive_in_denominator=True) >= 0
    # ProxyNCA++ is a cross-entropy: >= 0 for any input, at any temperature.
    for seed in range(10):
        e = rand(8, 3, seed=seed, requires_grad=False)
        p = rand(4, 3, seed=seed + 50, requires_grad=False)
        for t in (1.0, 1 / 9, 0.01):
            assert proxy_nca_loss(e, rand_labels(8, 4, seed), p, t, positive_in_denominator=True) >= 0


@pytest.mark.parametrize("temperature", [1.0, 1 / 9, 0.25, 3.0])
@pytest.mark.parametrize("positive_in_denominator", [False, True])
def test_proxy_nca_temperature_is_scale_sqrt_inverse_t(temperature, positive_in_denominator):
    # d(x,p)/T with unit vectors equals ||s x - s p||^2 with s = 1/sqrt(T), T=1.
    emb = rand(5, 3, seed=7, requires_grad=False)
    proxies = rand(4, 3, seed=8, requires_grad=False)
    labels = rand_labels(5, 4, 7)
    s = 1 / math.sqrt(temperature)
    expected = 0.0
    for x, y in zip(_lists(emb), labels.tolist()):
        sx = [s * c for c in _unit(x)]
        scaled = [[s * c for c in _unit(p)] for p in _lists(proxies)]
        num = math.exp(-_sqdist(sx, scaled[y]))
        den = sum(
            math.exp(-_sqdist(sx, sp))
            for z, sp in enumerate(scaled)
            if positive_in_denominator or z != y
        )
        expected -= math.log(num / den)
    expected /= len(emb)
    got = proxy_nca_loss(emb, labels, proxies, temperature, positive_in_denominator)
    assert_close(got, expected, atol=1e-10)


def test_proxy_nca_preserves_dtype_and_is_finite_for_tiny_temperature():
    emb = rand(4, 3, seed=3, dtype=torch.float32)
    proxies = rand(6, 3, seed=4, dtype=torch.float32)
    labels = rand_labels(4, 6, 3)
    for pos in (False, True):
        loss = proxy_nca_loss(emb, labels, proxies, temperature=1e-4, positive_in_denominator=pos)
        assert loss.dtype == torch.float32
        g = torch.autograd.grad(loss, (emb, proxies))
        assert torch.isfinite(loss) and all(torch.isfinite(x).all() for x in g)


# --- pytorch-metric-learning equivalence --------------------------------------
@pytest.fixture
def pml_losses():
    return pytest.importorskip("pytorch_metric_learning.losses")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_proxy_nca_pp_matches_pml_proxy_nca_and_normalized_softmax(seed, dtype, atol, pml_losses):
    # PML ProxyNCALoss: LpDistance(power=2) on normalised embeddings AND
    # proxies, logits = -softmax_scale * ||x - p||^2, softmax over all proxies
    # (positive included), -log of the positive's probability, MeanReducer
    # (plain batch mean; it only drops samples whose probability underflows to
    # exactly 0, which does not happen here).  softmax_scale=9  <=>  T = 1/9.
    #
    # PML NormalizedSoftmaxLoss: W is (D, C), normalised per column, logits =
    # x.w / temperature, cross-entropy, batch mean.  For unit vectors
    # ||a - b||^2 = 2 - 2 a.b, so exp(-9 ||x - p||^2) = e^-18 * exp(18 x.p):
    # the constant e^-18 cancels in the softmax, leaving logits 18 x.p, i.e.
    # temperature 1/18.
    B, C, D = 10, 7, 5
    emb = rand(B, D, seed=seed, dtype=dtype)
    proxies = rand(C, D, seed=seed + 10, dtype=dtype)
    labels = rand_labels(B, C, seed)
    ours = proxy_nca_loss(emb, labels, proxies, temperature=1 / 9, positive_in_denominator=True)
    g_emb, g_prox = torch.autograd.grad(ours, (emb, proxies))

    pnca = pml_losses.ProxyNCALoss(num_classes=C, embedding_size=D, softmax_scale=9)
    pnca.proxies.data = proxies.detach().clone()  # (C, D) like ours
    emb1 = emb.detach().clone().requires_grad_(True)
    theirs = pnca(emb1, labels)
    theirs.backward()
    assert_close(theirs, ours, atol=atol)
    assert_close(emb1.grad, g_emb, atol=atol)
    assert_close(pnca.proxies.grad, g_prox, atol=atol)

    nsm = pml_losses.NormalizedSoftmaxLoss(num_classes=C, embedding_size=D, temperature=1 / 18)
    nsm.W.data = proxies.detach().T.clone()  # NormalizedSoftmax stores W as (D, C)
    emb2 = emb.detach().clone().requires_grad_(True)
    theirs = nsm(emb2, labels)
    theirs.backward()
    assert_close(theirs, ours, atol=atol)
    assert_close(emb2.grad, g_emb, atol=atol)
    assert_close(nsm.W.grad.T, g_prox, atol=atol)


# =========================================================================== #
# nca_loss
# =========================================================================== #
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("temperature", [1.0, 0.3])
def test_nca_matches_naive_value_and_grad(seed, temperature):
    B, D = 7, 3
    emb = rand(B, D, seed=seed)
    labels = rand_labels(B, 3, seed)
    labels[0] = 5  # a class with a single sample: no positive, left out
    lab = labels.tolist()
    loss = nca_loss(emb, labels, temperature)

    def ref(e):
        return naive_nca(e, lab, temperature)

    assert_close(loss.item(), ref(_lists(emb)), atol=1e-10)
    (g,) = library_grads(loss, (emb,))
    (n,) = finite_diff_grads(ref, [_lists(emb)])
    assert_close(g, n, atol=1e-7)


def test_nca_hand_computed():
    # x0 = (1,0) class 0, x1 = (0,1) class 0, x2 = (-1,0) class 1.
    # Squared distances: d01 = 2, d02 = 4, d12 = 2.
    # i=0: p0 = e^-2 / (e^-2 + e^-4) = 1/(1+e^-2)  -> -log p0 = log(1+e^-2) = 0.126928
    # i=1: p1 = e^-2 / (e^-2 + e^-2) = 1/2         -> log 2 = 0.693147
    # i=2: no other sample of class 1 -> excluded from the mean.
    # loss = (0.126928 + 0.693147) / 2 = 0.410038
    emb = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    assert_close(nca_loss(emb, labels), 0.4100375958, atol=1e-9)
    # T = 0.5 doubles the distances: i=0 -> log(1+e^-4) = 0.018150; i=1 -> log 2
    # loss = (0.018150 + 0.693147) / 2 = 0.355649
    assert_close(nca_loss(emb, labels, temperature=0.5), 0.3556485542, atol=1e-9)


def test_nca_without_any_positive_is_zero_with_zero_grad():
    emb = rand(4, 3, seed=0)
    loss = nca_loss(emb, torch.tensor([0, 1, 2, 3]))
    (g,) = torch.autograd.grad(loss, emb)
    assert loss.item() == 0.0
    assert torch.equal(g, torch.zeros_like(g))
    single = rand(1, 3, seed=1)
    assert nca_loss(single, torch.tensor([0])).item() == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_nca_matches_pml_nca_loss(seed, pml_losses):
    # PML NCALoss: LpDistance(power=2) on normalised embeddings, diagonal set
    # to -inf, softmax(softmax_scale * -d) over j != i, summed over same-label
    # j, -log, samples with zero positive mass dropped, then batch mean.
    # softmax_scale = 1/T.
    B, D, T = 9, 4, 0.5
    emb = rand(B, D, seed=seed)
    labels = rand_labels(B, 4, seed)
    labels[-1] = 99  # a sample without positive: both implementations drop it
    ours = nca_loss(emb, labels, temperature=T)
    (g,) = torch.autograd.grad(ours, emb)
    emb1 = emb.detach().clone().requires_grad_(True)
    theirs = pml_losses.NCALoss(softmax_scale=1 / T)(emb1, labels)
    theirs.backward()
    assert_close(theirs, ours, atol=1e-10)
    assert_close(emb1.grad, g, atol=1e-10)


# =========================================================================== #
# triplet_loss / triplet_loss_terms
# =========================================================================== #
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("reduction", ["all", "nonzero"])
@pytest.mark.parametrize("margin", [0.2, 1.0])
def test_triplet_matches_naive_value_and_grad(seed, reduction, margin):
    B, D = 8, 3
    emb = rand(B, D, seed=seed)
    labels = rand_labels(B, 3, seed)
    lab = labels.tolist()
    loss = triplet_loss(emb, labels, margin=margin, reduction=reduction)

    def ref(e):
        return naive_triplet(e, lab, margin, reduction)

    assert_close(loss.item(), ref(_lists(emb)), atol=1e-10)
    (g,) = library_grads(loss, (emb,))
    (n,) = finite_diff_grads(ref, [_lists(emb)])
    assert_close(g, n, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_triplet_terms_match_naive_per_triplet(seed):
    # Explicit, unnormalised triplets (as HDML passes synthetic negatives).
    T, D, margin = 6, 4, 0.5
    a, p, n = rand(T, D, seed=seed), rand(T, D, seed=seed + 1), rand(T, D, seed=seed + 2)
    w = rand(T, seed=seed + 3, requires_grad=False)  # random weights to check the per-triplet vector
    terms = triplet_loss_terms(a, p, n, margin)
    assert terms.shape == (T,)
    expected = naive_triplet_terms(_lists(a), _lists(p), _lists(n), margin)
    assert_close(terms, expected, atol=1e-12)
    wl = w.tolist()

    def ref(a_, p_, n_):
        return sum(wi * ti for wi, ti in zip(wl, naive_triplet_terms(a_, p_, n_, margin)))

    grads = library_grads((w * terms).sum(), (a, p, n))
    numeric = finite_diff_grads(ref, [_lists(a), _lists(p), _lists(n)])
    for g, nm in zip(grads, numeric):
        assert_close(g, nm, atol=1e-7)


def test_triplet_hand_computed():
    # x0 = (1,0) class 0, x1 = (0,1) class 0, x2 = (-1,0) class 1.
    # Euclidean distances: d01 = sqrt 2 = 1.414214, d02 = 2, d12 = sqrt 2.
    # Valid triplets (a,p,n): (0,1,2) and (1,0,2); anchor 2 has no positive.
    # margin 0.2: (0,1,2): 1.414214 - 2 + 0.2 = -0.385786 -> 0
    #             (1,0,2): 1.414214 - 1.414214 + 0.2 = 0.2
    #   "all"    : (0 + 0.2)/2 = 0.1
    #   "nonzero": 0.2/1 = 0.2
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-3.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    assert_close(triplet_loss(emb, labels, margin=0.2), 0.1, atol=1e-12)
    assert_close(triplet_loss(emb, labels, margin=0.2, reduction="nonzero"), 0.2, atol=1e-12)
    # margin 1: (0,1,2): 0.414214, (1,0,2): 1 -> both reductions 0.707107
    assert_close(triplet_loss(emb, labels, margin=1.0), 0.7071067812, atol=1e-9)
    # triplet_loss_terms does not normalise: a=(0,0), p=(3,4) -> d_ap = 5;
    # n=(6,8) -> d_an = 10: 5 - 10 + 0.2 < 0 -> 0;  n=(0,1) -> d_an = 1: 5 - 1 + 0.2 = 4.2
    a = torch.zeros(2, 2, dtype=torch.float64)
    p = torch.tensor([[3.0, 4.0], [3.0, 4.0]], dtype=torch.float64)
    n = torch.tensor([[6.0, 8.0], [0.0, 1.0]], dtype=torch.float64)
    assert_close(triplet_loss_terms(a, p, n, margin=0.2), [0.0, 4.2], atol=1e-12)


def test_triplet_edge_cases_zero_loss_and_finite_grad():
    # one class only -> no valid triplet -> 0 with zero gradient
    emb = rand(4, 3, seed=0)
    loss = triplet_loss(emb, torch.tensor([1, 1, 1, 1]))
    (g,) = torch.autograd.grad(loss, emb)
    assert loss.item() == 0.0 and torch.equal(g, torch.zeros_like(g))
    # all triplets satisfied -> "nonzero" mean over an empty set is 0
    emb = torch.tensor([[1.0, 0.0], [1.0, 0.01], [-1.0, 0.0]], dtype=torch.float64, requires_grad=True)
    loss = triplet_loss(emb, torch.tensor([0, 0, 1]), margin=0.2, reduction="nonzero")
    assert loss.item() == 0.0
    # identical anchor and positive (d_ap = 0, where the norm has a kink): finite gradient
    emb = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    loss = triplet_loss(emb, torch.tensor([0, 0, 1]), margin=1.0)
    (g,) = torch.autograd.grad(loss, emb)
    assert loss.item() > 0 and torch.isfinite(g).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_triplet_nonzero_matches_pml_triplet_margin_loss(seed, pml_losses):
    # PML TripletMarginLoss defaults: LpDistance(p=2, power=1) on normalised
    # embeddings (Euclidean, not squared), every valid triplet when no miner
    # (triplets_per_anchor="all"), relu(d_ap - d_an + margin), AvgNonZeroReducer
    # (mean over the triplets with loss > 0) == our reduction="nonzero".
    B, D = 12, 4
    emb = rand(B, D, seed=seed)
    labels = rand_labels(B, 4, seed)
    ours = triplet_loss(emb, labels, margin=0.2, reduction="nonzero")
    (g,) = torch.autograd.grad(ours, emb)
    emb1 = emb.detach().clone().requires_grad_(True)
    theirs = pml_losses.TripletMarginLoss(margin=0.2)(emb1, labels)
    theirs.backward()
    assert ours.item() > 0
    assert_close(theirs, ours, atol=1e-10)
    assert_close(emb1.grad, g, atol=1e-10)


# =========================================================================== #
# N-pair loss
# =========================================================================== #
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("l2_reg", [0.0, 0.002, 0.5])
def test_npair_matches_naive_value_and_grad(seed, l2_reg):
    N, D = 5, 3
    a, p = rand(N, D, seed=seed), rand(N, D, seed=seed + 1)
    loss = npair_loss(a, p, l2_reg=l2_reg)

    def ref(a_, p_):
        return naive_npair(a_, p_, l2_reg)

    assert_close(loss.item(), ref(_lists(a), _lists(p)), atol=1e-10)
    grads = library_grads(loss, (a, p))
    numeric = finite_diff_grads(ref, [_lists(a), _lists(p)])
    for g, nm in zip(grads, numeric):
        assert_close(g, nm, atol=1e-7)


@pytest.mark.parametrize("seed", SEEDS)
def test_npair_terms_with_explicit_negatives_match_naive(seed):
    N, D = 4, 3
    a, p = rand(N, D, seed=seed), rand(N, D, seed=seed + 1)
    neg = rand(N, N, D, seed=seed + 2)
    w = rand(N, seed=seed + 3, requires_grad=False)
    terms = npair_loss_terms(a, p, neg)
    assert terms.shape == (N,)
    assert_close(terms, naive_npair_terms(_lists(a), _lists(p), _lists(neg)), atol=1e-12)
    wl = w.tolist()

    def ref(a_, p_, n_):
        return sum(wi * ti for wi, ti in zip(wl, naive_npair_terms(a_, p_, n_)))

    grads = library_grads((w * terms).sum(), (a, p, neg))
    numeric = finite_diff_grads(ref, [_lists(a), _lists(p), _lists(neg)])
    for g, nm in zip(grads, numeric):
        assert_close(g, nm, atol=1e-7)
    # the diagonal negatives[i, i] is never read: zero gradient there
    assert torch.equal(grads[2][torch.arange(N), torch.arange(N)], torch.zeros(N, D, dtype=torch.float64))


def test_npair_hand_computed():
    # a0 = (2,0), p0 = (1,0), a1 = (0,1), p1 = (1,1)
    # logits a.p^T = [[2, 2], [0, 1]]
    # i=0: log(1 + e^{2-2}) = log 2 = 0.693147
    # i=1: log(1 + e^{0-1}) = log(1 + e^-1) = 0.313262
    # mean = 0.503204
    # L2 term (l2_reg = 0.002): mean||a||^2 = (4+1)/2 = 2.5, mean||p||^2 = (1+2)/2 = 1.5
    #   0.002/4 * (2.5 + 1.5) = 0.002 -> total 0.505204
    a = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert_close(npair_loss(a, p, l2_reg=0.0), 0.5032044340, atol=1e-9)
    assert_close(npair_loss(a, p), 0.5052044340, atol=1e-9)  # default l2_reg = 0.002
    # Explicit (hardened) negatives: anchors (1,0),(0,1), positives equal to the
    # anchors (a.p = 1); negative for anchor 0 from class 1 pulled to (0.5,0)
    # (a0.n01 = 0.5), for anchor 1 from class 0 to (0,0.5) (a1.n10 = 0.5):
    #   L_i = log(1 + e^{0.5 - 1}) = log(1 + e^-0.5) = 0.474077
    # The diagonal holds NaN to show it is never read.
    a = torch.eye(2, dtype=torch.float64)
    neg = torch.full((2, 2, 2), float("nan"), dtype=torch.float64)
    neg[0, 1] = torch.tensor([0.5, 0.0])
    neg[1, 0] = torch.tensor([0.0, 0.5])
    assert_close(npair_loss_terms(a, a, neg), [0.4740769842, 0.4740769842], atol=1e-9)


def test_npair_loss_is_cross_entropy_of_anchor_positive_logits():
    # with negatives[i, j] = positives[j] the per-anchor term is exactly the
    # cross-entropy of row i of a @ p^T with target i
    a, p = rand(6, 4, seed=5, requires_grad=False), rand(6, 4, seed=6, requires_grad=False)
    expected = F.cross_entropy(a @ p.T, torch.arange(6))
    assert_close(npair_loss(a, p, l2_reg=0.0), expected, atol=1e-12)
    neg = p.unsqueeze(0).expand(6, 6, 4)
    assert_close(npair_loss_terms(a, p, neg), F.cross_entropy(a @ p.T, torch.arange(6), reduction="none"), atol=1e-12)


def test_npair_loss_from_batch_pairs_by_class():
    # batch in arbitrary order, two images per class: first occurrence is the anchor
    emb = rand(8, 3, seed=11, requires_grad=False)
    labels = torch.tensor([7, 2, 5, 2, 9, 5, 7, 9])
    # classes sorted 2, 5, 7, 9 -> anchors rows 1, 2, 0, 4 ; positives rows 3, 5, 6, 7
    expected = npair_loss(emb[[1, 2, 0, 4]], emb[[3, 5, 6, 7]], l2_reg=0.01)
    assert_close(npair_loss_from_batch(emb, labels, l2_reg=0.01), expected, atol=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_npair_matches_pml_npairs_loss(seed, pml_losses):
    # PML NPairsLoss differs from Sohn's loss in two ways: its default
    # DotProductSimilarity L2-normalises the embeddings, and it has no L2
    # regulariser.  It takes, per class, the first (anchor, positive) pair in
    # batch order and applies cross-entropy to anchors @ positives^T with
    # target i -- the same as ours on normalised inputs with l2_reg=0.
    N, D = 6, 4
    emb = rand(2 * N, D, seed=seed)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(N).repeat(2)[torch.randperm(2 * N, generator=g)]
    ours = npair_loss_from_batch(F.normalize(emb, dim=1), labels, l2_reg=0.0)
    (grad,) = torch.autograd.grad(ours, emb)
    emb1 = emb.detach().clone().requires_grad_(True)
    theirs = pml_losses.NPairsLoss()(emb1, labels)
    theirs.backward()
    assert_close(theirs, ours, atol=1e-10)
    assert_close(emb1.grad, grad, atol=1e-10)


# =========================================================================== #
# Bad inputs
# =========================================================================== #
E = torch.randn(4, 3)
P = torch.randn(5, 3)
L = torch.tensor([0, 1, 2, 3])

BAD_CALLS = [
    ("temperature", lambda: proxy_nca_loss(E, L, P, temperature=0.0)),
    ("temperature", lambda: proxy_nca_loss(E, L, P, temperature=-1.0)),
    ("temperature", lambda: proxy_nca_loss(E, L, P, temperature=float("nan"))),
    ("embeddings", lambda: proxy_nca_loss(E[0], L, P)),
    ("embeddings", lambda: proxy_nca_loss(E[:0], L[:0], P)),
    ("embeddings", lambda: proxy_nca_loss(E.long(), L, P)),
    ("proxies", lambda: proxy_nca_loss(E, L, P[:, :2])),
    ("proxies", lambda: proxy_nca_loss(E, L, P[None])),
    ("proxies", lambda: proxy_nca_loss(E, torch.tensor([0, 0, 0, 0]), P[:1])),
    ("labels", lambda: proxy_nca_loss(E, L[:3], P)),
    ("labels", lambda: proxy_nca_loss(E, torch.tensor([0, 1, 2, 5]), P)),
    ("labels", lambda: proxy_nca_loss(E, torch.tensor([0, -1, 2, 3]), P)),
    ("labels", lambda: proxy_nca_loss(E, L.float(), P)),
    ("temperature", lambda: nca_loss(E, L, temperature=0)),
    ("labels", lambda: nca_loss(E, L[:, None])),
    ("embeddings", lambda: nca_loss(E[None], L)),
    ("reduction", lambda: triplet_loss(E, L, reduction="mean")),
    ("margin", lambda: triplet_loss(E, L, margin=-0.1)),
    ("labels", lambda: triplet_loss(E, L[:2])),
    ("same shape", lambda: triplet_loss_terms(E, E, E[:2])),
    ("anchor", lambda: triplet_loss_terms(E[0], E[0], E[0])),
    ("same shape", lambda: npair_loss(E, E[:3])),
    ("at least 2 classes", lambda: npair_loss(E[:1], E[:1])),
    ("l2_reg", lambda: npair_loss(E, E, l2_reg=-1.0)),
    ("negatives", lambda: npair_loss_terms(E, E, E)),
    ("negatives", lambda: npair_loss_terms(E, E, torch.randn(4, 3, 3))),
    ("exactly 2 images per class", lambda: npair_loss_from_batch(E, torch.tensor([0, 0, 0, 1]))),
    ("exactly 2 images per class", lambda: npair_loss_from_batch(E, torch.tensor([0, 0, 1, 2]))),
    ("labels", lambda: npair_loss_from_batch(E, L[:3])),
]


@pytest.mark.parametrize("what,call", BAD_CALLS, ids=[f"{i}-{w}" for i, (w, _) in enumerate(BAD_CALLS)])
def test_bad_inputs_raise_value_error_naming_the_problem(what, call):
    with pytest.raises(ValueError, match=what):
        call()
