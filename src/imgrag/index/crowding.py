"""How crowded each photo's neighbourhood is, so that generic descriptions stop winning
searches they only half match.

Some descriptions ("A man climbing a rock", "A kitchen with a refrigerator and cabinets")
sit close to a great many queries: in caption retrieval they are the wrong top hit far more
often than other photos (hubs, a known failing of nearest-neighbour search in embedding
spaces). The usual cure, CSLS (Conneau et al., 2018), scores a match as its cosine minus how
close the photo is to everything around it. Here a photo's crowding is the mean cosine of
its NEIGHBOURS nearest other photos, minus the collection's median of that mean, so a
typical photo's score is unchanged and --min-score keeps its meaning. Search subtracts a
small multiple of it (`search.Fusion.crowding`).

Written as one float32 per index row (`crowding.npy`) into the index generation when it is
built; a search memory-maps it and reads only its candidates' values."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from imgrag.store.paths import CROWDING_FILE

NEIGHBOURS = 10
# Neighbours are looked for among at most this many photos (those with the smallest content
# hashes: a fixed sample, whatever order rows are in). A sample of 2,048 ranks Flickr8k's 6,000
# photos as well as all of them do, and keeps a million-photo build to ~10 s on two cores.
REFERENCE_MAX = 2048  # must exceed NEIGHBOURS: faiss pads a short result with -1 labels
_BATCH = 65536  # rows searched at a time: bounded temporary memory


def crowding(vectors: np.ndarray, sha256s: list[str]) -> np.ndarray:
    """Each row's crowding (0 for the median photo; 0 everywhere with fewer than two photos)."""
    count = len(vectors)
    if count < 2:
        return np.zeros(count, dtype=np.float32)
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    neighbours = min(NEIGHBOURS, count - 1)
    reference = np.sort(np.argsort(np.asarray(sha256s), kind="stable")[:REFERENCE_MAX])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors[reference])
    mean_near = np.empty(count, dtype=np.float32)
    for start in range(0, count, _BATCH):
        part = vectors[start : start + _BATCH]
        sims, found = index.search(part, neighbours + 1)
        is_self = reference[found] == np.arange(start, start + len(part))[:, None]
        sims = np.where(is_self, -np.inf, sims)
        # the `neighbours` best once the photo itself (set to -inf) is dropped: sort again
        mean_near[start : start + len(part)] = np.sort(sims, axis=1)[:, ::-1][:, :neighbours].mean(axis=1)
    return (mean_near - np.median(mean_near)).astype(np.float32)


def save(folder: Path, values: np.ndarray) -> None:
    np.save(folder / CROWDING_FILE, np.asarray(values, dtype=np.float32))


def load(folder: Path) -> np.ndarray | None:
    """The generation's crowding per row, memory-mapped; None for an index built without it."""
    try:
        return np.load(folder / CROWDING_FILE, mmap_mode="r")
    except (OSError, ValueError):
        return None
