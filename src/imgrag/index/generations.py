"""The search index: a FAISS index of photo vectors plus a SQLite table of what each row is.

Each build is written whole into a new folder `.imgrag/index/<generation>/`; the file
`.imgrag/index/CURRENT` is then atomically replaced to name it. A search reads CURRENT
once and opens that generation, so it sees the old index or the new one, never half of
either. The previous generation is kept for searches that were already reading it.

The kind of FAISS index follows the collection's size (see `plan_for`): exact inner
product (IndexFlatIP) up to FLAT_MAX photos, above that an inverted file over 8-bit
scalar-quantised vectors (IVF + SQ8), a quarter of the memory, memory-mapped at search
time and probed in a few lists per query. A build reuses the previous generation where
it can: rows only added -> the old index plus the new rows; rows removed -> the old
IVF's trained centroids with every row added again; nothing changed -> a hard link."""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sqlite3
import time
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgrag.errors import TryLater, UsageError
from imgrag.index import background, crowding
from imgrag.index.embedding import text_key
from imgrag.index.lexical import LexicalIndex, write_lexical
from imgrag.store.files import fsync_dir, json_bytes, write_atomic
from imgrag.store.paths import (
    CROWDING_FILE,
    DENSE_FILE,
    GENERATION_DOCS,
    GENERATION_META,
    LEXICAL_DIR,
    VISIBLE_TEXT_DIR,
)
from imgrag.store.workspace import Workspace

INDEX_FORMAT = 2  # 2: index kind in meta.json, vector key per row in docs.sqlite
# What a generation holds beside what the format needs: searches use whatever is there, and
# `imgrag embed` rebuilds an index written with less (2: crowding.npy and visible-text/,
# 3: background.npy).
GENERATION_CONTENTS = 3
FLAT_MAX = 50_000  # exact search up to here: a few ms a query and 77 MB at 384 dimensions
IVF_PROBE_SHARE = 1 / 32  # lists probed per query: recall@10 >= 0.95 on real text (bench/scale.py)
IVF_MIN_PROBES = 32
IVF_TRAIN_PER_LIST = 40  # k-means sample: faiss wants >= 39 points per centroid
IVF_RETRAIN_GROWTH = 4  # rebuild the centroids when the collection grew this much since training
SQ_RANGE_MARGIN = 0.05  # widen each dimension's trained 8-bit range by this share on both sides


@dataclass(frozen=True)
class Doc:
    """One indexed photo (one content hash; copies share a row)."""

    sha256: str
    paths: list[str]
    caption: str
    text: str  # what was embedded
    lexical: str  # every word of the description
    taken: str | None
    mtime: int | None
    date: str | None = None  # read back only: PHOTO_TIME, the time the date filters and sort see

    @classmethod
    def described(cls, sha256: str, paths: list[str], description: dict[str, Any], *,
                  taken: str | None = None, mtime: int | None = None) -> Doc:
        """The row of a photo with this description: what is embedded and every word of it
        (ValueError for a description this version cannot read)."""
        # describe's schema (pydantic) only builds rows: a search, which opens generations, never loads it
        from imgrag.describe.schema import PhotoDescription, embedding_text, lexical_text

        parsed = PhotoDescription.model_validate(description)  # once for both texts
        return cls(sha256, paths, str(description.get("caption", "")), embedding_text(parsed),
                   lexical_text(parsed), taken, mtime)


# A photo's time as 'YYYY-MM-DDTHH:MM:SS' (sorts as text): the EXIF time without its UTC
# offset, else the file's mtime in local time. A photo with neither passes no date filter.
PHOTO_TIME = "COALESCE(substr(taken, 1, 19), strftime('%Y-%m-%dT%H:%M:%S', mtime, 'unixepoch', 'localtime'))"


# -- which index for how many vectors ------------------------------------------------------


def plan_for(count: int) -> dict[str, Any]:
    """The index kind and its parameters for a collection of `count` photos."""
    if count <= FLAT_MAX:
        return {"type": "flat"}
    nlist = 1 << round(math.log2(2 * math.sqrt(count)))  # 1M -> 2048 lists of ~500 rows
    return {"type": "ivf-sq8", "nlist": nlist, "nprobe": max(IVF_MIN_PROBES, round(nlist * IVF_PROBE_SHARE))}


