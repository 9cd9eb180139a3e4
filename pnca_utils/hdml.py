"""HDML: hardness-aware synthetic negatives (Zheng, Chen, Lu, Zhou, CVPR 2019) for triplet and N-pair losses.

One training step on a batch (x, y), with features f = model.features(x) and embeddings z = model.embedding(f):

1. *Harden* each negative toward its anchor in embedding space (:func:`harden_negative`); how far
   depends on J_avg, the running mean of the recent metric loss (:class:`RunningMean`).
2. A *generator* maps embeddings back to feature space; the hardened negatives go through it and
   then through the SAME embedding head, giving synthetic negatives that lie on the embedding
   manifold.
3. Three losses, each updating only its own parameters:

   * J_metric = e^(-beta/J_gen) J_m(real) + (1 - e^(-beta/J_gen)) J_m(synthetic) -> backbone and
     embedding head (also through the synthetic path, the generator acting as a fixed map);
   * J_gen = J_recon + softmax_factor * J_soft -> generator only, where J_recon is the mean
     squared distance ||generator(z) - f||^2 and J_soft the cross-entropy of the frozen classifier
     on the generated features (reconstructions with their own labels, synthetic negatives with
     the negative's label);
   * J_cls = cross-entropy of a linear classifier on the real (detached) features -> classifier only.

Choices, against the paper and its official TensorFlow code (wzzheng/HDML):

* Generator: Linear(D, H) - BatchNorm - ReLU - Linear(H, F), two FC layers like the official code's
  (which puts ReLU before BatchNorm; H = 512, F = 1024 for GoogLeNet); H is ``hdml_hidden`` and F
  the backbone's feature width.
  Reconstructions and hardened negatives go through it as one batch, as there.
* J_avg and the J_gen in the weight are running means over the last ``window`` steps, both +inf
  until ``window`` steps have been seen (the official code starts both at 1e6 and averages
  blocks of 64 steps): nothing is hardened and the synthetic weight is 0 at the start, while the
  generator is still untrained. J_avg averages the unweighted J_m on the real batch: its mean over
  the batch's tuples (``javg="mean"``, the scale the metric loss has here), or its sum over them
  (``javg="sum"``, closer to the official code, whose triplet J_m is a sum; see
  results/diagnostics/hdml/fidelity.md). With alpha = 90, a mean-reduced loss of about 0.2 gives
  exp(-alpha / J_avg) of about 0: every negative moved all the way to d+.
* The synthetic term keeps anchors and positives real and replaces only the negatives (the
  official code also passes anchors and positives through the generator).
* HDML-triplet uses every valid triplet of the batch, like :func:`losses.triplet_loss`; negatives
  are hardened in the raw embedding space (the generator's input space) and the triplet loss is
  taken on L2-normalised vectors, as the plain triplet loss. Moving a point along the segment
  toward the anchor also lowers its angle to the anchor, so hardening carries over.
* HDML-N-pair hardens, for anchor i, each other class's positive p_j using d+ = ||a_i - p_i||.
  The N-pair L2 penalty stays in the real term (scaled by its weight, as in the official code).
"""
from __future__ import annotations

import math
import numbers
from collections import deque
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from . import losses
from .config import HDML_JAVG

__all__ = ["harden_negative", "RunningMean", "HDML", "HDMLTerms", "LOSSES"]

LOSSES = ("triplet", "npair")


def _check_number(name: str, value, low: float = 0, integer: bool = False, strict: bool = True) -> None:
    """ValueError unless `value` is a finite number (an int if `integer`) > `low` (>= if not `strict`)."""
    ok = not isinstance(value, bool) and isinstance(value, numbers.Integral if integer else numbers.Real)
    if not (ok and math.isfinite(value) and (value > low if strict else value >= low)):
        kind = "an integer" if integer else "a finite number"
        raise ValueError(f"{name} must be {kind} {'>' if strict else '>='} {low}, got {value!r}")


# --------------------------------------------------------------------------- #
# Hardness-aware augmentation
# --------------------------------------------------------------------------- #
def _exp_factor(alpha, j_avg) -> float:
    """exp(-alpha / j_avg) for alpha > 0 and j_avg in [0, inf] (0 at j_avg = 0, 1 at j_avg = inf)."""
    _check_number("alpha", alpha)
    if isinstance(j_avg, torch.Tensor):
        if j_avg.ndim != 0 or j_avg.is_complex():
            raise ValueError(f"j_avg must be a number or a 0-d real tensor, got shape {tuple(j_avg.shape)}")
        j_avg = float(j_avg)
    if isinstance(j_avg, bool) or not isinstance(j_avg, numbers.Real) or not float(j_avg) >= 0:
        raise ValueError(f"j_avg must be a number >= 0 (inf allowed), got {j_avg!r}")
    return 0.0 if j_avg == 0 else math.exp(-alpha / j_avg)


