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
# # 03 · Low temperature scaling
#
# **What you will learn**
#
# - what the temperature $T$ does to the softmax over proxies: it turns a soft, almost uniform
#   assignment into a sharp one;
# - how the loss's gradient with respect to each distance depends on $T$, computed with
#   `pnca_utils.losses` and autograd: a low temperature concentrates the pull on the images that are
#   not yet assigned to their proxy, and the push on the nearest wrong proxies;
# - why a temperature of 1 cannot work well on the unit sphere with many classes;
# - a temperature sweep ($T = 1, 1/3, 1/9, 1/27$, everything else ProxyNCA++), compared with the
#   paper's ablation, and what the trained embeddings look like at $T = 1$ and $T = 1/9$;
# - how much of the temperature's effect is only the size of the optimiser's steps, with a control
#   that gives every temperature the steps of $T = 1/9$.
#
# ## The softmax over proxies, and its temperature
#
# From chapter 02 on, the loss of an embedding $x$ of class $y$ is a softmax cross-entropy over all
# $C$ proxies. With $x$ and the proxies L2-normalised and $d_z = \lVert x - p_z \rVert^2$,
#
# $$P(z \mid x) = \frac{e^{-d_z/T}}{\sum_{k=1}^{C} e^{-d_k/T}}, \qquad
# \mathcal{L}(x, y) = -\log P(y \mid x).$$
#
# $P(z \mid x)$ is the **assignment** of $x$ to proxy $z$. Its derivatives with respect to the
# distances are short:
#
# $$\frac{\partial \mathcal{L}}{\partial d_y} = \frac{1 - P(y \mid x)}{T}, \qquad
# \frac{\partial \mathcal{L}}{\partial d_z} = -\frac{P(z \mid x)}{T} \quad (z \ne y).$$
#
# The positive proxy pulls with a force that fades as $x$ becomes confidently assigned to it; each
# negative proxy pushes in proportion to the probability it still takes. $T$ appears twice: as a
# factor $1/T$ in front of every force, and inside $P$, where a small $T$ stretches the differences
# between distances before the exponential.
#
# The distances are bounded: on the unit sphere $0 \le d_z \le 4$, so the logits $-d_z/T$ span at
# most $4/T$. At $T = 1$ that is 4 nats, and with $C = 100$ classes even the best possible case, the
# positive at distance 0 and all 99 negatives at the far side of the sphere, gives
# $P(y \mid x) = 1 / (1 + 99 e^{-4}) \approx 0.36$: the network can never be confident. ProxyNCA++
# uses $T = 1/9$ (Teh et al. write it as scaling embeddings and proxies by 3 before the distance,
# which is the same thing, because $\lVert 3x - 3p \rVert^2 = 9\, d$). The paper finds low temperature
# scaling the most important of its enhancements and explains it by the sharper assignment: the
# positive proxy must win by a wider margin in probability, which separates the classes.
#
# In `pnca_utils` the temperature is `losses.proxy_nca_loss(..., temperature=T)`, and
# `make_config("proxynca++", size, temperature=T)` trains with it.

# %% tags=["parameters"]
size = "default"
seed = 0
out_dir = "build"
solutions = False
dataset = "embedded"
data_root = None
device = "cpu"
epochs = None

# %%
import json
import math
from fractions import Fraction

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from pnca_utils import analysis, losses, paper
from pnca_utils.chapter import workspace
from pnca_utils.config import make_config
from pnca_utils.data import load_data
from pnca_utils.plots import curves, sweep, tsne_panels
from pnca_utils.experiments.runs import cached_fit
from pnca_utils.training import embed, untrained_metrics

figures, results, runs_root, overrides = workspace(out_dir, size, epochs, device=device)
overrides.update(dataset=dataset, data_root=data_root)
temperatures = [1.0, 1 / 3, 1 / 9, 1 / 27]
names = [str(Fraction(t).limit_denominator(100)) for t in temperatures]  # "1", "1/3", "1/9", "1/27"
tsne_classes, tsne_per_class = 12, 20  # the t-SNE maps show 12 test classes, 20 images each