def build_faiss(vectors: np.ndarray, plan: dict[str, Any] | None = None) -> Any:
    """A new index of `vectors` (row i = vector i), of the kind the plan (default: by size) names."""
    plan = plan or plan_for(len(vectors))
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if plan["type"] == "flat":
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        return index
    index = _empty_ivf(vectors.shape[1], plan)
    _train_ivf(index, vectors)
    return _add_rows(index, vectors)


def _empty_ivf(dim: int, plan: dict[str, Any]) -> Any:
    import faiss

    index: Any = faiss.index_factory(dim, f"IVF{plan['nlist']},SQ8", faiss.METRIC_INNER_PRODUCT)  # an IndexIVFScalarQuantizer
    index.nprobe = plan["nprobe"]
    # The 8-bit range per dimension comes from the training sample; widen it a little so
    # photos added later, a bit outside that range, are not clipped.
    index.sq.rangestat_arg = SQ_RANGE_MARGIN
    return index


def _train_ivf(index: Any, vectors: np.ndarray) -> None:
    sample_size = min(len(vectors), IVF_TRAIN_PER_LIST * index.nlist)
    rng = np.random.default_rng(0)  # the same data trains the same index
    sample = vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))]
    index.train(np.ascontiguousarray(sample))


def _add_rows(index: Any, vectors: np.ndarray) -> Any:
    """Add in slices (bounded temporary memory), then map row -> list for reconstruct()."""
    for start in range(0, len(vectors), 65536):
        index.add(np.ascontiguousarray(vectors[start : start + 65536], dtype=np.float32))
    if hasattr(index, "make_direct_map"):
        index.make_direct_map()
    return index


def index_kind(index: Any) -> str:
    import faiss

    return "flat" if isinstance(index, faiss.IndexFlat) else "ivf-sq8"


@dataclass(frozen=True)
class Previous:
    """The generation a build may start from: its index file and its rows' (sha256, vector key)."""

    dense: Path
    rows: list[tuple[str, str]]
    plan: dict[str, Any]


def previous_rows(ws: Workspace, embedding: dict[str, Any]) -> Previous | None:
    """The current generation, if a new build with `embedding` may reuse it."""
    meta = read_meta(ws)
    if not meta or meta.get("format") != INDEX_FORMAT or meta.get("embedding") != embedding or "dense" not in meta:
        return None
    folder = ws.paths.generation(meta["generation"])
    try:
        db = sqlite3.connect(read_only_uri(folder / GENERATION_DOCS), uri=True)
        try:
            rows = [(sha, key) for sha, key in db.execute("SELECT sha256, vkey FROM docs ORDER BY row")]
        finally:
            db.close()
    except sqlite3.Error:
        return None
    if len(rows) != meta.get("count") or not (folder / DENSE_FILE).exists():
        return None
    return Previous(folder / DENSE_FILE, rows, meta["dense"])


def stable_order(docs: list[Doc], keys: list[str], previous: Previous | None) -> tuple[list[Doc], list[str]]:
    """Rows that were indexed before keep their order and come first; new rows follow (by sha256),
    so a build that only adds photos can extend the previous index instead of rebuilding it."""
    position = {row: i for i, row in enumerate(previous.rows)} if previous else {}
    order = sorted(range(len(docs)), key=lambda i: (position.get((docs[i].sha256, keys[i]), len(position)), docs[i].sha256))
    return [docs[i] for i in order], [keys[i] for i in order]


def write_dense(vectors: np.ndarray, rows: list[tuple[str, str]], previous: Previous | None, out: Path) -> dict[str, Any]:
    """Write the FAISS index of these rows ((sha256, vector key) each) to `out`, reusing the
    previous generation's where that gives the same result; returns the plan it follows."""
    import faiss

    plan = plan_for(len(rows))
    if previous is not None and previous.plan.get("type") == plan["type"]:
        old = len(previous.rows)
        extends = old <= len(rows) and rows[:old] == previous.rows
        if extends and len(rows) == old:
            _link_or_copy(previous.dense, out)  # same vectors; only paths or words changed
            return previous.plan
        if extends and (plan["type"] == "flat" or len(rows) < IVF_RETRAIN_GROWTH * previous.plan["trained_on"]):
            index = faiss.read_index(str(previous.dense))
            _add_rows(index, vectors[old:])
            faiss.write_index(index, str(out))
            return previous.plan
        if plan["type"] != "flat" and previous.plan.get("nlist") == plan["nlist"]:
            index = faiss.read_index(str(previous.dense))  # keep the trained centroids, add every row again
            index.reset()
            _add_rows(index, vectors)
            faiss.write_index(index, str(out))
            return previous.plan
    faiss.write_index(build_faiss(vectors, plan), str(out))
    return plan if plan["type"] == "flat" else {**plan, "trained_on": len(rows)}


