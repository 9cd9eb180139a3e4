"""The retrieval metrics written for reading: the full distance matrix, a sort, a count.

These functions define what `pnca_utils.metrics` computes (the tests compare the two on every
case); they build the whole N x N matrix, so they are for small sets: chapter 00's worked example,
the tests, a reader checking a number. Conventions, as in `metrics`:

* leave-one-out when no query set is given: each item is a query searched among the *other* items;
* distances are squared Euclidean, in float64; at equal distance the lower gallery index ranks first;
* a query with no item of its class in the gallery misses at every K and is left out of MAP@R and
  R-precision.

Results are fractions (0 to 1), as `metrics.recall_at_k`, `map_at_r` and `r_precision` return them.
"""
from __future__ import annotations

import numpy as np


def ranked_matches(embeddings, labels, query_embeddings=None, query_labels=None) -> list[np.ndarray]:
    """Per query, the gallery sorted from nearest to farthest, as booleans: is this item of the query's class?"""
    gallery, gallery_labels = np.asarray(embeddings, np.float32).astype(np.float64), np.asarray(labels)
    leave_one_out = query_embeddings is None
    if leave_one_out:
        queries, query_labels = gallery, gallery_labels
    else:
        queries, query_labels = np.asarray(query_embeddings, np.float32).astype(np.float64), np.asarray(query_labels)
    distances = ((queries[:, None, :] - gallery[None, :, :]) ** 2).sum(axis=2)  # (queries, gallery)
    matches = []
    for i in range(len(queries)):
        order = np.argsort(distances[i], kind="stable")  # stable: ties keep the lower index first
        if leave_one_out:
            order = order[order != i]  # a query is not its own neighbour
        matches.append(gallery_labels[order] == query_labels[i])
    return matches


def recall_at_k(embeddings, labels, ks, query_embeddings=None, query_labels=None) -> dict[int, float]:
    """Recall@K: the share of queries with at least one item of their class among their K nearest."""
    matches = ranked_matches(embeddings, labels, query_embeddings, query_labels)
    return {k: float(np.mean([m[:k].any() for m in matches])) for k in ks}


def map_at_r(embeddings, labels, query_embeddings=None, query_labels=None) -> float:
    """MAP@R: per query with R items of its class, (1/R) times the sum of precision@i over the matches i <= R."""
    scores = []
    for m in ranked_matches(embeddings, labels, query_embeddings, query_labels):
        r = int(m.sum())
        if r == 0:
            continue
        hits = m[:r]
        precision_at_i = np.cumsum(hits) / np.arange(1, r + 1)
        scores.append(float((precision_at_i * hits).sum() / r))
    return float(np.mean(scores)) if scores else float("nan")


def r_precision(embeddings, labels, query_embeddings=None, query_labels=None) -> float:
    """R-precision: per query with R items of its class, the share of its R nearest that are of its class."""
    scores = [float(m[:int(m.sum())].mean()) for m in ranked_matches(embeddings, labels, query_embeddings,
                                                                    query_labels) if m.sum()]
    return float(np.mean(scores)) if scores else float("nan")