# %% [markdown]
# ## Two images at four temperatures
#
# Image a1 of chapters 01 and 02 lies at squared distance 0.4 from its proxy $p_A$, 3.6 from $p_B$
# and 2 from $p_C$: it is right. We add a3 = (0.28, −0.96), another image of class A, at the same
# distances from $p_A$ and $p_B$ but at 0.08 from $p_C$: it is wrong, nearer to another class's proxy
# than to its own. For each image and temperature the cell asks the library for the assignment to
# each proxy (the probability of proxy $z$ is $e^{-\mathcal{L}}$ of the loss computed as if $z$ were
# the class), the loss, and, by autograd, the norm of the loss's gradient with respect to each
# proxy: how hard a step will move it.

# %%
# NBVAL_CHECK_OUTPUT
images_2d = {"a1": [1.0, 0.0], "a3": [0.28, -0.96]}  # both of class A (proxy 0)
proxies_2d = torch.tensor([[0.8, -0.6], [-0.8, 0.6], [0.0, -1.0]], dtype=torch.float64)  # p_A, p_B, p_C
rows = []
for image, point in images_2d.items():
    x = torch.tensor([point], dtype=torch.float64)
    for t, name in zip(temperatures, names):
        prob = [math.exp(-losses.proxy_nca_loss(x, torch.tensor([z]), proxies_2d, t, True).item()) for z in range(3)]
        movable = proxies_2d.clone().requires_grad_(True)
        loss = losses.proxy_nca_loss(x, torch.tensor([0]), movable, t, True)
        loss.backward()
        force = movable.grad.norm(dim=1)
        rows.append({"image": image, "T": name, "P(A)": prob[0], "P(B)": prob[1], "P(C)": prob[2],
                     "loss": loss.item(), "|grad p_A|": force[0].item(), "|grad p_B|": force[1].item(),
                     "|grad p_C|": force[2].item(), "p_C's share of the push": (force[2] / force[1:].sum()).item()})
print(pd.DataFrame(rows).set_index(["image", "T"]).to_string(float_format=lambda v: f"{v:.3g}"))

# %% [markdown]
# Read a1's rows first. At $T = 1$ it gives its own proxy 0.8 of its probability although it is
# five times nearer to $p_A$ than to $p_C$; at $T = 1/9$ the assignment is certain, the loss is below
# $10^{-6}$, and every force has faded: a solved image stops asking for anything.
#
# a3 goes the other way. As $T$ falls, the sharper softmax hands more and more of its probability
# to the wrong proxy $p_C$, the loss grows, and so does the pull on $p_A$: about 46 times stronger at
# $T = 1/27$ than at $T = 1$, close to the factor $1/T = 27$ times the growth of $1 - P(A)$. The last
# column shows where the push goes: of the two wrong proxies, the nearer one, $p_C$, takes nearly all
# of it already at $T = 1$ for a3, and all of it at lower temperatures, while $p_B$ is left alone. A
# low temperature aims the loss at the images that are wrong and at their closest competitor.
#
# ## The assignment and its gradient as the positive comes closer
#
# `analysis.assignment_profile` places one embedding among $C$ proxies, the positive at squared
# distance $d_y$ and every negative at 2 (orthogonal to it, where random proxies start), calls
# `losses.proxy_nca_loss` for each $d_y$, and differentiates the loss with respect to the distances
# themselves by autograd. We use as many proxies as our training set has classes.

# %%
data = load_data(dataset, data_root, image_size=make_config("proxynca++", size, **overrides).image_size)
num_classes = data.num_train_classes
distance = np.linspace(0.0, 4.0, 161)
profiles = {name: analysis.assignment_profile(distance, 2.0, num_classes, t) for t, name in zip(temperatures, names)}

