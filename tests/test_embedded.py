"""The embedded digits set: determinism, disjoint classes, the default spec, the checksummed cache, resizing."""
import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from pnca_utils.data import embedded
from pnca_utils.data.embedded import EmbeddedSpec, default_cache, load_arrays, load_embedded

SMALL = EmbeddedSpec(num_classes=6, images_per_class=3, source_images=4, image_size=32)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.fixture
def count_builds(monkeypatch):
    """Count the calls of `_build` (the cache misses)."""
    calls = []
    build = embedded._build

    def counting(spec):
        calls.append(spec)
        return build(spec)

    monkeypatch.setattr(embedded, "_build", counting)
    return calls


def test_same_seed_same_arrays_other_seed_other_arrays(tmp_path):
    first = load_arrays(SMALL, tmp_path / "a")
    assert _equal(first, load_arrays(SMALL, tmp_path / "b"))  # built again from scratch
    other = load_arrays(replace(SMALL, seed=1), tmp_path / "c")
    assert not np.array_equal(first["images"], other["images"])
    assert not np.array_equal(first["class_names"], other["class_names"])


def test_arrays_are_uint8_images_of_the_spec_size(tmp_path):
    arrays = load_arrays(SMALL, tmp_path)
    n = SMALL.num_classes * SMALL.images_per_class
    assert arrays["images"].dtype == np.uint8 and arrays["images"].shape == (n, 32, 32)
    assert arrays["source_images"].dtype == np.uint8 and arrays["source_images"].shape == (4, 32, 32)
    assert np.bincount(arrays["labels"]).tolist() == [SMALL.images_per_class] * SMALL.num_classes
    assert len(set(arrays["class_names"])) == SMALL.num_classes
    assert all(len(name) == SMALL.digits_per_class for name in arrays["class_names"])
    assert arrays["images"].std() > 10  # not blank


def test_default_spec_is_large_enough():
    spec = EmbeddedSpec()
    assert spec.num_classes >= 100 and spec.images_per_class >= 40
    assert spec.num_classes <= 10 ** spec.digits_per_class
    assert spec.source_images > 0


def test_train_and_test_classes_are_disjoint(tiny_data):
    train, test = set(tiny_data.train.classes), set(tiny_data.test.classes)
    assert not train & test
    assert train | test == set(range(16)) and len(train) == len(test) == 8
    assert len(tiny_data.train) == len(tiny_data.test) == 64
    assert tiny_data.recall_ks == (1, 2, 4, 8) and tiny_data.num_channels == 1


def test_cache_honours_pnca_data_dir(data_dir):
    assert default_cache() == data_dir / "embedded"


def test_cache_is_reused(tmp_path, monkeypatch):
    first = load_arrays(SMALL, tmp_path)
    assert len(list(tmp_path.glob("*.npz"))) == 1 and len(list(tmp_path.glob("*.sha256"))) == 1

    def no_build(spec):
        raise AssertionError("rebuilt although the cache is intact")

    monkeypatch.setattr(embedded, "_build", no_build)
    assert _equal(first, load_arrays(SMALL, tmp_path))


