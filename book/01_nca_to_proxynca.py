# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 01 · From NCA to ProxyNCA
#
# **What you will learn**
#
# - NCA (Goldberger et al. 2004): a *soft nearest neighbour* loss that compares each image of a batch
#   with the other images of the batch, and why it needs same-class pairs in every batch;
# - ProxyNCA (Movshovitz-Attias et al. 2017): one learned **proxy** per class replaces the other
#   images, so every class takes part in every step;
# - both losses worked out by hand on four points and three proxies in two dimensions, and checked
#   with `pnca_utils.losses`, including a surprise: the original ProxyNCA loss can be negative;
# - how to train and evaluate a network with `pnca_utils.training.fit`: the original ProxyNCA,
#   the baseline every later chapter improves on, and in-batch NCA next to it.
#
# ## NCA: a soft nearest neighbour within the batch
#
# Take a batch of $B$ images with embeddings $x_1, \dots, x_B$, L2-normalised to unit length, and
# labels $y_1, \dots, y_B$. Write $d_{ij} = \lVert x_i - x_j \rVert^2$ for the squared distance
# (between 0 and 4 on the unit sphere). NCA lets image $i$ pick a neighbour $j$ at random, with
# a probability that falls with the distance,
#
# $$p_{ij} = \frac{e^{-d_{ij}/T}}{\sum_{k \ne i} e^{-d_{ik}/T}}, \qquad j \ne i,$$
#
# and asks that the neighbour it picks has its own class:
#
# $$\mathcal{L}_{\mathrm{NCA}} = -\frac{1}{|P|} \sum_{i \in P} \log \sum_{j \ne i,\ y_j = y_i} p_{ij}.$$
#
# $P$ is the set of images that have at least one classmate in the batch. $T$ is a temperature:
# Goldberger et al. use $T = 1$; `losses.nca_loss(embeddings, labels, temperature)` takes it as an
# argument, and chapter 03 is about choosing it.
#
# Two costs come with comparing images with images:
#
# - **positives must be in the batch.** An image without a classmate in its batch contributes
#   nothing ($P$ leaves it out). With random batches from many classes most images are alone, so
#   NCA needs *class-balanced* batches, a few classes with several images each, and then it sees
#   only those few classes at each step;
# - **the batch is compared with itself**: $B(B-1)$ distances, a number that grows with the square
#   of the batch size.
#
# ## ProxyNCA: compare with one proxy per class
#
# Movshovitz-Attias et al. replace the other images by **proxies**: a vector $p_c \in \mathbb{R}^D$
# for each of the $C$ training classes, learned by gradient descent together with the network.
# An image is compared with every proxy, so every class takes part in every step, whatever the
# batch holds, at a cost of $B \cdot C$ distances. With $x$ and the proxies L2-normalised and
# $d(x, p) = \lVert x - p \rVert^2$, the original ProxyNCA loss of an image $x$ of class $y$ is
#
# $$\mathcal{L}_{\mathrm{ProxyNCA}}(x, y) = -\log \frac{e^{-d(x, p_y)}}{\sum_{z \ne y} e^{-d(x, p_z)}}
# = d(x, p_y) + \log \sum_{z \ne y} e^{-d(x, p_z)}.$$
#
# It is NCA with the proxies as the only neighbours, the own class's proxy $p_y$ as the one
# positive, and one detail that chapter 02 is about: the sum in the denominator runs over the
# **other** proxies only ($z \ne y$). In `pnca_utils` this is
# `losses.proxy_nca_loss(embeddings, labels, proxies, temperature=1.0, positive_in_denominator=False)`.
#
# **Proxies are the weights of a normalised softmax classifier.** For unit vectors,
# $\lVert x - p \rVert^2 = 2 - 2\, x \cdot p$, so
#
# $$-\frac{\lVert x - p_z \rVert^2}{T} = \frac{2}{T}\, x \cdot p_z - \frac{2}{T}.$$
#
# The constant $-2/T$ is the same for every proxy and cancels in any softmax over them. What is left
# is a linear classifier without bias: its weights are the normalised proxies and its logits are
# scaled by $2/T$. (With the positive in the denominator, chapter 02's change, the loss is exactly that
# classifier's cross-entropy; the checked cell below shows it.) The scale is why $T$ must be chosen.
# Goldberger et al.'s NCA learns an unnormalised linear map $A$, and the length of $A x$ sets how
# soft the softmax is, so the scale is learned. On the unit sphere, every logit lies between
# $-2/T$ and $2/T$ whatever the network does: the sharpness of the softmax is fixed by $T$ alone,
# a hyperparameter (chapter 03).
#
# At test time the proxies are thrown away: the test classes are new, so they have no proxies, and
# retrieval compares test images with each other, as in chapter 00.