fig, axes = plt.subplots(1, 3, figsize=(15, 3.9))
x_label = "squared distance to the positive proxy"
curves(distance, {f"T = {n}": p["probability"] for n, p in profiles.items()}, x_label,
       "P(y | x), the positive's assignment", ax=axes[0], title=f"Assignment (C = {num_classes}, negatives at 2)")
curves(distance, {f"T = {n}": p["grad_positive"] for n, p in profiles.items()}, x_label,
       "dL / d(distance to the positive)", ax=axes[1], logy=True, title="Pull of the positive proxy")
curves(distance, {f"T = {n}": -p["grad_negative"] for n, p in profiles.items()}, x_label,
       "-dL / d(distance to one negative)", ax=axes[2], logy=True, title="Push of one negative proxy")
for ax in axes:
    ax.axvline(2.0, color="grey", lw=0.8, ls=":")
for ax in axes[1:]:
    ax.set_ylim(bottom=1e-8)  # below this the forces are nil (in float64 1 - P(y|x) rounds to 0 at T = 1/27)
fig.tight_layout()
plt.savefig(figures / "03_assignment_profiles.png", dpi=110, bbox_inches="tight")
plt.show()

profile_table = {}
for name, p in profiles.items():
    confident = p["probability"] >= 0.9
    profile_table[name] = {
        "largest P(y|x)": p["probability"].max(),
        "largest d_y with P >= 0.9": distance[confident].max() if confident.any() else float("nan"),
        "pull at d_y = 2": p["grad_positive"][np.searchsorted(distance, 2.0)],
        "pull at d_y = 0": p["grad_positive"][0] + 0.0,  # + 0.0 prints an underflowed -0.0 as 0
    }
profile_table = pd.DataFrame(profile_table).T
print(profile_table.to_string(float_format=lambda v: f"{v:.3g}"))
never = [n for n in names if np.isnan(profile_table.loc[n, "largest d_y with P >= 0.9"])]
print(f"\nWith {num_classes} proxies, P(y|x) never reaches 0.9 at T = {', '.join(never) or '(none)'}; "
      f"at T = 1 it tops out at {profile_table.loc['1', 'largest P(y|x)']:.3f} with the positive on top of x "
      "and the negatives at 2.")

# %% [markdown]
# What to notice. Left: at $T = 1$ the assignment hardly moves. Even with the positive proxy on top
# of the embedding the other 99 proxies keep most of the probability (the table gives the largest
# value reached). At $T = 1/9$ and $1/27$ the curve is a switch: the positive takes almost all of the
# probability as soon as it is somewhat nearer than the negatives (the dotted line is where it is
# as near as they are).
#
# Middle (log scale): the pull at $T = 1$ is flat; every image is pulled equally hard whether it is
# badly or well placed, and weakly, because $1 - P(y \mid x) \le 1$ and $1/T = 1$. At low
# temperature the pull is up to $1/T$ times stronger on badly placed images and collapses by orders
# of magnitude once an image is assigned to its proxy. Right: the push of a negative follows its
# probability, so it is strong only while that negative competes. With negatives at different
# distances (a3 above), the nearest takes the push.
#
# So a low temperature does what hard-example mining does by hand, continuously: the loss spends its
# gradient on images whose positive does not yet win and on the negatives that are winning instead.
# At $T = 1$ the loss stays almost linear in the distances (pull everything towards its proxy, push
# it from all proxies alike) and cannot tell a solved image from an unsolved one.
#
# There is a second, more mundane effect in our set-up. The paper's optimiser, Adam with
# $\epsilon = 1$, takes steps close to $\text{lr} \times \text{gradient}$ while gradients are small
# next to $\epsilon$, so the factor $1/T$ also acts as a larger learning rate. The training below
# records the gradient norms, so we can see how large that factor is.
#
# ## Training at four temperatures
#
# Four runs of ProxyNCA++ that differ only in `temperature`. $T = 1/9$ is the full model that
# chapters 04 to 07 use too: `runs.cached_fit` trains it once and stores it under `out_dir/runs`,
# where later chapters find it. The other three evaluate only after their last epoch
# (`eval_every=epochs`), which saves time and changes no training step. All four are the book's short,
# single-seed demonstrations: chapter 07's converged grid trains the same removal for five seeds,
# in runs of its own (one CPU thread each, at the converged budget), so its numbers are not these.

