"""The collection's background: a fixed sample of the photos' vectors, written into each
index generation (`background.npy`) when it is built. A search multiplies it by the query
to see what photos in general score for that query, and shows the hits that stand out
from it (`imgrag.search.cutoff`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgrag.store.paths import BACKGROUND_FILE

BACKGROUND_MAX = 1024  # sampled photos: enough for a stable median and spread, 0.8 MB at 384-d (float16)


def background_sample(vectors: np.ndarray, sha256s: list[str]) -> np.ndarray:
    """A fixed sample of the collection's vectors (those with the smallest content hashes,
    whatever order rows are in), float16."""
    if not len(vectors):
        return np.zeros((0, vectors.shape[1] if vectors.ndim == 2 else 0), np.float16)
    chosen = np.sort(np.argsort(np.asarray(sha256s), kind="stable")[:BACKGROUND_MAX])
    return np.asarray(vectors, dtype=np.float32)[chosen].astype(np.float16)


def save(folder: Path, sample: np.ndarray) -> None:
    np.save(folder / BACKGROUND_FILE, np.asarray(sample, dtype=np.float16))


def load(folder: Path) -> np.ndarray | None:
    """The generation's background sample as float32 (1.5 MB at most: every query multiplies
    it, and converting float16 each time cost a server more than the product); None for an
    index built without it."""
    try:
        return np.load(folder / BACKGROUND_FILE).astype(np.float32)
    except (OSError, ValueError):
        return None