# %% tags=["parameters"]
size = "default"
seed = 0
out_dir = "build"
solutions = False

# %%
import inspect
import json
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from pnca_utils import analysis, losses
from pnca_utils.chapter import workspace
from pnca_utils.config import make_config
from pnca_utils.data import load_data
from pnca_utils.plots import embedding_scatter, training_curves, tsne_panels
from pnca_utils.experiments.runs import cached_fit
from pnca_utils.step import train_step
from pnca_utils.training import build, embed, make_optimizer, untrained_metrics

figures, results, runs_root, overrides = workspace(out_dir, size)
tsne_classes, tsne_per_class = 12, 20  # the t-SNE maps show 12 test classes, 20 images each

# %% [markdown]
# ## Both losses by hand
#
# Four embeddings on the unit circle, two of class A and two of class B, and three proxies, one
# each for A, B and a third class C that has no image in this batch:
#
# | | a1 | a2 | b1 | b2 | $p_A$ | $p_B$ | $p_C$ |
# |---|---|---|---|---|---|---|---|
# | coordinates | (1, 0) | (0.8, 0.6) | (0, 1) | (−0.6, 0.8) | (0.8, −0.6) | (−0.8, 0.6) | (0, −1) |
#
# Every point has length 1, so $d(u, v) = \lVert u - v \rVert^2 = 2 - 2\, u \cdot v$. We use $T = 1$
# throughout, as the original papers do.
#
# **NCA for a1.** Its distances to the other images are $d(a_1, a_2) = 2 - 2 \cdot 0.8 = 0.4$,
# $d(a_1, b_1) = 2 - 0 = 2$ and $d(a_1, b_2) = 2 - 2 \cdot (-0.6) = 3.2$. Its only classmate is a2, so
#
# $$\mathcal{L}_{\mathrm{NCA}}(a_1) = -\log \frac{e^{-0.4}}{e^{-0.4} + e^{-2} + e^{-3.2}}
# = -\log \frac{0.6703}{0.6703 + 0.1353 + 0.0408} = 0.2333.$$
#
# **ProxyNCA for a1.** Its distances to the proxies are $d(a_1, p_A) = 2 - 1.6 = 0.4$,
# $d(a_1, p_B) = 2 + 1.6 = 3.6$ and $d(a_1, p_C) = 2$. The positive $p_A$ is left out of the sum:
#
# $$\mathcal{L}_{\mathrm{ProxyNCA}}(a_1) = 0.4 + \log\left(e^{-3.6} + e^{-2}\right)
# = 0.4 + \log(0.0273 + 0.1353) = 0.4 - 1.8161 = -1.4161.$$
#
# A **negative** loss: $-\log$ of a "probability" larger than 1. The fraction inside the log is not a
# probability, because its denominator leaves out its numerator. Keep this in mind; chapter 02 is
# about it. Notice also that class C's proxy took part although no image of C is in the batch.
#
# The cell below asks `pnca_utils.losses` for the same numbers: the two hand computations, then
# the library, for a1 alone and for the whole batch.

# %%
# NBVAL_CHECK_OUTPUT
batch = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]], dtype=torch.float64)
batch_labels = torch.tensor([0, 0, 1, 1])  # a1, a2 in class A (0); b1, b2 in class B (1)
proxies_2d = torch.tensor([[0.8, -0.6], [-0.8, 0.6], [0.0, -1.0]], dtype=torch.float64)  # p_A, p_B, p_C
names, class_names = ["a1", "a2", "b1", "b2"], ["A", "B", "C"]

to_images = pd.DataFrame(torch.cdist(batch, batch).pow(2).numpy(), index=names, columns=names)
to_proxies = pd.DataFrame(torch.cdist(batch, proxies_2d).pow(2).numpy(), index=names,
                          columns=[f"p_{c}" for c in class_names])