# %%
full = make_config("proxynca++", size, seed=seed, **overrides)
configs = {name: full if t == full.temperature else
           make_config("proxynca++", size, seed=seed, temperature=t, eval_every=full.epochs, **overrides)
           for t, name in zip(temperatures, names)}
differ = sorted({k for c in configs.values() for k, v in c.to_dict().items() if full.to_dict()[k] != v})
print(f"the runs differ only in: {', '.join(differ)}")
print(f"{len(data.train)} training images of {num_classes} classes; {len(data.test)} test images of "
      f"{len(np.unique(data.test.labels))} other classes; {full.epochs} epoch{'s' * (full.epochs > 1)} at "
      f"{full.image_size} px")
if size == "ci":
    print("size='ci' is a smoke test: every number below only shows that the code runs, and differences "
          "between them are noise. Run the chapter at size='default' for numbers worth reading.")
untrained = untrained_metrics(full, data)
trained = {name: cached_fit(config, data, root=runs_root) for name, config in configs.items()}

# %% [markdown]
# The first table gives every metric (percent) on the test classes, the untrained network first. The
# second describes the training: the mean gradient norm per embedding and on the backbone, and the
# loss at the first step, its highest value over the next 19 steps, and its mean over the last
# epoch. For comparison, $\log C$ is the loss of an assignment spread evenly over the $C$ proxies:
# a run whose loss stays there has learned nothing.

# %%
sweep_metrics = {f"T = {name}": run.metrics for name, run in trained.items()}
print(analysis.metrics_table({"untrained": untrained, **sweep_metrics}).to_string(float_format=lambda v: f"{v:.1f}"))
training = pd.DataFrame({f"T = {name}": {
    "grad/embedding": np.mean([s["grad_embeddings"] for s in run.history["steps"]]),
    "grad backbone": np.mean([s["grad_backbone"] for s in run.history["steps"]]),
    "loss, step 1": run.history["steps"][0]["loss"],
    "highest loss, steps 2-20": max(s["loss"] for s in run.history["steps"][1:20]),
    "loss, last epoch": run.history["epochs"][-1]["loss"]} for name, run in trained.items()}).T
print()
print(training.to_string(float_format=lambda v: f"{v:.3g}"))
log_c = math.log(num_classes)
print(f"log C = {log_c:.2f}")

r1 = {name: run.metrics["R@1"] for name, run in trained.items()}
best = max(r1, key=r1.get)
print()
print(f"Best R@1 at T = {best} ({r1[best]:.1f}). Going from T = 1 to T = 1/9 "
      f"{analysis.describe_change(r1['1'], r1['1/9'])}; from 1/9 to 1/27 "
      f"{analysis.describe_change(r1['1/9'], r1['1/27'])}.")
if best != "1/9":
    print(f"T = {best} beat the paper's 1/9 here, by {r1[best] - r1['1/9']:.1f} points, in one seed.")
ratio = training.loc["T = 1/9", "grad backbone"] / training.loc["T = 1", "grad backbone"]
print(f"The backbone's gradient norm is {ratio:.1f} times larger at T = 1/9 than at T = 1.")
# chance: the nearest other image is a classmate with probability (images per class - 1) / (images - 1)
per_class = len(data.test) / len(np.unique(data.test.labels))
chance = 100 * (per_class - 1) / (len(data.test) - 1)
for name, run in trained.items():
    row = training.loc[f"T = {name}"]
    if row["highest loss, steps 2-20"] > 1.5 * row["loss, step 1"]:
        print(f"At T = {name} the loss jumped from {row['loss, step 1']:.1f} at the first step to "
              f"{row['highest loss, steps 2-20']:.1f} within 20 steps.")
    if row["loss, last epoch"] > 0.9 * log_c and r1[name] < untrained["R@1"]:
        print(f"At T = {name} the last epoch's mean loss, {row['loss, last epoch']:.2f}, is close to log C, and R@1 "
              f"fell to {r1[name]:.1f}, below the untrained network's {untrained['R@1']:.1f}"
              + (f" and near chance ({chance:.1f})" if r1[name] < 3 * chance else "")
              + ": the run did not fail to learn, it destroyed the pretrained features.")

