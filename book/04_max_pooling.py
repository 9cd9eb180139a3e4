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
# # 04 · Global max pooling versus global average pooling
#
# **What you will learn**
#
# - the two ways of turning a convolutional feature map into one vector, global average pooling and
#   global max pooling, and where each sends its gradient;
# - on a worked example, why an average is diluted by clutter and a maximum is not, and when a
#   maximum is fooled instead;
# - how ProxyNCA++ trains with max pooling against the same recipe with average pooling;
# - where in the image each trained network's channels peak, on the digits or in the clutter,
#   shown on test images and measured on all of them.
#
# ## Two ways to pool
#
# The backbone turns an image into a feature map $F$ of $C$ channels on an $h \times w$ grid. The
# embedding layer needs one vector, so each channel is summarised by one number:
#
# $$z_c^{\text{avg}} = \frac{1}{hw} \sum_{i,j} F_{c,i,j}, \qquad z_c^{\text{max}} = \max_{i,j} F_{c,i,j}.$$
#
# Their gradients differ in where they go:
#
# $$\frac{\partial z_c^{\text{avg}}}{\partial F_{c,i,j}} = \frac{1}{hw}, \qquad
# \frac{\partial z_c^{\text{max}}}{\partial F_{c,i,j}} =
# \begin{cases} 1 & \text{if } (i, j) \text{ is where channel } c \text{ peaks,} \\ 0 & \text{otherwise.} \end{cases}$$
#
# Average pooling reads every position and trains every position a little; max pooling reads one
# position per channel, its *winner*, and trains only that one. The original ProxyNCA, like most
# metric-learning work before it, averages. ProxyNCA++ takes the maximum, and Teh et al. report that
# max pooling works better in general. One reason to expect it, which this chapter tests on our
# data: in an image where the object fills only part of the frame, an average mixes the object with
# everything around it, while a maximum can ignore the surroundings.
#
# Our small CNN (`pnca_utils.models.SmallCNN`) halves the resolution three times, so a 48-pixel image
# gives a map of 128 channels on a 6 × 6 grid, each cell centred on an 8 × 8-pixel patch.
# `EmbeddingNet.pool` applies the configured pooling, then LayerNorm and the linear embedding
# follow; `make_config("proxynca++", size, pooling="avg")` switches it.

# %% tags=["parameters"]
size = "default"
seed = 0
out_dir = "build"
solutions = False
device = "cpu"
epochs = None

# %%
import copy
import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from pnca_utils import analysis
from pnca_utils.chapter import workspace
from pnca_utils.config import make_config
from pnca_utils.data import load_data
from pnca_utils.data.embedded import digit_boxes, load_arrays
from pnca_utils.plots import activation_overlays
from pnca_utils.experiments.runs import cached_fit
from pnca_utils.training import build, embed, evaluate_model, untrained_metrics

figures, results, runs_root, overrides = workspace(out_dir, size, epochs, device=device)
shown_images = 6  # test images in the activation figure, one per class

# %% [markdown]
# ## A worked example: one channel, a digit and some clutter
#
# One channel on a 4 × 4 grid. A digit stroke that the channel detects gives 1.0 in one cell;
# clutter gives a weaker 0.4 in some other cells. The cell pools each map both ways and, by
# autograd, counts the cells that receive a gradient.

# %%
# NBVAL_CHECK_OUTPUT
clutter_cells = [(3, 0), (3, 3), (0, 3), (2, 3), (3, 1), (0, 0), (2, 0), (0, 2)]
cases = {"digit alone": (1.0, 0, None), "digit + 4 clutter cells": (1.0, 4, None),
         "digit + 8 clutter cells": (1.0, 8, None), "8 clutter cells, no digit": (0.0, 8, None),
         "digit + 1 bright clutter cell": (1.0, 0, 1.5)}