print("squared distances between the images:")
print(to_images.to_string(float_format=lambda v: f"{v:.2f}"))
print("\nsquared distances to the proxies:")
print(to_proxies.to_string(float_format=lambda v: f"{v:.2f}"))

nca_a1_by_hand = -math.log(math.exp(-0.4) / (math.exp(-0.4) + math.exp(-2.0) + math.exp(-3.2)))
proxynca_a1_by_hand = 0.4 + math.log(math.exp(-3.6) + math.exp(-2.0))
# nca_loss returns the batch mean (a1's loss depends on the whole batch), so a1 alone is checked by hand.
per_image = [losses.proxy_nca_loss(batch[i:i + 1], batch_labels[i:i + 1], proxies_2d).item() for i in range(4)]
print(f"\nNCA, a1 by hand:                {nca_a1_by_hand:.4f}")
print(f"NCA, batch mean (nca_loss):     {losses.nca_loss(batch, batch_labels).item():.4f}")
print(f"ProxyNCA, a1 by hand:           {proxynca_a1_by_hand:.4f}")
print(f"ProxyNCA, a1 (proxy_nca_loss):  {per_image[0]:.4f}")
print("ProxyNCA, each image:           " + "  ".join(f"{n} {v:.4f}" for n, v in zip(names, per_image)))
print(f"ProxyNCA, batch mean:           {losses.proxy_nca_loss(batch, batch_labels, proxies_2d).item():.4f}")

# %%
# NBVAL_CHECK_OUTPUT
# The identity above on the worked example: the loss with the positive in the denominator (chapter 02)
# is the cross-entropy of logits (2/T) x . p_z, for any T.
for t in (1.0, 1 / 9):
    with_positive = losses.proxy_nca_loss(batch, batch_labels, proxies_2d, t, positive_in_denominator=True).item()
    classifier = torch.nn.functional.cross_entropy(batch @ proxies_2d.T * (2 / t), batch_labels).item()
    print(f"T = {t:.3g}: proxy loss, positive in the denominator {with_positive:.6g}; "
          f"cross-entropy of (2/T) x.p {classifier:.6g}")

# %% [markdown]
# The library agrees with the hand computation for a1. Read the per-image ProxyNCA losses with the
# distance tables: each image's loss is its distance to its own proxy plus the log of a sum over
# the *other* proxies, so it is low (here, negative) when the own proxy is near and the others are
# far. b2, almost on top of $p_B$ (0.08), has the lowest loss; a2, whose own proxy (1.44) is hardly
# nearer than $p_B$ (2.56), the highest. The NCA batch mean averages a1's loss with those of the
# three other images, each against its own three neighbours.
#
# The figure shows the same configuration: dots are the images, stars the proxies, in the colour
# of their class.

# %%
ax = embedding_scatter(batch.numpy(), batch_labels.numpy(), proxies=proxies_2d.numpy(), proxy_labels=[0, 1, 2],
                       class_names=class_names, legend=True, size=60, title="Four images (dots), three proxies (stars)")
for name, (x, y) in zip(names, batch.numpy()):
    ax.annotate(name, (x, y), xytext=(6, 4), textcoords="offset points")
ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="grey", lw=0.8))
plt.savefig(figures / "01_worked_example.png", dpi=120, bbox_inches="tight")
plt.show()

