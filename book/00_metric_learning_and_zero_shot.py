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
# # 00 · Deep metric learning and the zero-shot protocol
#
# **What you will learn**
#
# - what deep metric learning is for: retrieval, clustering, few- and zero-shot recognition;
# - the zero-shot protocol every result in this book follows: the classes we test on are never seen
#   in training, and hyperparameters are chosen on held-out *training* classes;
# - the measures we report, Recall@K, NMI, MAP@R and R-precision (and F1, which HDML reports), worked out by
#   hand on seven points;
# - the data set that ships with the book, and how to plug in the real ones (CUB-200-2011, Cars196,
#   Stanford Online Products, In-Shop Clothes).
#
# No network is trained in this chapter. Chapter 01 starts training.
#
# ## What metric learning is for
#
# A classifier answers "which of these $C$ classes is this?". Many tasks cannot be phrased that way:
# *find more photos of this product* (retrieval), *group these faces by person* (clustering),
# *recognise a bird species from one or two examples* (few-shot), or from none at training time
# (zero-shot). What these tasks need is a **distance**: an embedding $f_\theta(x) \in \mathbb{R}^d$ such
# that images of the same class are close and images of different classes are far apart, for
# classes the network has never seen.
#
# Deep metric learning trains $f_\theta$ for exactly that. The losses in this book (NCA, ProxyNCA,
# ProxyNCA++, and HDML's synthetic hard negatives) differ in *how* they pull same-class embeddings
# together and push others apart; the evaluation below is the same for all of them.
#
# ## The zero-shot protocol
#
# The classes are split into two disjoint sets: the network trains on the first and is evaluated
# on the second. The standard splits are
#
# | data set | train classes | test classes |
# |---|---|---|
# | CUB-200-2011 (birds) | 1–100 | 101–200 |
# | Cars196 | 1–98 | 99–196 |
# | Stanford Online Products | `Ebay_train.txt` (11,318 products) | `Ebay_test.txt` (11,316 products) |
# | In-Shop Clothes | 3,997 items marked `train` | 3,985 items: `query` images searched among `gallery` images |
#
# Because the test classes are new, the network cannot have memorised them: a good score means the
# *distance* generalises. One rule keeps the score honest: **hyperparameters are chosen on a
# validation split of the training classes, never on the test classes** (Musgrave et al. 2020 show
# how much published gains shrink when this rule is kept). In `pnca_utils` that split is
# `Config(eval_split="val")`, which holds out `val_fraction` of the *training* classes.
#
# ## The metrics
#
# Every test image is in turn a **query** $q$; the other test images are the gallery. Let $y_q$ be
# its class, $N_K(q)$ its $K$ nearest neighbours by Euclidean distance **among the other items
# (the query itself is excluded)**, and $\mathrm{rel}_q(i) \in \{0, 1\}$ whether the $i$-th nearest
# neighbour has class $y_q$. With $Q$ the set of queries:
#
# **Recall@K** — the fraction of queries with at least one same-class item among their $K$ nearest:
#
# $$\mathrm{R@}K = \frac{1}{|Q|} \sum_{q \in Q} \mathbb{1}\big[\exists\, j \in N_K(q):\ y_j = y_q\big].$$
#
# It can only grow with $K$. It is the headline number of most papers, and it is forgiving: one
# good neighbour is enough.
#
# **MAP@R and R-precision** (Musgrave et al. 2020) — let $R_q$ be the number of *other* items of
# class $y_q$, so a perfect ranking puts exactly those $R_q$ items first. With the precision at
# rank $i$, $P_q(i) = \frac{1}{i} \sum_{j \le i} \mathrm{rel}_q(j)$,
#
# $$\mathrm{RP} = \frac{1}{|Q|} \sum_{q \in Q} \frac{1}{R_q} \sum_{i=1}^{R_q} \mathrm{rel}_q(i), \qquad
# \mathrm{MAP@R} = \frac{1}{|Q|} \sum_{q \in Q} \frac{1}{R_q} \sum_{i=1}^{R_q} P_q(i)\, \mathrm{rel}_q(i).$$
#
# R-precision counts how many of the first $R_q$ neighbours match; MAP@R also rewards putting them
# *early*. Both look at all of a class, not only at the nearest neighbour.
#
# **NMI** — cluster the test embeddings with k-means into as many clusters $\Omega$ as there are
# test classes $C$, and measure how much the clustering tells about the classes:
#
# $$\mathrm{NMI}(\Omega, C) = \frac{2\, I(\Omega; C)}{H(\Omega) + H(C)},$$
#
# with $I$ the mutual information and $H$ the entropy; 1 means the clusters are the classes.
# HDML also reports **F1**, the pairwise F1 of "same cluster" as a prediction of "same class".
#
# `pnca_utils.metrics.evaluate` returns all of them, in percent.

