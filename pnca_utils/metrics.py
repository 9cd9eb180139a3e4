"""Retrieval and clustering metrics: Recall@K, MAP@R, R-precision, NMI and pairwise F1.

Retrieval metrics rank the gallery by Euclidean distance to each query, exactly and in chunks of queries
(the full N x N matrix is never built). Ties are broken by gallery index: at equal distance the lower
index ranks first. Two modes:

* leave-one-out (no query arguments): every item is a query searched among all *other* items;
* query/gallery (`query_embeddings`, `query_labels` given): queries are searched in the gallery,
  nothing is excluded.

A query with no item of its class in the gallery (e.g. a one-image class in leave-one-out) is a miss at
every K for Recall@K and is skipped by MAP@R and R-precision.

Distances are defined in float64 as ||q||^2 + ||g||^2 - 2 q.g (embeddings are first made float32), so ties
are detected exactly whenever the coordinates are exact in float64 products (small integers, dyadic
fractions, duplicated points); for general float data, distances that differ only by rounding may compare
as a tie or not, as in any k-NN library. Embeddings are used as given: normalise them before calling if you
want cosine ranking.

The reference implementation written for reading (full distance matrix, sort, count) is
`pnca_utils.metrics_reference`; the fast exact engine these functions call is `pnca_utils.knn`.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix

from .knn import _EXACT_BYTES, _Search, _block_side, _chunk_rows, _first_match_ranks, _map_r_and_rp

# ----------------------------------------------------------------------------------------------- input checks
def _embeddings(x, name: str) -> torch.Tensor:
    """`x` as a finite, non-empty (N, D) float32 tensor."""
    x = torch.as_tensor(x).detach().to(torch.float32)
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (N, D), got shape {tuple(x.shape)}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    rows = max(1, _EXACT_BYTES // (4 * x.shape[1]))  # isfinite makes temporaries the size of its input
    if not all(torch.isfinite(part).all() for part in x.split(rows)):
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

    Distances are computed in square blocks of `chunk_size` queries by `chunk_size` gallery items (default:
    2048 x 2048, 16 MB); memory beyond the inputs stays under ~1 GB at Stanford Online Products' size.
    """
    ks = _ks(ks)
    s = _search(embeddings, labels, query_embeddings, query_labels)
    ranks = _first_match_ranks(s, _block_side(chunk_size), ks)
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
    ranks = _first_match_ranks(s, _block_side(chunk_size), ks)
    scores = {f"R@{k}": (ranks < k).double().mean().item() for k in ks}
    scores["MAP@R"], scores["RP"] = _map_r_and_rp(s, rows)
    clusters = _kmeans(s.queries, s.query_labels, seed)
    y = s.query_labels.cpu().numpy()
    scores["NMI"] = float(normalized_mutual_info_score(y, clusters))
    scores["F1"] = _pairwise_f1(y, clusters)
    return {name: 100 * value for name, value in scores.items()}