# %% [markdown]
# What to notice: all seven points lie on the unit circle, because both losses normalise
# embeddings and proxies. The loss of an image only depends on angles: how close it is to its
# own star compared with the other stars (ProxyNCA), or to its classmate compared with the other
# dots (NCA). The green star, class C, pulls on nothing and pushes on every image of this batch.
#
# ## Training the original ProxyNCA
#
# `make_config("proxynca", size)` is the 2017 recipe on our small CNN: temperature 1, the positive
# proxy out of the denominator, average pooling, no LayerNorm, the proxies learned at the same rate
# as the network, random batches, and a learning rate chosen on held-out *training* classes, as
# chapter 00's protocol requires.
#
# **Where we depart from 2017, and why.** The original trained an Inception network with its own
# optimiser. We train every method with the optimiser of ProxyNCA++, Adam with $\epsilon = 1$, so that
# later comparisons change the loss and its components, not the optimiser. That choice has a cost
# the baseline must not pay: under $\epsilon = 1$ small gradients take small steps (chapter 05), so the
# baseline needs a far larger learning rate than ProxyNCA++, and a rate borrowed from ProxyNCA++ leaves
# it barely trained. Its rate therefore has its own search on validation classes
# (`results/tuning/proxynca`, five rates from 1e-2 to 2, two seeds), and the converged grid of
# chapter 07 gives it its own budget and image size (`results/tuning/curves-56px`). The cell below
# prints both.
#
# **The design of the next chapters.** Chapter 02 changes one switch of *this* config, the positive
# in the denominator. Chapters 03 to 06 work the other way round: each starts from the full
# ProxyNCA++ config, `make_config("proxynca++", size)`, and removes one enhancement, keeping every
# other one on. Their reference runs are therefore ProxyNCA++ runs, with another untrained network
# (max pooling, LayerNorm, larger images) and other rates than this chapter's; the cell below lists
# what differs. Chapter 07 puts both designs side by side: each component removed from ProxyNCA++,
# and each added to ProxyNCA in turn.
#
# `fit(config, data)` trains a config and evaluates it on the test classes;
# `untrained_metrics(config, data)` evaluates the same network before its first step (the CNN
# pretrained on the source task, with a random embedding layer). The chapters call `fit` through
# `runs.cached_fit(config, data, root)`, which keeps each run's checkpoint under `root`, one folder
# per config: a later chapter that needs the same config reloads it instead of training it again.
#
# For comparison, we train NCA within the batch: `make_config("nca", size)` with the same network
# (`pooling="avg", layernorm=False`), so that the difference lies in the loss and in the batches it
# needs. The table below lists every setting in which the two runs differ.

# %%
proxynca_config = make_config("proxynca", size, seed=seed, **overrides)
# The same network as ProxyNCA's; the two proxy settings are unused by NCA and set equal, so that the
# table below lists only the differences that act.
nca_config = make_config("nca", size, seed=seed, pooling="avg", layernorm=False, positive_in_denominator=False,
                         proxy_lr=proxynca_config.proxy_lr, **overrides)
data = load_data("embedded", image_size=proxynca_config.image_size)

shared = {k: v for k, v in proxynca_config.to_dict().items() if nca_config.to_dict()[k] == v}
differ = pd.DataFrame({"ProxyNCA": proxynca_config.to_dict(), "NCA": nca_config.to_dict()}).loc[
    [k for k in proxynca_config.to_dict() if k not in shared]]
print(f"{data.num_train_classes} training classes ({len(data.train)} images), "
      f"{len(np.unique(data.test.labels))} test classes ({len(data.test)} images)")
print("shared: " + ", ".join(f"{k}={shared[k]}" for k in
                             ["image_size", "epochs", "batch_size", "lr", "adam_eps", "embedding_dim", "pooling"]
                             if k in shared))
print("settings that differ:")
print(differ.to_string())
plus_config = make_config("proxynca++", size, seed=seed, **overrides)
plus_differs = {k: (v, plus_config.to_dict()[k]) for k, v in proxynca_config.to_dict().items()
                if plus_config.to_dict()[k] != v and k not in ("eval_every",)}
print("\nProxyNCA (this chapter) against ProxyNCA++ (the reference of chapters 03 to 06): "
      + "; ".join(f"{k} {a} vs {b}" for k, (a, b) in plus_differs.items()))
converged_baseline = make_config("proxynca", "converged")
print(f"the baseline's validated settings: lr {proxynca_config.lr:g} at size {size!r}; at size 'converged' "
      f"(chapter 07's grid) lr {converged_baseline.lr:g}, {converged_baseline.epochs} epochs, "
      f"{converged_baseline.image_size} px")
if size == "ci":
    print("\nsize='ci' is a smoke test: every number below only shows that the code runs, and differences "
          "between them are noise. Run the chapter at size='default' for numbers worth reading.")

# %% [markdown]
# ## One training step
#
# Before `fit` runs hundreds of them, here is one step, as the library writes it. `train_step`
# (in `pnca_utils/step.py`) is the whole of the learning; everything else in `fit` is bookkeeping
# around it (epochs, evaluation, checkpoints, logging, several processes, mixed precision).

# %%
print(inspect.getsource(train_step))

