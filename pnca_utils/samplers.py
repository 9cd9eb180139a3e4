"""Batch samplers: class-balanced batches (C classes x m images) and plain random batches.

Both are deterministic given `seed` and the epoch set with `set_epoch`, like DistributedSampler.
Use them as `DataLoader(dataset, batch_sampler=...)`.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


def _check_positive(**values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


class _EpochSampler(Sampler[list[int]]):
    """Seeded sampler whose draw depends on (seed, epoch)."""

    def __init__(self, seed: int):
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the draw for the next iteration (call once per epoch)."""
        self.epoch = epoch

    def _rng(self) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch])


class ClassBalancedBatchSampler(_EpochSampler):
    """Batches of exactly `classes_per_batch` distinct classes x `images_per_class` images each.

    Classes are taken in order from a shuffled permutation, reshuffled when used up, so each
    epoch covers the classes evenly. Images are drawn without replacement within a batch;
    a class with fewer than `images_per_class` images gives all of them, topped up at random
    (with replacement). With `images_per_class` >= 2 every class needs at least two images,
    so that its images in a batch are a real positive pair, not copies of one image; a class
    with a single image is a ValueError naming it (by its entry in `class_names`, if given).
    """

    def __init__(self, labels: Sequence[int], classes_per_batch: int, images_per_class: int,
                 num_batches: int | None = None, seed: int = 0, class_names: Sequence | None = None):
        super().__init__(seed)
        _check_positive(classes_per_batch=classes_per_batch, images_per_class=images_per_class,
                        num_batches=num_batches)
        labels = np.asarray(labels)
        self.classes, inverse = np.unique(labels, return_inverse=True)
        if classes_per_batch > len(self.classes):
            raise ValueError(f"classes_per_batch={classes_per_batch} but the data set has only "
                             f"{len(self.classes)} classes")
        self.indices = [np.flatnonzero(inverse == k) for k in range(len(self.classes))]
        needed = min(2, images_per_class)
        small = [self.classes[k] for k, idx in enumerate(self.indices) if len(idx) < needed]
        if small:
            shown = ", ".join(str(c) if class_names is None else repr(class_names[c]) for c in small[:5])
            shown += ", ..." if len(small) > 5 else ""
            raise ValueError(f"{len(small)} class(es) with a single image ({shown}): a class-balanced batch takes "
                             f"images_per_class={images_per_class} images of each class and needs {needed} "
                             "distinct ones; add images to these classes, remove them, or use sampler='random'")
        self.classes_per_batch = classes_per_batch
        self.images_per_class = images_per_class
        self.num_batches = num_batches or max(1, len(labels) // (classes_per_batch * images_per_class))

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = self._rng()
        queue: list[int] = []  # class numbers (positions in self.classes) still to visit
        m = self.images_per_class
        for _ in range(self.num_batches):
            batch_classes: list[int] = []
            while len(batch_classes) < self.classes_per_batch:
                batch_classes.append(self._next_class(queue, batch_classes, rng))
            batch = []
            for k in batch_classes:
                idx = self.indices[k]
                if len(idx) >= m:
                    batch += rng.choice(idx, m, replace=False).tolist()
                else:
                    batch += rng.permutation(idx).tolist() + rng.choice(idx, m - len(idx)).tolist()
            yield batch

    def _next_class(self, queue: list[int], taken: list[int], rng: np.random.Generator) -> int:
        """Pop the first class in `queue` not already `taken`, refilling the queue when needed."""
        while True:
            for j, k in enumerate(queue):
                if k not in taken:
                    return queue.pop(j)
            queue.extend(rng.permutation(len(self.classes)).tolist())


class RandomBatchSampler(_EpochSampler):
    """Random batches of `batch_size` indices from range(n), each index once per epoch."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, drop_last: bool = True):
        super().__init__(seed)
        _check_positive(n=n, batch_size=batch_size)
        self.n, self.batch_size, self.drop_last = n, batch_size, drop_last

    def __len__(self) -> int:
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._rng().permutation(self.n).tolist()
        for b in range(len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size]


SAMPLERS = ("balanced", "random")


def make_batch_sampler(labels: Sequence[int], sampler: str, batch_size: int, images_per_class: int,
                       seed: int = 0, class_names: Sequence | None = None
                       ) -> ClassBalancedBatchSampler | RandomBatchSampler:
    """Build the sampler named `sampler` ("balanced" or "random") for a data set's labels.

    `class_names[label]` names a class in error messages (e.g. the data set's `classes`).
    """
    if sampler == "balanced":
        _check_positive(batch_size=batch_size, images_per_class=images_per_class)
        if batch_size % images_per_class:
            raise ValueError(f"batch_size={batch_size} is not divisible by images_per_class={images_per_class}")
        return ClassBalancedBatchSampler(labels, batch_size // images_per_class, images_per_class, seed=seed,
                                         class_names=class_names)
    if sampler == "random":
        return RandomBatchSampler(len(labels), batch_size, seed=seed)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


class DistributedBatchSampler(Sampler[list[int]]):
    """Process `rank`'s share of each batch of `batch_sampler`, for data-parallel training.

    Every process builds the same global sampler (same seed, same epoch) and, at each step,
    takes slice `rank` of `world_size` equal consecutive slices of the global batch. The shares
    of one step are therefore disjoint, and in rank order their union is the single-process
    batch. A class-balanced batch is laid out class by class, so with `classes_per_batch`
    divisible by `world_size` each share is itself balanced (classes_per_batch / world_size
    classes x images_per_class images). With random batches, each index is seen at most once
    per epoch over all processes together.
    """

    def __init__(self, batch_sampler: ClassBalancedBatchSampler | RandomBatchSampler, rank: int, world_size: int):
        _check_positive(world_size=world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        if isinstance(batch_sampler, ClassBalancedBatchSampler):
            if batch_sampler.classes_per_batch % world_size:
                raise ValueError(f"classes_per_batch={batch_sampler.classes_per_batch} is not divisible by "
                                 f"{world_size} processes: each process needs a balanced share of whole classes")
        elif isinstance(batch_sampler, RandomBatchSampler):
            if batch_sampler.batch_size % world_size or not batch_sampler.drop_last:
                raise ValueError(f"batch_size={batch_sampler.batch_size} must be divisible by {world_size} processes "
                                 "(and batches all full, drop_last=True)")
        else:
            raise TypeError(f"expected a ClassBalancedBatchSampler or RandomBatchSampler, got "
                            f"{type(batch_sampler).__name__}")
        self.batch_sampler, self.rank, self.world_size = batch_sampler, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batch_sampler:
            share = len(batch) // self.world_size
            yield batch[self.rank * share:(self.rank + 1) * share]
