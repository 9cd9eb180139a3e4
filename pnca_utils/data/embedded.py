"""The embedded retrieval set: multi-digit identities from scikit-learn's bundled digits, on clutter.

scikit-learn ships 1,797 real handwritten digits (8×8, 16 grey levels). We split the glyphs
into two disjoint pools: one builds the *source task* used to pretrain the small CNN (single
digits on clutter, the stand-in for ImageNet), the other builds the *retrieval set*, whose
classes are three-digit sequences ("407", "913", ...). Every image of a class draws new
glyphs of its digits (other writers), a new scale and a new position, on a new cluttered
background, so a class is a concept, not a template. Train and test classes are disjoint.
Everything is made from a seed and cached under `data/embedded/` with a checksum.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .base import DataError, RetrievalData, TensorImageDataset



def default_cache() -> Path:
    """`embedded/` in the data folder: $PNCA_DATA_DIR, the checkout's data/, or the user cache (`paths.data_dir`)."""
    from ..paths import data_dir

    return data_dir() / "embedded"

GLYPH = 16  # side of an upscaled glyph, in pixels
INK = 0.25  # a pixel of a rendered digit strip counts as ink above this intensity (digit_boxes)


@dataclass(frozen=True)
class EmbeddedSpec:
    """What the embedded set is made of; every field changes the cached file."""

    num_classes: int = 200
    images_per_class: int = 40
    digits_per_class: int = 3
    image_size: int = 64
    source_images: int = 12000
    seed: int = 0
    version: int = 2

    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:10]


# The embedded set and its many-class variant. 'embedded-many' has 2,200 classes of 5 images (1,100 to
# train on), like SOP's many, rarely seen classes, where 'embedded' has 200 of 40; it takes four digits
# per class, since three give only 1,000 sequences. Same seed and glyph pools; no source task of its
# own (the small CNN is pretrained on the default set's). Used by results/diagnostics (fast proxies,
# class-balanced batches).
EMBEDDED_SPECS: dict[str, EmbeddedSpec] = {
    "embedded": EmbeddedSpec(),
    "embedded-many": EmbeddedSpec(num_classes=2200, images_per_class=5, digits_per_class=4, source_images=0),
}


def _glyph_pools(seed: int) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Split the bundled digits into (source, retrieval) pools of 16×16 glyphs in [0, 1], by digit."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    glyphs = np.stack([
        np.asarray(Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((GLYPH, GLYPH), Image.BILINEAR))
        for img in digits.images
    ]).astype(np.float32) / 255.0
    rng = np.random.default_rng(seed)
    source, retrieval = {}, {}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == d))
        half = len(idx) // 2
        source[d], retrieval[d] = glyphs[idx[:half]], glyphs[idx[half:]]
    return source, retrieval