# %% [markdown]
# Read it line by line:
#
# 1. `net(images)`: the CNN's feature maps, pooled to one vector per image, then the linear
#    embedding layer: a batch of `D`-dimensional embeddings. `precision` is mixed precision on a
#    GPU; by default (`FLOAT32`) its calls are the plain ones, and the `.float()` changes nothing.
# 2. `retain_grad`: only so that the history can record how large ∂loss/∂embedding was.
# 3. `loss_of(embeddings, labels)`: for ProxyNCA, `losses.proxy_nca_loss` with the proxies and the
#    temperature. It normalises embeddings and proxies and takes the softmax of the section above.
# 4. `zero_grad`, then `backward`: PyTorch's gradients accumulate, so the last step's are cleared
#    before this batch's are computed, for every parameter the loss touched: the backbone, the
#    embedding layer *and every proxy*.
# 5. `optimizer.step()`: Adam updates each parameter group at its own learning rate. The proxies are
#    a group of their own, which is how ProxyNCA++ later makes them move faster (chapter 05).
#
# The next cell builds the ProxyNCA network, its proxies and its optimiser as `fit` does, runs this
# step on one batch, and measures what moved.

# %%
model, proxies = build(proxynca_config, data.num_channels, data.num_train_classes)
optimizer = make_optimizer(proxynca_config, model, proxies)
for group in optimizer.param_groups:
    print(f"parameter group {group['name']:9s}: {sum(p.numel() for p in group['params']):7d} numbers, "
          f"learning rate {group['lr']:g}")
images, labels = next(iter(DataLoader(data.train, batch_size=proxynca_config.batch_size, shuffle=True,
                                      generator=torch.Generator().manual_seed(seed))))
backbone_before = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
proxies_before = proxies.detach().clone()


def loss_of(embeddings, labels):
    return losses.proxy_nca_loss(embeddings, labels, proxies, proxynca_config.temperature,
                                 proxynca_config.positive_in_denominator)


model.train()
embeddings, loss = train_step(model, images, labels, loss_of, optimizer)
backbone_after = torch.cat([p.detach().flatten() for p in model.backbone.parameters()])
moved = (proxies.detach() - proxies_before).norm(dim=1) > 0
in_batch = torch.zeros(len(proxies), dtype=torch.bool)
in_batch[labels.unique()] = True
print(f"\nbatch: {len(images)} images of {int(in_batch.sum())} of the {len(proxies)} training classes; "
      f"embeddings {tuple(embeddings.shape)}; loss {loss.item():.3f}")
print(f"backbone: relative change {float((backbone_after - backbone_before).norm() / backbone_before.norm()):.2e}")
print(f"proxies moved: {int(moved[in_batch].sum())} of the {int(in_batch.sum())} classes in the batch, "
      f"{int(moved[~in_batch].sum())} of the {int((~in_batch).sum())} classes not in it")
if bool(moved[~in_batch].all()):
    print("Every proxy of a class absent from the batch moved too.")

# %% [markdown]
# Why the proxies of absent classes move: each proxy sits in the denominator of the softmax of every
# image of another class, so each batch pushes every proxy away from its images of other classes,
# and pulls its own classes' proxies towards their images. That is the sense in which a proxy loss
# sees every class at every step, where a loss over pairs only sees the classes the batch holds.

# %%
untrained = untrained_metrics(proxynca_config, data)
proxynca = cached_fit(proxynca_config, data, root=runs_root)
nca = cached_fit(nca_config, data, root=runs_root)

# %% [markdown]
# The table gives every metric of chapter 00 on the test classes, in percent, and the training time
# per epoch.

# %%
runs = {"untrained": untrained, "ProxyNCA": proxynca.metrics, "NCA (in batch)": nca.metrics}
table = analysis.metrics_table(runs)
table["s/epoch"] = [np.nan] + [np.mean([r["seconds"] for r in run.history["epochs"]]) for run in (proxynca, nca)]
print(table.to_string(float_format=lambda v: f"{v:.1f}"))
print()
print(f"Training with ProxyNCA {analysis.describe_change(untrained['R@1'], proxynca.metrics['R@1'])} "
      "compared with the untrained network; "
      f"NCA {analysis.describe_change(untrained['R@1'], nca.metrics['R@1'])}.")
for name in ["NMI", "MAP@R"]:
    print(f"On {name}, ProxyNCA {analysis.describe_change(untrained[name], proxynca.metrics[name], name)}, "
          f"NCA {analysis.describe_change(untrained[name], nca.metrics[name], name)}.")