def _link_or_copy(src: Path, dst: Path) -> None:
    """Generations never change a written file, so two of them may share one."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# -- one generation on disk ----------------------------------------------------------------


class DenseIndex:
    """The generation's FAISS index, as callers use it (search, reconstruct, ntotal), with
    filtered searches translated for the IVF kind: faiss wants IVF's own parameter type
    there, and a filter probes every list, so a narrow filter still finds its rows."""

    def __init__(self, index: Any) -> None:
        self.faiss = index
        self.kind = index_kind(index)

    def search(self, queries: np.ndarray, k: int, params: Any = None) -> tuple[np.ndarray, np.ndarray]:
        if params is not None and self.kind != "flat":
            import faiss

            # faiss's Python layer takes a parameter object's fields as keywords; its type stubs do not say so
            ivf = faiss.SearchParametersIVF(sel=params.sel, nprobe=self.faiss.nlist)  # type: ignore[call-arg]
            return self.faiss.search(queries, k, params=ivf)
        return self.faiss.search(queries, k, params=params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.faiss, name)


@dataclass
class Generation:
    """One index generation, open for searching (`open_generation`): its dense index, its
    rows in SQLite, and the rest of its files loaded on first use."""

    folder: Path
    meta: dict[str, Any]
    index: DenseIndex
    db: sqlite3.Connection  # row lookups: a few rows by row number
    # Queries that read the whole table (filters, the server's photo tables, a photo by its
    # hash) on a second connection: SQLite lets one query at a time use a connection, and on
    # the first they held up every other search's row lookups for up to 0.1 s at 100k.
    scan: sqlite3.Connection

    # Filters come as the caller's allowed rows; a library in PostgreSQL (imgrag.library) has
    # its own filters, in its SQL, and says so here.
    filtered = False
    filters_in_memory = True  # passing() checks nothing: no filters of its own

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def nearest(self, query: np.ndarray, depth: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cosines) of the `depth` rows nearest the query (1 x dim), best first,
        among `allowed` when given."""
        params = None
        if allowed is not None:
            import faiss

            # faiss's Python layer takes a parameter object's fields as keywords; its type stubs do not say so
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))  # type: ignore[call-arg]
        scores, found = self.index.search(query, min(self.size, max(depth, 1)), params=params)
        keep = found[0] >= 0
        return found[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)

    def passing(self, rows: np.ndarray, enough: int | None = None) -> np.ndarray:
        """The rows the generation's own filters pass, in order (with `enough`: at least
        the first that many of them): all of them here."""
        return rows

    def close(self) -> None:
        self.db.close()
        self.scan.close()

    @functools.cached_property
    def lexical(self) -> Any:
        """The generation's BM25 index (imgrag.index.lexical.LexicalIndex), loaded on first use; None if it has none."""
        return LexicalIndex.load(self.folder / LEXICAL_DIR)

    @functools.cached_property
    def visible_text(self) -> Any:
        """BM25 over only the words seen written in each photo (a LexicalIndex); None if it has none."""
        return LexicalIndex.load(self.folder / VISIBLE_TEXT_DIR)

    @functools.cached_property
    def background(self) -> np.ndarray | None:
        """A fixed sample of the rows' vectors (imgrag.index.background); None for an index built without it."""
        return background.load(self.folder)

    @functools.cached_property
    def crowding(self) -> np.ndarray | None:
        """Each row's crowding (imgrag.index.crowding), memory-mapped; None for an index built without it."""
        return crowding.load(self.folder)

    def locate(self, rows: Sequence[int]) -> dict[int, tuple[list[str], str | None]]:
        """Rows' stored copies and dates (PHOTO_TIME): the little a search needs of every
        row it looks at, where `docs` reads whole descriptions."""
        if not rows:
            return {}
        found = rows_at_once(self.db, f"row, json(paths), {PHOTO_TIME}", rows)
        return {r[0]: (r[1], r[2]) for r in found}

    def docs(self, rows: Sequence[int]) -> dict[int, Doc]:
        if not rows:
            return {}
        found = rows_at_once(self.db, f"row, sha256, json(paths), caption, text, lexical, taken, mtime, {PHOTO_TIME}", rows)
        return {r[0]: Doc(*r[1:]) for r in found}


