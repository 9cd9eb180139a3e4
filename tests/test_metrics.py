"""Tests for pnca_utils.metrics against a naive loop-by-loop reference, hand-computed cases, faiss and PML."""
from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from pnca_utils import knn, metrics, metrics_reference
from pnca_utils.metrics import evaluate, f1_clustering, map_at_r, nmi, r_precision, recall_at_k

KS = (1, 2, 4, 8)


# ------------------------------------------------------------------------------------------- naive reference
def naive_relevance(x, y, qx=None, qy=None):
    """Per query: same-class flags of the gallery ranked by (squared distance, index), in pure Python."""
    loo = qx is None
    gallery, g_labels = np.asarray(x, np.float32).tolist(), list(y)
    queries, q_labels = (gallery, g_labels) if loo else (np.asarray(qx, np.float32).tolist(), list(qy))
    for i, (q, label) in enumerate(zip(queries, q_labels)):
        ranked = sorted((sum((a - b) ** 2 for a, b in zip(q, g)), j)
                        for j, g in enumerate(gallery) if not (loo and j == i))
        yield [g_labels[j] == label for _, j in ranked]


def naive_recall(x, y, ks, qx=None, qy=None):
    rel = list(naive_relevance(x, y, qx, qy))
    return {k: sum(any(r[:k]) for r in rel) / len(rel) for k in ks}


def naive_map_r_and_rp(x, y, qx=None, qy=None):
    ap, rp = [], []
    for r in naive_relevance(x, y, qx, qy):
        big_r = sum(r)
        if big_r == 0:
            continue
        ap.append(sum(sum(r[:i + 1]) / (i + 1) for i in range(big_r) if r[i]) / big_r)
        rp.append(sum(r[:big_r]) / big_r)
    return (sum(ap) / len(ap), sum(rp) / len(rp)) if ap else (math.nan, math.nan)


def naive_pairwise_f1(labels, clusters):
    tp = fp = fn = 0
    for i, j in combinations(range(len(labels)), 2):
        same_class, same_cluster = labels[i] == labels[j], clusters[i] == clusters[j]
        tp += same_class and same_cluster
        fp += same_cluster and not same_class
        fn += same_class and not same_cluster
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    return 2 * precision * recall / (precision + recall)


# ------------------------------------------------------------------------------------------------- data sets
def continuous(seed, n=60, dim=4, classes=6):
    """Gaussian points with random labels and one one-image class (label 99)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    y[0] = 99
    return rng.normal(size=(n, dim)).astype(np.float32), y


def lattice(seed, n=60, classes=4):
    """Small-integer 2-D points: many duplicates and exact distance ties."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 4, (n, 2)).astype(np.float32), rng.integers(0, classes, n)


def split(x, y, n_queries=25):
    """Query/gallery split whose first query has a class absent from the gallery."""
    qy = y[:n_queries].copy()
    qy[0] = 1234
    return x[n_queries:], y[n_queries:], x[:n_queries], qy


DATA = [continuous(0), continuous(1), lattice(2), lattice(3)]
IDS = ["gauss0", "gauss1", "lattice2", "lattice3"]


def assert_metrics_equal_naive(x, y, qx=None, qy=None, **kw):
    """The fast metrics and the readable ones (metrics_reference) both equal the pure-Python loops above."""
    want_recall, (want_map, want_rp) = naive_recall(x, y, KS, qx, qy), naive_map_r_and_rp(x, y, qx, qy)
    assert metrics_reference.recall_at_k(x, y, KS, qx, qy) == pytest.approx(want_recall, abs=1e-12)
    assert metrics_reference.map_at_r(x, y, qx, qy) == pytest.approx(want_map, abs=1e-12, nan_ok=True)
    assert metrics_reference.r_precision(x, y, qx, qy) == pytest.approx(want_rp, abs=1e-12, nan_ok=True)
    got = recall_at_k(x, y, KS, qx, qy, **kw)
    assert got == pytest.approx(want_recall, abs=1e-12)
    assert map_at_r(x, y, qx, qy, **kw) == pytest.approx(want_map, abs=1e-12)
    assert r_precision(x, y, qx, qy, **kw) == pytest.approx(want_rp, abs=1e-12)


# ------------------------------------------------------------------------------------- against the reference
@pytest.mark.parametrize("x, y", DATA, ids=IDS)
def test_leave_one_out_matches_naive(x, y):
    assert_metrics_equal_naive(x, y)