def _clutter(rng: np.random.Generator, size: int, pool: dict[int, np.ndarray]) -> np.ndarray:
    """A cluttered background in [0, 1]: smooth shading, strokes and fragments of glyphs."""
    coarse = rng.random((6, 6)).astype(np.float32)
    shade = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC))
    canvas = Image.fromarray((shade * rng.uniform(0.15, 0.45)).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(3, 8)):
        x0, y0, x1, y1 = (int(v) for v in rng.integers(-size // 4, size + size // 4, 4))
        grey = int(rng.integers(60, 170))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=grey, width=int(rng.integers(1, 3)))
        else:
            draw.arc((min(x0, x1), min(y0, y1), max(x0, x1) + 4, max(y0, y1) + 4),
                     int(rng.integers(0, 360)), int(rng.integers(0, 360)), fill=grey, width=int(rng.integers(1, 3)))
    out = np.asarray(canvas, dtype=np.float32) / 255.0
    for _ in range(rng.integers(2, 5)):  # pieces of other glyphs: digit-like strokes that carry no label
        g = pool[int(rng.integers(10))]
        piece = g[int(rng.integers(len(g)))][: GLYPH // 2, rng.integers(0, GLYPH // 2):][:, : GLYPH // 2]
        y, x = rng.integers(0, size - piece.shape[0], 2)
        region = out[y:y + piece.shape[0], x:x + piece.shape[1]]
        np.maximum(region, piece * rng.uniform(0.3, 0.7), out=region)
    return out


def _warp(rng: np.random.Generator, glyph: np.ndarray) -> np.ndarray:
    """A glyph as another hand would draw it: rotated, sheared and thickened or thinned at random."""
    image = Image.fromarray((glyph * 255).astype(np.uint8))
    angle, shear = np.deg2rad(rng.uniform(-18, 18)), rng.uniform(-0.3, 0.3)
    c, s = np.cos(angle), np.sin(angle)
    a, b, d, e = c, -s + shear, s, c
    cx = cy = GLYPH / 2
    coeffs = (a, b, cx - a * cx - b * cy, d, e, cy - d * cx - e * cy)
    out = np.asarray(image.transform(image.size, Image.AFFINE, coeffs, Image.BILINEAR), np.float32) / 255.0
    return np.clip(out * rng.uniform(0.8, 1.4), 0, 1)


def _render(rng: np.random.Generator, digits: tuple[int, ...], size: int, pool: dict[int, np.ndarray]) -> np.ndarray:
    """One uint8 image: the digits (new glyphs, pose, scale, position) over new clutter, partly occluded."""
    return _render_with_box(rng, digits, size, pool)[0]


def _render_with_box(rng: np.random.Generator, digits: tuple[int, ...], size: int,
                     pool: dict[int, np.ndarray]) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """`_render`'s image (the same random draws) and the box (top, left, bottom, right) of the digits' ink."""
    glyphs = [_warp(rng, pool[d][int(rng.integers(len(pool[d])))]) for d in digits]
    gap = int(rng.integers(-3, 2))
    strip = np.zeros((GLYPH + 4, len(glyphs) * (GLYPH + gap) - gap + 4), np.float32)
    for k, g in enumerate(glyphs):  # each digit a little up or down
        y, x = int(rng.integers(0, 5)), k * (GLYPH + gap) + 2
        np.maximum(strip[y:y + GLYPH, x:x + GLYPH], g, out=strip[y:y + GLYPH, x:x + GLYPH])
    scale = rng.uniform(0.7, 1.1) * min(1.0, (size - 4) / strip.shape[1])
    scale = min(scale, size / strip.shape[1])  # a long strip (4 digits) must still fit; never binds for 3
    h, w = max(6, round(strip.shape[0] * scale)), max(6, round(strip.shape[1] * scale))
    fg = np.asarray(Image.fromarray((strip * 255).astype(np.uint8)).resize((w, h), Image.BILINEAR), np.float32) / 255.0
    image = _clutter(rng, size, pool)
    y, x = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
    alpha = fg * rng.uniform(0.5, 0.95)
    region = image[y:y + h, x:x + w]
    region[:] = region * (1 - alpha) + alpha
    canvas = Image.fromarray((np.clip(image, 0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(rng.integers(0, 3)):  # occluders drawn over the digits
        x0, x1 = (int(v) for v in rng.integers(x - 4, x + w + 4, 2))
        draw.line((x0, y - 4, x1, y + h + 4), fill=int(rng.integers(0, 140)), width=int(rng.integers(1, 3)))
    image = np.asarray(canvas, np.float32) / 255.0
    image = image + rng.normal(0, 0.06, image.shape).astype(np.float32)
    rows, cols = np.flatnonzero((fg > INK).any(axis=1)), np.flatnonzero((fg > INK).any(axis=0))
    box = (y + int(rows[0]), x + int(cols[0]), y + int(rows[-1]) + 1, x + int(cols[-1]) + 1)
    return (np.clip(image, 0, 1) * 255).astype(np.uint8), box


def _build(spec: EmbeddedSpec) -> dict[str, np.ndarray]:
    """Make the retrieval set and the source task from the spec's seed."""
    source_pool, retrieval_pool = _glyph_pools(spec.seed)
    rng = np.random.default_rng(spec.seed + 1)
    if spec.num_classes > 10 ** spec.digits_per_class:
        raise ValueError(f"{spec.num_classes} classes need more than {spec.digits_per_class} digits")
    codes = rng.choice(10 ** spec.digits_per_class, spec.num_classes, replace=False)
    class_digits = [tuple(int(c) for c in f"{code:0{spec.digits_per_class}d}") for code in codes]
    labels = np.repeat(np.arange(spec.num_classes), spec.images_per_class)
    images = np.stack([_render(rng, class_digits[y], spec.image_size, retrieval_pool) for y in labels])
    source_labels = rng.integers(0, 10, spec.source_images)
    source_images = (np.stack([_render(rng, (int(y),), spec.image_size, source_pool) for y in source_labels])
                     if spec.source_images else np.zeros((0, spec.image_size, spec.image_size), np.uint8))
    names = np.array(["".join(map(str, d)) for d in class_digits])
    return {"images": images, "labels": labels, "class_names": names,
            "source_images": source_images, "source_labels": source_labels}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_arrays(spec: EmbeddedSpec = EmbeddedSpec(), cache_dir: Path | str | None = None) -> dict[str, np.ndarray]:
    """The embedded arrays, from the cache if it is intact, else built and cached (atomically)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    path, check = cache / f"digits-{spec.key()}.npz", cache / f"digits-{spec.key()}.sha256"
    if path.exists() and check.exists() and check.read_text().strip() == _sha256(path):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    arrays = _build(spec)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # unique: parallel builders never collide
    np.savez(tmp, **arrays)
    check.write_text(_sha256(tmp) + "\n")
    os.replace(tmp, path)
    return arrays


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Resize a uint8 stack (N, H, W) to (N, size, size) at once (antialiased bilinear)."""
    if images.shape[-1] == size:
        return images
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(images).unsqueeze(1).float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def load_embedded(image_size: int = 48, spec: EmbeddedSpec = EmbeddedSpec(),
                  cache_dir: Path | str | None = None) -> RetrievalData:
    """The embedded zero-shot retrieval set: first half of the classes train, second half test."""
    from .transforms import tensor_transforms

    arrays = load_arrays(spec, cache_dir)
    labels, half = arrays["labels"], spec.num_classes // 2
    train, test = labels < half, labels >= half
    images = resize_images(arrays["images"], image_size)
    name = next((n for n, known in EMBEDDED_SPECS.items() if known == spec), f"embedded-{spec.key()}")
    return RetrievalData(
        name=name,
        train=TensorImageDataset(images[train], labels[train], tensor_transforms(image_size, image_size, train=True)),
        test=TensorImageDataset(images[test], labels[test], tensor_transforms(image_size, image_size, train=False)),
        recall_ks=(1, 2, 4, 8),
    )


def load_source_task(image_size: int = 48, spec: EmbeddedSpec = EmbeddedSpec(),
                     cache_dir: Path | str | None = None) -> TensorImageDataset:
    """The pretraining task: single digits on clutter, from glyphs the retrieval set never uses."""
    from .transforms import tensor_transforms

    arrays = load_arrays(spec, cache_dir)
    if not len(arrays["source_labels"]):
        raise DataError("the embedded spec has source_images=0; the source task needs images")
    return TensorImageDataset(resize_images(arrays["source_images"], image_size), arrays["source_labels"],
                              tensor_transforms(image_size, image_size, train=True))


def _replay_boxes(spec: EmbeddedSpec, images: np.ndarray) -> np.ndarray:
    """Replay `_build`'s draws for the retrieval images and return their digit boxes; check the images match."""
    _, retrieval_pool = _glyph_pools(spec.seed)
    rng = np.random.default_rng(spec.seed + 1)
    codes = rng.choice(10 ** spec.digits_per_class, spec.num_classes, replace=False)
    class_digits = [tuple(int(c) for c in f"{code:0{spec.digits_per_class}d}") for code in codes]
    labels = np.repeat(np.arange(spec.num_classes), spec.images_per_class)
    boxes = np.zeros((len(labels), 4), np.int64)
    for i, y in enumerate(labels):
        image, boxes[i] = _render_with_box(rng, class_digits[y], spec.image_size, retrieval_pool)
        if not np.array_equal(image, images[i]):
            raise DataError(f"replaying the embedded set gave another image {i} than the cache holds: the cache "
                            "was made by other code. Delete data/embedded/ to rebuild it.")
    return boxes


def digit_boxes(split: str = "all", image_size: int | None = None, spec: EmbeddedSpec = EmbeddedSpec(),
                cache_dir: Path | str | None = None) -> np.ndarray:
    """Where the digits are: one box (top, left, bottom, right) per retrieval image, around the digits' ink.

    `split` is 'all' (the order of `load_arrays(spec)["images"]`), 'train' or 'test' (the order of
    `load_embedded(...).train` / `.test`). Boxes are in pixels of the spec's images (bottom and right
    exclusive, int) or, with `image_size`, scaled to images resized to that size (float). Occluding
    strokes drawn over the digits are not excluded; clutter outside the box carries no label.
    The boxes are recomputed by replaying the seeded generation, which must reproduce every cached
    image, and are kept next to the images as `digits-<key>.boxes.npy`.
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache()
    arrays = load_arrays(spec, cache)
    path = cache / f"digits-{spec.key()}.boxes.npy"
    boxes = np.load(path) if path.exists() else None
    if boxes is None or boxes.shape != (len(arrays["images"]), 4) or boxes.dtype != np.int64:
        boxes = _replay_boxes(spec, arrays["images"])
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
        np.save(tmp, boxes)
        os.replace(tmp, path)
    if split != "all":
        half = spec.num_classes // 2
        boxes = boxes[arrays["labels"] < half] if split == "train" else boxes[arrays["labels"] >= half]
    if image_size is None:
        return boxes
    return boxes * (image_size / spec.image_size)