paper_delta, paper_source = paper.ABLATION_DELTA_R1["low temperature"]
ours = round(r1["1"], 1) - round(r1["1/9"], 1)  # as printed
print(f"\nRemoving low temperature (T = 1/9 -> 1): {ours:+.1f} points R@1 here, "
      f"{paper_delta:+.1f} in the paper ({paper_source}, ResNet-50 on the real benchmarks).")
print(("Same direction as the paper." if ours < 0 and paper_delta < 0 else
       "Not the paper's direction." if ours > 0 else "No change here.")
      + f" Only the direction is comparable: one seed{', at the smoke-test size' if size == 'ci' else ''}, a small CNN "
      "and a short budget say nothing about the size of the paper's drop; chapter 07's converged grid repeats "
      "the removal over five seeds.")

# %%
ax = sweep(temperatures, {"R@1": [r1[n] for n in names], "MAP@R": [trained[n].metrics["MAP@R"] for n in names]},
           "temperature T (log scale)", "percent, test classes", ticklabels=names, highlight=full.temperature,
           reference={"untrained R@1": untrained["R@1"]}, title="ProxyNCA++ at four temperatures")
ax.invert_xaxis()
plt.savefig(figures / "03_temperature_sweep.png", dpi=120, bbox_inches="tight")
plt.show()

# %% [markdown]
# What to notice: the x axis runs from high to low temperature, and the shaded band marks the
# paper's $T = 1/9$. Read the size of the step from $T = 1$ to the lower temperatures against the
# dashed line, the network before training, and against the differences among the low temperatures.
# The printed lines above the figure say where the best run lies, how our drop compares with the
# paper's, and whether a run failed to learn.
#
# How to read this sweep: the profiles predict that a lower temperature helps by sharpening the
# assignment, but in our set-up it also changes the size of every step. The forces grow as $1/T$,
# and Adam with $\epsilon = 1$ turns larger gradients into proportionally larger steps; the
# learning rates (network and proxies) were calibrated once, at $T = 1/9$. So $T = 1$ trains with
# much smaller steps than the calibrated ones and $T = 1/27$ with larger ones (the gradient-norm
# columns show by how much); a temperature that is too low can then throw the network off in its
# first steps, before the sharp assignment has anything useful to sharpen. Temperature and learning
# rate have to be chosen together. Musgrave et al., who tuned every loss under one protocol on held-out
# training classes, also found ProxyNCA at its best with a low temperature (softmax scales of about 8
# to 14), found together with the other settings. The next section separates the two effects.
#
# How to read the comparison with the paper: its $-10.8$ points come from a ResNet-50 on real photos,
# trained for many more epochs, averaged over its benchmarks; ours from a small CNN on a toy set, in
# a few epochs (4 at size `default`), one seed, with learning rates calibrated for $T = 1/9$.
# Chapter 07 repeats the removal over seeds.
#
# ## Step size or sharpness? The control
#
# If the temperature acted only through the size of the steps, giving $T = 1$ and $T = 1/27$ the steps
# of $T = 1/9$ would bring them back to $T = 1/9$'s R@1. Under Adam with $\epsilon = 1$ a step is about
# the learning rate times the gradient, so we multiply each learning rate by the ratio of the
# *measured* gradient norms in the first epoch, $T = 1/9$'s over the run's own, for the backbone
# (`lr`) and for the proxies (`proxy_lr`) separately. That ratio is not exactly $9T$: the gradients
# also depend on how sharp the assignment is. Two more runs, one seed each, evaluated after the last
# epoch.

