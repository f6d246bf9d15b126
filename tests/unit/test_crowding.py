"""Crowding (imgrag.index.crowding): each photo's mean cosine to its nearest other photos, centred
on the median, written with each index generation and reused when its rows are unchanged."""

from __future__ import annotations

import numpy as np
import pytest

from imgrag.index import crowding
from imgrag.index.generations import Doc, open_generation, previous_rows, write_generation
from imgrag.store.workspace import Workspace


def unit_vectors(count: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def brute_force(vectors: np.ndarray, shas: list[str], reference_max: int, neighbours: int) -> np.ndarray:
    reference = sorted(range(len(shas)), key=lambda i: shas[i])[:reference_max]
    means = []
    for i, v in enumerate(vectors):
        sims = sorted((float(vectors[j] @ v) for j in reference if j != i), reverse=True)
        means.append(np.mean(sims[:min(neighbours, len(vectors) - 1)]))
    return np.array(means) - np.median(means)


def test_exact_for_a_small_collection():
    v = unit_vectors(40)
    shas = [f"{i:064x}" for i in range(40)]
    got = crowding.crowding(v, shas)
    assert got.dtype == np.float32 and got.shape == (40,)
    np.testing.assert_allclose(got, brute_force(v, shas, 10**9, crowding.NEIGHBOURS), atol=1e-5)
    assert float(np.median(got)) == pytest.approx(0.0, abs=1e-6)


def test_a_large_collection_is_measured_against_the_photos_with_the_smallest_hashes(monkeypatch):
    monkeypatch.setattr(crowding, "REFERENCE_MAX", 12)
    monkeypatch.setattr(crowding, "_BATCH", 7)  # several batches
    v = unit_vectors(50, seed=1)
    shas = [f"{(i * 7919) % 50:064x}" for i in range(50)]  # hash order is not row order
    np.testing.assert_allclose(crowding.crowding(v, shas), brute_force(v, shas, 12, crowding.NEIGHBOURS), atol=1e-5)


def test_rows_in_another_order_get_the_same_values():
    v = unit_vectors(30, seed=2)
    shas = [f"{i:064x}" for i in range(30)]
    perm = np.random.default_rng(3).permutation(30)
    np.testing.assert_allclose(crowding.crowding(v[perm], [shas[i] for i in perm]), crowding.crowding(v, shas)[perm], atol=1e-6)


def test_a_photo_among_near_copies_is_crowded_and_tiny_collections_are_not_moved():
    v = unit_vectors(12, seed=4)
    v[1:4] = v[0] + 0.05 * unit_vectors(3, seed=5)  # four near-identical scenes
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    got = crowding.crowding(v, [f"{i:064x}" for i in range(12)])
    assert set(np.argsort(-got)[:4].tolist()) == {0, 1, 2, 3}
    assert crowding.crowding(v[:0], []).shape == (0,)
    assert crowding.crowding(v[:1], ["a"]).tolist() == [0.0]
    assert crowding.crowding(v[:2], ["a", "b"]).tolist() == [0.0, 0.0], "each is the other's only neighbour"


def test_each_generation_has_it_and_reuses_it_while_the_rows_stay_the_same(tmp_path):
    ws = Workspace(tmp_path / ".imgrag")
    meta = {"embedding": {"model": "test"}}
    docs = [Doc(sha256=f"{i:064x}", paths=[f"p{i}.jpg"], caption=f"photo {i}", text=f"photo {i}",
                lexical=f"caption\tphoto {i}", taken=None, mtime=None) for i in range(20)]
    v = unit_vectors(21, seed=6)
    first = write_generation(ws, docs, v[:20], meta)
    moved = [Doc(**{**d.__dict__, "paths": [f"moved/{d.paths[0]}"]}) for d in docs]  # only paths change
    second = write_generation(ws, moved, v[:20], meta, previous=previous_rows(ws, meta["embedding"]))
    assert (second / crowding.CROWDING_FILE).stat().st_ino == (first / crowding.CROWDING_FILE).stat().st_ino
    added = [*docs, Doc(f"{20:064x}", ["p20.jpg"], "photo 20", "photo 20", "caption\tphoto 20", None, None)]
    third = write_generation(ws, added, v, meta, previous=previous_rows(ws, meta["embedding"]))
    values = np.load(third / crowding.CROWDING_FILE)
    np.testing.assert_allclose(values, crowding.crowding(v, [d.sha256 for d in added]), atol=1e-6)
    generation = open_generation(ws)
    assert len(generation.crowding) == 21
    generation.close()