def rows_at_once(db: sqlite3.Connection, columns: str, rows: Sequence[int]) -> list[list[Any]]:
    """`SELECT columns FROM docs WHERE row IN rows`, every row in one SQLite step as one JSON
    array. Python's sqlite3 lets go of the GIL at each step, and a server thread taking it
    back waits behind every other thread: row by row, a query of 200 rows took a busy
    server tens of milliseconds."""
    marks = ",".join("?" * len(rows))
    sql = f"SELECT json_group_array(json_array({columns})) FROM docs WHERE row IN ({marks})"
    return json.loads(db.execute(sql, [int(r) for r in rows]).fetchone()[0])


def write_generation(ws: Workspace, docs: list[Doc], vectors: np.ndarray, meta: dict[str, Any], *,
                 keys: list[str] | None = None, previous: Previous | None = None) -> Path:
    """Write a new generation (row i = docs[i] = vectors[i]) and make it current.

    `keys` are the rows' vector-cache keys (default: computed from each doc's text);
    `previous` is the generation to extend where possible (see `previous_rows`)."""
    ws.paths.index.mkdir(parents=True, exist_ok=True)
    keys = keys if keys is not None else [text_key(d.text) for d in docs]
    rows = [(d.sha256, k) for d, k in zip(docs, keys, strict=True)]
    gen = f"{time.time_ns():x}"
    tmp = ws.paths.index / f".{gen}.tmp"
    tmp.mkdir()
    try:
        dense = write_dense(vectors, rows, previous, tmp / DENSE_FILE)
        _write_crowding(vectors, rows, previous, tmp)
        _write_background(vectors, rows, tmp)
        _write_docs(tmp / GENERATION_DOCS, docs, keys)
        if docs:
            write_lexical(tmp, [d.lexical for d in docs])
        meta = {**meta, "format": INDEX_FORMAT, "count": len(docs), "generation": gen, "dense": dense}
        (tmp / GENERATION_META).write_text(json.dumps(meta, indent=2))
        for f in tmp.rglob("*"):  # the lexical index is a folder of files
            if f.is_file():
                _fsync_file(f)
            else:
                fsync_dir(f)
        fsync_dir(tmp)  # its own entries too: the files above are no use if their names are lost
        final = ws.paths.generation(gen)
        tmp.rename(final)
        fsync_dir(ws.paths.index)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous_gen = current_generation(ws)
    write_atomic(ws.paths.current_generation, gen.encode())
    _prune(ws, keep={gen, previous_gen})
    return final


def _write_crowding(vectors: np.ndarray, rows: list[tuple[str, str]], previous: Previous | None, folder: Path) -> None:
    """Each row's crowding (see `crowding`): the previous generation's file when the rows are
    the same (it depends on nothing else), else computed afresh over every row."""
    if previous is not None and rows == previous.rows and (previous.dense.parent / CROWDING_FILE).exists():
        _link_or_copy(previous.dense.parent / CROWDING_FILE, folder / CROWDING_FILE)
        return
    crowding.save(folder, crowding.crowding(vectors, [sha for sha, _ in rows]))


def _write_background(vectors: np.ndarray, rows: list[tuple[str, str]], folder: Path) -> None:
    """A fixed sample of the rows' vectors: what unrelated photos score for a query (imgrag.index.background)."""
    background.save(folder, background.background_sample(vectors, [sha for sha, _ in rows]))