@pytest.mark.parametrize("x, y", DATA, ids=IDS)
def test_query_gallery_matches_naive(x, y):
    assert_metrics_equal_naive(*split(x, y))


@pytest.mark.parametrize("x, y", DATA, ids=IDS)
def test_chunk_size_does_not_change_results(x, y):
    for args in [(x, y), split(x, y)]:
        default = (recall_at_k(*args[:2], KS, *args[2:]), map_at_r(*args), r_precision(*args))
        for chunk in (1, 7):
            chunked = (recall_at_k(*args[:2], KS, *args[2:], chunk_size=chunk),
                       map_at_r(*args, chunk_size=chunk), r_precision(*args, chunk_size=chunk))
            assert chunked == default


def test_accepts_numpy_and_torch_alike():
    x, y = continuous(4)
    assert recall_at_k(torch.from_numpy(x), torch.from_numpy(y), KS) == recall_at_k(x, y, KS)
    assert map_at_r(torch.from_numpy(x).double(), y.tolist()) == map_at_r(x, y)


# ----------------------------------------------------------------------------------------- hand-made cases
A, B, C = 0, 1, 2


def test_tie_is_broken_by_lower_gallery_index():
    query, q_label = [[0.0]], [A]
    # both gallery items lie at distance 1 from the query; the lower index ranks first
    assert recall_at_k([[-1.0], [1.0]], [B, A], (1, 2), query, q_label) == {1: 0.0, 2: 1.0}
    assert recall_at_k([[1.0], [-1.0]], [A, B], (1, 2), query, q_label) == {1: 1.0, 2: 1.0}
    assert map_at_r([[-1.0], [1.0]], [B, A], query, q_label) == 0.0
    assert map_at_r([[1.0], [-1.0]], [A, B], query, q_label) == 1.0
    assert r_precision([[-1.0], [1.0]], [B, A], query, q_label) == 0.0


def test_tie_in_leave_one_out():
    x = [[0.0], [-1.0], [1.0]]
    # item 0: items 1 (B) and 2 (A) tie at distance 1, B has the lower index -> miss at 1, hit at 2
    # item 1: only B -> miss; item 2: nearest is item 0 (A) -> hit
    assert recall_at_k(x, [A, B, A], (1, 2)) == pytest.approx({1: 1 / 3, 2: 2 / 3})
    # same points, labels of items 1 and 2 swapped: now the tie favours the match for item 0
    assert recall_at_k(x, [A, A, B], (1, 2)) == pytest.approx({1: 2 / 3, 2: 2 / 3})


def test_self_is_excluded_but_an_identical_other_item_counts():
    x = [[0.0, 0.0], [0.0, 0.0], [3.0, 0.0]]
    # the identical other item is of the same class: both copies hit, the lone B misses
    assert recall_at_k(x, [A, A, B], (1,)) == pytest.approx({1: 2 / 3})
    assert map_at_r(x, [A, A, B]) == 1.0
    # item 0's only exact duplicate is of another class (its own copy must not count): miss at 1, hit at 2;
    # item 1 is a one-image class; item 2 ties between items 0 (A) and 1 (B) and takes item 0 -> hit
    assert recall_at_k(x, [A, B, A], (1, 2)) == pytest.approx({1: 1 / 3, 2: 2 / 3})
    assert map_at_r(x, [A, B, A]) == pytest.approx(0.5)  # item 0: AP 0, item 2: AP 1; item 1 skipped


def test_one_image_classes_are_misses_and_skipped():
    x = np.arange(8, dtype=np.float32)[:, None]
    singles = np.arange(8)
    assert recall_at_k(x, singles, KS) == {k: 0.0 for k in KS}
    assert math.isnan(map_at_r(x, singles)) and math.isnan(r_precision(x, singles))
    mixed = np.array([A, A, 5, 6, 7, 8, 9, 10])  # only items 0 and 1 have a match, and it is each other
    assert recall_at_k(x, mixed, (1,)) == {1: 0.25}
    assert map_at_r(x, mixed) == 1.0  # one-image classes are left out of MAP@R


def test_single_class_is_all_hits():
    x = np.random.default_rng(5).normal(size=(20, 3))
    y = np.zeros(20, dtype=int)
    assert recall_at_k(x, y, KS) == {k: 1.0 for k in KS}
    assert map_at_r(x, y) == 1.0 and r_precision(x, y) == 1.0


