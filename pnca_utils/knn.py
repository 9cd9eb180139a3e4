"""The fast exact k-nearest-neighbour engine behind `pnca_utils.metrics` (read `metrics_reference` first).

What it computes is defined in `pnca_utils.metrics` and, for reading, in `pnca_utils.metrics_reference`:
rank the gallery by Euclidean distance (float64, ||q||^2 + ||g||^2 - 2 q.g) to each query, ties broken by
gallery index. This module computes the same numbers at the size of Stanford Online Products (60,502
images) without building the N x N matrix, and its tests compare it with the reference on every case.

Design, in the order of the code:

* **Chunked distances** (`_blocks`, `_exact_ranks`): float64 distance blocks of a few queries at a
  time; memory stays bounded whatever N. MAP@R and R-precision (`_map_r_and_rp`) read the R nearest
  items of each query from these blocks.
* **Fast ranks** (`_first_match_ranks`). Recall@K needs one number per query: its rank, the number
  of other-class items that come before its nearest same-class item. It is counted in one pass over
  float32 distance blocks (in leave-one-out over half the matrix, distances being symmetric), with a
  proven bound on float32's rounding (`_error_factor`): items surely closer and items possibly closer
  are counted apart, and for a query whose two counts leave a K undecided the few items between them
  are compared again in float64 (`_band_ranks`). Results are therefore those of the float64
  definition. The pass sorts gallery and queries by class (`_partition`), tiles the matrix in blocks
  whose widths are multiples of 8 (`_tiles`), and in leave-one-out visits each unordered pair of
  blocks once (`_schedule`).
"""
from __future__ import annotations

import math
from typing import Iterator, NamedTuple

import numpy as np
import torch

_BLOCK_BYTES = 256 * 2**20  # memory of one chunk's float64 distance block when chunk_size is automatic (MAP@R)
_EXACT_BYTES = 32 * 2**20  # float64 gallery slice, and a quarter of a distance block, for a few queries' ranks


class _Search(NamedTuple):
    """Validated inputs of a retrieval evaluation."""

    queries: torch.Tensor
    query_labels: torch.Tensor
    gallery: torch.Tensor
    gallery_labels: torch.Tensor
    leave_one_out: bool