r1_proxy, r1_nca = round(proxynca.metrics["R@1"], 1), round(nca.metrics["R@1"], 1)  # compared as printed
if r1_proxy == r1_nca:
    verdict = f"ProxyNCA and NCA tie on R@1 ({r1_proxy:.1f})"
else:
    verdict = (f"{'ProxyNCA' if r1_proxy > r1_nca else 'NCA'} has the higher R@1 "
               f"({max(r1_proxy, r1_nca):.1f} against {min(r1_proxy, r1_nca):.1f})")
print(f"{verdict}, from one seed{' at the smoke-test size' if size == 'ci' else ''}. "
      f"Movshovitz-Attias et al. report proxies ahead of losses over sampled pairs and triplets; "
      + ("this run agrees in direction." if r1_proxy > r1_nca else "this run shows no difference." if r1_proxy == r1_nca
         else "this run does not agree: in-batch NCA is ahead here, with a recipe that differs in more than "
              "the loss (see below)."))

# %% [markdown]
# How to read this comparison: it is one seed of two *recipes*, not a test of the loss alone. The
# settings table shows what else differs: the NCA preset draws class-balanced batches, which NCA
# needs (exercise 2), uses a lower temperature, and trains at a learning rate of its own, searched on
# validation classes like the baseline's (`results/tuning/nca`);
# chapter 03 studies the temperature, chapter 06 the batches. The ProxyNCA++ paper reports R@1 on average 22.9 points above the original ProxyNCA
# across its four data sets, from the enhancements the next chapters add to this baseline one at a
# time.
#
# **How much does one seed tell?** Every run in chapters 01 to 06 is one seed. The committed
# converged grid (chapter 07, `results/converged`) trained each config with five seeds, so it shows
# how far R@1 moves when only the seed changes:

# %%
from pnca_utils.paths import results_dir

grid_runs = analysis.read_table(results_dir() / "converged" / "runs.csv", ["variant", "seed", "R@1"])
if grid_runs is None:
    print("No committed converged grid: see results/converged/README.md to regenerate it.")
else:
    spread = grid_runs.groupby("variant")["R@1"].agg(["std", lambda r: r.max() - r.min()])
    spread.columns = ["std", "range"]
    print(f"R@1 over 5 seeds of one config, across the grid's {len(spread)} configs: standard deviation "
          f"{spread['std'].min():.1f} to {spread['std'].max():.1f} (median {spread['std'].median():.1f}); "
          f"best minus worst seed {spread['range'].min():.1f} to {spread['range'].max():.1f} "
          f"(median {spread['range'].median():.1f}) points")
    for name in ("ProxyNCA", "ProxyNCA++"):
        if name in spread.index:
            print(f"  {name}: standard deviation {spread.loc[name, 'std']:.1f}, range {spread.loc[name, 'range']:.1f}")

# %% [markdown]
# Keep these numbers at hand. A single-seed difference smaller than the typical best-minus-worst
# range could come from the seed alone, and the chapters' short runs, stopped before convergence,
# may vary more than the converged ones. The chapters' single runs show *how* a component acts
# (gradients, distances, pooling maps); whether it helps is read from the five-seed grid of chapter 07.
#
# ## How the training went
#
# `fit` returns a `history`: a row per step (`loss`, gradient norms) and a row per epoch (mean loss,
# R@1 on the test classes, seconds). `plots.training_curves` draws them for both runs.

# %%
fig = training_curves({"ProxyNCA": proxynca.history, "NCA (in batch)": nca.history}, baseline=untrained["R@1"],
                      smooth=20, title="Training the original ProxyNCA and in-batch NCA")
plt.savefig(figures / "01_training.png", dpi=120, bbox_inches="tight")
plt.show()
for name, run in [("ProxyNCA", proxynca), ("NCA", nca)]:
    step_losses = [s["loss"] for s in run.history["steps"]]
    r1 = ", ".join(f"{r['R@1']:.1f}" for r in run.history["epochs"] if "R@1" in r)
    print(f"{name}: mean loss {np.mean(step_losses[:20]):.3f} over the first 20 steps, "
          f"{np.mean(step_losses[-20:]):.3f} over the last 20; lowest batch loss {min(step_losses):.3f}"
          f"{' (below zero: chapter 02)' if min(step_losses) < 0 else ''}; R@1 per epoch: {r1}")