@pytest.mark.parametrize("damage", ["truncate", "tamper", "no checksum"])
def test_damaged_cache_is_rebuilt(tmp_path, count_builds, damage):
    first = load_arrays(SMALL, tmp_path)
    (npz,), (check,) = tmp_path.glob("*.npz"), tmp_path.glob("*.sha256")
    raw = npz.read_bytes()
    if damage == "truncate":
        npz.write_bytes(raw[: len(raw) // 2])
    elif damage == "tamper":
        i = len(raw) // 2
        npz.write_bytes(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:])
    else:
        check.unlink()
    assert _equal(first, load_arrays(SMALL, tmp_path))
    assert len(count_builds) == 2
    assert hashlib.sha256(npz.read_bytes()).hexdigest() == check.read_text().strip()  # whole again
    load_arrays(SMALL, tmp_path)
    assert len(count_builds) == 2


def test_resize_to_another_image_size(tmp_path):
    data = load_embedded(image_size=20, spec=SMALL, cache_dir=tmp_path)
    assert data.train.images.dtype == torch.uint8 and data.train.images.shape[1:] == (1, 20, 20)
    image, label = data.test[0]
    assert image.shape == (1, 20, 20) and image.dtype == torch.float32
    assert -1 <= image.min() < image.max() <= 1 and label == 0
    assert len(data.train) == len(data.test) == 9


def _digest(arrays: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()


def test_generated_arrays_and_cache_name_are_pinned(tmp_path):
    # digit_boxes replays the generation through _render_with_box: the images, and so the cache, must not change
    assert EmbeddedSpec().key() == "6d1d55d491"
    assert _digest(load_arrays(SMALL, tmp_path)) == "33aabc9e39fa3346c288b203f1e44a76ff5013db239f1738cae21a33c038e579"


def test_digit_boxes_hold_the_digits(tmp_path, monkeypatch):
    spec = replace(SMALL, image_size=48)
    arrays = load_arrays(spec, tmp_path)
    boxes = embedded.digit_boxes("all", spec=spec, cache_dir=tmp_path)
    assert boxes.shape == (len(arrays["images"]), 4) and boxes.dtype == np.int64
    top, left, bottom, right = boxes.T
    assert (0 <= top).all() and (top < bottom).all() and (bottom <= 48).all()
    assert (0 <= left).all() and (left < right).all() and (right <= 48).all()
    assert ((right - left) > (bottom - top)).all()  # three digits side by side
    for image, (t, l, b, r) in zip(arrays["images"], boxes):  # the digits are drawn bright over the clutter
        inside = np.zeros(image.shape, bool)
        inside[t:b, l:r] = True
        assert image[inside].mean() > image[~inside].mean()
    half = spec.num_classes // 2
    np.testing.assert_array_equal(embedded.digit_boxes("test", spec=spec, cache_dir=tmp_path),
                                  boxes[arrays["labels"] >= half])
    np.testing.assert_allclose(embedded.digit_boxes("train", 24, spec=spec, cache_dir=tmp_path),
                               boxes[arrays["labels"] < half] / 2)
    assert len(list(tmp_path.glob("*.boxes.npy"))) == 1 and len(list(tmp_path.glob("*.npz"))) == 1

    def no_replay(*args):
        raise AssertionError("replayed although the boxes are cached")

    monkeypatch.setattr(embedded, "_replay_boxes", no_replay)
    np.testing.assert_array_equal(embedded.digit_boxes(spec=spec, cache_dir=tmp_path), boxes)
    with pytest.raises(ValueError, match="split"):
        embedded.digit_boxes("val", spec=spec, cache_dir=tmp_path)


def test_digit_boxes_are_rebuilt_when_damaged_and_refuse_other_images(tmp_path):
    boxes = embedded.digit_boxes(spec=SMALL, cache_dir=tmp_path)
    (path,) = tmp_path.glob("*.boxes.npy")
    np.save(path, boxes[:3])
    np.testing.assert_array_equal(embedded.digit_boxes(spec=SMALL, cache_dir=tmp_path), boxes)
    other = load_arrays(SMALL, tmp_path)["images"].copy()
    other[2] ^= 1
    with pytest.raises(embedded.DataError, match="image 2"):
        embedded._replay_boxes(SMALL, other)


def test_many_class_variant_has_many_small_disjoint_classes():
    from pnca_utils.config import make_config
    from pnca_utils.data import load_data

    spec = embedded.EMBEDDED_SPECS["embedded-many"]
    data = load_data("embedded-many", image_size=32)
    train, test = np.asarray(data.train.labels), np.asarray(data.test.labels)
    assert data.name == "embedded-many" and data.num_train_classes == spec.num_classes // 2 == 1100
    assert set(np.bincount(train).tolist()) == {5} and len(test) == 5 * 1100
    assert not set(data.train.classes) & set(data.test.classes)
    names = load_arrays(spec)["class_names"]
    assert len(set(names)) == len(names) == 2200 and {len(n) for n in names} == {4}
    # generated like the default set: no data_root needed
    assert make_config("proxynca++", "ci", dataset="embedded-many").validate().dataset == "embedded-many"