def _chunk_rows(chunk_size, gallery_size: int) -> int:
    if chunk_size is None:
        return max(1, _BLOCK_BYTES // (8 * gallery_size))
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be None or an integer >= 1, got {chunk_size!r}")
    return int(chunk_size)


def _block_side(chunk_size) -> int | None:
    """chunk_size checked, as the side of the counting pass's square distance blocks (None: automatic)."""
    return None if chunk_size is None else _chunk_rows(chunk_size, 1)


# ------------------------------------------------------------------------------------------ chunked distances
def _sq_norms(x: torch.Tensor) -> torch.Tensor:
    """Squared row norms in float64 (exact products of the float32 coordinates), a slice of rows at a time
    through one reused buffer (fresh temporaries would cost a page fault per page of every slice)."""
    rows = max(1, _EXACT_BYTES // 2 // (8 * x.shape[1]))
    out = torch.empty(len(x), dtype=torch.float64, device=x.device)
    buffer = torch.empty(min(rows, len(x)), x.shape[1], dtype=torch.float64, device=x.device)
    for start in range(0, len(x), rows):
        part = buffer[:len(x[start:start + rows])]
        part.copy_(x[start:start + rows]).mul_(part)
        torch.sum(part, 1, out=out[start:start + len(part)])
    return out


def _blocks(s: _Search, chunk_rows: int, rows: torch.Tensor | None = None, g_sq: torch.Tensor | None = None
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield (distances, same_class, query_index) for chunks of queries; distances and same_class (chunk, gallery).

    `rows` selects the queries (default: all, in order); `g_sq`, the gallery's squared norms in float64, may be
    given with them. Distances are squared Euclidean in float64. In
    leave-one-out the query itself gets distance +inf and same_class False, so it never ranks among the other
    items' and never counts as a match. The gallery is converted to float64 once when every query is searched,
    and a slice at a time for a subset of the queries (so a few queries cost no float64 copy of the gallery).
    """
    whole = rows is None
    rows = torch.arange(len(s.queries), device=s.queries.device) if whole else rows
    g64 = s.gallery.double() if whole else None
    if whole:
        g_sq = g64.pow(2).sum(1)
    elif g_sq is None:
        g_sq = _sq_norms(s.gallery)
    slice_rows = max(1, _EXACT_BYTES // (8 * s.gallery.shape[1]))
    for start in range(0, len(rows), chunk_rows):
        index = rows[start:start + chunk_rows]
        q = s.queries[index].double()
        if whole:
            prod = q @ g64.T
        else:
            prod = torch.empty(len(q), len(s.gallery), dtype=torch.float64, device=q.device)
            for g_start in range(0, len(s.gallery), slice_rows):
                g = s.gallery[g_start:g_start + slice_rows]
                prod[:, g_start:g_start + len(g)] = q @ g.double().T
        dist = (q.pow(2).sum(1, keepdim=True) + g_sq - 2 * prod).clamp_(min=0)
        same = s.query_labels[index, None] == s.gallery_labels
        if s.leave_one_out:
            chunk = torch.arange(len(q), device=q.device)
            dist[chunk, index] = math.inf
            same[chunk, index] = False
        yield dist, same, index


def _exact_ranks(s: _Search, chunk_rows: int, rows: torch.Tensor | None = None,
                 g_sq: torch.Tensor | None = None) -> torch.Tensor:
    """0-based rank of each query's nearest same-class item (+inf when it has none), from float64 distances.

    That rank is the number of other-class items closer than the nearest match (d*, index i*), plus those
    at exactly d* with an index below i*; a query is a hit at K iff its rank is < K. This is the definition
    that `_first_match_ranks` computes faster; it is used for the queries whose rank that leaves open.
    """
    ranks = []
    for dist, same, _ in _blocks(s, chunk_rows, rows, g_sq):
        d_star, i_star = dist.masked_fill(~same, math.inf).min(dim=1)  # min returns the first (lowest) index
        d_star, i_star = d_star[:, None], i_star[:, None]
        index = torch.arange(dist.shape[1], device=dist.device)
        before = (dist < d_star) | ((dist == d_star) & (index < i_star))
        rank = (before & ~same).sum(1).double()
        ranks.append(rank.masked_fill(~same.any(1), math.inf))
    return torch.cat(ranks) if ranks else torch.empty(0, dtype=torch.float64, device=s.queries.device)


# ----------------------------------------------------------------------------- fast ranks: one pass, bounded
# The rank of a query is a count of other-class items below one threshold, its nearest match's distance d*.
# `_first_match_ranks` finds d* among the few same-class items first, then counts every query's items below
# it in one pass over float32 distance blocks -- in leave-one-out over the upper triangle only, each block
# counted for its rows and for its columns. A float32 distance is off the exact one by at most
# kappa * (|q|^2 + |g|^2) (see `_error_factor`), so each count is made twice: items surely below d* and items
# that may be below or at it; the pairs counted by the second and not the first (the band) are kept. Where the
# two counts bracket a K of interest, that query's band is compared with its nearest match in float64
# (`_band_ranks`; `_exact_ranks` on whole rows when the band was too large to keep); the result is therefore the
# float64 definition's for every query and every K.
_FAST_BLOCK_BYTES = 16 * 2**20  # one float32 distance block of the counting pass (2048 x 2048)
_MATCH_GROUP = 64  # queries per block when looking for the nearest same-class item
_COPY_BYTES = 512 * 2**20  # sorted, augmented copies of the gallery and queries kept for the whole pass
_BAND_PAIRS = 2**22  # (query, item) pairs kept for the float64 recount (two int64 each: 64 MB); more: whole rows


def _error_factor(dim: int, dtype: torch.dtype) -> float:
    """kappa: |computed - exact squared distance| <= kappa * (|q|^2 + |g|^2) for the distances used here.

    A distance is one dot product of length dim + 2, [q, |q|^2, 1] . [-2g, 1, |g|^2], whose rounding error is at
    most gamma_(dim+2) * sum |terms| <= gamma * (2 + u) (|q|^2 + |g|^2) in any summation order (Higham, Accuracy
    and Stability of Numerical Algorithms, 3.1), plus u * (|q|^2 + |g|^2) from rounding the squared norms.
    The float64 reference has its own, far smaller, rounding; kappa covers it too, and 1 % more.
    """
    u = torch.finfo(dtype).eps / 2
    k = dim + 2
    gamma = k * u / (1 - k * u)
    return 1.01 * ((2 + u) * gamma + u) + 8 * k * 2.0 ** -53


def _fast_dtype(device: torch.device, largest_sq: float) -> torch.dtype:
    """float32 when matrix products in float32 are IEEE float32 and the squared norms fit, else float64."""
    ieee = torch.get_float32_matmul_precision() == "highest"
    backend = {"cpu": getattr(torch.backends.mkldnn, "matmul", None),
               "cuda": getattr(torch.backends.cuda, "matmul", None)}.get(device.type)
    ieee &= getattr(backend, "fp32_precision", "none") in ("none", "ieee")
    if device.type == "cuda":
        ieee &= not torch.backends.cuda.matmul.allow_tf32
    return torch.float32 if ieee and largest_sq < 2.0 ** 100 else torch.float64


def _augmented_width(dim: int) -> int:
    """Columns of an augmented row: dim + 2, padded with zeros to a multiple of 8 (faster matrix products)."""
    return -(-(dim + 2) // 8) * 8


def _augmented(x: torch.Tensor, index: torch.Tensor, sq: torch.Tensor, dtype: torch.dtype, query: bool,
               out: torch.Tensor | None = None, rows: int = 8192) -> torch.Tensor:
    """Rows [x, 0.., |x|^2, 1] (query side) or [-2x, 0.., 1, |x|^2] (gallery side) of x[index]: the dot product
    of a query row and a gallery row is their squared distance (the zero padding adds exact zeros). Gathered a
    slice at a time (no full-size copy), into `out` when given."""
    dim = x.shape[1]
    if out is None:
        out = torch.empty(len(index), _augmented_width(dim), dtype=dtype, device=x.device)
    for start in range(0, len(index), rows):
        part = out[start:start + rows, :dim]
        torch.mul(x[index[start:start + rows]], 1.0 if query else -2.0, out=part)
    out[:, dim:-2] = 0
    out[:, -2], out[:, -1] = (sq, 1.0) if query else (1.0, sq)
    return out


def _rounded(x: torch.Tensor, dtype: torch.dtype, down: bool) -> torch.Tensor:
    """float64 thresholds in `dtype`, rounded outwards (down: never above x; else never below)."""
    y = x.to(dtype)
    if dtype != torch.float64:
        wrong = y.double() > x if down else y.double() < x
        y[wrong] = torch.nextafter(y[wrong], torch.tensor(-math.inf if down else math.inf, dtype=dtype,
                                                           device=y.device))
    return y


def _partition(sorted_labels: np.ndarray, size: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of at most `size` items; a class is split only if it alone exceeds size."""
    starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])  # first item of each class
    out, start, n = [], 0, len(sorted_labels)
    while start < n:
        end = min(start + size, n)
        if end < n:
            cut = starts[np.searchsorted(starts, end, side="right") - 1]  # start of the class holding item `end`
            end = cut if cut > start else end
        out.append((start, end))
        start = end
    return out


def _tiles(n: int, size: int) -> list[tuple[int, int]]:
    """Consecutive [start, end) ranges of `size` items; a last range of r items is cut into r - r % 8 and r % 8,
    since a float32 matrix product whose output rows have a width that is not a multiple of 8 is ~40 % slower
    (measured with MKL on AVX-512): every range but a short last one then has a fast width when size has."""
    out = [(a, min(a + size, n)) for a in range(0, n, size)]
    a, b = out[-1] if out else (0, 0)
    if b - a > 8 and (b - a) % 8:
        out[-1:] = [(a, b - (b - a) % 8), (b - (b - a) % 8, b)]
    return out


def _schedule(q_blocks: list[tuple[int, int]], g_blocks: list[tuple[int, int]], leave_one_out: bool
              ) -> Iterator[tuple[int, int, tuple[int, int], tuple[int, int], bool]]:
    """The distance blocks of the counting pass, row of blocks by row of blocks: (i, j, rows, columns, both),
    rows and columns being [start, end) ranges of sorted positions inside query block i and gallery block j,
    and `both` whether the block is counted for its columns' queries too.

    In leave-one-out, distances are symmetric and only blocks j >= i are computed; those off the diagonal are
    counted both ways. A diagonal block holds both orders of each of its pairs, so it is split in halves and
    only its upper three quarters are computed: the two squares on its diagonal, counted by rows, and the
    square between them, counted both ways.
    """
    for i, (a, b) in enumerate(q_blocks):
        for j, (c, d) in enumerate(g_blocks):
            if not leave_one_out:
                yield i, j, (a, b), (c, d), False
            elif j > i:
                yield i, j, (a, b), (c, d), True
            elif j == i:
                h = a + (b - a) // 16 * 8  # a multiple of 8 items above the split
                if h == a:
                    yield i, j, (a, b), (a, b), False
                else:
                    yield from ((i, j, (a, h), (a, h), False), (i, j, (a, h), (h, b), True),
                                (i, j, (h, b), (h, b), False))


class _Side(NamedTuple):
    """One side of the search (queries or gallery), sorted by label."""

    x: torch.Tensor  # embeddings, original order
    order: torch.Tensor  # sorted position -> original index
    labels: np.ndarray  # labels in sorted order (on the host: only compared, never computed with)
    sq: torch.Tensor  # float64 squared norms, sorted order
    blocks: list[tuple[int, int]]  # the counting pass's ranges of sorted positions

    def rows(self, a: int, b: int, dtype: torch.dtype, query: bool, out: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Augmented rows of sorted positions a..b (into `out` when given)."""
        return _augmented(self.x, self.order[a:b], self.sq[a:b], dtype, query, out)


def _side(x: torch.Tensor, labels: torch.Tensor, sq: torch.Tensor, block: int) -> _Side:
    order = torch.argsort(labels, stable=True)
    sorted_labels = labels[order].cpu().numpy()
    return _Side(x, order, sorted_labels, sq[order], _tiles(len(sorted_labels), block))


class _Augmented:
    """Augmented rows of both sides, in sorted order, by sorted position ranges. Whole sorted copies are made
    once (gallery first) as far as `budget` bytes allow; otherwise rows are gathered range by range into one
    buffer per side, valid until that side's next range is asked for."""

    def __init__(self, qs: _Side, gs: _Side, dtype: torch.dtype, budget: int):
        self.qs, self.gs, self.dtype = qs, gs, dtype
        row_bytes = _augmented_width(qs.x.shape[1]) * torch.finfo(dtype).bits // 8
        self.g_all = self.q_all = None
        if len(gs.order) * row_bytes <= budget:
            self.g_all = gs.rows(0, len(gs.order), dtype, query=False)
            budget -= len(gs.order) * row_bytes
        if len(qs.order) * row_bytes <= budget:
            self.q_all = qs.rows(0, len(qs.order), dtype, query=True)
        self._buffers = {True: torch.empty(0, dtype=dtype), False: torch.empty(0, dtype=dtype)}

    def _gathered(self, side: _Side, a: int, b: int, query: bool) -> torch.Tensor:
        buffer = self._buffers[query]  # reused: a fresh block would cost a page fault per page
        if len(buffer) < b - a:
            buffer = self._buffers[query] = torch.empty(b - a, _augmented_width(side.x.shape[1]), dtype=self.dtype,
                                                        device=side.x.device)
        return side.rows(a, b, self.dtype, query, buffer[:b - a])

    def query(self, a: int, b: int) -> torch.Tensor:
        return self.q_all[a:b] if self.q_all is not None else self._gathered(self.qs, a, b, query=True)

    def gallery(self, a: int, b: int) -> torch.Tensor:
        return self.g_all[a:b] if self.g_all is not None else self._gathered(self.gs, a, b, query=False)


class _Host:
    """The element-wise steps of the counting pass. On a CPU they run in NumPy, which compares and counts
    faster than torch for these shapes; elsewhere they stay in torch, on the device."""

    def __init__(self, device: torch.device):
        self.numpy = device.type == "cpu"
        self.device = device
        self._hit = np.empty(0, bool)  # reused: no fresh pages for every block

    def same(self, row_labels: np.ndarray, col_labels: np.ndarray):
        same = row_labels[:, None] == col_labels[None, :]
        return same if self.numpy else torch.from_numpy(same).to(self.device)

    def masked_min(self, block: torch.Tensor, keep) -> torch.Tensor:
        """Row minimum over the entries where `keep` is True (+inf where none)."""
        if self.numpy:
            b = block.numpy()
            return torch.from_numpy(np.where(keep, b, np.inf).min(1).astype(np.float64))
        return block.masked_fill(~keep, math.inf).amin(1).double()

    def counts(self, block: torch.Tensor, bounds: list[tuple[torch.Tensor, torch.Tensor] | None], exclude=None):
        """For dim 1 (rows) and dim 0 (columns), bounds[dim] = (low, high) thresholds per row or column, or None.

        Per row or column, leaving out the entries where `exclude` is True: (entries < low, entries <= high,
        and the band between them as (its row or column, the entry's index along the other dimension)).
        The entries at most the largest `high` are few (those ranked before some query's nearest match): they
        are listed in one pass over the block, and only they are compared with each row's or column's bounds.
        """
        top = max(bound[1].max() for bound in bounds if bound is not None)
        if self.numpy:
            b = block.numpy()
            if self._hit.size < b.size:
                self._hit = np.empty(b.size, bool)
            hit = self._hit[:b.size].reshape(b.shape)
            np.less_equal(b, top.item(), out=hit)
            if exclude is not None:
                np.greater(hit, exclude, out=hit)  # hit and not exclude
            flat = np.flatnonzero(hit)
            (row, col), values = np.divmod(flat, b.shape[1]), b.ravel()[flat]
            as_int64, bincount = (lambda a: torch.from_numpy(a.astype(np.int64))), np.bincount
        else:
            hit = block <= top
            if exclude is not None:
                hit &= ~exclude
            row, col = hit.nonzero(as_tuple=True)
            values, as_int64, bincount = block[row, col], (lambda a: a), torch.bincount

        def direction(dim):
            if bounds[dim] is None:
                return None
            owner, other = (row, col) if dim == 1 else (col, row)
            low, high = (t.numpy() for t in bounds[dim]) if self.numpy else bounds[dim]
            keep = values <= high[owner]
            owner, other, below = owner[keep], other[keep], values[keep] < low[owner[keep]]
            n = block.shape[1 - dim]
            return (as_int64(bincount(owner[below], minlength=n)), as_int64(bincount(owner, minlength=n)),
                    as_int64(owner[~below]), as_int64(other[~below]))

        return direction(1), direction(0)


def _nearest_match(s: _Search, qs: _Side, gs: _Side, aug: _Augmented, host: _Host, group: int, cols: int
                   ) -> torch.Tensor:
    """Per sorted query: the smallest computed distance to a same-class gallery item (+inf when none)."""
    d_star = torch.full((len(s.queries),), math.inf, dtype=torch.float64)
    for a, b in _partition(qs.labels, group):
        c = int(np.searchsorted(gs.labels, qs.labels[a], "left"))  # the gallery items of these classes
        d = int(np.searchsorted(gs.labels, qs.labels[b - 1], "right"))
        q_aug = aug.query(a, b)
        for c0 in range(c, d, cols):
            c1 = min(c0 + cols, d)
            keep = host.same(qs.labels[a:b], gs.labels[c0:c1])
            if s.leave_one_out:  # sorted positions are the same on both sides: position p is the query itself
                p = np.arange(max(a, c0), max(a, c0, min(b, c1)))
                keep[p - a, p - c0] = False
            nearest = host.masked_min(q_aug @ aug.gallery(c0, c1).T, keep).cpu()
            d_star[a:b] = torch.minimum(d_star[a:b], nearest)
    return d_star.to(s.queries.device)


class _Band(NamedTuple):
    """The (query, gallery item) pairs, in sorted positions, whose float32 distance cannot tell whether the item
    comes before the query's nearest match (the counting pass gives None instead beyond _BAND_PAIRS pairs)."""

    query: torch.Tensor
    item: torch.Tensor


class _Tally:
    """The counting pass's totals per sorted query (sure, maybe) and the band of (query, item) pairs between them."""

    def __init__(self, queries: int, device: torch.device):
        self.sure = torch.zeros(queries, dtype=torch.int64, device=device)
        self.maybe = torch.zeros(queries, dtype=torch.int64, device=device)
        self.pairs: list[tuple[torch.Tensor, torch.Tensor]] | None = []  # None: too many pairs to keep
        self.size, self.device = 0, device

    def add(self, counts, queries: int, items: int) -> None:
        """A block's (sure, maybe, band rows, band columns), its rows starting at `queries`, columns at `items`."""
        self.sure[queries:queries + len(counts[0])] += counts[0]
        self.maybe[queries:queries + len(counts[1])] += counts[1]
        self.size += len(counts[2])
        if self.pairs is not None and len(counts[2]):
            if self.size <= _BAND_PAIRS:
                self.pairs.append((counts[2] + queries, counts[3] + items))
            else:
                self.pairs = None  # too many to keep: the open queries will be recounted row by row

    def band(self) -> "_Band | None":
        if self.pairs is None:
            return None
        empty = torch.empty(0, dtype=torch.int64, device=self.device)
        return _Band(*(torch.cat([p[k] for p in self.pairs]) if self.pairs else empty for k in (0, 1)))


def _count_closer(s: _Search, qs: _Side, gs: _Side, aug: _Augmented, host: _Host, low: torch.Tensor,
                  high: torch.Tensor, kappa: float) -> tuple[torch.Tensor, torch.Tensor, _Band | None]:
    """Per sorted query, other-class gallery items (sure, maybe) closer than its d*, given low <= d* <= high,
    and the band of items counted by maybe and not by sure.

    One pass over the blocks of the distance matrix that `_schedule` lists (in leave-one-out the upper triangle
    only, blocks counted for their rows and, transposed, for their columns): `sure` counts the items whose
    computed distance is below low - err, so surely closer; `maybe` those at most high + err, so possibly
    closer or at d*, where err bounds the error of the block's distances.
    """
    device, dtype = s.gallery.device, aug.dtype
    tally = _Tally(len(s.queries), device)
    # the error of a distance in block (i, j), or in a part of it, is at most kappa * (its query's |q|^2 + the
    # largest |g|^2 of gallery block j); seen from its item's side, kappa * (its |g|^2 + query block i's largest)
    g_block_sq = torch.stack([gs.sq[c:d].max() for c, d in gs.blocks])
    q_block_sq = [qs.sq[a:b].max() for a, b in qs.blocks]

    def bounds(rows: slice, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _rounded(low[rows] - err, dtype, down=True), _rounded(high[rows] + err, dtype, down=False)

    buffer = torch.empty(0, dtype=dtype, device=device)  # one block's distances, reused
    row_of_blocks = None
    for i, j, (r0, r1), (c0, c1), both in _schedule(qs.blocks, gs.blocks, s.leave_one_out):
        if i != row_of_blocks:
            row_of_blocks, (a, b) = i, qs.blocks[i]
            q_aug = aug.query(a, b)
            # the thresholds of this block row's queries, for every gallery block j (row j) at once; in
            # leave-one-out also those of the queries to its right, as seen from this block row's items
            row_low, row_high = bounds(slice(a, b), kappa * (qs.sq[a:b] + g_block_sq[:, None]))
            if s.leave_one_out:
                col_low, col_high = bounds(slice(a, None), kappa * (gs.sq[a:] + q_block_sq[i]))
        size = (r1 - r0) * (c1 - c0)
        if buffer.numel() < size:
            buffer = torch.empty(size, dtype=dtype, device=device)
        dist = buffer[:size].view(r1 - r0, c1 - c0)
        torch.matmul(q_aug[r0 - a:r1 - a], aug.gallery(c0, c1).T, out=dist)
        overlap = qs.labels[r0] <= gs.labels[c1 - 1] and gs.labels[c0] <= qs.labels[r1 - 1]
        same = host.same(qs.labels[r0:r1], gs.labels[c0:c1]) if overlap else None  # (also the query itself)
        col_bounds = (col_low[c0 - a:c1 - a], col_high[c0 - a:c1 - a]) if both else None
        rows, columns = host.counts(dist, [col_bounds, (row_low[j, r0 - a:r1 - a], row_high[j, r0 - a:r1 - a])],
                                    same)
        tally.add(rows, r0, c0)
        if columns is not None:
            tally.add(columns, c0, r0)  # in leave-one-out, sorted positions are the same on both sides
    return tally.sure, tally.maybe, tally.band()


def _bounded_counts(s: _Search, chunk_size: int | None, q_sq: torch.Tensor, g_sq: torch.Tensor
                    ) -> tuple[_Side, _Side, torch.Tensor, torch.Tensor, torch.Tensor, _Band | None]:
    """Steps 1 and 2 of `_first_match_ranks`: (sorted queries, sorted gallery, has_match, sure, maybe, band),
    per query in sorted order."""
    device = s.gallery.device
    dtype = _fast_dtype(device, max(q_sq.max().item(), g_sq.max().item()))
    kappa = _error_factor(s.gallery.shape[1], dtype)
    block = chunk_size or math.isqrt(_FAST_BLOCK_BYTES * 8 // torch.finfo(dtype).bits)
    qs = _side(s.queries, s.query_labels, q_sq, block)
    gs = qs if s.leave_one_out else _side(s.gallery, s.gallery_labels, g_sq, block)
    aug = _Augmented(qs, gs, dtype, _COPY_BYTES)
    host = _Host(device)
    # 1. d*, the nearest same-class distance, computed in `dtype`; the exact one lies within d_err of it,
    #    d_err bounded by the largest squared norm among the query's same-class gallery items
    group = min(chunk_size or _MATCH_GROUP, _MATCH_GROUP)
    d_star = _nearest_match(s, qs, gs, aug, host, group, max(group, block))
    classes, first = np.unique(gs.labels, return_index=True)
    class_sq = torch.from_numpy(np.maximum.reduceat(gs.sq.cpu().numpy(), first)).to(device)
    at = torch.from_numpy(np.searchsorted(classes, qs.labels).clip(max=len(classes) - 1)).to(device)
    has_match = torch.isfinite(d_star)
    d_err = kappa * (qs.sq + class_sq[at])
    low = torch.where(has_match, d_star - d_err, -math.inf)  # the exact d* lies in [low, high]
    high = torch.where(has_match, d_star + d_err, -math.inf)  # (no match: count nothing)
    # 2. items surely and possibly closer than d*, in one pass
    sure, maybe, band = _count_closer(s, qs, gs, aug, host, low, high, kappa)
    return qs, gs, has_match, sure, maybe, band


def _pair_distances(s: _Search, qs: _Side, gs: _Side, queries: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """float64 squared distances of (sorted query, sorted gallery item) pairs, as `_blocks` computes them."""
    out = torch.empty(len(queries), dtype=torch.float64, device=s.gallery.device)
    pairs = max(1, _EXACT_BYTES // (16 * s.gallery.shape[1]))
    for start in range(0, len(queries), pairs):
        q, g = queries[start:start + pairs], items[start:start + pairs]
        dot = torch.einsum("ij,ij->i", s.queries[qs.order[q]].double(), s.gallery[gs.order[g]].double())
        out[start:start + len(q)] = (qs.sq[q] + gs.sq[g] - 2 * dot).clamp_(min=0)
    return out


def _band_ranks(s: _Search, qs: _Side, gs: _Side, positions: torch.Tensor, sure: torch.Tensor, band: _Band
                ) -> torch.Tensor:
    """`_exact_ranks` of the sorted queries at `positions`, from their sure counts and their band.

    Each query's nearest match (d*, i*) is found in float64 among its same-class items; a band item comes before
    it when closer, or as close with a lower index. Items outside the band are surely before (counted by sure)
    or surely after it.
    """
    device, n = s.gallery.device, len(positions)
    at = positions.cpu().numpy()
    first = np.searchsorted(gs.labels, qs.labels[at], "left")  # each query's same-class items, sorted positions
    count = np.searchsorted(gs.labels, qs.labels[at], "right") - first
    owner = np.repeat(np.arange(n), count)
    item = np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count) + np.repeat(first, count)
    if s.leave_one_out:  # not the query itself
        owner, item = owner[item != at[owner]], item[item != at[owner]]
    owner, item = torch.from_numpy(owner).to(device), torch.from_numpy(item).to(device)
    dist, index = _pair_distances(s, qs, gs, positions[owner], item), gs.order[item]
    d_star = torch.full((n,), math.inf, dtype=torch.float64, device=device).scatter_reduce_(0, owner, dist, "amin")
    nearest = dist == d_star[owner]
    i_star = torch.full((n,), len(s.gallery), device=device).scatter_reduce_(0, owner[nearest], index[nearest], "amin")
    slot = torch.full((len(s.queries),), -1, device=device)
    slot[positions] = torch.arange(n, device=device)
    mine = slot[band.query] >= 0
    owner, item = slot[band.query[mine]], band.item[mine]
    dist, index = _pair_distances(s, qs, gs, band.query[mine], item), gs.order[item]
    before = (dist < d_star[owner]) | ((dist == d_star[owner]) & (index < i_star[owner]))
    return (sure[positions] + torch.zeros(n, dtype=torch.int64, device=device).index_add_(0, owner, before.long())
            ).double()


def _first_match_ranks(s: _Search, chunk_size: int | None, ks: list[int]) -> torch.Tensor:
    """Per query, a rank r with (r < K) == (rank of its nearest same-class item < K) for every K in ks.

    The rank is `_exact_ranks`'s; it is returned exactly where it decides a K, and as a lower bound that decides
    every K the same way elsewhere (+inf for a query with no same-class item).
    """
    q_sq = _sq_norms(s.queries)
    g_sq = q_sq if s.leave_one_out else _sq_norms(s.gallery)
    qs, gs, has_match, sure, maybe, band = _bounded_counts(s, chunk_size, q_sq, g_sq)
    # 3. float64 ranks where the two counts leave a K open: from the band, or (band too large) whole rows
    ranks = sure.double().masked_fill_(~has_match, math.inf)
    undecided = torch.zeros_like(has_match)
    for k in ks:
        undecided |= has_match & (sure < k) & (maybe >= k)
    if undecided.any():
        positions = undecided.nonzero()[:, 0]
        if band is not None:
            ranks[positions] = _band_ranks(s, qs, gs, positions, sure, band)
        else:
            rows = max(1, _EXACT_BYTES // (8 * len(s.gallery)))  # a few float64 (rows, gallery) blocks at a time
            ranks[positions] = _exact_ranks(s, rows, qs.order[positions], g_sq)
    out = torch.empty_like(ranks)
    out[qs.order] = ranks
    return out


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
    for dist, same, _ in _blocks(s, chunk_rows):
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