# %%
reference_epoch = trained["1/9"].history["epochs"][0]
control = {}
for t, name in [(1.0, "1"), (1 / 27, "1/27")]:
    own_epoch = trained[name].history["epochs"][0]
    factors = {"lr": reference_epoch["grad_backbone"] / own_epoch["grad_backbone"],
               "proxy_lr": reference_epoch["grad_proxies"] / own_epoch["grad_proxies"]}
    matched = make_config("proxynca++", size, seed=seed, temperature=t, eval_every=full.epochs,
                          **{**overrides, "lr": factors["lr"] * full.lr, "proxy_lr": factors["proxy_lr"] * full.proxy_lr})
    control[f"T = {name}"] = {"lr x": factors["lr"], "proxy_lr x": factors["proxy_lr"], "9T": 9 * t,
                              "R@1, calibrated rates": r1[name],
                              "R@1, matched steps": cached_fit(matched, data, root=runs_root).metrics["R@1"]}
control_table = pd.DataFrame(control).T
print(control_table.to_string(float_format=lambda v: f"{v:.3g}"))
print(f"T = 1/9 with its calibrated rates: R@1 {r1['1/9']:.1f}")
for name, row in control_table.iterrows():
    gap_before = row["R@1, calibrated rates"] - r1["1/9"]
    gap_after = row["R@1, matched steps"] - r1["1/9"]
    print(f"{name} minus T = 1/9: {gap_before:+.1f} points with the calibrated rates, {gap_after:+.1f} with matched "
          f"steps" + (f"; matching the steps closed {100 * (1 - gap_after / gap_before):.0f} % of the gap"
                      if gap_before < 0 and gap_after < 0 else ""))
print(f"One seed each{', at the smoke-test size' if size == 'ci' else ''}: a gap that changes by less than the "
      "seed-to-seed range of chapter 01 is not evidence either way.")

# %% [markdown]
# What to notice: the factor columns against $9T$ show how far the measured gradients depart from a
# pure $1/T$ scaling. The last two columns against $T = 1/9$'s R@1 say how much of each temperature's
# gap was step size: a gap that closes with matched steps was mostly step size; a gap that stays is
# the sharpness of the assignment, the paper's explanation.
#
# ## Did the low temperature separate the classes?
#
# The paper's explanation predicts larger gaps between an image's own proxy and the nearest other
# one. `analysis.proxy_gaps` measures, for each training image, the squared distance to its own
# proxy, to the nearest other proxy, and the gap between the two; `analysis.neighbour_gaps` does
# the same on the test classes with images instead of proxies (nearest classmate against nearest
# image of another class), which is what retrieval sees.

# %%
gaps = {}
for name, run in trained.items():
    train_emb, train_labels = embed(run.model, data.train, device=device)
    test_emb, test_labels = embed(run.model, data.test, device=device)
    to_proxies = analysis.proxy_gaps(train_emb, train_labels, run.proxies)
    to_images = analysis.neighbour_gaps(test_emb, test_labels)
    gaps[f"T = {name}"] = {
        "train: own proxy": float(to_proxies["positive"].mean()),
        "train: nearest other proxy": float(to_proxies["negative"].mean()),
        "train: gap": float(to_proxies["gap"].mean()),
        "train: own proxy nearest (%)": float(100 * (to_proxies["gap"] > 0).mean()),
        "test: nearest is a classmate (%)": float(100 * (to_images["gap"] > 0).mean()),
        "test: nearest classmate": float(to_images["positive"].mean()),
        "test: nearest other class": float(to_images["negative"].mean()),
        "test: gap": float(to_images["gap"].mean()),
    }
print(pd.DataFrame(gaps).T.to_string(float_format=lambda v: f"{v:.2f}"))
g1, g9 = gaps["T = 1"], gaps["T = 1/9"]
print(f"\nMean gap on the training images: {g1['train: gap']:.2f} at T = 1, {g9['train: gap']:.2f} at T = 1/9; "
      f"on the test classes: {g1['test: gap']:.3f} and {g9['test: gap']:.3f} (squared distances, 0 to 4).")
