"""Data-set containers shared by every loader: image lists, in-memory tensors, class subsets."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset


class DataError(ValueError):
    """A data set is missing, laid out wrongly or damaged; the message says what to do."""


def contiguous_labels(raw_labels: Sequence, classes: Sequence | None = None) -> tuple[np.ndarray, list]:
    """Map raw class ids to 0..C-1 in sorted order (or in the order of `classes`); return the labels and the ids."""
    classes = sorted(set(raw_labels)) if classes is None else list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = set(raw_labels) - index.keys()
    if unknown:
        raise ValueError(f"labels not in the given classes: {sorted(unknown, key=str)[:5]}")
    return np.array([index[c] for c in raw_labels], dtype=np.int64), classes


class ImageListDataset(Dataset):
    """Images read from disk on demand; labels are 0..C-1 and available without reading images."""

    def __init__(self, paths: Sequence[Path], raw_labels: Sequence, transform: Callable | None = None,
                 classes: Sequence | None = None, channels: int = 3):
        """`classes` fixes the label space (e.g. shared by a query and a gallery set); default: sorted raw ids.
        Images are read as RGB (channels=3) or greyscale (channels=1)."""
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
        if len(paths) != len(raw_labels):
            raise ValueError(f"{len(paths)} paths but {len(raw_labels)} labels")
        self.paths = [Path(p) for p in paths]
        self.labels, self.classes = contiguous_labels(raw_labels, classes)
        self.transform = transform
        self.num_channels = channels

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(self.paths[i]) as im:
                image = im.convert("RGB" if self.num_channels == 3 else "L")
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"cannot read image {self.paths[i]}: {err}. Remove or replace the file.") from err
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])


class TensorImageDataset(Dataset):
    """Images held in memory as a uint8 array (N, H, W) or (N, C, H, W); labels are 0..C-1."""

    def __init__(self, images: np.ndarray, raw_labels: Sequence, transform: Callable | None = None):
        if images.ndim == 3:
            images = images[:, None]
        if len(images) != len(raw_labels):
            raise ValueError(f"{len(images)} images but {len(raw_labels)} labels")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels, self.classes = contiguous_labels(list(raw_labels))
        self.transform = transform
        self.num_channels = self.images.shape[1]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = self.images[i].float().div_(255.0)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[i])


class ClassSubset(Dataset):
    """The images of some classes of a data set, relabelled 0..C-1 (e.g. a validation split)."""

    def __init__(self, dataset: Dataset, classes: Sequence[int]):
        keep = set(int(c) for c in classes)
        self.dataset = dataset
        self.indices = np.array([i for i, y in enumerate(dataset.labels) if int(y) in keep], dtype=np.int64)
        self.labels, self.classes = contiguous_labels([int(dataset.labels[i]) for i in self.indices])
        self.num_channels = dataset.num_channels

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        image, _ = self.dataset[int(self.indices[i])]
        return image, int(self.labels[i])


def split_classes(dataset: Dataset, val_fraction: float = 0.2, seed: int = 0) -> tuple[ClassSubset, ClassSubset]:
    """Split a data set by class into (train, validation): no class is in both."""
    classes = np.unique(dataset.labels)
    n_val = int(round(len(classes) * val_fraction))
    if not 0 < n_val < len(classes):
        raise ValueError(f"val_fraction={val_fraction} leaves no class on one side ({len(classes)} classes)")
    perm = np.random.default_rng(seed).permutation(classes)
    return ClassSubset(dataset, perm[n_val:]), ClassSubset(dataset, perm[:n_val])


@dataclass
class RetrievalData:
    """A zero-shot retrieval data set: train classes, and test classes disjoint from them.

    Without `query`, evaluation is leave-one-out on `test`; with it (In-Shop), `query`
    images are searched in the `test` gallery. `skipped` lists the unreadable image files
    left out when the data set was loaded with `skip_bad_images=True`.
    """

    name: str
    train: Dataset
    test: Dataset
    recall_ks: tuple[int, ...]
    query: Dataset | None = None
    skipped: tuple[Path, ...] = ()

    @property
    def num_train_classes(self) -> int:
        return len(self.train.classes)

    @property
    def num_channels(self) -> int:
        return self.train.num_channels
