"""Data sets: the embedded digits retrieval set and loaders for real data sets on disk."""
from __future__ import annotations

from .base import DataError, RetrievalData


def load_data(name: str = "embedded", root: str | None = None, image_size: int = 48) -> RetrievalData:
    """The zero-shot retrieval data set `name` ('embedded' needs no root; real ones read `root`)."""
    if name == "embedded":
        from .embedded import load_embedded

        return load_embedded(image_size)
    from .real import REAL_LOADERS

    if name not in REAL_LOADERS:
        raise DataError(f"unknown data set {name!r}; choose embedded, {', '.join(REAL_LOADERS)}")
    if root is None:
        raise DataError(f"data set {name!r} is read from disk: give its root folder (--data-root)")
    return REAL_LOADERS[name](root, image_size)


__all__ = ["DataError", "RetrievalData", "load_data"]