def test_points_on_a_line():
    x = [[0.0], [1.0], [3.0], [4.0], [10.0]]
    y = [A, B, A, B, B]
    # rankings (label of each neighbour, nearest first):
    #   0: B A B B   1: A A B B   2: B B A B   3: A B A B   4: B A B A
    # first match at rank 2, 3, 3, 2, 1 -> R@1 = 1/5, R@2 = 3/5, R@3 = 5/5
    assert recall_at_k(x, y, (1, 2, 3)) == pytest.approx({1: 0.2, 2: 0.6, 3: 1.0})
    # R = 1, 2, 1, 2, 2; AP@R = 0, 0, 0, (1/2)(1/2), (1/2)(1/1); RP = 0, 0, 0, 1/2, 1/2
    assert map_at_r(x, y) == pytest.approx(0.15)
    assert r_precision(x, y) == pytest.approx(0.2)


def test_query_class_missing_from_gallery_is_a_miss():
    gallery, g_labels = [[0.0], [1.0]], [A, B]
    assert recall_at_k(gallery, g_labels, (1, 2), [[0.2], [0.9]], [A, C]) == {1: 0.5, 2: 0.5}
    assert map_at_r(gallery, g_labels, [[0.2], [0.9]], [A, C]) == 1.0  # the C query is skipped


# ------------------------------------------------------------------------ fast ranks against float64 ranks
# recall_at_k counts in float32 with a bound on its rounding and recomputes in float64 the queries the bound
# leaves open (knn._first_match_ranks); knn._exact_ranks is the float64 definition it must reproduce.
def near_ties(seed, n=300, dim=16, classes=40):
    """Unit vectors in tight clusters, and copies of some items nudged by a few float32 ulps: distances that
    float32 cannot order but float64 can."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(classes, dim))[y] + 0.3 * rng.normal(size=(n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x = x.astype(np.float32)
    copies = rng.integers(0, n, n // 3)
    x[copies[: n // 6]] = x[copies[n // 6:n // 3]]
    nudge = rng.integers(-4, 5, size=(n // 3, dim)) * np.spacing(x[copies])
    x[copies] += nudge.astype(np.float32)
    return x, rng.integers(0, classes, n)  # labels drawn again: copies often land in other classes


def mixed_norms(seed, n=200, dim=8):
    """Norms from 1e-3 to 1e3, one class much larger than a block, a few one-image classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)) * 10.0 ** rng.uniform(-3, 3, size=(n, 1))
    y = np.where(rng.random(n) < 0.4, 0, rng.integers(1, 30, n))
    y[:5] = [101, 102, 103, 104, 105]
    return x.astype(np.float32), y


FAST_DATA = [continuous(20, dim=8), lattice(21, n=120), near_ties(22), near_ties(23, n=150, dim=64), mixed_norms(24)]
FAST_IDS = ["gauss", "lattice", "near-ties", "near-ties-64d", "mixed-norms"]


class TorchHost(knn._Host):
    """The counting pass's element-wise steps as they run on a GPU (in torch), here on the CPU."""

    def __init__(self, device):
        super().__init__(device)
        self.numpy = False


@pytest.fixture(params=["band", "whole-rows", "torch-host", "gathered-rows"])
def recount(request, monkeypatch):
    """How the float32 pass runs and recounts the queries it leaves open: from the band of pairs it kept
    (the default), from whole rows in float64 (the band was too large to keep), with the element-wise
    steps in torch, or with augmented rows gathered block by block (no room for whole copies). Yields the
    list of how many queries each recount took."""
    calls = []
    if request.param == "gathered-rows":
        monkeypatch.setattr(knn, "_COPY_BYTES", 0)
    if request.param == "whole-rows":
        monkeypatch.setattr(knn, "_BAND_PAIRS", 0)
        spied = "_exact_ranks"
    else:
        spied = "_band_ranks"
    if request.param == "torch-host":
        monkeypatch.setattr(knn, "_Host", TorchHost)
    real = getattr(knn, spied)

    def spy(s, *args):
        queries = args[2] if spied == "_band_ranks" else args[1] if len(args) > 1 else None  # None: every query
        if queries is not None:
            calls.append(len(queries))
        return real(s, *args)

    monkeypatch.setattr(knn, spied, spy)
    return calls