def _write_docs(path: Path, docs: list[Doc], keys: list[str]) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "CREATE TABLE docs (row INTEGER PRIMARY KEY, sha256 TEXT, paths TEXT, caption TEXT, "
            "text TEXT, lexical TEXT, taken TEXT, mtime INTEGER, vkey TEXT)"
        )
        db.executemany(
            "INSERT INTO docs VALUES (?,?,?,?,?,?,?,?,?)",
            [(i, d.sha256, json_bytes(d.paths).decode(), d.caption, d.text, d.lexical, d.taken, d.mtime, k)
             for i, (d, k) in enumerate(zip(docs, keys, strict=True))],
        )
    db.close()


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _prune(ws: Workspace, keep: set[str | None]) -> None:
    for child in ws.paths.index.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def current_generation(ws: Workspace) -> str | None:
    try:
        gen = (ws.paths.current_generation).read_text().strip()
    except FileNotFoundError:
        return None
    return gen or None


def read_meta(ws: Workspace) -> dict[str, Any] | None:
    gen = current_generation(ws)
    if gen is None:
        return None
    try:
        return json.loads((ws.paths.generation(gen) / GENERATION_META).read_text())
    except (OSError, ValueError):
        return None


def check_format(ws: Workspace, meta: dict[str, Any]) -> None:
    """An index this imgrag cannot read says which command fixes it."""
    fmt = meta.get("format")
    if fmt == INDEX_FORMAT:
        return
    if isinstance(fmt, int) and fmt > INDEX_FORMAT:
        raise UsageError(f"the index in {ws.root} was written by a newer imgrag (index format {fmt}, "
                         f"this one reads {INDEX_FORMAT}): upgrade imgrag, or run `{ws.embed_command('--rebuild')}`")
    raise UsageError(f"the index in {ws.root} has an older format ({fmt}; this imgrag reads {INDEX_FORMAT}): "
                     f"run `{ws.embed_command('--rebuild')}` (descriptions and cached vectors are kept)")


def open_dense(path: Path, plan: dict[str, Any]) -> DenseIndex:
    """Read a dense index for searching; IVF lists stay on disk, memory-mapped."""
    import faiss

    # A flat index is memory-mapped too where faiss can (IO_FLAG_MMAP_IFC, faiss >= 1.10):
    # reading 150 MB at 100k photos into a copy costs a search process ~0.1 s for nothing.
    flags = getattr(faiss, "IO_FLAG_MMAP_IFC", 0) if plan.get("type") == "flat" else faiss.IO_FLAG_MMAP
    index = faiss.read_index(str(path), flags)
    if hasattr(index, "invlists"):
        lists = faiss.downcast_InvertedLists(index.invlists)
        if hasattr(lists, "prefetch_nthread"):
            # Memory-mapped lists start 32 threads per search to read ahead the lists it
            # probes: 1.2 of a query's 1.45 ms at 100k photos, and worse with concurrent
            # searches. The pages are in the page cache after the first searches anyway.
            lists.prefetch_nthread = 0
    return DenseIndex(index)


def read_only_uri(path: Path) -> str:
    """SQLite's URI for opening `path` read-only (a '?', '#' or '%' in a folder name quoted)."""
    return f"file:{urllib.parse.quote(str(path))}?mode=ro"


def open_generation(ws: Workspace) -> Generation:
    """Open the current generation. An IVF index is memory-mapped: pages are read as queries touch them."""
    gen = current_generation(ws)
    if gen is None:
        if ws.writer_busy():  # another run's first build
            raise TryLater(f"{ws.root} has no search index yet: another imgrag is building it now; "
                                "search again when it has finished")
        described = ws.paths.descriptions.exists() and ws.paths.descriptions.stat().st_size > 0
        command = ws.command("embed" if described else "index")
        raise UsageError(f"{ws.root} has no search index yet: "
                         + (f"run `{command}`" if command else "run `imgrag index` on your photo folder"))
    folder = ws.paths.generation(gen)
    try:
        meta = json.loads((folder / GENERATION_META).read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"the index in {folder} is damaged ({e}): run `{ws.embed_command('--rebuild')}`") from None
    check_format(ws, meta)
    try:
        index = open_dense(folder / DENSE_FILE, meta.get("dense", {}))
        db, scan = (sqlite3.connect(read_only_uri(folder / GENERATION_DOCS), uri=True, check_same_thread=False)
                    for _ in range(2))
    except (OSError, RuntimeError, sqlite3.Error) as e:
        raise UsageError(f"the index in {folder} is damaged ({e}): run `{ws.embed_command('--rebuild')}`") from None
    return Generation(folder, meta, index, db, scan)
