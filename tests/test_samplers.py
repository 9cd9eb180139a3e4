"""Batch samplers: balance, determinism, replacement for small classes, coverage, errors."""
from collections import Counter

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from pnca_utils.samplers import ClassBalancedBatchSampler, RandomBatchSampler, make_batch_sampler

# 10 classes: class k has k + 2 images (classes 0-1 are smaller than m = 4).
LABELS = np.repeat(np.arange(10), np.arange(2, 12))


def classes_per_batch(batch, labels):
    """Naive reference: count the images of each class in a batch."""
    counts = {}
    for i in batch:
        counts[labels[i]] = counts.get(labels[i], 0) + 1
    return counts


def test_balanced_batches():
    sampler = ClassBalancedBatchSampler(LABELS, classes_per_batch=3, images_per_class=4, num_batches=50)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 50
    for batch in batches:
        assert len(batch) == 12 and all(isinstance(i, int) for i in batch)
        counts = classes_per_batch(batch, LABELS)
        assert len(counts) == 3 and set(counts.values()) == {4}
        for c in counts:
            mine = [i for i in batch if LABELS[i] == c]
            if c + 2 >= 4:  # enough images: no repeats
                assert len(set(mine)) == 4
            else:  # small class: every image, topped up with repeats
                assert set(mine) == set(np.flatnonzero(LABELS == c).tolist())


def test_default_length_and_dataloader():
    sampler = ClassBalancedBatchSampler(LABELS, 2, 3)
    assert len(sampler) == len(LABELS) // 6
    dataset = TensorDataset(torch.arange(len(LABELS)), torch.from_numpy(LABELS))
    for x, y in DataLoader(dataset, batch_sampler=sampler):
        assert x.shape == (6,) and len(set(y.tolist())) == 2