def _harden(anchor, positive, negative, j_avg, alpha) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hardened negatives, lambda per row, d+ < d- per row); lambda = 1 where the negative is left unchanged."""
    for name, t in (("anchor", anchor), ("positive", positive), ("negative", negative)):
        if not isinstance(t, torch.Tensor) or t.ndim != 2 or not t.is_floating_point() or t.shape[0] == 0:
            raise ValueError(f"{name} must be a non-empty 2-D floating-point tensor (B, D)")
    if not anchor.shape == positive.shape == negative.shape:
        raise ValueError("anchor, positive and negative must have the same shape, got "
                         f"{tuple(anchor.shape)}, {tuple(positive.shape)}, {tuple(negative.shape)}")
    keep = _exp_factor(alpha, j_avg)
    d_pos = torch.linalg.vector_norm(anchor - positive, dim=1)
    d_neg = torch.linalg.vector_norm(anchor - negative, dim=1)
    harden = d_pos < d_neg  # here d_neg > 0
    # lambda = (d+ + (d- - d+) keep) / d- = 1 - shrink, written so that keep = 1 gives exactly the negative
    shrink = (1.0 - keep) * (d_neg - d_pos) / torch.where(harden, d_neg, torch.ones_like(d_neg))
    shrink = torch.where(harden, shrink, torch.zeros_like(shrink))
    return negative - shrink[:, None] * (negative - anchor), 1.0 - shrink, harden


def harden_negative(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor,
                    j_avg, alpha: float) -> torch.Tensor:
    r"""HDML's hardness-aware negatives, row-wise over (B, D) tensors.

    With d+ = ||a - p|| and d- = ||a - n||, where d+ < d- the result is
    ``a + lambda (n - a)`` with ``lambda = (d+ + (d- - d+) exp(-alpha / j_avg)) / d-``, a point on the
    segment a-n at distance d+ + (d- - d+) exp(-alpha / j_avg) from the anchor; elsewhere it is n.
    j_avg -> inf leaves n unchanged, j_avg = 0 puts it at distance d+. ``j_avg`` is a number or a
    0-d tensor in [0, inf] (no gradient flows through it); ``alpha > 0``. Differentiable in a, p, n.
    """
    return _harden(anchor, positive, negative, j_avg, alpha)[0]


class RunningMean:
    """Mean of the last ``window`` values; ``initial`` (+inf by default) until ``window`` have been seen."""

    def __init__(self, window: int, initial: float = math.inf):
        _check_number("window", window, 1, integer=True, strict=False)
        self.window, self.initial = window, float(initial)
        self.values: deque[float] = deque(maxlen=window)

    def update(self, value: float) -> None:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"RunningMean.update needs a finite value, got {value}")
        self.values.append(value)

    @property
    def value(self) -> float:
        return math.fsum(self.values) / self.window if len(self.values) == self.window else self.initial

    def state_dict(self) -> dict:
        return {"window": self.window, "initial": self.initial, "values": list(self.values)}

    def load_state_dict(self, state: dict) -> None:
        if state["window"] != self.window:
            raise ValueError(f"saved window {state['window']} differs from this RunningMean's {self.window}")
        self.initial = float(state["initial"])
        self.values = deque((float(v) for v in state["values"]), maxlen=self.window)


# --------------------------------------------------------------------------- #
# One HDML step
# --------------------------------------------------------------------------- #
def _triplets(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices (a, p, n) of every valid triplet: y_p = y_a, p != a, y_n != y_a."""
    same = labels[:, None] == labels[None, :]
    is_positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    a, p, n = (is_positive[:, :, None] & ~same[:, None, :]).nonzero(as_tuple=True)
    if a.numel() == 0:
        raise ValueError("labels: HDML-triplet needs a batch with a positive pair and a negative")
    return a, p, n