rows = {}
for name, (digit, clutter, bright) in cases.items():
    fmap = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    fmap[0, 0, 1, 1] = digit
    for i, j in clutter_cells[:clutter]:
        fmap[0, 0, i, j] = 0.4
    if bright is not None:
        fmap[0, 0, 3, 3] = bright
    row = {}
    for pooling in ("avg", "max"):
        leaf = fmap.clone().requires_grad_(True)
        pooled = leaf.mean(dim=(2, 3)) if pooling == "avg" else leaf.amax(dim=(2, 3))  # as EmbeddingNet.pool
        pooled.sum().backward()
        row[pooling] = pooled.item()
        row[f"cells with gradient ({pooling})"] = int((leaf.grad != 0).sum())
    row["max taken from"] = "digit" if row["max"] == digit and digit > 0 else "clutter"
    rows[name] = row
print(pd.DataFrame(rows).T.to_string(float_format=lambda v: f"{v:.4f}"))

# %% [markdown]
# The average grows with every clutter cell: with 8 of them it is over four times what the digit alone
# gives, and clutter without any digit (0.2) outscores the digit alone (0.0625). Two images of the
# same class, one clean and one cluttered, therefore get different features, and the network must
# learn to give clutter nothing at all before an average can be trusted. The maximum stays at 1.0 as
# long as the digit is the channel's strongest response, whatever the amount of clutter; only one
# cell receives its gradient, so training sharpens exactly the response that was read (where several
# cells tie for the maximum, as in the row without a digit, `amax` shares the gradient among them).
# The last row is max pooling's weak point: a single clutter cell brighter than the digit takes the channel over.
# Which of the two effects wins depends on what the channels learn, which is what we measure below.
#
# ## Training with each pooling
#
# The full ProxyNCA++ model, with max pooling, is the one chapter 03 trained; `runs.cached_fit`
# finds it under `out_dir/runs`. The second run changes only `pooling`, and evaluates only after its
# last epoch, to save time. Chapter 07's converged grid repeats this removal for five seeds, in runs
# of its own.

# %%
full = make_config("proxynca++", size, seed=seed, **overrides)
avg_config = make_config("proxynca++", size, seed=seed, pooling="avg", eval_every=full.epochs, **overrides)
data = load_data("embedded", image_size=full.image_size)
differ = {k: (v, avg_config.to_dict()[k]) for k, v in full.to_dict().items() if avg_config.to_dict()[k] != v}
print(f"the runs differ only in: {differ}")
if size == "ci":
    print("size='ci' is a smoke test: every number below only shows that the code runs, and differences "
          "between them are noise. Run the chapter at size='default' for numbers worth reading.")
untrained = {"max": untrained_metrics(full, data), "avg": untrained_metrics(avg_config, data)}
max_run = cached_fit(full, data, root=runs_root)
avg_run = cached_fit(avg_config, data, root=runs_root)

# %% [markdown]
# The table gives every metric on the test classes (percent) for the two trained networks and, for
# reference, for the pretrained network with an untrained embedding layer under each pooling.

# %%
runs = {"untrained, max pooling": untrained["max"], "untrained, avg pooling": untrained["avg"],
        "ProxyNCA++ (max pooling)": max_run.metrics, "ProxyNCA++ with avg pooling": avg_run.metrics}
print(analysis.metrics_table(runs).to_string(float_format=lambda v: f"{v:.1f}"))
print()
print(f"Replacing max pooling by average pooling "
      f"{analysis.describe_change(max_run.metrics['R@1'], avg_run.metrics['R@1'])} and "
      f"{analysis.describe_change(max_run.metrics['MAP@R'], avg_run.metrics['MAP@R'], 'MAP@R')}; one seed"
      f"{', at the smoke-test size' if size == 'ci' else ''}.")
print(f"Before training, max pooling gives R@1 {untrained['max']['R@1']:.1f} and average pooling "
      f"{untrained['avg']['R@1']:.1f} with the same pretrained backbone and embedding layer.")
