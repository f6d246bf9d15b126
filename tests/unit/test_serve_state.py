"""What a long-lived server keeps of an index generation (imgrag.web.state, imgrag.search.ranking):
photo lookups by id and by name, filters remembered, and nothing that outlives a swap."""

from __future__ import annotations

import gc
import weakref

import numpy as np

from imgrag.index.generations import Doc, open_generation, write_generation
from imgrag.search.filters import Filters
from imgrag.search.live import Photos
from imgrag.search.searcher import Searcher
from imgrag.store.workspace import Workspace


def make_index(base, docs):
    ws = Workspace(base / ".imgrag")
    vectors = np.random.default_rng(0).standard_normal((len(docs), 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_generation(ws, docs, vectors, {"embedding": {"model": "test"}})
    return ws


def doc(i: int, *paths: str) -> Doc:
    return Doc(f"{i:064x}", list(paths), f"photo {i}", f"photo {i}", f"caption\tphoto {i}", None, None)


def test_photos_by_id_and_by_name_in_a_folder_sqlite_uris_would_misread(tmp_path):
    base = tmp_path / "odd ?name #1 %20"  # SQLite URI syntax: must be quoted to be opened
    ws = make_index(base, [doc(0, "a/x.jpg", "b/x.jpg"), doc(1, "b/x.jpg", "c/y.jpg"), doc(2, "d/z.jpg")])
    generation = open_generation(ws)
    photos = Photos(generation)
    assert [photos.row_of(f"{i:064x}") for i in range(3)] == [0, 1, 2]
    assert photos.row_of("f" * 64) is None
    assert photos.sha_of("b/x.jpg") == f"{0:064x}", "a name two rows claim goes to the first"
    assert photos.sha_of("c/y.jpg") == f"{1:064x}" and photos.sha_of("d/z.jpg") == f"{2:064x}"
    assert photos.sha_of("d") is None and photos.sha_of("") is None
    assert Photos(generation).row_of(f"{2:064x}") == 2, "made again (a retry) from the same open index"
    generation.close()


def test_a_searcher_with_remembered_filters_is_freed_without_the_garbage_collector(tmp_path):
    """A replaced generation must close its files when its last request ends: a reference
    cycle kept the old one mapped (and in RSS) until the collector happened to run."""
    ws = make_index(tmp_path, [doc(i, f"photos/{'ab'[i % 2]}/{i}.jpg") for i in range(6)])
    (tmp_path / "photos" / "a").mkdir(parents=True)
    searcher = Searcher(index=ws.root, embed_model=None)
    narrowed = searcher.with_filters(Filters(under=tmp_path / "photos" / "a"))
    assert narrowed.allowed == {0, 2, 4}
    assert searcher.with_filters(Filters(under=tmp_path / "photos" / "a")).allowed is narrowed.allowed, "remembered"
    gone = weakref.ref(searcher)
    gc.disable()
    try:
        del searcher, narrowed
        assert gone() is None
    finally:
        gc.enable()