@pytest.mark.parametrize("x, y", FAST_DATA, ids=FAST_IDS)
@pytest.mark.parametrize("query_gallery", [False, True], ids=["leave-one-out", "query-gallery"])
def test_fast_ranks_decide_every_k_as_float64(x, y, query_gallery, recount):
    s = metrics._search(*(split(x, y, len(x) // 3) if query_gallery else (x, y, None, None)))
    exact = knn._exact_ranks(s, 64)
    small = len(x) <= 120
    for chunk in (None, 50) + ((8,) if small else ()):  # small blocks split classes and cut the triangle
        # every K at once: the returned ranks must be the float64 ranks themselves
        assert torch.equal(knn._first_match_ranks(s, chunk, list(range(1, len(s.gallery) + 1))), exact)
        # a few K: each must be decided as the float64 ranks decide it (elsewhere a lower bound is returned)
        for ks in [(1,), (1, 2, 5), (3, 10, 30)]:
            fast = knn._first_match_ranks(s, chunk, list(ks))
            for k in ks:
                assert torch.equal(fast < k, exact < k), (chunk, ks, k)
    if x is FAST_DATA[2][0]:  # near ties: float32 leaves some queries open, so the recount above was exercised
        assert sum(recount) > 0


def test_tiles_cover_the_range_with_widths_in_multiples_of_8():
    assert knn._tiles(0, 16) == []
    assert knn._tiles(5, 16) == [(0, 5)]
    assert knn._tiles(16, 16) == [(0, 16)]
    assert knn._tiles(45, 16) == [(0, 16), (16, 32), (32, 40), (40, 45)]
    assert knn._tiles(41, 16) == [(0, 16), (16, 32), (32, 40), (40, 41)]
    assert knn._tiles(20, 50) == [(0, 16), (16, 20)]
    tiles = knn._tiles(60502, 2048)
    assert tiles[0] == (0, 2048) and tiles[-1][1] == 60502 and all(a[1] == b[0] for a, b in zip(tiles, tiles[1:]))
    assert all((b - a) % 8 == 0 for a, b in tiles[:-1]) and tiles[-1][1] - tiles[-1][0] < 8


@pytest.mark.parametrize("n, size", [(1, 8), (15, 16), (16, 16), (40, 16), (45, 16), (60, 50), (100, 24)])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_schedule_counts_every_ordered_pair_once(n, size, leave_one_out):
    """Each (query, item) pair is counted once: for the query's row of a block, or for its column when the
    block is counted both ways (the same pair seen from the item's side in leave-one-out)."""
    q_tiles = knn._tiles(n, size)
    g_tiles = q_tiles if leave_one_out else knn._tiles(n + 7, size)
    counted = np.zeros((n, n if leave_one_out else n + 7), int)
    computed = 0
    for i, j, (r0, r1), (c0, c1), both in knn._schedule(q_tiles, g_tiles, leave_one_out):
        assert q_tiles[i][0] <= r0 < r1 <= q_tiles[i][1] and g_tiles[j][0] <= c0 < c1 <= g_tiles[j][1]
        computed += (r1 - r0) * (c1 - c0)
        for r in range(r0, r1):
            for c in range(c0, c1):
                counted[r, c] += 1
                if both:
                    counted[c, r] += 1
        assert not both or leave_one_out
    assert (counted == 1).all()
    if leave_one_out and size >= 16 and n >= 16:  # diagonal blocks are split: less than the whole square
        assert computed < sum((b - a) * (n - a) for a, b in q_tiles)


def test_squared_norms_are_exact_float64_sums():
    rng = np.random.default_rng(26)  # multiples of 1/64 below 16: every partial sum is exact in float64
    x = torch.from_numpy((rng.integers(-1000, 1000, size=(70, 40)) / 64).astype(np.float32))
    for rows_bytes in (knn._EXACT_BYTES, 2 * 8 * 40 * 3):  # one slice, and slices of 3 rows
        with pytest.MonkeyPatch.context() as m:
            m.setattr(knn, "_EXACT_BYTES", rows_bytes)
            got = knn._sq_norms(x)
        assert torch.equal(got, torch.tensor([math.fsum(float(v) ** 2 for v in row) for row in x], dtype=torch.float64))


def test_fast_ranks_in_float64_when_float32_products_are_not_ieee():
    x, y = near_ties(25)
    want = recall_at_k(x, y, (1, 2, 4))
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # may allow TF32 or bfloat16 products: float32 bounds fail
        assert knn._fast_dtype(torch.device("cpu"), 1.0) == torch.float64
        assert recall_at_k(x, y, (1, 2, 4)) == want
    finally:
        torch.set_float32_matmul_precision(before)
    assert knn._fast_dtype(torch.device("cpu"), 1.0) == torch.float32
    assert knn._fast_dtype(torch.device("cpu"), 2.0 ** 120) == torch.float64


def test_partition_keeps_classes_whole_unless_too_large():
    labels = np.array([0, 0, 0, 1, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4])
    blocks = knn._partition(labels, 4)
    assert blocks[0] == (0, 4) and blocks[1] == (4, 6)  # class 2 would straddle 4: the block ends before it
    assert blocks[2:] == [(6, 10), (10, 14)]  # class 3 (7 items) is split
    assert blocks[-1][1] == len(labels) and all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))


# ------------------------------------------------------------------------------------ external references
def test_recall_matches_faiss():
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(300, 8)).astype(np.float32), rng.integers(0, 10, 300)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    _, nn = index.search(x, max(KS) + 1)
    assert (nn[:, 0] == np.arange(len(x))).all()  # continuous data: every point is its own nearest
    hits = y[nn[:, 1:]] == y[:, None]
    want = {k: hits[:, :k].any(1).mean() for k in KS}
    assert recall_at_k(x, y, KS) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("query_gallery", [False, True], ids=["leave-one-out", "query-gallery"])
