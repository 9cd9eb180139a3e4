"""Metric-learning losses used in the book, one small function per equation.

Conventions shared by every loss here
-------------------------------------
* ``embeddings`` are ``(B, D)`` float tensors, ``labels`` are ``(B,)`` integer
  tensors.  Every function is differentiable with respect to every float input.
* ``proxy_nca_loss``, ``nca_loss`` and ``triplet_loss`` L2-normalise their
  inputs themselves (embeddings and proxies), as in the ProxyNCA / ProxyNCA++
  papers, so callers may pass raw network outputs.
* The N-pair functions and ``triplet_loss_terms`` do *not* normalise: N-pair
  loss (Sohn 2016) works on raw embeddings held small by an L2 penalty, and the
  explicit-triplet form is a building block (HDML feeds it synthetic points).
* Invalid arguments raise ``ValueError`` naming the offending argument, before
  any computation.  (Checking that labels are in range reads them back, which
  is a device synchronisation on GPU.)
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

__all__ = [
    "proxy_nca_loss",
    "assignment_factor",
    "nca_loss",
    "triplet_loss_terms",
    "triplet_loss",
    "npair_loss_terms",
    "npair_loss",
    "npair_loss_from_batch",
]


# --------------------------------------------------------------------------- #
# Validation helpers
# --------------------------------------------------------------------------- #
def _check_matrix(x, name: str) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n, D), got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")


def _check_labels(labels, batch_size: int, num_classes: int | None = None) -> torch.Tensor:
    """Validate labels and return them as int64."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != batch_size:
        raise ValueError(
            f"labels must have shape ({batch_size},) to match embeddings, "
            f"got {tuple(labels.shape)}"
        )
    labels = labels.long()
    if num_classes is not None:
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"labels must lie in [0, {num_classes}) (one proxy per class), "
                f"got values in [{lo}, {hi}]"
            )
    return labels


