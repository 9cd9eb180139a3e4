"""Data sets: the embedded digits retrieval set and loaders for real data sets on disk."""
from __future__ import annotations

from .base import DataError, RetrievalData


def load_data(name: str = "embedded", root: str | None = None, image_size: int = 48,
              skip_bad_images: bool = False) -> RetrievalData:
    """The zero-shot retrieval data set `name` ('embedded' and 'embedded-many' need no root; real ones read `root`).

    A real data set's images are opened (headers only) as it loads: an unreadable file raises a
    DataError naming it, unless `skip_bad_images`, which leaves such files out and lists them in
    the returned data set's `skipped`.
    """
    from .embedded import EMBEDDED_SPECS

    if name in EMBEDDED_SPECS:
        from .embedded import load_embedded

        return load_embedded(image_size, EMBEDDED_SPECS[name])
    from .real import REAL_LOADERS

    if name not in REAL_LOADERS:
        raise DataError(f"unknown data set {name!r}; choose {', '.join([*EMBEDDED_SPECS, *REAL_LOADERS])}")
    if root is None:
        raise DataError(f"data set {name!r} is read from disk: give its root folder (--data-root)")
    return REAL_LOADERS[name](root, image_size, skip_bad_images=skip_bad_images)


__all__ = ["DataError", "RetrievalData", "load_data"]