@dataclass
class HDMLTerms:
    """The tensors of one HDML forward pass (scalars unless stated)."""

    embeddings: torch.Tensor  # (B, D) real embeddings, in the graph
    metric: torch.Tensor  # J_metric
    real: torch.Tensor  # J_m on the real batch
    synthetic: torch.Tensor  # J_m with synthetic negatives
    recon: torch.Tensor  # J_recon
    soft: torch.Tensor  # J_soft (before the softmax factor)
    gen: torch.Tensor  # J_gen
    cls: torch.Tensor  # J_cls
    lambdas: torch.Tensor  # (rows,) lambda of every hardened negative (1: unchanged)
    j_avg: float  # the J_avg used
    synthetic_weight: float  # 1 - exp(-beta / J_gen), the J_gen being the running mean
    hardening_factor: float = 1.0  # exp(-alpha / J_avg): the share of d- - d+ a negative keeps (1: unchanged)
    j_gen_avg: float = math.inf  # the running mean of J_gen in the synthetic weight
    far: torch.Tensor | None = None  # (rows,) bool: d- > d+, the negatives the rule moves
    synthetic_accuracy: float = math.nan  # share of synthetic negatives the classifier puts in the negative's class
    hardness: dict = field(default_factory=dict)  # `anchor_distances` of this batch's negatives
    tuples: int = 1  # triplets (triplet) or anchors (N-pair) that `real` is the mean over


def anchor_distances(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, hardened: torch.Tensor,
                     synthetic: torch.Tensor) -> dict[str, float]:
    """How hard the negatives are, on the unit sphere the metric losses see (each row of the (rows, D)
    inputs is L2-normalised first): the mean distance from the anchor to the real negative
    (``d_negative``), to the hardened one (``d_hardened``, before the generator), to the synthetic
    one (``d_synthetic``, after the generator and the embedding layer) and to the positive
    (``d_positive``); and the shares of real and synthetic negatives nearer to the anchor than its
    positive (``nearer_real``, ``nearer_synthetic``).
    """
    a, p, n, h, s = (F.normalize(t.detach(), dim=1) for t in (anchor, positive, negative, hardened, synthetic))
    d_pos, d_neg, d_syn = (a - p).norm(dim=1), (a - n).norm(dim=1), (a - s).norm(dim=1)
    return {"d_positive": float(d_pos.mean()), "d_negative": float(d_neg.mean()),
            "d_hardened": float((a - h).norm(dim=1).mean()), "d_synthetic": float(d_syn.mean()),
            "nearer_real": float((d_neg < d_pos).float().mean()),
            "nearer_synthetic": float((d_syn < d_pos).float().mean())}