# d(x, p_y) = 0 with every other proxy at 4 gives the lowest ProxyNCA loss, the reverse the highest.
c, t = data.num_train_classes, proxynca_config.temperature
print(f"With {c} classes and temperature {t:g}, one image's ProxyNCA loss lies between "
      f"{math.log(c - 1) - 4 / t:.2f} and {math.log(c - 1) + 4 / t:.2f}; log(C - 1) = {math.log(c - 1):.2f}.")
# With near-orthogonal negatives (d = 2 to each), the loss is d(x, p_y)/T - 2/T + log(C - 1): read d(x, p_y) off it.
floor = math.log(c - 1) - 2 / t
final_loss = np.mean([s["loss"] for s in proxynca.history["steps"]][-20:])
print(f"With every negative proxy at squared distance 2 (orthogonal), the loss is d(x, p_y)/T + {floor:.2f}: "
      f"{floor:.2f} when the positive proxy is reached. ProxyNCA's last 20 batches average {final_loss:.2f}, "
      f"so a typical image sits at d(x, p_y) = {t * (final_loss - floor):.2f} from its own proxy, against 2 "
      f"from the others.")

# %% [markdown]
# What to notice: each run is plotted with its own loss, so compare how the curves *fall*, not
# their heights; the faint lines are single batches, the solid ones a moving average. The ProxyNCA
# loss has a narrow range: every squared distance of unit vectors lies between 0 and 4, so at
# temperature 1 an image's loss lies within $\log(C - 1) \pm 4$, and the realistic floor is lower
# still. Random proxies in 64 dimensions are nearly orthogonal, at squared distance about 2 from any
# embedding that is not near them, so the loss is $d(x, p_y) - 2 + \log(C - 1)$: its floor, reached
# when every image sits on its proxy, is $\log(C - 1) - 2$. The last printed line turns the final loss
# into a distance, a diagnostic worth keeping: it says how much nearer its own proxy an image is than
# the others, which a raw loss value hides. The right panel is what retrieval cares about: R@1 on
# the test classes after each epoch, against the untrained network (dashed). A falling loss does not
# guarantee a rising R@1, because the loss is measured on training classes and R@1 on classes never
# seen.
#
# ## The test classes before and after training
#
# `analysis.tsne` maps 64-dimensional embeddings to two dimensions with t-SNE (fixed seed), which
# keeps each point's neighbours but not the distances between groups. We take 12 test classes
# (`analysis.pick_classes`), embed 20 images of each with the untrained network and with both
# trained networks (`analysis.embed_classes`), and colour them by class. Each panel title gives R@1
# among these 240 images, computed on the embeddings themselves, not on the map.

# %%
chosen = analysis.pick_classes(data.test.labels, tsne_classes, seed=seed)
untrained_model, _ = build(proxynca_config, data.num_channels, data.num_train_classes)
fig, tsne_r1 = tsne_panels({"untrained": untrained_model, "ProxyNCA": proxynca.model, "NCA (in batch)": nca.model},
                           data.test, chosen, tsne_per_class, seed=seed)
plt.savefig(figures / "01_tsne.png", dpi=110, bbox_inches="tight")
plt.show()
print("R@1 among the 12 classes: " + ", ".join(f"{k} {v:.1f}" for k, v in tsne_r1.items()))

# %% [markdown]
# What to notice: the classes are ones the network never trained on, so any clump of one colour
# is generalisation. Compare the panels by how mixed the colours are in each neighbourhood, which
# is what R@1 in the titles counts; ignore the size of the clumps, the gaps between them and where
# they sit, which t-SNE does not preserve. The untrained panel is the starting point: the CNN was
# pretrained on single digits, so it may group some classes already, and the R@1 values printed
# above say whether training improved on it. With 12 classes of 20 images, a random embedding would
# score about $19/239 \approx 8\%$ (the chance that a random other image is a classmate).
#
# The numbers are saved to `results/01.json`: `untrained`, `proxynca` and `nca` hold the metrics
# (percent, as returned by `metrics.evaluate`), `tsne_r1` the R@1 among the 12 classes, `size` the
# size the chapter ran at.

# %%
saved = {"size": size, "untrained": untrained, "proxynca": proxynca.metrics, "nca": nca.metrics,
         "tsne_r1": tsne_r1}
