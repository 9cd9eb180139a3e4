"""Retrieval and clustering metrics: Recall@K, MAP@R, R-precision, NMI and pairwise F1.

Retrieval metrics rank the gallery by Euclidean distance to each query, exactly and in chunks of queries
(the full N x N matrix is never built). Ties are broken by gallery index: at equal distance the lower
index ranks first. Two modes:

* leave-one-out (no query arguments): every item is a query searched among all *other* items;
* query/gallery (`query_embeddings`, `query_labels` given): queries are searched in the gallery,
  nothing is excluded.

A query with no item of its class in the gallery (e.g. a one-image class in leave-one-out) is a miss at
every K for Recall@K and is skipped by MAP@R and R-precision.

Distances are computed in float64 as ||q||^2 + ||g||^2 - 2 q.g, so ties are detected exactly whenever
the coordinates are exact in float64 products (small integers, dyadic fractions, duplicated points);
for general float data, distances that differ only by rounding may compare as a tie or not, as in any
k-NN library. Embeddings are used as given: normalise them before calling if you want cosine ranking.
"""
from __future__ import annotations

import math
from typing import Iterable, Iterator, NamedTuple

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

_BLOCK_BYTES = 256 * 2**20  # memory of one chunk's float64 distance block when chunk_size is automatic


class _Search(NamedTuple):
    """Validated inputs of a retrieval evaluation."""

    queries: torch.Tensor
    query_labels: torch.Tensor
    gallery: torch.Tensor
    gallery_labels: torch.Tensor
    leave_one_out: bool


# ----------------------------------------------------------------------------------------------- input checks
def _embeddings(x, name: str) -> torch.Tensor:
    """`x` as a finite, non-empty (N, D) float32 tensor."""
    x = torch.as_tensor(x).detach().to(torch.float32)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return x


def _labels(y, x: torch.Tensor, name: str) -> torch.Tensor:
    """`y` as 1-D int64 class ids, one per row of `x`, on `x`'s device."""
    try:
        y = torch.as_tensor(y).detach()
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be integer class ids ({err})") from None
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(y.shape)}")
    if len(y) != len(x):
        raise ValueError(f"{name} has {len(y)} entries but its embeddings have {len(x)} rows")
    if y.is_floating_point() and not torch.equal(y, y.round()):
        raise ValueError(f"{name} must be integer class ids, got non-integer values")
    return y.to(device=x.device, dtype=torch.int64)


def _labelled_set(embeddings, labels, prefix: str = "") -> tuple[torch.Tensor, torch.Tensor]:
    x = _embeddings(embeddings, f"{prefix}embeddings")
    return x, _labels(labels, x, f"{prefix}labels")


def _search(embeddings, labels, query_embeddings, query_labels) -> _Search:
    """Check a gallery and optional query set; without queries the gallery is searched leave-one-out."""
    gallery, gallery_labels = _labelled_set(embeddings, labels)
    if (query_embeddings is None) != (query_labels is None):
        raise ValueError("give both query_embeddings and query_labels, or neither")
    if query_embeddings is None:
        return _Search(gallery, gallery_labels, gallery, gallery_labels, True)
    queries, q_labels = _labelled_set(query_embeddings, query_labels, "query_")
    if queries.shape[1] != gallery.shape[1]:
        raise ValueError(f"query_embeddings have dimension {queries.shape[1]}, embeddings {gallery.shape[1]}")
    device = gallery.device
    return _Search(queries.to(device), q_labels.to(device), gallery, gallery_labels, False)


def _ks(ks) -> list[int]:
    ks = [ks] if isinstance(ks, int) else list(ks)
    if not ks or not all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(f"ks must be a non-empty list of integers >= 1, got {ks}")
    return [int(k) for k in ks]


