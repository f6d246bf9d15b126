"""The search index: a FAISS index of photo vectors plus a SQLite table of what each row is.

Each build is written whole into a new folder `.imgrag/index/<generation>/`; the file
`.imgrag/index/CURRENT` is then atomically replaced to name it. A search reads CURRENT
once and opens that generation, so it sees the old index or the new one, never half of
either. The previous generation is kept for searches that were already reading it."""

from __future__ import annotations

import json
import shutil
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError
from .workspace import Workspace, fsync_dir, write_atomic

INDEX_FORMAT = 1


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


@dataclass
class Bundle:
    folder: Path
    meta: dict[str, Any]
    index: Any  # faiss.Index
    db: sqlite3.Connection

    @property
    def size(self) -> int:
        return int(self.index.ntotal)

    def docs(self, rows: Sequence[int]) -> dict[int, Doc]:
        if not rows:
            return {}
        marks = ",".join("?" * len(rows))
        cur = self.db.execute(
            f"SELECT row, sha256, paths, caption, text, lexical, taken, mtime FROM docs WHERE row IN ({marks})",
            [int(r) for r in rows],
        )
        return {r[0]: Doc(r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in cur}


def build_faiss(vectors: np.ndarray) -> Any:
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def write_bundle(ws: Workspace, docs: list[Doc], vectors: np.ndarray, meta: dict[str, Any]) -> Path:
    """Write a new generation and make it current."""
    import faiss

    ws.index_dir.mkdir(parents=True, exist_ok=True)
    gen = f"{time.time_ns():x}"
    tmp = ws.index_dir / f".{gen}.tmp"
    tmp.mkdir()
    try:
        faiss.write_index(build_faiss(vectors), str(tmp / "dense.faiss"))
        _write_docs(tmp / "docs.sqlite", docs)
        meta = {**meta, "format": INDEX_FORMAT, "count": len(docs), "generation": gen}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        for f in tmp.iterdir():
            _fsync_file(f)
        final = ws.index_dir / gen
        tmp.rename(final)
        fsync_dir(ws.index_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    previous = current_generation(ws)
    write_atomic(ws.index_dir / "CURRENT", gen.encode())
    _prune(ws, keep={gen, previous})
    return final


def _write_docs(path: Path, docs: list[Doc]) -> None:
    db = sqlite3.connect(path)
    with db:
        db.execute(
            "CREATE TABLE docs (row INTEGER PRIMARY KEY, sha256 TEXT, paths TEXT, caption TEXT, "
            "text TEXT, lexical TEXT, taken TEXT, mtime INTEGER)"
        )
        db.executemany(
            "INSERT INTO docs VALUES (?,?,?,?,?,?,?,?)",
            [(i, d.sha256, json.dumps(d.paths, ensure_ascii=False), d.caption, d.text, d.lexical, d.taken, d.mtime)
             for i, d in enumerate(docs)],
        )
    db.close()


def _fsync_file(path: Path) -> None:
    import os

    with path.open("rb") as f:
        os.fsync(f.fileno())


def _prune(ws: Workspace, keep: set[str | None]) -> None:
    for child in ws.index_dir.iterdir():
        if child.is_dir() and child.name not in keep:
            shutil.rmtree(child, ignore_errors=True)


def current_generation(ws: Workspace) -> str | None:
    try:
        gen = (ws.index_dir / "CURRENT").read_text().strip()
    except FileNotFoundError:
        return None
    return gen or None


def read_meta(ws: Workspace) -> dict[str, Any] | None:
    gen = current_generation(ws)
    if gen is None:
        return None
    try:
        return json.loads((ws.index_dir / gen / "meta.json").read_text())
    except (OSError, ValueError):
        return None


def load_bundle(ws: Workspace) -> Bundle:
    import faiss

    gen = current_generation(ws)
    if gen is None:
        raise UsageError(f"{ws.root} has no search index yet: run `imgrag embed {ws.base}/PHOTOS` (or `imgrag index`)")
    folder = ws.index_dir / gen
    try:
        meta = json.loads((folder / "meta.json").read_text())
        index = faiss.read_index(str(folder / "dense.faiss"))
        db = sqlite3.connect(f"file:{folder / 'docs.sqlite'}?mode=ro", uri=True, check_same_thread=False)
    except (OSError, ValueError, RuntimeError, sqlite3.Error) as e:
        raise UsageError(f"the index in {folder} is damaged ({e}): run `imgrag embed --rebuild PHOTOS`") from None
    if meta.get("format") != INDEX_FORMAT:
        raise UsageError(
            f"the index in {ws.root} has format {meta.get('format')}, this imgrag reads {INDEX_FORMAT}: "
            "run `imgrag embed --rebuild PHOTOS`"
        )
    return Bundle(folder, meta, index, db)