own1, own9 = g1["train: own proxy nearest (%)"], g9["train: own proxy nearest (%)"]
near1, near9 = g1["test: nearest is a classmate (%)"], g9["test: nearest is a classmate (%)"]
print(f"Counted instead of measured: {own9:.0f} % of the training images sit nearest their own proxy at T = 1/9, "
      f"{own1:.0f} % at T = 1; the nearest test image is a classmate for {near9:.0f} % and {near1:.0f} %.")
print("Answer: " + ("yes, on the training classes" if own9 > own1 else "no, not on the training classes")
      + (", and on the test classes too." if near9 > near1 else ", and not on the test classes."
         if own9 > own1 else "; on the test classes, " + ("yes." if near9 > near1 else "no either."))
      + (f" At T = 1/9 only {own9:.0f} % of the training images have their own proxy nearest." if own9 < 75 else ""))

# %% [markdown]
# What to notice: the first four columns are about the training classes, which the loss sees; the
# last four about the test classes, which it never sees. A larger mean gap means that an image's
# own proxy (or nearest classmate) is nearer than the nearest competitor by a wider margin. But the
# gaps are squared distances, and they are not comparable across runs whose embeddings spread
# differently over the sphere: a run that packs everything into a small cap has small gaps whatever
# its order. The two percentage columns do not have that problem. They count how often the right
# answer is the nearest one, which no change of scale can alter, and the printed answer reads them.
# (The test column is the R@1 of the table above: retrieval *is* that count.)
#
# ## The test classes at $T = 1$ and at $T = 1/9$
#
# As in chapter 01: t-SNE maps of 12 test classes, 20 images each, and R@1 among these 240 images
# computed on the embeddings themselves.

# %%
chosen = analysis.pick_classes(data.test.labels, tsne_classes, seed=seed)
fig, tsne_r1 = tsne_panels({f"T = {name}": trained[name].model for name in ["1", "1/9"]}, data.test, chosen,
                           tsne_per_class, seed=seed, device=device)
plt.savefig(figures / "03_tsne.png", dpi=110, bbox_inches="tight")
plt.show()
print("R@1 among the 12 classes: " + ", ".join(f"{k} {v:.1f}" for k, v in tsne_r1.items()))

# %% [markdown]
# What to notice: the two panels show the same images in the same colours. Judge them by how pure
# each neighbourhood is, which is what the R@1 in the titles counts, not by the size of the clumps
# or the space between them, which t-SNE does not keep.
#
# The numbers are saved to `results/03.json`: `temperatures` (the values of $T$), `sweep` (the
# metrics of each run, percent), `untrained`, `gaps` (the table above), `profiles` (the assignment
# table), `tsne_r1`, `paper_delta` and `our_delta` (R@1 change from removing low temperature, points),
# `control` (the matched-step runs), and `size`.

# %%
saved = {"size": size, "temperatures": temperatures, "sweep": sweep_metrics, "untrained": untrained, "gaps": gaps,
         "profiles": {n: {k: float(v) for k, v in row.items()} for n, row in profile_table.iterrows()},
         "tsne_r1": tsne_r1, "paper_delta": paper_delta, "our_delta": ours,
         "control": {n: {k: float(v) for k, v in row.items()} for n, row in control_table.iterrows()}}
(results / "03.json").write_text(json.dumps(saved, indent=2))
print(f"wrote {results / '03.json'}")