# %% tags=["parameters"]
size = "default"
seed = 0
out_dir = "build"
solutions = False

# %%
import inspect
import json
import textwrap

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from pnca_utils import metrics, metrics_reference
from pnca_utils.chapter import workspace
from pnca_utils.config import SIZE_PRESETS
from pnca_utils.data.base import split_classes
from pnca_utils.data.embedded import EmbeddedSpec, load_arrays, load_embedded
from pnca_utils.data.real import LAYOUTS
from pnca_utils.plots import class_gallery, scatter_classes, show_gallery

figures, results, *_ = workspace(out_dir, size)
image_size = SIZE_PRESETS[size]["image_size"]
rng = np.random.default_rng(seed)

# %% [markdown]
# ## A worked example you can check by hand
#
# Seven points in two dimensions, in three classes: A has three points, B and C two each. Pretend
# they are the embeddings of seven test images. The coordinates are small integers, so every
# squared distance is an integer you can compute in your head.

# %%
points = np.array([
    [0, 0], [1, 2], [4, 3],  # class A: a1, a2, a3
    [5, 1], [8, 4],          # class B: b1, b2
    [0, 7], [2, 8],          # class C: c1, c2
])
labels = np.array([0, 0, 0, 1, 1, 2, 2])
names = ["a1", "a2", "a3", "b1", "b2", "c1", "c2"]
class_names = ["A", "B", "C"]

scatter_classes(points, labels, names, class_names, title="Seven embeddings in three classes")
plt.savefig(figures / "00_worked_example.png", dpi=120, bbox_inches="tight")
plt.show()

# %% [markdown]
# Notice that a3 has wandered away from the rest of class A, into the space between the two B
# points. Expect a3 to find a B point first, and the B points to find a3 first.
#
# **Recall@1 by hand for two queries.** Take **a1** = (0, 0). Its squared distance to a2 = (1, 2)
# is $1^2 + 2^2 = 5$; every other point is farther (a3 and b1 are at 25 and 26, the rest further
# still). a2 is in class A, so a1 is a **hit** at $K = 1$.
#
# Take **a3** = (4, 3). Its squared distance to b1 = (5, 1) is $1^2 + 2^2 = 5$, to a2 = (1, 2) it is
# $3^2 + 1^2 = 10$, and everything else is farther. Its nearest neighbour b1 is in class B, so a3 is
# a **miss** at $K = 1$, and a **hit** at $K = 2$, because a2 comes second.
#
# a3 also shows how MAP@R and R-precision differ. a3 has $R = 2$ classmates (a1, a2); its first
# two neighbours are b1 (wrong) and a2 (right). R-precision counts one match among two:
# $\frac{1}{2}$. MAP@R takes the precision at the rank of each match, $P(2) = \frac{1}{2}$, and
# divides by $R$: $\frac{1}{2} \cdot \frac{1}{2} = \frac{1}{4}$. The match came late, so MAP@R is lower.
#
# In code, the three retrieval metrics are a distance matrix, a sort and a count. That is all of
# `pnca_utils.metrics_reference`, written to be read:

# %%
for function in (metrics_reference.ranked_matches, metrics_reference.recall_at_k, metrics_reference.map_at_r,
                 metrics_reference.r_precision):
    print(inspect.getsource(function))

# %% [markdown]
# The table below applies these functions to every query: each query is searched among the six
# other points (passed as the query set and the gallery). Below it, compare the mean of each column
# with `metrics.evaluate`, the leave-one-out evaluation of all seven points at once, which every later
# chapter reports. `metrics` computes the same numbers as `metrics_reference` without building the
# whole distance matrix, so that it scales to the 60,502 images of Stanford Online Products (its
# engine, `pnca_utils.knn`, explains how); the tests check the two against each other.

# %%
# NBVAL_CHECK_OUTPUT
squared = ((points[:, None] - points[None]) ** 2).sum(-1)
rows = []
for i, name in enumerate(names):
    others = np.arange(len(points)) != i
    ranked = sorted(np.flatnonzero(others), key=lambda j: squared[i, j])
    query = dict(query_embeddings=points[i:i + 1], query_labels=labels[i:i + 1])
    recall = metrics_reference.recall_at_k(points[others], labels[others], [1, 2], **query)
    rows.append({
        "query": name,
        "class": class_names[labels[i]],
        "nearest (squared distance)": ", ".join(f"{names[j]} ({squared[i, j]})" for j in ranked[:3]),
        "R@1": recall[1],
        "R@2": recall[2],
        "AP@R": metrics_reference.map_at_r(points[others], labels[others], **query),
        "RP": metrics_reference.r_precision(points[others], labels[others], **query),
    })
table = pd.DataFrame(rows).set_index("query")
worked = metrics.evaluate(points, labels, ks=[1, 2], seed=seed)
print(table.to_string(float_format=lambda v: f"{v:.2f}"))
print()
print("mean of the rows:        " + "  ".join(f"{k} {table[k].mean():.4f}" for k in ["R@1", "R@2", "AP@R", "RP"]))
print("metrics.evaluate (in %): " + "  ".join(f"{k} {v:.2f}" for k, v in worked.items()))
print(f"{int(table['R@1'].sum())} of {len(table)} queries have a classmate as nearest neighbour.")

# %% [markdown]
# Read the table row by row: a1 and a3 are the rows worked out above. The other misses at $K = 1$
# are b1 and b2, whose nearest point is a3, as the figure suggested; b1's only classmate even comes
# third, so b1 is still a miss at $K = 2$. For every query of B and C, AP@R = RP = R@1: with a
# single classmate ($R = 1$) all three ask the same question, is the nearest point that classmate?
#
# The `evaluate` line also gives NMI and F1 of a k-means clustering of the seven points. Clustering
# metrics judge the whole layout, not single queries, so they cannot be read off the table.
#
# The numbers are saved to `results/00.json` with the keys `R@1`, `R@2`, `MAP@R`, `RP`, `NMI` and
# `F1` (percent, as returned by `metrics.evaluate`).

# %%
(results / "00.json").write_text(json.dumps(worked, indent=2))
print(f"wrote {results / '00.json'}")

# %% [markdown]
# ## The embedded data set
#
# Real benchmarks are gigabytes of photos; every chapter here instead runs in minutes on a laptop
# CPU with a data set that is built from scikit-learn's bundled handwritten digits (no download).
# A **class is a three-digit sequence**, such as "407". Each image of the class draws the three
# digits from different writers, at a new scale and position, on a new cluttered background, so a
# class is a concept rather than a template. The first half of the classes is for training, the
# second half for testing. The set is generated on first use (under 20 s on a two-core CPU) and
# cached in `data/embedded/`.