def _check_positive_number(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_nonnegative_number(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _squared_distances_unit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||x_i - y_j||^2 for unit rows: 2 - 2 x_i.y_j (clamped at 0 against round-off)."""
    return (2.0 - 2.0 * x @ y.T).clamp_min(0.0)


def _zero_loss(x: torch.Tensor) -> torch.Tensor:
    """A 0-valued scalar still attached to the graph (zero gradient)."""
    return x.sum() * 0.0


# --------------------------------------------------------------------------- #
# ProxyNCA / ProxyNCA++
# --------------------------------------------------------------------------- #
class _ProxyCosine(torch.autograd.Function):
    r"""cos[b, c] = x_b . p_c / max(|p_c|, eps), eps = 1e-12 as in F.normalize.

    The same values and gradients as ``x @ F.normalize(p, dim=1).T``, with fewer passes over the (C, D)
    proxies, which with thousands of classes are the largest tensor of the loss: one to take their norms
    forward, and backward one to scale them and one matrix product that adds into the result
    (d cos_bc / d p_c = x_b / |p_c| - cos_bc p_c / |p_c|^2).
    """

    @staticmethod
    def forward(ctx, x, p):
        norm = torch.linalg.vector_norm(p, dim=1)
        inv = 1.0 / norm.clamp_min(1e-12)
        cos = (x @ p.T) * inv
        ctx.save_for_backward(x, p, inv, cos, norm >= 1e-12)
        return cos

    @staticmethod
    def backward(ctx, grad):
        x, p, inv, cos, scaled = ctx.saved_tensors
        grad_prod = grad * inv  # d loss / d (x . p_c)
        grad_x = grad_prod @ p if ctx.needs_input_grad[0] else None
        grad_p = None
        if ctx.needs_input_grad[1]:
            coef = torch.where(scaled, -(grad * cos).sum(0) * inv * inv, 0.0)  # through |p_c| (none if clamped)
            grad_p = (p * coef[:, None]).addmm_(grad_prod.T.to(p.dtype), x.to(p.dtype))
        return grad_x, grad_p


def proxy_nca_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    proxies: torch.Tensor,
    temperature: float = 1.0,
    positive_in_denominator: bool = False,
) -> torch.Tensor:
    r"""ProxyNCA (Movshovitz-Attias et al. 2017) / ProxyNCA++ (Teh et al. 2020).

    With x and the proxies p_z L2-normalised and d(x, p) = ||x - p||^2::

        L(x, y) = -log( exp(-d(x, p_y)/T) / sum_{z in Z} exp(-d(x, p_z)/T) )

    ``Z`` is every proxy except ``p_y`` when ``positive_in_denominator=False``
    (original ProxyNCA; the loss can be negative) and every proxy when True
    (ProxyNCA++; a softmax cross-entropy, always >= 0).  Dividing by ``T`` is
    the same as scaling embeddings and proxies by sqrt(1/T) before the squared
    distance (ProxyNCA++ uses T = 1/9, i.e. scale 3).  Returns the batch mean.

    Args:
        embeddings: (B, D) float tensor (normalised here).
        labels: (B,) integer class indices in [0, C).
        proxies: (C, D) float tensor, one proxy per class (normalised here).
        temperature: T > 0.
        positive_in_denominator: False for ProxyNCA, True for ProxyNCA++.
    """
    _check_positive_number(temperature, "temperature")
    _check_matrix(embeddings, "embeddings")
    _check_matrix(proxies, "proxies")
    if proxies.shape[1] != embeddings.shape[1]:
        raise ValueError(
            f"proxies have dimension {proxies.shape[1]} but embeddings have "
            f"dimension {embeddings.shape[1]}"
        )
    num_classes = proxies.shape[0]
    if not positive_in_denominator and num_classes < 2:
        raise ValueError(
            "proxies: ProxyNCA without the positive in the denominator needs at "
            f"least 2 proxies, got {num_classes}"
        )
    labels = _check_labels(labels, embeddings.shape[0], num_classes)
    return _proxy_nca_per_image(embeddings, labels, proxies, temperature, positive_in_denominator).mean()


def _proxy_nca_per_image(embeddings, labels, proxies, temperature: float, positive_in_denominator: bool):
    """`proxy_nca_loss` of each image, (B,), for checked inputs."""
    x = F.normalize(embeddings, dim=1)
    cosine = _ProxyCosine.apply(x, proxies)  # x . p / |p|: the proxies are never copied normalised
    logits = -(2.0 - 2.0 * cosine).clamp_min(0.0) / temperature  # -||x - p||^2 / T for unit x, p; (B, C)
    positive_logit = logits.gather(1, labels[:, None]).squeeze(1)
    if not positive_in_denominator:
        is_positive = F.one_hot(labels, proxies.shape[0]).bool()
        logits = logits.masked_fill(is_positive, float("-inf"))
    return torch.logsumexp(logits, dim=1) - positive_logit


def assignment_factor(embeddings: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    r"""The batch mean of 1 - p_y, where p_y is each image's softmax probability of its own proxy over
    all proxies (the included loss's), detached: a scalar that carries no gradient.

    Per image, the included loss's gradient is the excluded one's times 1 - p_y (chapter 02). So the
    excluded batch loss times this factor has the included loss's gradient size with every image weighted
    alike, and the included batch loss divided by it has the included weighting at the excluded loss's
    size (the step-size design of results/diagnostics/proxy-assignment; `Config.proxy_gradient_size`).
    """
    _check_positive_number(temperature, "temperature")
    _check_matrix(embeddings, "embeddings")
    _check_matrix(proxies, "proxies")
    labels = _check_labels(labels, embeddings.shape[0], proxies.shape[0])
    with torch.no_grad():
        included = _proxy_nca_per_image(embeddings, labels, proxies, temperature, True)
        return (1.0 - torch.exp(-included)).mean()


# --------------------------------------------------------------------------- #
# NCA within the batch
# --------------------------------------------------------------------------- #
def nca_loss(
    embeddings: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    r"""Neighbourhood Component Analysis loss within a batch (Goldberger et al. 2004).

    With unit embeddings and d(x_i, x_j) = ||x_i - x_j||^2::

        p_i = sum_{j != i, y_j = y_i} exp(-d_ij/T) / sum_{k != i} exp(-d_ik/T)
        L   = -mean_{i in P} log p_i

    where P is the set of samples having at least one other sample of their
    class in the batch.  Samples without a positive (p_i would be 0) are left
    out of the mean; if no sample has one, the result is a zero scalar with
    zero gradient.  A batch of one sample therefore gives 0.
    """
    _check_positive_number(temperature, "temperature")
    _check_matrix(embeddings, "embeddings")
    labels = _check_labels(labels, embeddings.shape[0])

    n = embeddings.shape[0]
    is_self = torch.eye(n, dtype=torch.bool, device=embeddings.device)
    is_positive = (labels[:, None] == labels[None, :]) & ~is_self
    has_positive = is_positive.any(dim=1)
    if not bool(has_positive.any()):
        return _zero_loss(embeddings)

    x = F.normalize(embeddings, dim=1)
    logits = -_squared_distances_unit(x, x) / temperature
    # keep only rows with a positive, so every logsumexp below has a finite term
    logits = logits[has_positive]
    is_positive, is_self = is_positive[has_positive], is_self[has_positive]
    log_numerator = torch.logsumexp(logits.masked_fill(~is_positive, float("-inf")), dim=1)
    log_denominator = torch.logsumexp(logits.masked_fill(is_self, float("-inf")), dim=1)
    return (log_denominator - log_numerator).mean()


# --------------------------------------------------------------------------- #
# Triplet loss
# --------------------------------------------------------------------------- #
def triplet_loss_terms(
    anchor: torch.Tensor,
    positive: torch.Tensor,
    negative: torch.Tensor,
    margin: float = 0.2,
) -> torch.Tensor:
    r"""Per-triplet hinge ``[ ||a - p|| - ||a - n|| + margin ]_+`` -> shape (B,).

    Euclidean (not squared) distances on the vectors *as given* (no
    normalisation), so synthetic points (e.g. HDML's hardened negatives) can
    be passed directly.  The gradient of ||a - p|| at a == p is taken as 0.
    """
    _check_nonnegative_number(margin, "margin")
    for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 2-D floating-point tensor (B, D)")
    if not (anchor.shape == positive.shape == negative.shape):
        raise ValueError(
            "anchor, positive and negative must have the same shape, got "
            f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}"
        )
    d_ap = torch.linalg.vector_norm(anchor - positive, dim=1)
    d_an = torch.linalg.vector_norm(anchor - negative, dim=1)
    return F.relu(d_ap - d_an + margin)


def triplet_loss(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    reduction: str = "all",
) -> torch.Tensor:
    r"""In-batch triplet loss over *all* valid triplets (a, p, n).

    Valid: y_p = y_a with p != a, and y_n != y_a.  Embeddings are L2-normalised
    and compared with the Euclidean distance (not squared), so distances lie in
    [0, 2] and ``margin`` is on that scale.  Each triplet contributes
    ``[ ||a - p|| - ||a - n|| + margin ]_+`` (see :func:`triplet_loss_terms`).

    reduction:
        ``"all"``     mean over every valid triplet (default);
        ``"nonzero"`` mean over the triplets with a positive loss (as
                      pytorch-metric-learning's ``AvgNonZeroReducer``).
    With no valid triplet (or, for "nonzero", no active one) the result is a
    zero scalar with zero gradient.  Enumerating triplets uses a (B, B, B)
    boolean mask.
    """
    if reduction not in ("all", "nonzero"):
        raise ValueError(f"reduction must be 'all' or 'nonzero', got {reduction!r}")
    _check_nonnegative_number(margin, "margin")
    _check_matrix(embeddings, "embeddings")
    labels = _check_labels(labels, embeddings.shape[0])

    n = embeddings.shape[0]
    same = labels[:, None] == labels[None, :]
    is_positive = same & ~torch.eye(n, dtype=torch.bool, device=embeddings.device)
    valid = is_positive[:, :, None] & ~same[:, None, :]  # [a, p, n]
    a, p, neg = valid.nonzero(as_tuple=True)
    if a.numel() == 0:
        return _zero_loss(embeddings)

    x = F.normalize(embeddings, dim=1)
    terms = triplet_loss_terms(x[a], x[p], x[neg], margin)
    if reduction == "all":
        return terms.mean()
    # inactive terms are exactly 0, so summing everything and dividing by the
    # number of active ones is the mean over the non-zero terms (0 if none)
    return terms.sum() / (terms > 0).sum().clamp_min(1)


# --------------------------------------------------------------------------- #
# Multi-class N-pair loss
# --------------------------------------------------------------------------- #
def _check_pairs(anchors, positives) -> None:
    _check_matrix(anchors, "anchors")
    _check_matrix(positives, "positives")
    if anchors.shape != positives.shape:
        raise ValueError(
            f"anchors and positives must have the same shape, got "
            f"{tuple(anchors.shape)} and {tuple(positives.shape)}"
        )
    if anchors.shape[0] < 2:
        raise ValueError(
            f"N-pair loss needs at least 2 classes (pairs), got {anchors.shape[0]}"
        )


def npair_loss_terms(
    anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor
) -> torch.Tensor:
    r"""Per-anchor N-pair loss with explicit negatives -> shape (N,).

    ::

        L_i = log( 1 + sum_{j != i} exp(a_i . n_ij - a_i . p_i) )

    Args:
        anchors: (N, D), one per class.
        positives: (N, D), ``positives[i]`` has the class of ``anchors[i]``.
        negatives: (N, N, D), ``negatives[i, j]`` is the negative for anchor
            ``i`` coming from class ``j``; the diagonal ``negatives[i, i]`` is
            never read (it may hold anything).  Plain N-pair uses
            ``negatives[i, j] = positives[j]``; HDML passes hardened versions.
    Raw dot products, no normalisation.
    """
    _check_pairs(anchors, positives)
    n, dim = anchors.shape
    if not isinstance(negatives, torch.Tensor) or tuple(negatives.shape) != (n, n, dim):
        got = tuple(negatives.shape) if isinstance(negatives, torch.Tensor) else type(negatives).__name__
        raise ValueError(f"negatives must have shape (N, N, D) = {(n, n, dim)}, got {got}")
    if not negatives.is_floating_point():
        raise ValueError(f"negatives must be a floating-point tensor, got {negatives.dtype}")

    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=anchors.device)
    negatives = negatives[off_diagonal].view(n, n - 1, dim)  # drop j == i
    s_pos = (anchors * positives).sum(dim=1)  # (N,)
    s_neg = torch.einsum("id,ijd->ij", anchors, negatives)  # (N, N-1)
    z = s_neg - s_pos[:, None]
    # log(1 + sum_j exp z_ij) = logsumexp over [0, z_i1, ..., z_i(N-1)]
    return torch.logsumexp(torch.cat([z.new_zeros(n, 1), z], dim=1), dim=1)


def npair_loss(
    anchors: torch.Tensor, positives: torch.Tensor, l2_reg: float = 0.002
) -> torch.Tensor:
    r"""Multi-class N-pair loss (Sohn 2016) with the other classes' positives as negatives.

    ::

        L = mean_i log(1 + sum_{j != i} exp(a_i . p_j - a_i . p_i))
            + l2_reg / 4 * ( mean_i ||a_i||^2 + mean_i ||p_i||^2 )

    The first term equals the cross-entropy of logits ``anchors @ positives.T``
    with target ``i`` for row ``i``.  The L2 term keeps the raw (unnormalised)
    embeddings small; its scaling follows the reference TensorFlow
    ``npairs_loss`` (``reg_lambda=0.002``), i.e. ``l2_reg/2`` times the mean
    squared norm over all 2N embeddings.  ``l2_reg=0`` disables it.
    """
    _check_nonnegative_number(l2_reg, "l2_reg")
    _check_pairs(anchors, positives)
    n = anchors.shape[0]
    negatives = positives.unsqueeze(0).expand(n, -1, -1)  # negatives[i, j] = p_j
    loss = npair_loss_terms(anchors, positives, negatives).mean()
    if l2_reg > 0:
        mean_sq_norm = anchors.pow(2).sum(dim=1).mean() + positives.pow(2).sum(dim=1).mean()
        loss = loss + 0.25 * l2_reg * mean_sq_norm
    return loss


def npair_loss_from_batch(
    embeddings: torch.Tensor, labels: torch.Tensor, l2_reg: float = 0.002
) -> torch.Tensor:
    """:func:`npair_loss` on a batch holding exactly two images of each class.

    Classes are taken in increasing label order; within a class the image that
    comes first in the batch is the anchor and the second the positive.
    """
    _check_matrix(embeddings, "embeddings")
    labels = _check_labels(labels, embeddings.shape[0])
    classes, counts = torch.unique(labels, return_counts=True)
    bad = classes[counts != 2]
    if bad.numel() > 0:
        shown = ", ".join(
            f"{c}: {k}" for c, k in zip(bad.tolist()[:5], counts[counts != 2].tolist()[:5])
        )
        raise ValueError(
            "labels: N-pair batches need exactly 2 images per class; "
            f"class: count = {shown}{' ...' if bad.numel() > 5 else ''}"
        )
    order = torch.argsort(labels, stable=True).view(-1, 2)  # rows: (anchor, positive)
    return npair_loss(embeddings[order[:, 0]], embeddings[order[:, 1]], l2_reg=l2_reg)