# %% [markdown]
# ## Summary
#
# - The temperature divides every distance before the softmax over proxies. On the unit sphere
#   distances span at most 4, so at $T = 1$ with many classes the assignment stays soft whatever the
#   network does, and every image is pulled and pushed alike.
# - A low temperature makes the assignment sharp: the gradient, $(1 - P(y \mid x))/T$ on the
#   positive and $P(z \mid x)/T$ on each negative, concentrates on the images that are still wrong and
#   on the proxies that compete with the right one.
# - In our set-up the temperature also scales the optimiser's steps (Adam with $\epsilon = 1$), so it
#   has to be chosen together with the learning rates; the control with matched steps shows how much
#   of the sweep's differences is step size. The sweep, the direction of the change against the
#   paper's $-10.8$ points, the control and the gaps are in `results/03.json`.
#
# **Next.** Chapter 04 looks inside the network: global max pooling instead of average pooling
# before the embedding layer, and where in the image each choice looks.
#
# ## Exercises
#
# 1. For $C$ proxies with every negative at squared distance $d_z$, show that $P(y \mid x) \ge 0.9$
#    exactly when $d_y \le d_z - T \log(9 (C - 1))$. What is the largest $T$ for which it can hold
#    at all on the unit sphere with 100 classes? Check with `analysis.assignment_profile`.
# 2. Check that temperature and scale are the same thing: `losses.proxy_nca_loss` at $T = 1/9$ equals
#    the cross-entropy of the logits $-\lVert 3x - 3p_z \rVert^2$, for unit $x$ and $p_z$.
# 3. The control above rescaled the rates by the measured gradient ratios. Train $T = 1$ and $T = 1/27$
#    again with both rates multiplied by $9T$ instead, the factor a pure $1/T$ scaling of the gradients
#    would call for. Does it change the control's answer?
#
# Solutions are executed when the book is run with `--solutions` (the `solutions` parameter).

# %%
if solutions:
    # 1. P = 1 / (1 + (C - 1) e^{-(d_z - d_y)/T}) >= 0.9  <=>  d_z - d_y >= T log(9 (C - 1)); the gap is at most 4.
    c = num_classes
    for t, name in zip(temperatures, names):
        formula = 2.0 - t * math.log(9 * (c - 1))
        prof = analysis.assignment_profile(distance, 2.0, c, t)
        hits = distance[prof["probability"] >= 0.9]
        grid = f"{hits.max():.3f}" if len(hits) else "none (no d_y >= 0 qualifies)"
        print(f"1. T = {name}: formula d_y <= {formula:.3f} (negatives at 2); largest grid d_y {grid}")
    print(f"   with the negatives at 4 and d_y = 0, P >= 0.9 needs T <= 4 / log(9 (C - 1)) = "
          f"{4 / math.log(9 * (c - 1)):.3f}")

# %%
if solutions:
    # 2. ||3x - 3p||^2 = 9 ||x - p||^2 = ||x - p||^2 / (1/9).
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(8, 16, generator=g, dtype=torch.float64)
    prox = torch.randn(10, 16, generator=g, dtype=torch.float64)
    lab = torch.randint(0, 10, (8,), generator=g)
    x, p = torch.nn.functional.normalize(emb, dim=1), torch.nn.functional.normalize(prox, dim=1)
    scaled = torch.nn.functional.cross_entropy(-torch.cdist(3 * x, 3 * p).pow(2), lab).item()
    print(f"2. library at T = 1/9: {losses.proxy_nca_loss(emb, lab, prox, 1 / 9, True).item():.6f}; "
          f"cross-entropy with scale 3: {scaled:.6f}")

# %%
if solutions:
    # 3. Adam with eps = 1 steps by about lr x gradient, and the gradient scales as 1/T: rates x 9T undo that.
    for t, name in [(1.0, "1"), (1 / 27, "1/27")]:
        rates = {"lr": 9 * t * full.lr, "proxy_lr": 9 * t * full.proxy_lr}
        scaled = make_config("proxynca++", size, seed=seed, temperature=t, eval_every=full.epochs,
                             **{**overrides, **rates})
        rerun = cached_fit(scaled, data, root=runs_root)
        print(f"3. T = {name}: R@1 {r1[name]:.1f} with the calibrated rates, {rerun.metrics['R@1']:.1f} with both "
              f"x {9 * t:.3g}, {control[f'T = {name}']['R@1, matched steps']:.1f} with the measured factors; "
              f"T = 1/9: {r1['1/9']:.1f}")