def _chunk_rows(chunk_size, gallery_size: int) -> int:
    if chunk_size is None:
        return max(1, _BLOCK_BYTES // (8 * gallery_size))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


# ------------------------------------------------------------------------------------------ chunked distances
def _blocks(s: _Search, chunk_rows: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (distances, same_class) for consecutive chunks of queries, both (chunk, gallery).

    Distances are squared Euclidean in float64. In leave-one-out the query itself gets distance +inf and
    same_class False, so it never ranks among the other items' and never counts as a match.
    """
    g = s.gallery.double()
    g_sq = g.pow(2).sum(1)
    for start in range(0, len(s.queries), chunk_rows):
        q = s.queries[start:start + chunk_rows].double()
        dist = (q.pow(2).sum(1, keepdim=True) + g_sq - 2 * q @ g.T).clamp_(min=0)
        same = s.query_labels[start:start + chunk_rows, None] == s.gallery_labels
        if s.leave_one_out:
            rows = torch.arange(len(q), device=q.device)
            dist[rows, rows + start] = math.inf
            same[rows, rows + start] = False
        yield dist, same


def _first_match_ranks(s: _Search, chunk_rows: int) -> torch.Tensor:
    """0-based rank of each query's nearest same-class item (+inf when it has none).

    That rank is the number of other-class items closer than the nearest match (d*, index i*), plus those
    at exactly d* with an index below i*; a query is a hit at K iff its rank is < K.
    """
    ranks = []
    for dist, same in _blocks(s, chunk_rows):
        d_star, i_star = dist.masked_fill(~same, math.inf).min(dim=1)  # min returns the first (lowest) index
        d_star, i_star = d_star[:, None], i_star[:, None]
        index = torch.arange(dist.shape[1], device=dist.device)
        before = (dist < d_star) | ((dist == d_star) & (index < i_star))
        rank = (before & ~same).sum(1).double()
        ranks.append(rank.masked_fill(~same.any(1), math.inf))
    return torch.cat(ranks)


def _nearest(dist: torch.Tensor, r: int) -> torch.Tensor:
    """Indices of the r nearest items per row, ordered by (distance, index); exact under ties."""
    threshold = dist.topk(r, dim=1, largest=False).values[:, -1:]
    below, at = dist < threshold, dist == threshold
    room = r - below.sum(1, keepdim=True)
    chosen = below | (at & (at.cumsum(1) <= room))  # fill up with the lowest-index items at the threshold
    index = chosen.nonzero()[:, 1].view(len(dist), r)  # row-major, so ascending index within each row
    order = dist.gather(1, index).sort(dim=1, stable=True).indices
    return index.gather(1, order)


def _map_r_and_rp(s: _Search, chunk_rows: int) -> tuple[float, float]:
    """(MAP@R, R-precision) as fractions, over the queries that have R >= 1 (NaN if none has)."""
    counts = s.gallery_labels.unique(return_counts=True)[1]
    max_r = int(counts.max()) - int(s.leave_one_out)
    if max_r < 1:
        return math.nan, math.nan
    ap, rp = [], []
    for dist, same in _blocks(s, chunk_rows):
        r = same.sum(1, keepdim=True).double()
        hit = same.gather(1, _nearest(dist, max_r))
        hit &= torch.arange(1, max_r + 1, device=hit.device) <= r  # only the first R positions count
        precision = hit.cumsum(1).double() / torch.arange(1, max_r + 1, device=hit.device)
        keep = r[:, 0] > 0
        ap.append(((precision * hit).sum(1) / r[:, 0])[keep])
        rp.append((hit.sum(1) / r[:, 0])[keep])
    ap, rp = torch.cat(ap), torch.cat(rp)
    if len(ap) == 0:
        return math.nan, math.nan
    return ap.mean().item(), rp.mean().item()


# ----------------------------------------------------------------------------------------------- clustering
def _kmeans(x: torch.Tensor, y: torch.Tensor, seed: int) -> np.ndarray:
    """Cluster ids from k-means with as many clusters as classes (one initialisation, fixed seed)."""
    k = len(torch.unique(y))
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(x.cpu().numpy())


def _pairs(counts: np.ndarray) -> int:
    """Number of unordered pairs within groups of the given sizes."""
    return int((counts * (counts - 1) // 2).sum())


def _pairwise_f1(labels: np.ndarray, clusters: np.ndarray) -> float:
    """F1 of "same cluster" as a prediction of "same class" over all unordered pairs (0 if undefined)."""
    table = contingency_matrix(labels, clusters)  # classes x clusters
    true_pos = _pairs(table)
    same_cluster, same_class = _pairs(table.sum(0)), _pairs(table.sum(1))
    if true_pos == 0:
        return 0.0
    precision, recall = true_pos / same_cluster, true_pos / same_class
    return float(2 * precision * recall / (precision + recall))


# ------------------------------------------------------------------------------------------------ public API
def recall_at_k(embeddings, labels, ks, query_embeddings=None, query_labels=None, *,
                chunk_size: int | None = None) -> dict[int, float]:
    """Recall@K for each K in `ks`: fraction of queries with a same-class item among their K nearest.

    `chunk_size` queries are processed at a time (default: as many as fit a ~256 MB distance block).
    """
    ks = _ks(ks)
    s = _search(embeddings, labels, query_embeddings, query_labels)
    ranks = _first_match_ranks(s, _chunk_rows(chunk_size, len(s.gallery)))
    return {k: (ranks < k).double().mean().item() for k in ks}


def map_at_r(embeddings, labels, query_embeddings=None, query_labels=None, *,
             chunk_size: int | None = None) -> float:
    """MAP@R (Musgrave et al. 2020): mean over queries of (1/R) sum_{i<=R} P(i) [item i matches].

    R is the number of gallery items of the query's class (the query itself excluded in leave-one-out);
    queries with R = 0 are skipped, and the result is NaN when every query has R = 0.
    """
    s = _search(embeddings, labels, query_embeddings, query_labels)
    return _map_r_and_rp(s, _chunk_rows(chunk_size, len(s.gallery)))[0]


def r_precision(embeddings, labels, query_embeddings=None, query_labels=None, *,
                chunk_size: int | None = None) -> float:
    """R-precision: mean over queries of (matches among the R nearest) / R; R as in `map_at_r`."""
    s = _search(embeddings, labels, query_embeddings, query_labels)
    return _map_r_and_rp(s, _chunk_rows(chunk_size, len(s.gallery)))[1]


def nmi(embeddings, labels, seed: int = 0) -> float:
    """Normalised mutual information between the classes and a k-means clustering (k = number of classes)."""
    x, y = _labelled_set(embeddings, labels)
    return float(normalized_mutual_info_score(y.cpu().numpy(), _kmeans(x, y, seed)))


def f1_clustering(embeddings, labels, seed: int = 0) -> float:
    """Pairwise F1 of the k-means clustering used by `nmi` (Song et al. 2017, HDML)."""
    x, y = _labelled_set(embeddings, labels)
    return _pairwise_f1(y.cpu().numpy(), _kmeans(x, y, seed))


def evaluate(embeddings, labels, ks: Iterable[int], query_embeddings=None, query_labels=None, seed: int = 0, *,
             chunk_size: int | None = None) -> dict[str, float]:
    """All metrics in percent: "R@k" for each k, "MAP@R", "RP", "NMI" and "F1".

    Retrieval metrics use the mode chosen by the query arguments (see the module docstring); the
    clustering metrics (NMI, F1) cluster the query set when one is given, else the single set.
    """
    ks = _ks(ks)
    s = _search(embeddings, labels, query_embeddings, query_labels)
    rows = _chunk_rows(chunk_size, len(s.gallery))
    ranks = _first_match_ranks(s, rows)
    scores = {f"R@{k}": (ranks < k).double().mean().item() for k in ks}
    scores["MAP@R"], scores["RP"] = _map_r_and_rp(s, rows)
    clusters = _kmeans(s.queries, s.query_labels, seed)
    y = s.query_labels.cpu().numpy()
    scores["NMI"] = float(normalized_mutual_info_score(y, clusters))
    scores["F1"] = _pairwise_f1(y, clusters)
    return {name: 100 * value for name, value in scores.items()}