d = round(avg_run.metrics["R@1"], 1) - round(max_run.metrics["R@1"], 1)  # as printed
print("The paper reports max pooling better in general but gives no separate number for it in the text this book "
      "compares with, so only the direction can be compared: "
      + ("this run agrees (max pooling ahead)." if d < 0 else "this run shows no difference." if d == 0
         else "this run does not agree (average pooling ahead)."))

# %% [markdown]
# ## Where the channels peak
#
# `analysis.feature_maps` returns a network's feature map before pooling, and
# `analysis.winner_counts` counts, for each cell, how many of the 128 channels have their maximum
# there: the cells that max pooling reads. `data.embedded.digit_boxes` gives the box around the
# digits' ink in each image (it replays the seeded generation of the data set, so it knows where it
# drew the digits); everything outside the box is clutter. The figure shows six test images, with
# the box in green, and the winner counts of three backbones: the pretrained one before metric
# learning, the one trained through max pooling and the one trained through average pooling. The
# last row shows what average pooling adds up instead: the summed activation of all channels.

# %%
class_names = load_arrays()["class_names"]
chosen = analysis.pick_classes(data.test.labels, shown_images, seed=seed)
shown = [int(np.flatnonzero(data.test.labels == c)[0]) for c in chosen]
boxes = digit_boxes("test", image_size=full.image_size)
pretrained, _ = build(full, data.num_channels, data.num_train_classes)
backbones = {"pretrained": pretrained, "max-trained": max_run.model, "avg-trained": avg_run.model}
maps = {f"{name}: winners": analysis.winner_counts(analysis.feature_maps(model, data.test, shown, device=device))
        for name, model in backbones.items()}
maps["avg-trained: sum"] = analysis.feature_maps(avg_run.model, data.test, shown, device=device).sum(dim=1).numpy()
fig = activation_overlays(data.test.images[shown, 0].numpy(), maps, boxes[shown],
                          titles=[f"class {class_names[data.test.classes[c]]}" for c in chosen],
                          title="Where the 128 channels peak (winners) and, last row, the summed activation")
plt.savefig(figures / "04_activation_maps.png", dpi=110, bbox_inches="tight")
plt.show()
grid = tuple(analysis.feature_maps(max_run.model, data.test, shown[:1], device=device).shape[-2:])
print(f"feature maps of {grid[0]} x {grid[1]} cells for {full.image_size}-pixel images; "
      "bright = many channels peak there")

# %% [markdown]
# What to notice: each map is scaled to its own maximum, so compare where the bright cells are, not
# how bright they are across rows. In each winner row, count the bright cells inside the green box
# (the digits) and outside it (the clutter); then compare the rows. The last row is not a winner map:
# average pooling reads every cell, weighted by how strongly it fires, so this row shows how much of
# what it sums comes from the clutter.
#
# Six images are anecdotes. The next cell measures the same thing on every test image with
# `analysis.region_shares`: the share of channel maxima on the digits (*winners*), the share of the
# summed activation on them (*mass*, what average pooling reads), and the share of the grid's cells
# on them (*area*, what either would give if the network ignored where the digits are). The grid is
# coarse, so "on the digits" is counted two ways: a cell whose centre lies in the box (strict), and a
# cell whose patch touches the box at all (loose; `box_cell_mask(..., margin=half a cell)`).

# %%
activation = {}
for name, model in backbones.items():
    fmaps = analysis.feature_maps(model, data.test, device=device)
    cells = tuple(fmaps.shape[-2:])
    rules = {"strict": 0.0, "loose": full.image_size / cells[0] / 2}
    activation[name] = {rule: analysis.region_shares(fmaps, analysis.box_cell_mask(boxes, full.image_size, cells,
                                                                                    margin))
                        for rule, margin in rules.items()}
    del fmaps
table = pd.DataFrame({name: {(rule, k): v for rule, shares in by_rule.items() for k, v in shares.items()
                             if k != "images"} for name, by_rule in activation.items()}).T
