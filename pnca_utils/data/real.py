"""Loaders for real data sets already on disk (nothing is downloaded), with the standard zero-shot splits.

Each loader checks the layout (list files present, every listed image present, at least two
classes on each side) before returning, and raises one `DataError` naming the folder and
describing the expected layout (see `LAYOUTS`). It then opens every image's header (PIL's
`verify`): an unreadable file is named in a `DataError`, or, with `skip_bad_images=True`,
left out and listed in the data set's `skipped`.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .base import DataError, ImageListDataset, RetrievalData
from .transforms import photo_transforms

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})

LAYOUTS = {
    "cub": "ROOT/images/<NNN>.<Name>/<image>.jpg, e.g. ROOT/images/001.Black_footed_Albatross/x.jpg "
    "(ROOT may also be the folder holding CUB_200_2011/); classes 1-100 train, 101-200 test",
    "cars": "ROOT/cars_annos.mat (struct array 'annotations' with fields 'relative_im_path' and 'class') "
    "and the images it lists, relative to ROOT, e.g. ROOT/car_ims/000001.jpg; classes 1-98 train, 99-196 test",
    "sop": "ROOT/Ebay_train.txt and ROOT/Ebay_test.txt (header 'image_id class_id super_class_id path', "
    "then one row per image) and the images they list, relative to ROOT, e.g. ROOT/bicycle_final/111085122871_0.JPG",
    "inshop": "ROOT/list_eval_partition.txt (a count line, the header 'image_name item_id evaluation_status', "
    "then rows like 'img/WOMEN/Dresses/id_00000002/02_1_front.jpg id_00000002 train' with status "
    "train/query/gallery) and the images it lists, relative to ROOT or to ROOT/Img",
    "folder": "ROOT/<class>/<image>, where the class is the image's folder path relative to ROOT "
    "(nesting allowed, e.g. ROOT/animals/cats/x.png is class 'animals/cats'; images directly in ROOT "
    "are ignored); extensions " + " ".join(sorted(IMAGE_EXTENSIONS)),
}

Items = list[tuple[Path, object]]  # (image path, raw class id)


def _error(name: str, root: Path, problem: str) -> DataError:
    return DataError(f"{name} data set at {root}: {problem}.\nExpected layout: {LAYOUTS[name]}")


def _root(name: str, root) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise _error(name, root, "the folder does not exist")
    return root


def _image_files(folder: Path, recursive: bool = False) -> list[Path]:
    """Image files in `folder` (or its whole tree), sorted, hidden files and folders skipped."""
    files = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        p for p in files
        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _unreadable(path: Path) -> str | None:
    """Why PIL cannot open `path` as an image (header and PIL's `verify`), or None when it can."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return f"{type(err).__name__}: {err}"  # UnidentifiedImageError is an OSError
    return None


def _bad_images(paths: Sequence[Path]) -> dict[Path, str]:
    """{path: reason} for the unreadable images among `paths`, in their order (headers read in threads)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        reasons = list(pool.map(_unreadable, paths))
    return {p: why for p, why in zip(paths, reasons) if why is not None}


def _without_bad_images(name: str, root: Path, splits: dict[str, Items],
                        skip: bool) -> tuple[dict[str, Items], tuple[Path, ...]]:
    """The splits without unreadable images, and those images; without `skip`, a DataError naming the first."""
    bad = _bad_images([p for items in splits.values() for p, _ in items])
    if not bad:
        return splits, ()
    if not skip:
        path, why = next(iter(bad.items()))
        more = f" ({len(bad)} unreadable images in all)" if len(bad) > 1 else ""
        raise DataError(f"{name} data set at {root}: cannot read image {path} ({why}){more}. Remove or replace "
                        "the file, or leave unreadable images out with skip_bad_images=True (CLI: --skip-bad-images)")
    return {split: [(p, y) for p, y in items if p not in bad] for split, items in splits.items()}, tuple(bad)


def _retrieval(name: str, root: Path, image_size: int, recall_ks: tuple[int, ...],
               train: Items, test: Items, query: Items | None = None,
               skip_bad_images: bool = False, channels: int = 3) -> RetrievalData:
    """Check the splits and their images, then build the data set; `query` and `test` share one label space."""
    splits = {"train": train, "test": test} | ({"query": query} if query is not None else {})
    for items in splits.values():
        missing = next((p for p, _ in items if not p.is_file()), None)
        if missing is not None:
            raise _error(name, root, f"the listed image {missing} does not exist")
    splits, skipped = _without_bad_images(name, root, splits, skip_bad_images)
    for split, items in splits.items():
        classes = {y for _, y in items}
        if len(classes) < 2:
            left = f", after leaving out {len(skipped)} unreadable images" if skipped else ""
            raise _error(name, root, f"the {split} split has {len(classes)} class(es) "
                                     f"({len(items)} images{left}); at least 2 are needed")
    train, test, query = splits["train"], splits["test"], splits.get("query")
    evaluated = test + (query or [])
    shared = {y for _, y in train} & {y for _, y in evaluated}
    if shared:
        raise _error(name, root, f"train and test share classes {sorted(shared)[:5]}")

    def dataset(items: Items, is_train: bool, classes: Sequence | None = None) -> ImageListDataset:
        paths, labels = zip(*items)
        return ImageListDataset(paths, labels, photo_transforms(image_size, train=is_train, channels=channels),
                                classes=classes, channels=channels)

    classes = sorted({y for _, y in evaluated}) if query is not None else None
    return RetrievalData(name, dataset(train, True), dataset(test, False, classes), recall_ks,
                         dataset(query, False, classes) if query is not None else None, skipped)


def _split_by_class(items: Items, last_train_class: int) -> tuple[Items, Items]:
    """Zero-shot split of integer class ids: 1..last_train_class train, the rest test."""
    return ([(p, y) for p, y in items if y <= last_train_class],
            [(p, y) for p, y in items if y > last_train_class])


def load_cub(root, image_size: int, skip_bad_images: bool = False) -> RetrievalData:
    """CUB-200-2011: classes 1-100 train, 101-200 test."""
    root = _root("cub", root)
    images = next((d for d in (root / "images", root / "CUB_200_2011" / "images") if d.is_dir()), None)
    if images is None:
        raise _error("cub", root, f"no images/ folder in {root} or in {root / 'CUB_200_2011'}")
    items: Items = []
    for folder in sorted(d for d in images.iterdir() if d.is_dir() and not d.name.startswith(".")):
        number = folder.name.split(".", 1)[0]
        if not number.isdigit():
            raise _error("cub", root, f"the class folder {folder} does not start with a class number like '001.'")
        items += [(p, int(number)) for p in _image_files(folder)]
    return _retrieval("cub", root, image_size, (1, 2, 4, 8), *_split_by_class(items, 100),
                      skip_bad_images=skip_bad_images)


def _mat_value(value):
    """Unwrap the nested one-element arrays that loadmat puts around struct fields."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"expected one value, got an array of shape {value.shape}")
        value = value.ravel()[0]
    return value


def load_cars(root, image_size: int, skip_bad_images: bool = False) -> RetrievalData:
    """Cars196 (from cars_annos.mat): classes 1-98 train, 99-196 test."""
    from scipy.io import loadmat

    root = _root("cars", root)
    mat_file = root / "cars_annos.mat"
    if not mat_file.is_file():
        raise _error("cars", root, f"{mat_file} does not exist")
    try:
        annotations = loadmat(mat_file)["annotations"]
        items: Items = [(root / str(_mat_value(a["relative_im_path"])), int(_mat_value(a["class"])))
                        for a in annotations.ravel()]
    except Exception as err:  # unreadable file, missing struct or fields, odd values
        raise _error("cars", root, f"cannot read the annotations in {mat_file} ({type(err).__name__}: {err})") from err
    return _retrieval("cars", root, image_size, (1, 2, 4, 8), *_split_by_class(items, 98),
                      skip_bad_images=skip_bad_images)


def _sop_list(root: Path, file_name: str) -> Items:
    list_file = root / file_name
    if not list_file.is_file():
        raise _error("sop", root, f"{list_file} does not exist")
    items: Items = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        fields = line.split()
        if not fields or fields[0] == "image_id":
            continue
        if len(fields) != 4 or not fields[1].isdigit():
            raise _error("sop", root, f"{list_file}, line {n}: expected 'image_id class_id super_class_id path'")
        items.append((root / fields[3], int(fields[1])))
    return items


def load_sop(root, image_size: int, skip_bad_images: bool = False) -> RetrievalData:
    """Stanford Online Products: the Ebay_train.txt / Ebay_test.txt split (11318 / 11316 classes)."""
    root = _root("sop", root)
    return _retrieval("sop", root, image_size, (1, 10, 100, 1000),
                      _sop_list(root, "Ebay_train.txt"), _sop_list(root, "Ebay_test.txt"),
                      skip_bad_images=skip_bad_images)


def load_inshop(root, image_size: int, skip_bad_images: bool = False) -> RetrievalData:
    """In-Shop Clothes: train = 'train' rows; query images are searched in the 'gallery' (`test`)."""
    root = _root("inshop", root)
    list_file = root / "list_eval_partition.txt"
    if not list_file.is_file():
        raise _error("inshop", root, f"{list_file} does not exist")
    rows = [line.split() for line in list_file.read_text().splitlines()[2:] if line.strip()]
    splits: dict[str, Items] = {"train": [], "query": [], "gallery": []}
    if not rows:
        raise _error("inshop", root, f"{list_file} lists no images")
    base = root / "Img" if not (root / rows[0][0]).exists() and (root / "Img" / rows[0][0]).exists() else root
    for n, fields in enumerate(rows, 3):
        if len(fields) != 3 or fields[2] not in splits:
            raise _error("inshop", root, f"{list_file}, line {n}: expected 'image_name item_id train|query|gallery'")
        splits[fields[2]].append((base / fields[0], fields[1]))
    return _retrieval("inshop", root, image_size, (1, 10, 20, 30, 40, 50),
                      splits["train"], splits["gallery"], splits["query"], skip_bad_images)


def load_folder(root, image_size: int, split: float | tuple[Sequence[str], Sequence[str]] | None = None,
                skip_bad_images: bool = False) -> RetrievalData:
    """Any tree of images; the class is the image's folder path relative to root.

    Images load with 1 channel when every one is greyscale (scans, digits), else with 3 (RGB).

    Classes are sorted by name; `split` is the fraction of them (first ones) used for
    training (default 0.5), or an explicit (train_classes, test_classes) pair of names.
    """
    root = _root("folder", root)
    by_class: dict[str, list[Path]] = {}
    for path in _image_files(root, recursive=True):
        if path.parent != root:
            by_class.setdefault(path.parent.relative_to(root).as_posix(), []).append(path)
    if not by_class:
        raise _error("folder", root, "no images found in its sub-folders")
    classes = sorted(by_class)
    if split is None or isinstance(split, (int, float)):
        fraction = 0.5 if split is None else split
        if not 0 < fraction < 1:
            raise ValueError(f"split fraction must be between 0 and 1, got {fraction}")
        n_train = int(len(classes) * fraction)
        train_classes, test_classes = classes[:n_train], classes[n_train:]
    else:
        train_classes, test_classes = ([str(c) for c in names] for names in split)
        unknown = sorted(set(train_classes + test_classes) - set(classes))
        if unknown:
            raise _error("folder", root, f"no images for the classes {unknown[:5]} named in `split` "
                                         f"(found: {classes[:5]}{' ...' if len(classes) > 5 else ''})")
    train = [(p, c) for c in train_classes for p in by_class[c]]
    test = [(p, c) for c in test_classes for p in by_class[c]]
    channels = 1 if all(_is_greyscale(p) for p, _ in train + test) else 3
    return _retrieval("folder", root, image_size, (1, 2, 4, 8), train, test, skip_bad_images=skip_bad_images,
                      channels=channels)


GREYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")  # PIL modes without colour


def _is_greyscale(path: Path) -> bool:
    """Whether the image file is greyscale (its header says so; unreadable files count as colour)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.mode in GREYSCALE_MODES
    except OSError:
        return False


REAL_LOADERS: dict[str, Callable[..., RetrievalData]] = {
    "cub": load_cub, "cars": load_cars, "sop": load_sop, "inshop": load_inshop, "folder": load_folder,
}


def load_real(name: str, root, image_size: int, **kwargs) -> RetrievalData:
    """Load the real data set `name` (a key of REAL_LOADERS) from `root`."""
    if name not in REAL_LOADERS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(REAL_LOADERS)}")
    return REAL_LOADERS[name](root, image_size, **kwargs)


def check_images(dataset: ImageListDataset, skip_bad: bool = False) -> tuple[ImageListDataset, int]:
    """Open every image of `dataset` with PIL's verify; return (dataset, number of bad images skipped).

    A bad image raises a DataError naming it, unless `skip_bad`: then a new data set without
    the bad images is returned, with the same label space (labels of kept images unchanged).
    """
    reasons = _bad_images(dataset.paths)
    if reasons and not skip_bad:
        path, why = next(iter(reasons.items()))
        raise DataError(f"cannot read image {path} ({why}). Remove or replace the file.")
    bad = {i for i, path in enumerate(dataset.paths) if path in reasons}
    if not bad:
        return dataset, 0
    keep = [i for i in range(len(dataset)) if i not in bad]
    kept = ImageListDataset([dataset.paths[i] for i in keep], [dataset.classes[dataset.labels[i]] for i in keep],
                            dataset.transform, classes=dataset.classes)
    return kept, len(bad)