# %%
spec = EmbeddedSpec()
arrays = load_arrays(spec)
data = load_embedded(image_size, spec)  # the split and image size that training uses
train_ids, test_ids = list(data.train.classes), list(data.test.classes)
per_class = np.bincount(arrays["labels"])
stats = pd.DataFrame({
    split: [len(ids), len(dataset), ", ".join(map(str, np.unique(per_class[ids])))]
    for split, ids, dataset in [("train", train_ids, data.train), ("test", test_ids, data.test)]
}, index=["classes", "images", "images per class"])
print(stats.to_string())
print(f"classes in both train and test: {len(set(train_ids) & set(test_ids))}")
print(f"stored images: {arrays['images'].shape[1]}×{arrays['images'].shape[2]} grey, uint8; "
      f"the network sees {data.train.images.shape[-1]}×{data.train.images.shape[-1]} at size={size!r}")
print(f"source task: {len(arrays['source_images'])} images of single digits, "
      f"{len(np.unique(arrays['source_labels']))} classes")
sequences = arrays["class_names"]  # each class's three digits, e.g. "407"
train_digits = {"".join(sorted(sequences[c])) for c in train_ids}
test_digits = pd.Series(["".join(sorted(sequences[c])) for c in test_ids])
anagram_of_train = int(test_digits.isin(train_digits).sum())
test_pairs = int(sum(n * (n - 1) // 2 for n in test_digits.value_counts()))
print(f"test classes whose three digits, in another order, make a training class: {anagram_of_train} of "
      f"{len(test_ids)}; pairs of test classes with the same digits in another order: {test_pairs}")

# %%
shown_train = sorted(rng.choice(train_ids, 6, replace=False))
shown_test = sorted(rng.choice(test_ids, 6, replace=False))
for split, shown in [("train", shown_train), ("test", shown_test)]:
    class_gallery(arrays["images"], arrays["labels"], shown, per_class=8, class_names=arrays["class_names"],
                  title=f"Six {split} classes, eight images each (row label = class)")
    plt.savefig(figures / f"00_gallery_{split}.png", dpi=80, bbox_inches="tight")
    plt.show()

# %% [markdown]
# What this tests: there are only ten digits, so every test class is a new arrangement of parts the
# network has seen in training. The zero-shot test here is **compositional transfer**, a new combination
# of familiar parts, much as a new bird species in CUB shares its beak and wings with known ones. The
# printed counts show how close the arrangements come: some test classes hold exactly the digits of a
# training class in another order, and some pairs of test classes do so between themselves. The global
# pooling of chapter 04 discards *where* a feature was, so telling "407" from "740" rests on what the
# features encode about their surroundings. Keep those pairs in mind when a chapter's R@1 stops short of 100.
#
# What to notice in the galleries: within a row the digits are the same but nothing else is. The handwriting
# changes from image to image, and so do the size and position of the sequence and the clutter:
# strokes, arcs and fragments of other digits that carry no label. The test rows are classes the
# network never sees in training: recognising them means comparing embeddings, not looking up a
# class it has learned.
#
# The small CNN used in most chapters is first pretrained on a **source task**, the book's stand-in
# for ImageNet: classify a single digit on the same kind of clutter, drawn from a pool of
# handwriting that the retrieval set never uses.

# %%
source = arrays["source_images"][:16]
show_gallery(source, [f"digit {d}" for d in arrays["source_labels"][:16]], ncols=8,
             title="Source task: one digit on clutter (used to pretrain the small CNN)")
plt.savefig(figures / "00_source_task.png", dpi=80, bbox_inches="tight")
plt.show()

# %% [markdown]
# What to notice: one digit per image, with the same clutter as the retrieval set. Pretraining
# teaches the network to find digits among strokes; it does not teach it any of the three-digit
# classes, so the zero-shot test stays zero-shot.
#
# ## Real data sets
#
# Nothing is downloaded. Put a data set wherever you like and pass its folder as `data_root` (in a
# chapter) or `--data-root` (on the command line, e.g.
# `python -m pnca_utils train --dataset cub --data-root /data/CUB_200_2011 --out runs/cub`).
# Each loader checks the layout below before training and says what is missing.

# %%
for name, layout in LAYOUTS.items():
    print(f"{name}:")
    print(textwrap.fill(layout, width=100, initial_indent="    ", subsequent_indent="    "))

# %% [markdown]
# ## Summary
#
# - Deep metric learning learns a distance that should generalise to classes never seen in
#   training; retrieval, clustering and few/zero-shot recognition all use that distance.
# - The protocol: disjoint train and test classes; hyperparameters chosen on held-out training
#   classes, never on the test classes.
# - Recall@K asks for one good neighbour; MAP@R and R-precision ask for the whole class, early;
#   NMI and F1 judge a k-means clustering of the embeddings.
# - The embedded set (three-digit classes on clutter) makes every experiment run on a CPU; real
#   data sets plug in through `--data-root`.
#
# **Next.** Chapter 01 trains the first embedding with NCA, which compares each image with the
# other images of its batch, and then replaces those images by one learned *proxy* per class:
# ProxyNCA.
#
# ## Exercises
#
# 1. Move a3 to (2, 3). Predict by hand which queries change their Recall@1, then check with
#    `metrics.evaluate`.
# 2. Remove a3, so that every class has exactly two points. Show that R@1, MAP@R and R-precision
#    are then equal, and explain why.
# 3. For the worked example, compute Recall@K for K = 1, …, 6. At which K does every query find a
#    classmate, and which query needs the largest K?
# 4. Split the embedded training classes into training and validation classes with
#    `pnca_utils.data.base.split_classes`, and check that the validation classes are disjoint from
#    both the remaining training classes and the test classes.
#
# Solutions are executed when the book is run with `--solutions` (the `solutions` parameter).

# %%
if solutions:
    # 1. Recompute the squared distances after the move and read off each query's nearest point.
    moved = points.copy()
    moved[2] = [2, 3]
    moved_squared = ((moved[:, None] - moved[None]) ** 2).sum(-1) + np.diag([np.inf] * len(moved))
    print("1. nearest point:", {n: names[j] for n, j in zip(names, moved_squared.argmin(1))})
    print("  ", {k: round(v, 1) for k, v in metrics.evaluate(moved, labels, ks=[1, 2], seed=seed).items()})

# %%
if solutions:
    # 2. With one classmate per query (R = 1), all three metrics ask whether the nearest point is that classmate.
    keep = np.arange(len(points)) != 2
    pairs = metrics.evaluate(points[keep], labels[keep], ks=[1], seed=seed)
    print("2.", {k: round(pairs[k], 1) for k in ["R@1", "MAP@R", "RP"]})
    assert pairs["R@1"] == pairs["MAP@R"] == pairs["RP"]

# %%
if solutions:
    # 3. Recall@K over all queries, then per query the smallest K at which it is a hit.
    ks = range(1, len(points))
    print("3.", {k: round(100 * v, 1) for k, v in metrics.recall_at_k(points, labels, ks).items()})
    first_hit = {}
    for i, name in enumerate(names):
        others = np.arange(len(points)) != i
        hits = metrics.recall_at_k(points[others], labels[others], ks, points[i:i + 1], labels[i:i + 1])
        first_hit[name] = min(k for k, hit in hits.items() if hit)
    print("   smallest K with a hit:", first_hit)

# %%
if solutions:
    # 4. split_classes splits by class: no class is on both sides, and none of them is a test class.
    fit_part, val_part = split_classes(data.train, val_fraction=0.2, seed=seed)
    fit_ids = {train_ids[c] for c in fit_part.classes}
    val_ids = {train_ids[c] for c in val_part.classes}
    print(f"4. {len(fit_ids)} training and {len(val_ids)} validation classes; "
          f"shared: {len(fit_ids & val_ids)}, validation and test shared: {len(val_ids & set(test_ids))}")
    assert not fit_ids & val_ids and not val_ids & set(test_ids)