def test_determinism_seed_and_epoch():
    def draw(seed=0, epoch=0):
        sampler = ClassBalancedBatchSampler(LABELS, 3, 4, num_batches=10, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert draw() == draw()
    assert draw() != draw(seed=1)
    assert draw() != draw(epoch=1)
    assert draw(epoch=3) == draw(epoch=3)


def test_classes_covered_evenly():
    # 12 batches x 5 classes = 60 class slots: every one of the 10 classes six times.
    sampler = ClassBalancedBatchSampler(LABELS, 5, 2, num_batches=12, seed=7)
    counts = Counter(c for batch in sampler for c in classes_per_batch(batch, LABELS))
    assert set(counts) == set(range(10))
    assert max(counts.values()) - min(counts.values()) <= 2


def test_all_classes_in_every_batch():
    for batch in ClassBalancedBatchSampler(LABELS, 10, 2, num_batches=5):
        assert sorted(classes_per_batch(batch, LABELS)) == list(range(10))


def test_balanced_errors():
    with pytest.raises(ValueError, match="only 10 classes"):
        ClassBalancedBatchSampler(LABELS, 11, 2)
    for args in [(0, 2), (2, 0), (2, 2, 0)]:
        with pytest.raises(ValueError, match="at least 1"):
            ClassBalancedBatchSampler(LABELS, *args)


def test_a_class_with_a_single_image_is_named():
    """A balanced batch of m >= 2 images per class needs two distinct images of each class."""
    labels = np.array([0, 0, 1, 2, 2, 3, 3, 3])
    names = ["cat", "bird", "dog", "cow"]
    with pytest.raises(ValueError, match=r"1 class\(es\) with a single image \('bird'\).*sampler='random'"):
        make_batch_sampler(labels, "balanced", batch_size=4, images_per_class=2, class_names=names)
    with pytest.raises(ValueError, match=r"single image \(1\)"):
        ClassBalancedBatchSampler(labels, 2, 3)
    many = np.repeat(np.arange(8), [1] * 7 + [3])
    with pytest.raises(ValueError, match=r"7 class\(es\) .*\(0, 1, 2, 3, 4, \.\.\.\)"):
        ClassBalancedBatchSampler(many, 2, 2)
    # One image per class needs no pair, and random batches take any class.
    assert all(len(b) == 2 for b in ClassBalancedBatchSampler(labels, 2, 1, num_batches=3))
    assert len(make_batch_sampler(labels, "random", batch_size=4, images_per_class=2)) == 2


def test_random_batches():
    sampler = RandomBatchSampler(10, 3, seed=1)
    batches = list(sampler)
    assert len(sampler) == 3 and [len(b) for b in batches] == [3, 3, 3]
    assert len(set(sum(batches, []))) == 9
    full = list(RandomBatchSampler(10, 3, seed=1, drop_last=False))
    assert len(full) == 4 and sorted(sum(full, [])) == list(range(10))
    assert full[:3] == batches and list(RandomBatchSampler(10, 3, seed=2)) != batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(ValueError):
        RandomBatchSampler(10, 0)


def test_make_batch_sampler():
    balanced = make_batch_sampler(LABELS, "balanced", batch_size=12, images_per_class=4, seed=3)
    assert isinstance(balanced, ClassBalancedBatchSampler)
    assert (balanced.classes_per_batch, balanced.images_per_class, balanced.seed) == (3, 4, 3)
    random = make_batch_sampler(LABELS, "random", batch_size=12, images_per_class=4, seed=3)
    assert isinstance(random, RandomBatchSampler) and len(random) == len(LABELS) // 12
    with pytest.raises(ValueError, match="batch_size=10 .* images_per_class=4"):
        make_batch_sampler(LABELS, "balanced", batch_size=10, images_per_class=4, seed=0)
    with pytest.raises(ValueError, match="unknown sampler 'greedy'"):
        make_batch_sampler(LABELS, "greedy", batch_size=12, images_per_class=4, seed=0)


def loop_balanced_batches(labels, classes_per_batch, m, num_batches, seed, epoch):
    """Reference for the class-balanced sampler, one draw at a time in plain loops.

    The documented recipe: classes are visited in the order of a shuffled permutation, a new one
    drawn whenever it runs out, skipping a class already in the batch; each class gives m images
    without replacement, or all its images (shuffled) topped up at random when it has fewer.
    """
    rng = np.random.default_rng([seed, epoch])
    classes = sorted(set(labels.tolist()))
    members = {}
    for i, label in enumerate(labels.tolist()):
        members.setdefault(classes.index(label), []).append(i)
    to_visit = []
    batches = []
    for _ in range(num_batches):
        chosen = []
        while len(chosen) < classes_per_batch:
            picked = None
            for position in range(len(to_visit)):
                if to_visit[position] not in chosen:
                    picked = to_visit.pop(position)
                    break
            if picked is None:
                to_visit = to_visit + list(rng.permutation(len(classes)))
                continue
            chosen.append(picked)
        batch = []
        for k in chosen:
            images = np.array(members[k])
            if len(images) >= m:
                batch.extend(int(i) for i in rng.choice(images, m, replace=False))
            else:
                batch.extend(int(i) for i in rng.permutation(images))
                batch.extend(int(i) for i in rng.choice(images, m - len(images)))
        batches.append(batch)
    return batches


@pytest.mark.parametrize("seed, epoch, c, m", [(0, 0, 3, 4), (5, 2, 4, 2), (1, 7, 10, 3)])
def test_balanced_sampler_equals_the_loop_reference(seed, epoch, c, m):
    sampler = ClassBalancedBatchSampler(LABELS, c, m, num_batches=40, seed=seed)
    sampler.set_epoch(epoch)
    assert list(sampler) == loop_balanced_batches(LABELS, c, m, 40, seed, epoch)


def test_random_sampler_equals_the_loop_reference():
    sampler = RandomBatchSampler(23, 5, seed=4)
    sampler.set_epoch(3)
    order = np.random.default_rng([4, 3]).permutation(23)
    want = [[int(order[b * 5 + j]) for j in range(5)] for b in range(23 // 5)]
    assert list(sampler) == want
    seen = [i for batch in sampler for i in batch]
    assert len(seen) == len(set(seen)) == 20  # every index at most once; the 3 left over dropped
