"""The dense index past FLAT_MAX photos: IVF + SQ8 chosen by size, extended in place when
photos are only added, its centroids reused when some leave, filters that still find rows
outside the probed lists, and memory-mapped loading. In process, on clustered vectors
(no model needed); bench/scale.py measures recall on real text at 1M."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from imgrag.index.generations import (
    FLAT_MAX,
    Doc,
    Previous,
    build_faiss,
    open_generation,
    plan_for,
    stable_order,
    write_dense,
    write_generation,
)
from imgrag.store.paths import DENSE_FILE
from imgrag.store.workspace import Workspace

DIM = 32
N = FLAT_MAX + 5_000


def clustered(n: int, seed: int) -> np.ndarray:
    """Unit vectors around 300 topics: neighbours that mean something, like descriptions."""
    centres = np.random.default_rng(0).normal(size=(300, DIM)).astype(np.float32)
    rng = np.random.default_rng(seed)
    v = centres[rng.integers(0, 300, n)] + 0.35 * rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def rows_for(n: int, offset: int = 0) -> list[tuple[str, str]]:
    return [(f"sha{i}", f"key{i}") for i in range(offset, offset + n)]


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """One IVF index over N vectors, built once for the module (~seconds)."""
    folder = tmp_path_factory.mktemp("big")
    vectors = clustered(N, 0)
    plan = write_dense(vectors, rows_for(N), None, folder / DENSE_FILE)
    return folder / DENSE_FILE, vectors, plan


def test_the_index_kind_follows_the_collection_size():
    assert plan_for(0)["type"] == plan_for(FLAT_MAX)["type"] == "flat"
    ivf = plan_for(1_000_000)
    assert ivf["type"] == "ivf-sq8" and ivf["nlist"] == 2048 and 16 <= ivf["nprobe"] <= 128
    assert plan_for(FLAT_MAX + 1)["nlist"] < ivf["nlist"]


def test_ivf_finds_what_exact_search_finds(big):
    path, vectors, plan = big
    assert plan["type"] == "ivf-sq8" and plan["trained_on"] == N
    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP)
    assert index.ntotal == N and index.nprobe == plan["nprobe"]
    queries = clustered(200, 1)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    truth = exact.search(queries, 10)[1]
    found = index.search(queries, 10)[1]
    recall = np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth, strict=True)])
    assert recall >= 0.9, recall
    # Stored vectors read back (8-bit) close to the originals: re-scoring candidates works.
    back = index.reconstruct_batch(np.arange(0, N, 997, dtype=np.int64))
    assert cosines(back, vectors[::997]).min() > 0.995


def test_only_added_rows_extend_the_previous_index(big, tmp_path):
    path, vectors, plan = big
    more = clustered(1000, 2)
    previous = Previous(path, rows_for(N), plan)
    out = tmp_path / DENSE_FILE
    assert write_dense(np.vstack([vectors, more]), rows_for(N + 1000), previous, out) == plan
    old, new = faiss.read_index(str(path)), faiss.read_index(str(out))
    assert new.ntotal == N + 1000
    centroids = faiss.downcast_index(old.quantizer).reconstruct_n(0, old.nlist)
    assert np.array_equal(centroids, faiss.downcast_index(new.quantizer).reconstruct_n(0, new.nlist))
    appended = new.reconstruct_batch(np.arange(N, N + 1000, dtype=np.int64))
    assert cosines(appended, more).min() > 0.995  # row N + i holds new vector i
    new.nprobe = new.nlist
    _, found = new.search(more[:20], 5)
    assert all(N + i in found[i] for i in range(20))  # and search finds it


def test_removed_rows_reuse_the_centroids(big, tmp_path):
    path, vectors, plan = big
    keep = np.r_[0:1000, 2000:N]  # photos 1000..1999 deleted
    every = rows_for(N)
    rows = [every[i] for i in keep]
    out = tmp_path / DENSE_FILE
    assert write_dense(vectors[keep], rows, Previous(path, rows_for(N), plan), out) == plan
    index = faiss.read_index(str(out))
    assert index.ntotal == len(keep)
    back = index.reconstruct_batch(np.array([999, 1000, 1500], dtype=np.int64))
    assert cosines(back, vectors[[999, 2000, 2500]]).min() > 0.995  # rows after the gap moved up


def test_unchanged_rows_share_the_file(big, tmp_path):
    path, vectors, plan = big
    out = tmp_path / DENSE_FILE
    write_dense(vectors, rows_for(N), Previous(path, rows_for(N), plan), out)
    assert out.stat().st_ino == path.stat().st_ino


def test_stable_order_keeps_old_rows_first():
    docs = [Doc(f"sha{i}", [f"p{i}"], "", f"t{i}", "", None, None) for i in (5, 1, 3, 9)]
    keys = ["k5", "k1", "k3", "k9"]
    previous = Previous(None, [("sha3", "k3"), ("sha7", "k7"), ("sha5", "k5")], {})
    ordered, ordered_keys = stable_order(docs, keys, previous)
    assert [d.sha256 for d in ordered] == ["sha3", "sha5", "sha1", "sha9"]
    assert ordered_keys == ["k3", "k5", "k1", "k9"]


def test_generation_of_an_ivf_index_searches_with_filters(tmp_path, big):
    """Through write_generation/open_generation: meta records the kind; the index is memory-mapped;
    a filtered search (as `search --in` does) finds allowed rows even far from the query."""
    _, vectors, _ = big
    ws = Workspace(tmp_path / ".imgrag")
    docs = [Doc(f"{i:064x}", [f"photos/{i}.jpg"], "", "", f"caption\tphoto {i % 100}", None, None) for i in range(N)]
    write_generation(ws, docs, vectors, {"embedding": {"model": "test"}})
    generation = open_generation(ws)
    meta = json.loads((generation.folder / "meta.json").read_text())
    assert meta["dense"]["type"] == "ivf-sq8" and generation.size == N and generation.index.kind == "ivf-sq8"
    # no 32 read-ahead threads started by every search of the memory-mapped lists
    assert faiss.downcast_InvertedLists(generation.index.invlists).prefetch_nthread == 0
    allowed = np.array([7, 50_000], dtype=np.int64)
    params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    _scores, found = generation.index.search(vectors[:1], 5, params=params)
    assert sorted(found[0][found[0] >= 0].tolist()) == [7, 50_000]
    assert generation.docs([50_000])[50_000].paths == ["photos/50000.jpg"]


def test_build_faiss_small_is_exact():
    vectors = clustered(500, 3)
    index = build_faiss(vectors)
    assert isinstance(index, faiss.IndexFlatIP)
    assert index.search(vectors[:3], 1)[1][:, 0].tolist() == [0, 1, 2]