(results / "01.json").write_text(json.dumps(saved, indent=2))
print(f"wrote {results / '01.json'}")

# %% [markdown]
# ## Summary
#
# - NCA is a soft nearest neighbour within the batch: each image should pick a classmate. It needs
#   classmates in every batch and compares the batch with itself.
# - ProxyNCA compares each image with one learned proxy per class instead: every class takes part
#   in every step, and batches need no classmates. The proxies are discarded at test time.
# - The original ProxyNCA leaves the positive proxy out of the denominator, so its loss can be
#   negative, as a1 showed by hand.
# - `fit(make_config("proxynca", size))` is the baseline the rest of the book improves on; its
#   numbers, and NCA's, are in `results/01.json`.
#
# **Next.** Chapter 02 puts the positive proxy back into the denominator (ProxyNCA++'s *proxy
# assignment*), which turns the loss into a proper softmax cross-entropy, and measures what that
# changes.
#
# ## Exercises
#
# 1. In the worked example, lower the temperature to $T = 1/9$ (`temperature=1/9`). Predict the sign
#    of a1's ProxyNCA loss and whether a1's NCA loss grows or shrinks, then check with
#    `pnca_utils.losses`.
# 2. NCA needs classmates in the batch. With random batches of 32 images (the original ProxyNCA's
#    sampler) from our 100 training classes of 40 images, what fraction of the images has at least
#    one classmate in its batch? Work it out with a formula, then count it in batches drawn by
#    `pnca_utils.samplers.make_batch_sampler`.
# 3. After training, how often is the nearest proxy of a *training* image the proxy of its own class?
#    Use `proxynca.proxies` and `embed(proxynca.model, data.train)`. Compare it with R@1 on the test
#    classes: what does the gap tell you?
#
# Solutions are executed when the book is run with `--solutions` (the `solutions` parameter).

# %%
if solutions:
    # 1. Dividing every distance by T = 1/9 multiplies them by 9: the near positive wins by a wider margin.
    for t in [1.0, 1 / 9]:
        pnca = losses.proxy_nca_loss(batch[:1], batch_labels[:1], proxies_2d, temperature=t).item()
        nca_all = losses.nca_loss(batch, batch_labels, temperature=t).item()
        print(f"1. T = {t:.3f}: ProxyNCA loss of a1 {pnca:.4f}, NCA batch mean {nca_all:.4f}")
    print("   by hand at T = 1/9: a1's ProxyNCA loss is 9 * 0.4 + log(e^{-9 * 3.6} + e^{-9 * 2}) = "
          f"{9 * 0.4 + math.log(math.exp(-9 * 3.6) + math.exp(-9 * 2.0)):.4f}")

# %%
if solutions:
    # 2. A batch of 32 drawn without replacement from 4000 images: each of the other 31 images is one of the
    #    39 classmates with probability about 39 / 3999.
    from pnca_utils.samplers import make_batch_sampler

    train_labels = np.asarray(data.train.labels)
    n, per_class, batch_size = len(train_labels), int(np.bincount(train_labels).max()), 32
    by_formula = 1 - math.prod((n - per_class - k) / (n - 1 - k) for k in range(batch_size - 1))
    sampler = make_batch_sampler(train_labels, "random", batch_size, 4, seed)
    counted = [np.mean([(train_labels[b] == train_labels[i]).sum() > 1 for i in b]) for b in sampler]
    print(f"2. with a classmate in its batch: {100 * by_formula:.1f}% by the formula, "
          f"{100 * np.mean(counted):.1f}% counted over {len(counted)} random batches")

# %%
if solutions:
    # 3. The proxies classify the training images by the nearest proxy. They are learned points, not
    #    class means: a nearest-proxy classifier, which coincides with nearest-class-mean only if
    #    every proxy sat at its class's mean embedding.
    train_emb, train_labels_t = embed(proxynca.model, data.train)
    nearest = torch.cdist(train_emb, torch.nn.functional.normalize(proxynca.proxies.detach(), dim=1)).argmin(1)
    own = 100 * (nearest == train_labels_t).double().mean().item()
    print(f"3. nearest proxy is the own class's for {own:.1f}% of the training images; "
          f"R@1 on the test classes is {proxynca.metrics['R@1']:.1f}%")