def test_map_r_and_rp_match_pytorch_metric_learning(query_gallery):
    accuracy_calculator = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(200, 8)).astype(np.float32), rng.integers(0, 8, 200)
    calc = accuracy_calculator.AccuracyCalculator(
        include=("mean_average_precision_at_r", "r_precision"), k="max_bin_count", device=torch.device("cpu"))
    if query_gallery:
        g, gy, q, qy = split(x, y, 60)
        want = calc.get_accuracy(q, qy, g, gy, ref_includes_query=False)
        got_map, got_rp = map_at_r(g, gy, q, qy), r_precision(g, gy, q, qy)
    else:
        want = calc.get_accuracy(x, y, x, y, ref_includes_query=True)
        got_map, got_rp = map_at_r(x, y), r_precision(x, y)
    assert got_map == pytest.approx(want["mean_average_precision_at_r"], abs=1e-6)
    assert got_rp == pytest.approx(want["r_precision"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ clustering
def blobs(seed, spread):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(5), 12)
    centres = rng.normal(size=(5, 6)) * 10
    return (centres[y] + spread * rng.normal(size=(len(y), 6))).astype(np.float32), y


def sklearn_clusters(x, y, seed):
    return KMeans(n_clusters=len(set(y)), n_init=1, random_state=seed).fit_predict(x)


def test_nmi_matches_sklearn():
    x, y = blobs(8, spread=8.0)  # overlapping blobs: NMI strictly between 0 and 1
    want = normalized_mutual_info_score(y, sklearn_clusters(x, y, seed=3))
    assert 0.05 < want < 0.95
    assert nmi(x, y, seed=3) == pytest.approx(want, abs=1e-12)


def test_f1_matches_naive_pair_loop():
    x, y = blobs(9, spread=8.0)
    want = naive_pairwise_f1(y, sklearn_clusters(x, y, seed=1))
    assert 0.05 < want < 0.95
    assert f1_clustering(x, y, seed=1) == pytest.approx(want, abs=1e-12)


def test_pairwise_f1_by_hand():
    # class pairs: (0,1) (0,2) (1,2) (3,4); cluster pairs: (0,1) (2,3) (2,4) (3,4); shared: (0,1) (3,4)
    assert metrics._pairwise_f1(np.array([0, 0, 0, 1, 1]), np.array([0, 0, 1, 1, 1])) == pytest.approx(0.5)


def test_separated_clusters_score_perfectly():
    x, y = blobs(10, spread=0.01)
    assert nmi(x, y) == pytest.approx(1.0) and f1_clustering(x, y) == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ evaluate
def test_evaluate_reports_every_metric_in_percent():
    x, y = continuous(11)
    g, gy, q, qy = split(x, y)
    for args in [(x, y, None, None), (g, gy, q, qy)]:
        got = evaluate(args[0], args[1], (1, 4), args[2], args[3], seed=2)
        assert set(got) == {"R@1", "R@4", "MAP@R", "RP", "NMI", "F1"}
        recall = recall_at_k(args[0], args[1], (1, 4), args[2], args[3])
        assert got["R@1"] == pytest.approx(100 * recall[1]) and got["R@4"] == pytest.approx(100 * recall[4])
        assert got["MAP@R"] == pytest.approx(100 * map_at_r(*args))
        assert got["RP"] == pytest.approx(100 * r_precision(*args))
        clustered = (args[2], args[3]) if args[2] is not None else (x, y)
        assert got["NMI"] == pytest.approx(100 * nmi(*clustered, seed=2))
        assert got["F1"] == pytest.approx(100 * f1_clustering(*clustered, seed=2))


# ----------------------------------------------------------------------------------------------- bad input
X3, Y3 = np.zeros((3, 2), np.float32), np.array([0, 1, 0])


@pytest.mark.parametrize("call, message", [
    (lambda: recall_at_k(X3, Y3[:2], KS), "labels has 2 entries"),
    (lambda: recall_at_k(np.zeros((0, 2)), [], KS), "empty"),
    (lambda: recall_at_k(X3, Y3, (1, 0)), "ks must be"),
    (lambda: recall_at_k(X3, Y3, ()), "ks must be"),
    (lambda: recall_at_k(X3, Y3[:, None], KS), "labels must be 1-D"),
    (lambda: map_at_r(X3[0], Y3), "embeddings must be 2-D"),
    (lambda: r_precision(X3, Y3, X3), "both query_embeddings and query_labels"),
    (lambda: map_at_r(X3, Y3, np.zeros((2, 5)), [0, 1]), "dimension 5"),
    (lambda: recall_at_k(X3, Y3, KS, X3, Y3[:1]), "query_labels has 1 entries"),
    (lambda: recall_at_k(np.full((3, 2), np.nan), Y3, KS), "NaN"),
    (lambda: recall_at_k(X3, [0.5, 1, 0], KS), "integer class ids"),
    (lambda: recall_at_k(X3, Y3, KS, chunk_size=0), "chunk_size"),
    (lambda: nmi(X3, Y3[:2]), "labels has 2 entries"),
    (lambda: f1_clustering(np.zeros((0, 2)), []), "empty"),
    (lambda: evaluate(X3, Y3, (0,)), "ks must be"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def naive_nmi(classes, clusters) -> float:
    """NMI written out: contingency table, entropies, mutual information, arithmetic-mean normalisation."""
    n = len(classes)
    joint = {}
    for a, b in zip(classes, clusters):
        joint[(a, b)] = joint.get((a, b), 0) + 1
    p_class = {a: sum(1 for c in classes if c == a) / n for a in set(classes)}
    p_cluster = {b: sum(1 for c in clusters if c == b) / n for b in set(clusters)}
    entropy = lambda p: -sum(v * math.log(v) for v in p.values())  # noqa: E731
    mutual = sum(count / n * math.log(count / n / (p_class[a] * p_cluster[b])) for (a, b), count in joint.items())
    return mutual / ((entropy(p_class) + entropy(p_cluster)) / 2)


def test_naive_nmi_by_hand():
    # classes {0,0,1,1}, clusters {0,0,0,1}: H(Y) = ln 2, H(C) = -(3/4 ln 3/4 + 1/4 ln 1/4),
    # I = 1/2 ln(1/2 / (1/2 * 3/4)) + 1/4 ln(1/4 / (1/2 * 3/4)) + 1/4 ln(1/4 / (1/2 * 1/4))
    h_y, h_c = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    mutual = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    assert naive_nmi([0, 0, 1, 1], [0, 0, 0, 1]) == pytest.approx(mutual / ((h_y + h_c) / 2), abs=1e-15)
    assert naive_nmi([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)  # a relabelling is perfect


def test_nmi_against_the_written_out_formula():
    x, y = blobs(8, spread=8.0)
    clusters = metrics._kmeans(torch.as_tensor(x), torch.as_tensor(y), 3)
    want = naive_nmi(list(np.asarray(y)), list(clusters))
    assert 0.05 < want < 0.95
    assert nmi(x, y, seed=3) == pytest.approx(want, abs=1e-12)