class HDML(nn.Module):
    """Generator, classifier, their Adam optimisers and the J_avg / J_gen running means.

    The backbone and embedding head are the caller's, and so is their (metric) optimiser:
    :meth:`losses` computes every term, :meth:`backward` puts each loss's gradient on its own
    parameters only (``Tensor.backward(inputs=...)``) and steps the generator and classifier.
    """

    def __init__(self, loss: str, feature_dim: int, embedding_dim: int, num_classes: int, *,
                 hidden: int = 512, alpha: float = 90.0, beta: float = 1e4, softmax_factor: float = 1e4,
                 window: int = 64, generator_lr: float = 1e-2, classifier_lr: float = 1e-3, margin: float = 0.2,
                 javg: str = "mean"):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
        for name, value in (("feature_dim", feature_dim), ("embedding_dim", embedding_dim), ("hidden", hidden)):
            _check_number(name, value, integer=True)
        _check_number("num_classes", num_classes, 2, integer=True, strict=False)
        for name, value in (("alpha", alpha), ("beta", beta), ("generator_lr", generator_lr),
                            ("classifier_lr", classifier_lr)):
            _check_number(name, value)
        _check_number("softmax_factor", softmax_factor, strict=False)
        _check_number("margin", margin, strict=False)
        if javg not in HDML_JAVG:
            raise ValueError(f"javg must be 'mean' or 'sum', got {javg!r}")
        self.loss, self.num_classes, self.javg = loss, num_classes, javg
        self.alpha, self.beta, self.softmax_factor, self.margin = alpha, beta, softmax_factor, margin
        self.generator = nn.Sequential(nn.Linear(embedding_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                       nn.Linear(hidden, feature_dim))
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.generator_optimizer = torch.optim.Adam(self.generator.parameters(), lr=generator_lr)
        self.classifier_optimizer = torch.optim.Adam(self.classifier.parameters(), lr=classifier_lr)
        self.j_avg, self.j_gen = RunningMean(window), RunningMean(window)

    @classmethod
    def from_config(cls, config, model: nn.Module, num_classes: int) -> "HDML":
        """The HDML of an ``hdml-*`` Config, sized for ``model`` (an EmbeddingNet); on ``config.device``."""
        if not config.method.startswith("hdml-"):
            raise ValueError(f"HDML needs an 'hdml-triplet' or 'hdml-npair' method, got {config.method!r}")
        head = model.embedding
        hdml = cls(config.method.removeprefix("hdml-"), head.in_features, head.out_features, num_classes,
                   hidden=config.hdml_hidden, alpha=config.hdml_alpha, beta=config.hdml_beta,
                   softmax_factor=config.hdml_softmax_factor, window=config.hdml_window,
                   generator_lr=config.hdml_generator_lr, classifier_lr=config.hdml_classifier_lr,
                   margin=config.margin, javg=config.hdml_javg)
        return hdml.to(config.device)

    def losses(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> HDMLTerms:
        """Every HDML term of the batch (x, labels); ``model`` has ``.features`` and ``.embedding``."""
        if labels.ndim != 1 or labels.shape[0] != x.shape[0]:
            raise ValueError(f"labels must have shape ({x.shape[0]},), got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}) for the HDML classifier")
        feats = model.features(x)
        emb = model.embedding(feats)
        if self.loss == "triplet":
            real = losses.triplet_loss(emb, labels, margin=self.margin)
            a, p, n = _triplets(labels)
        else:
            real = losses.npair_loss_from_batch(emb, labels)  # checks 2 images per class
            pairs = torch.argsort(labels, stable=True).view(-1, 2)  # (anchor, positive) rows, as npair_loss_from_batch
            i, j = (~torch.eye(len(pairs), dtype=torch.bool, device=labels.device)).nonzero(as_tuple=True)
            a, p, n = pairs[i, 0], pairs[i, 1], pairs[j, 1]  # p_j hardened toward a_i, d+ = ||a_i - p_i||
        j_avg = self.j_avg.value
        hardened, lambdas, far = _harden(emb[a], emb[p], emb[n], j_avg, self.alpha)

        generated = self.generator(torch.cat([emb, hardened]))
        recon, synthetic_feats = generated[: len(emb)], generated[len(emb):]
        synthetic_emb = model.embedding(synthetic_feats)
        if self.loss == "triplet":
            unit = F.normalize(emb, dim=1)
            synthetic = losses.triplet_loss_terms(unit[a], unit[p], F.normalize(synthetic_emb, dim=1),
                                                  self.margin).mean()
        else:
            negatives = synthetic_emb.new_zeros(len(pairs), len(pairs), emb.shape[1]).index_put((i, j), synthetic_emb)
            synthetic = losses.npair_loss_terms(emb[pairs[:, 0]], emb[pairs[:, 1]], negatives).mean()
        j_gen_avg = self.j_gen.value
        synthetic_weight = 1.0 - math.exp(-self.beta / j_gen_avg)
        metric = (1.0 - synthetic_weight) * real + synthetic_weight * synthetic

        frozen_w, frozen_b = self.classifier.weight.detach(), self.classifier.bias.detach()
        synthetic_logits = F.linear(synthetic_feats, frozen_w, frozen_b)
        soft = (F.cross_entropy(F.linear(recon, frozen_w, frozen_b), labels)
                + F.cross_entropy(synthetic_logits, labels[n]))
        synthetic_accuracy = float((synthetic_logits.detach().argmax(dim=1) == labels[n]).float().mean())
        recon_loss = (recon - feats).pow(2).sum(dim=1).mean()
        gen = recon_loss + self.softmax_factor * soft
        cls = F.cross_entropy(self.classifier(feats.detach()), labels)
        tuples = len(a) if self.loss == "triplet" else len(pairs)  # the rows real's mean is taken over
        return HDMLTerms(emb, metric, real, synthetic, recon_loss, soft, gen, cls, lambdas.detach(),
                         j_avg, synthetic_weight, hardening_factor=_exp_factor(self.alpha, j_avg),
                         j_gen_avg=j_gen_avg, far=far.detach(), synthetic_accuracy=synthetic_accuracy,
                         hardness=anchor_distances(emb[a], emb[p], emb[n], hardened, synthetic_emb),
                         tuples=tuples)

    def backward(self, terms: HDMLTerms, metric_params) -> dict:
        """Gradients of J_metric on ``metric_params`` (accumulated into .grad; zero them first),
        J_gen on the generator and J_cls on the classifier; step those two; update J_avg and J_gen.

        Also sets ``terms.embeddings.grad``. Returns the step's HDML record for the history:

        * ``j_avg``, ``j_gen_avg``: the running means this step used (None before a full window);
        * ``hardening_factor``: exp(-alpha / J_avg), the share of d- - d+ a hardened negative keeps
          (1: unchanged, 0: moved to distance d+);
        * ``lambda``: the mean over all negatives of lambda, the share of its distance to the anchor a
          negative keeps; ``lambda_far`` the mean over the negatives farther than the positive
          (``share_far`` of them), the only ones the rule moves (1.0 when there are none);
        * ``synthetic_weight``: 1 - exp(-beta / J_gen_avg), the weight of the synthetic term;
        * ``j_m_real``, ``j_m_synthetic``, ``j_gen``, ``j_recon``, ``j_soft``, ``j_cls``: this step's losses;
        * ``synthetic_accuracy``: the share of synthetic negatives the (frozen) classifier assigns to
          the negative's class, what the softmax term of J_gen asks for;
        * ``d_positive``, ``d_negative``, ``d_hardened``, ``d_synthetic``, ``nearer_real``,
          ``nearer_synthetic``: how hard the negatives are before and after the generator
          (`anchor_distances`).
        """
        for name, value, field in (("J_gen", terms.gen, "hdml_generator_lr"),
                                   ("J_cls", terms.cls, "hdml_classifier_lr")):
            if not torch.isfinite(value):
                raise FloatingPointError(f"{name} became {value.item()}; nothing was updated. Lower {field}.")
        emb = terms.embeddings
        params = [p for p in metric_params if p.requires_grad]  # a frozen backbone is left out
        terms.metric.backward(inputs=[emb, *params], retain_graph=True)
        self.generator_optimizer.zero_grad(set_to_none=True)
        self.classifier_optimizer.zero_grad(set_to_none=True)
        terms.gen.backward(inputs=list(self.generator.parameters()), retain_graph=True)
        terms.cls.backward(inputs=list(self.classifier.parameters()))
        self.generator_optimizer.step()
        self.classifier_optimizer.step()
        self.j_avg.update(terms.real.item() * (terms.tuples if self.javg == "sum" else 1))
        self.j_gen.update(terms.gen.item())
        far = terms.far if terms.far is not None else terms.lambdas < 1
        return {"j_avg": terms.j_avg if math.isfinite(terms.j_avg) else None,  # None: strict JSON
                "j_gen_avg": terms.j_gen_avg if math.isfinite(terms.j_gen_avg) else None,
                "hardening_factor": terms.hardening_factor,
                "lambda": float(terms.lambdas.mean()), "synthetic_weight": terms.synthetic_weight,
                "lambda_far": float(terms.lambdas[far].mean()) if bool(far.any()) else 1.0,
                "share_far": float(far.float().mean()), "synthetic_accuracy": terms.synthetic_accuracy,
                "j_m_real": terms.real.item(), "j_m_synthetic": terms.synthetic.item(),
                "j_gen": terms.gen.item(), "j_recon": terms.recon.item(), "j_soft": terms.soft.item(),
                "j_cls": terms.cls.item(), **terms.hardness}

    def train_step(self, model: nn.Module, x: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer,
                   metric_params, inspect=None) -> tuple[HDMLTerms, dict]:
        """One HDML step: every term; each loss's gradients on its own parameters, the generator and the
        classifier stepped (:meth:`backward`); `inspect(embeddings, J_metric)`; then the metric update.

        Returns the terms and the step's record for the history (see :meth:`backward`).
        """
        terms = self.losses(model, x, labels)
        optimizer.zero_grad(set_to_none=True)
        record = self.backward(terms, metric_params)
        if inspect is not None:
            inspect(terms.embeddings, terms.metric)
        optimizer.step()
        return terms, record

    def checkpoint(self) -> dict:
        """Everything a bit-identical resume needs (loads with ``torch.load(weights_only=True)``)."""
        return {"modules": self.state_dict(), "generator_optimizer": self.generator_optimizer.state_dict(),
                "classifier_optimizer": self.classifier_optimizer.state_dict(),
                "j_avg": self.j_avg.state_dict(), "j_gen": self.j_gen.state_dict()}

    def load_checkpoint(self, state: dict) -> None:
        self.load_state_dict(state["modules"])
        self.generator_optimizer.load_state_dict(state["generator_optimizer"])
        self.classifier_optimizer.load_state_dict(state["classifier_optimizer"])
        self.j_avg.load_state_dict(state["j_avg"])
        self.j_gen.load_state_dict(state["j_gen"])