table[("", "R@1")] = [np.nan, max_run.metrics["R@1"], avg_run.metrics["R@1"]]
print(table.to_string(float_format=lambda v: f"{v:.1f}"))
print("images counted: " + ", ".join(f"{rule} {activation['max-trained'][rule]['images']}" for rule in rules)
      + f" of {len(data.test)} (strict leaves out boxes that hold no cell centre)")
m, a, p = (activation[k] for k in ("max-trained", "avg-trained", "pretrained"))
print()
print(f"The digits' box holds {m['strict']['area']:.1f}% of the cells (strict) or {m['loose']['area']:.1f}% (loose).")
print(f"On the digits, strict / loose: {m['strict']['winners']:.1f}% / {m['loose']['winners']:.1f}% of what max "
      f"pooling reads in the max-trained network (its channel maxima); {a['strict']['mass']:.1f}% / "
      f"{a['loose']['mass']:.1f}% of what average pooling reads in the avg-trained network (its summed activation).")
for name in ("max-trained", "avg-trained"):
    moved = [activation[name][rule]["winners"] - p[rule]["winners"] for rule in rules]
    print(f"Compared with the pretrained backbone, metric learning moved the {name} backbone's share of winners on "
          f"the digits by {moved[0]:+.1f} points (strict) and {moved[1]:+.1f} (loose).")
lifts = {}
for rule in rules:
    lifts[rule] = {k: v[rule]["winners"] / v[rule]["area"] for k, v in activation.items()}
    print(f"Winners relative to area, {rule} (1 = no preference for the digits): "
          + ", ".join(f"{k} {v:.2f}" for k, v in lifts[rule].items()))
# The clutter hypothesis predicts that training through max pooling puts more of the channels' peaks on the
# digits than training through average pooling does. Both counts must agree for an answer.
ahead = [lifts[rule]["max-trained"] > lifts[rule]["avg-trained"] for rule in rules]
moved_off = [activation["max-trained"][rule]["winners"] < p[rule]["winners"] for rule in rules]
print("\nThe clutter hypothesis, that training through max pooling moves the peaks onto the digits more than "
      "average pooling does: " + ("supported by both counts." if all(ahead) else
                                  "contradicted by both counts: the avg-trained backbone has the larger lift."
                                  if not any(ahead) else "the two counts disagree, so no answer."))
if all(moved_off):
    print("Training through max pooling moved the channels' peaks *off* the digits, compared with the pretrained "
          "backbone, by both counts.")

# %% [markdown]
# How to read the table: a backbone that ignored the digits would put about the *area* share of its
# maxima on them; every point above that is a preference for the digits. The table answers two
# different questions. Across the rows, in the winner columns: did metric learning move the peaks
# onto the digits, and did training through max pooling move them further than training through
# average pooling? Within a row, winners against mass: how much of what each pooling *reads* comes
# from the digits. Max pooling reads the winners; average pooling reads the mass, so the clutter's
# share of the mass is what it mixes into the embedding. The two answers can differ: backbones that
# peak in the same places still feed the embedding different mixtures of digits and clutter. The
# printed lines give both, and the R@1 column closes the loop with retrieval. Trust a difference
# only where the strict and the loose count agree on it.
#
# Two facts of the set-up bear on the answer. The small CNN was *pretrained* with average pooling
# (`pretrain.py`: a 10-way classifier on the source task after global average pooling), so its
# channels start out tuned to be read as averages; the max-pooling run has to re-tune them, the
# average-pooling run does not. And the average-pooling run keeps the learning rate calibrated for
# max pooling (chapter 07's "− max pooling" row does the same): its rate was not searched. Where the
# printed answer goes against the hypothesis, the hypothesis may still hold for an ImageNet backbone on
# photos with large backgrounds, the paper's case; this chapter can only say what it measured here.
#
# The box is generous (it includes the gaps between digits and any stroke drawn across them), each
# cell sees far more than its own patch (the receptive field of the last layer spans the whole
# image), and the grid is coarse, so the shares are a rough measure: use them to compare the
# backbones, not as exact fractions.
#
# The numbers are saved to `results/04.json`: `max` and `avg` hold the metrics of the two trained
# networks (percent), `untrained` those of the untrained embedding layer under each pooling,
# `activation` the shares above for each backbone, and `size` the size the chapter ran at.

