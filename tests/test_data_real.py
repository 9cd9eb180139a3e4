"""Loaders for real data sets, on tiny fake trees that mimic the real layouts."""
import re
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from pnca_utils.data import load_data
from pnca_utils.data.base import DataError
from pnca_utils.data.real import (LAYOUTS, REAL_LOADERS, check_images, load_cars, load_cub, load_folder,
                                  load_inshop, load_real, load_sop)

SIZE = 16


def image(path: Path, seed: int = 0) -> Path:
    """Write a tiny random image (format from the suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def assert_well_formed(data, n_train, n_test):
    assert (len(data.train), len(data.test)) == (n_train, n_test)
    for ds in (data.train, data.test) + ((data.query,) if data.query is not None else ()):
        assert ds.labels.dtype == np.int64
        assert set(ds.labels.tolist()) <= set(range(len(ds.classes)))
    assert set(data.train.labels.tolist()) == set(range(len(data.train.classes)))
    assert not set(data.train.classes) & set(data.test.classes)
    for ds in (data.train, data.test):
        x, y = ds[0]
        assert isinstance(x, torch.Tensor) and x.shape == (3, SIZE, SIZE) and isinstance(y, int)


# ---------------------------------------------------------------- CUB


def make_cub(root: Path, classes=(1, 2, 101, 102), per_class=2) -> Path:
    for c in classes:
        for i in range(per_class):
            image(root / "images" / f"{c:03d}.Bird_{c}" / f"Bird_{c}_{i}.jpg", seed=c * 10 + i)
    return root


@pytest.mark.parametrize("nested", [False, True])
def test_cub(tmp_path, nested):
    make_cub(tmp_path / "CUB_200_2011" if nested else tmp_path, classes=(1, 2, 3, 101, 102))
    data = load_cub(tmp_path, SIZE)
    assert data.name == "cub" and data.recall_ks == (1, 2, 4, 8) and data.query is None
    assert_well_formed(data, 6, 4)
    assert data.train.classes == [1, 2, 3] and data.test.classes == [101, 102]
    assert all(p.parent.name.startswith(("001.", "002.", "003.")) for p in data.train.paths)
    assert data.num_train_classes == 3 and data.num_channels == 3


# ---------------------------------------------------------------- Cars196


def make_cars(root: Path, classes=(1, 2, 99, 196), per_class=2) -> Path:
    rows = []
    for c in classes:
        for i in range(per_class):
            rel = f"car_ims/{len(rows) + 1:06d}.jpg"
            image(root / rel, seed=len(rows))
            rows.append((rel, np.array([[c]], dtype=np.uint8), np.array([[0]], dtype=np.uint8)))
    annotations = np.empty((1, len(rows)), dtype=[("relative_im_path", "O"), ("class", "O"), ("test", "O")])
    annotations[0] = rows
    scipy.io.savemat(root / "cars_annos.mat", {"annotations": annotations})
    return root


def test_cars(tmp_path):
    make_cars(tmp_path, classes=(1, 2, 98, 99, 196))
    data = load_cars(tmp_path, SIZE)
    assert data.recall_ks == (1, 2, 4, 8)
    assert_well_formed(data, 6, 4)
    assert data.train.classes == [1, 2, 98] and data.test.classes == [99, 196]
    assert data.train.paths[0] == tmp_path / "car_ims/000001.jpg"


def test_cars_bad_mat(tmp_path):
    scipy.io.savemat(tmp_path / "cars_annos.mat", {"something_else": np.zeros(3)})
    with pytest.raises(DataError, match="cars_annos.mat"):
        load_cars(tmp_path, SIZE)


# ---------------------------------------------------------------- Stanford Online Products


def make_sop(root: Path, train_classes=(1, 2), test_classes=(3, 4, 5), per_class=2) -> Path:
    n = 0
    for file_name, classes in (("Ebay_train.txt", train_classes), ("Ebay_test.txt", test_classes)):
        lines = ["image_id class_id super_class_id path"]
        for c in classes:
            for i in range(per_class):
                n += 1
                rel = f"bicycle_final/{c}_{i}.JPG"
                image(root / rel, seed=n)
                lines.append(f"{n} {c} 1 {rel}")
        (root / file_name).write_text("\n".join(lines) + "\n")
    return root


def test_sop(tmp_path):
    data = load_sop(make_sop(tmp_path), SIZE)
    assert data.recall_ks == (1, 10, 100, 1000)
    assert_well_formed(data, 4, 6)
    assert data.train.classes == [1, 2] and data.test.classes == [3, 4, 5]


# ---------------------------------------------------------------- In-Shop


def make_inshop(root: Path, prefix: str = "") -> Path:
    rows = [("id_00000001", "train"), ("id_00000001", "train"), ("id_00000002", "train"),
            ("id_00000003", "query"), ("id_00000003", "gallery"), ("id_00000004", "query"),
            ("id_00000004", "gallery"), ("id_00000005", "gallery")]  # item 5 only in the gallery
    lines = [str(len(rows)), "image_name item_id evaluation_status"]
    for n, (item, status) in enumerate(rows):
        rel = f"img/WOMEN/Dresses/{item}/{n:02d}_1_front.jpg"
        image(root / prefix / rel, seed=n)
        lines.append(f"{rel} {item} {status}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("prefix", ["", "Img"])
def test_inshop(tmp_path, prefix):
    data = load_inshop(make_inshop(tmp_path, prefix), SIZE)
    assert data.recall_ks == (1, 10, 20, 30, 40, 50)
    assert_well_formed(data, 3, 3)
    assert len(data.query) == 2
    assert data.train.classes == ["id_00000001", "id_00000002"]
    # One label space for query and gallery, though item 5 has no query image.
    assert data.query.classes == data.test.classes == ["id_00000003", "id_00000004", "id_00000005"]
    for ds in (data.query, data.test):
        for path, label in zip(ds.paths, ds.labels):
            assert path.parent.name == ds.classes[label]
    assert data.query.labels.tolist() == [0, 1]
    assert data.query[0][0].shape == (3, SIZE, SIZE)


# ---------------------------------------------------------------- folder


def make_folder(root: Path) -> Path:
    for n, rel in enumerate(["a/x/1.png", "a/x/2.PNG", "a/y/1.jpg", "a/y/2.jpeg",
                             "b/1.bmp", "b/2.png", "c/d/e/1.png", "c/d/e/2.tif"]):
        image(root / rel, seed=n)
    image(root / "ignored_at_root.png")
    (root / "b" / "notes.txt").write_text("not an image")
    return root


def test_folder_nested_classes(tmp_path):
    data = load_folder(make_folder(tmp_path), SIZE)
    assert data.recall_ks == (1, 2, 4, 8)
    assert_well_formed(data, 4, 4)
    assert data.train.classes == ["a/x", "a/y"] and data.test.classes == ["b", "c/d/e"]
    assert load_real("folder", tmp_path, SIZE, split=0.5).train.classes == ["a/x", "a/y"]


def test_folder_explicit_split(tmp_path):
    make_folder(tmp_path)
    data = load_folder(tmp_path, SIZE, split=(["b", "a/y"], ["a/x", "c/d/e"]))
    assert data.train.classes == ["a/y", "b"] and data.test.classes == ["a/x", "c/d/e"]
    assert_well_formed(data, 4, 4)
    # Classes left out of an explicit split are not used.
    data = load_folder(tmp_path, SIZE, split=(["a/x", "a/y"], ["b", "c/d/e"]))
    assert len(data.train) + len(data.test) == 8
    with pytest.raises(DataError, match="share classes"):
        load_folder(tmp_path, SIZE, split=(["a/x", "b"], ["b", "c/d/e"]))
    with pytest.raises(DataError, match="nope"):
        load_folder(tmp_path, SIZE, split=(["a/x", "nope"], ["b", "c/d/e"]))
    with pytest.raises(ValueError, match="fraction"):
        load_folder(tmp_path, SIZE, split=1.5)


# ---------------------------------------------------------------- wrong layouts


@pytest.mark.parametrize("name", sorted(REAL_LOADERS))
def test_missing_root(tmp_path, name):
    root = tmp_path / "not_here"
    with pytest.raises(DataError) as err:
        REAL_LOADERS[name](root, SIZE)
    assert str(root) in str(err.value) and LAYOUTS[name] in str(err.value)


@pytest.mark.parametrize("name, missing", [("cub", "images"), ("cars", "cars_annos.mat"),
                                           ("sop", "Ebay_test.txt"), ("inshop", "list_eval_partition.txt")])
def test_missing_layout(tmp_path, name, missing):
    (tmp_path / "Ebay_train.txt").write_text("image_id class_id super_class_id path\n")
    with pytest.raises(DataError) as err:
        REAL_LOADERS[name](tmp_path, SIZE)
    assert str(tmp_path) in str(err.value) and missing in str(err.value)


def test_missing_listed_image(tmp_path):
    make_sop(tmp_path)
    gone = tmp_path / "bicycle_final" / "4_1.JPG"
    gone.unlink()
    with pytest.raises(DataError, match=re.escape(str(gone))):
        load_sop(tmp_path, SIZE)


def test_too_few_classes(tmp_path):
    make_cub(tmp_path, classes=(1, 2, 101))
    with pytest.raises(DataError, match="test split has 1 class"):
        load_cub(tmp_path, SIZE)
    with pytest.raises(DataError, match="no images"):
        load_folder(tmp_path / "images" / "001.Bird_1", SIZE)


def test_bad_rows_and_names(tmp_path):
    make_inshop(tmp_path)
    with open(tmp_path / "list_eval_partition.txt", "a") as f:
        f.write("img/x.jpg id_9 validation\n")
    with pytest.raises(DataError, match="line 11"):
        load_inshop(tmp_path, SIZE)
    with pytest.raises(DataError, match="unknown data set"):
        load_real("mnist", tmp_path, SIZE)


# ---------------------------------------------------------------- damaged images

MAKERS = {"cub": make_cub, "cars": make_cars, "sop": make_sop, "inshop": make_inshop, "folder": make_folder}


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_unreadable_image_is_named_or_skipped(tmp_path, name):
    MAKERS[name](tmp_path)
    intact = REAL_LOADERS[name](tmp_path, SIZE)
    assert intact.skipped == ()
    bad = intact.train.paths[0]
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match=re.escape(f"cannot read image {bad}") + ".*skip_bad_images=True"):
        REAL_LOADERS[name](tmp_path, SIZE)
    data = load_real(name, tmp_path, SIZE, skip_bad_images=True)
    assert data.skipped == (bad,) and bad not in data.train.paths
    assert len(data.train) == len(intact.train) - 1 and len(data.test) == len(intact.test)
    assert data.train.classes == intact.train.classes  # the class keeps its other image
    assert load_data(name, tmp_path, SIZE, skip_bad_images=True).skipped == (bad,)


def test_every_unreadable_image_is_counted(tmp_path):
    make_folder(tmp_path)
    not_image = tmp_path / "b" / "3.jpg"
    not_image.write_bytes(b"this is not a jpeg" * 10)
    truncated = tmp_path / "c" / "d" / "e" / "1.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DataError, match=r"\(2 unreadable images in all\)") as err:
        load_folder(tmp_path, SIZE)
    assert str(not_image) in str(err.value)  # the first one: splits, then classes, in order
    data = load_folder(tmp_path, SIZE, skip_bad_images=True)
    assert set(data.skipped) == {not_image, truncated} and len(data.test) == 4 - 1


def test_skipping_can_leave_too_few_classes(tmp_path):
    make_cub(tmp_path, classes=(1, 2, 101, 102), per_class=1)
    (tmp_path / "images" / "102.Bird_102" / "Bird_102_0.jpg").write_text("gone bad")
    with pytest.raises(DataError, match="test split has 1 class.*after leaving out 1 unreadable"):
        load_cub(tmp_path, SIZE, skip_bad_images=True)


def test_image_damaged_after_loading_is_named_when_read(tmp_path):
    data = load_folder(make_folder(tmp_path), SIZE)
    bad = data.test.paths[1]
    bad.write_bytes(b"overwritten")
    with pytest.raises(DataError, match=re.escape(str(bad))):
        data.test[1]
    with pytest.raises(DataError, match=re.escape(str(bad))):
        check_images(data.test)
    clean, skipped = check_images(data.test, skip_bad=True)
    assert skipped == 1 and len(clean) == len(data.test) - 1 and bad not in clean.paths
    assert clean.classes == data.test.classes and clean.transform is data.test.transform
    assert [clean.classes[y] for y in clean.labels] == [p.parent.relative_to(tmp_path).as_posix() for p in clean.paths]
    assert check_images(data.train) == (data.train, 0)