# %%
saved = {"size": size, "max": max_run.metrics, "avg": avg_run.metrics, "untrained": untrained,
         "activation": activation}
(results / "04.json").write_text(json.dumps(saved, indent=2))
print(f"wrote {results / '04.json'}")

# %% [markdown]
# ## Summary
#
# - Global average pooling reads and trains every cell of the feature map; global max pooling reads
#   and trains one cell per channel, its strongest response.
# - An average is diluted by clutter in proportion to its area; a maximum ignores clutter as long as
#   clutter does not outshine the object.
# - On our set, the two pooling choices are compared in retrieval and in where the trained channels
#   peak relative to the digits; the numbers are in `results/04.json`.
#
# **Next.** Chapter 05 turns to the proxies themselves: with the loss's small gradients they barely
# move at the network's learning rate, and ProxyNCA++ gives them their own, much larger one.
#
# ## Exercises
#
# 1. Generalised mean pooling, $\big(\frac{1}{hw} \sum_{i,j} F_{c,i,j}^{\,p}\big)^{1/p}$, is the average
#    at $p = 1$ and tends to the maximum as $p$ grows. Compute it for the worked example's
#    "digit + 8 clutter cells" map for $p = 1, 2, 4, 8, 32$.
# 2. Swap the pooling at test time, without retraining: evaluate the max-trained network with average
#    pooling and the avg-trained one with max pooling (`model.pooling`, then
#    `training.evaluate_model`). What does the result say about what each backbone learned?
# 3. Split the test images by whether the max-trained network retrieves a classmate first (R@1
#    correct or not) and compute the share of winners inside the box for each group. Do the failures
#    look more at the clutter?
#
# Solutions are executed when the book is run with `--solutions` (the `solutions` parameter).

# %%
if solutions:
    # 1. The digit + 8 clutter cells map of the worked example.
    fmap = torch.zeros(4, 4, dtype=torch.float64)
    fmap[1, 1] = 1.0
    for i, j in clutter_cells:
        fmap[i, j] = 0.4
    gem = {p: fmap.pow(p).mean().pow(1 / p).item() for p in [1, 2, 4, 8, 32]}
    print("1. " + ", ".join(f"p={p}: {v:.3f}" for p, v in gem.items())
          + f" (average {fmap.mean().item():.4f}, maximum {fmap.max().item():.1f})")

# %%
if solutions:
    # 2. Copies, so that the cached runs keep their own pooling.
    swapped = {}
    for name, run, other in [("max-trained", max_run, "avg"), ("avg-trained", avg_run, "max")]:
        model = copy.deepcopy(run.model)
        model.pooling = other
        swapped[name] = (other, evaluate_model(model, data, device, seed)["R@1"], run.metrics["R@1"])
    for name, (other, r1_swapped, r1_own) in swapped.items():
        print(f"2. {name} network: R@1 {r1_own:.1f} with its own pooling, {r1_swapped:.1f} with {other} pooling")

# %%
if solutions:
    # 3. R@1 correct = the nearest other test image is a classmate, i.e. a positive neighbour gap.
    emb, labels = embed(max_run.model, data.test, device=device)
    gaps = analysis.neighbour_gaps(emb, labels)
    assert len(gaps["gap"]) == len(data.test)  # every test class has several images
    correct = gaps["gap"] > 0
    fmaps = analysis.feature_maps(max_run.model, data.test, device=device)
    masks = analysis.box_cell_mask(boxes, full.image_size, tuple(fmaps.shape[-2:]))
    for label, keep in [("retrieved a classmate", correct), ("retrieved another class", ~correct)]:
        share = analysis.region_shares(fmaps[torch.as_tensor(keep)], masks[keep])
        print(f"3. {label} ({keep.sum()} images): {share['winners']:.1f}% of the winners in the box "
              f"(area {share['area']:.1f}%)")
