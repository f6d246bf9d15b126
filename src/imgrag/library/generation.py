"""A library's published generation: what ranking needs beside each photo's own row, and the
object `imgrag.search.ranking` ranks (the same calls as a `.imgrag/` index generation).

The embed step publishes one over every embedded photo: the BM25 indexes (index.lexical),
each photo's crowding (index.crowding) and the background sample (index.background), made
by the same functions as a local index and kept as one zip in the `generations` table. A
server reads the newest whole, once, and asks PostgreSQL for the rest: the nearest photos
by pgvector's HNSW index with the filters in the same SQL, and the few rows it shows.
Row numbers are positions in the generation's sorted photo ids."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgrag.errors import UsageError
from imgrag.index import background, crowding
from imgrag.index.generations import Doc
from imgrag.index.lexical import LexicalIndex, write_lexical
from imgrag.store.paths import LEXICAL_DIR, VISIBLE_TEXT_DIR

# One advisory lock for publishing: two embed workers finishing at once publish one after the other.
_PUBLISH_LOCK = 0x696D67726168
KEEP_GENERATIONS = 2  # the newest, and the one servers may still be reading
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64  # pgvector's defaults
HNSW_EF_SEARCH = 200  # candidates the HNSW search keeps (search.ranking.DENSE_CANDIDATES): recall@10 >= 0.95
# Each searching connection's settings: a filter keeps the HNSW scan going (pgvector >= 0.8)
# until enough rows pass it, in roughly distance order (nearest() sorts them again).
SEARCH_SETTINGS = (f"SET hnsw.ef_search = {HNSW_EF_SEARCH}", "SET hnsw.iterative_scan = relaxed_order")


def embedding_of(conn: Any) -> dict[str, Any] | None:
    found = conn.execute("SELECT value FROM imgrag_settings WHERE key = 'embedding'").fetchone()
    return found[0] if found else None


def set_embedding(conn: Any, embedding: dict[str, Any], name: str) -> dict[str, Any]:
    """The library's embedding model: the first writer sets it, later writers must match it
    (vectors of two models cannot be ranked together). Creates the HNSW index for its dimension."""
    from psycopg.types.json import Jsonb

    with conn.transaction():
        conn.execute("INSERT INTO imgrag_settings (key, value) VALUES ('embedding', %s) ON CONFLICT DO NOTHING",
                     (Jsonb(embedding),))
        known = embedding_of(conn)
    assert known is not None
    if (known["model"], known.get("fingerprint"), known["dim"]) != (embedding["model"], embedding.get("fingerprint"),
                                                                    embedding["dim"]):
        raise UsageError(f"the store {name} is embedded with {known['model']!r}, not {embedding['model']!r}: "
                         "use the same IMGRAG_EMBED_MODEL on every machine")
    ensure_hnsw(conn, int(known["dim"]))
    return known


def ensure_hnsw(conn: Any, dim: int) -> None:
    # An expression index: the column takes any dimension, the index (and every query) this one.
    conn.execute(f"CREATE INDEX IF NOT EXISTS photos_embedding_hnsw ON photos USING hnsw "
                 f"((embedding::vector({dim})) vector_ip_ops) WITH (m = {HNSW_M}, ef_construction = {HNSW_EF_CONSTRUCTION})")
    conn.commit()


# -- publishing --------------------------------------------------------------------------------


def publish(conn: Any) -> bool:
    """Publish a generation of every embedded photo that has a copy somewhere, unless the
    newest already is one of exactly these rows; True when a new one was written."""
    embedding = embedding_of(conn)
    if embedding is None:
        return False
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PUBLISH_LOCK,))
        # A photo whose every copy is gone (imgrag.library.workers.forget_vanished) is left out.
        rows = conn.execute("SELECT id, sha256, vkey, lexical FROM photos p WHERE embedding IS NOT NULL "
                            "AND EXISTS (SELECT 1 FROM copies c WHERE c.photo = p.id) ORDER BY id").fetchall()
        signature = _signature(rows, embedding)
        newest = conn.execute("SELECT meta FROM generations ORDER BY id DESC LIMIT 1").fetchone()
        if newest is not None and newest[0].get("signature") == signature:
            return False
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        shas = [r[1] for r in rows]
        vectors = read_vectors(conn, ids, int(embedding["dim"]))
        parts = _parts(ids, shas, [r[3] or "" for r in rows], vectors)
        from psycopg.types.json import Jsonb

        meta = {"embedding": embedding, "signature": signature, "count": len(rows)}
        conn.execute("INSERT INTO generations (count, meta, parts) VALUES (%s, %s, %s)", (len(rows), Jsonb(meta), parts))
        conn.execute("DELETE FROM generations WHERE id NOT IN (SELECT id FROM generations ORDER BY id DESC LIMIT %s)",
                     (KEEP_GENERATIONS,))
    return True


def _signature(rows: list[tuple], embedding: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(embedding, sort_keys=True).encode())
    for r in rows:
        h.update(f"{r[0]}\0{r[2]}\0{r[3]}\n".encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:32]


def read_vectors(conn: Any, ids: np.ndarray, dim: int) -> np.ndarray:
    """The vectors of these photo ids, in that order (binary COPY: a million in seconds)."""
    out = np.zeros((len(ids), dim), dtype=np.float32)
    if not len(ids):
        return out
    from pgvector import Vector

    at = {int(i): n for n, i in enumerate(ids.tolist())}
    with conn.cursor() as cur, cur.copy("COPY (SELECT id, embedding FROM photos WHERE embedding IS NOT NULL) "
                                        "TO STDOUT (FORMAT BINARY)") as copy_out:
        copy_out.set_types(["int8", "vector"])
        for photo, vector in copy_out.rows():
            n = at.get(int(photo))
            if n is not None:
                out[n] = vector.to_numpy() if isinstance(vector, Vector) else np.asarray(vector, np.float32)
    return out


def _parts(ids: np.ndarray, shas: list[str], lexical: list[str], vectors: np.ndarray) -> bytes:
    """The generation's files, zipped: ids, crowding, background, and both BM25 indexes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, array in (("ids.npy", ids), ("crowding.npy", crowding.crowding(vectors, shas)),
                            ("background.npy", background.background_sample(vectors, shas))):
            data = io.BytesIO()
            np.save(data, array)
            z.writestr(name, data.getvalue())
        if lexical:
            with tempfile.TemporaryDirectory(prefix="imgrag-publish-") as tmp:
                write_lexical(Path(tmp), lexical)
                for f in sorted(Path(tmp).rglob("*")):
                    if f.is_file():
                        z.writestr(f.relative_to(tmp).as_posix(), f.read_bytes())
    return buffer.getvalue()


# -- reading ---------------------------------------------------------------------------------


def newest_generation(conn: Any) -> tuple[int, dict[str, Any], bytes] | None:
    found = conn.execute("SELECT id, meta, parts FROM generations ORDER BY id DESC LIMIT 1").fetchone()
    return None if found is None else (int(found[0]), found[1], bytes(found[2]))


def searchable_count(conn: Any) -> int:
    """How many photos the newest published generation holds (0 before the first)."""
    with conn.transaction():
        found = conn.execute("SELECT count FROM generations ORDER BY id DESC LIMIT 1").fetchone()
    return int(found[0]) if found else 0


def newest_id(conn: Any) -> int | None:
    found = conn.execute("SELECT max(id) FROM generations").fetchone()
    return None if found is None or found[0] is None else int(found[0])


@dataclass(frozen=True)
class StoreFilters:
    """A search's filters as SQL over `photos p` (the store's --in/--after/--before/--library)."""

    where: str = ""
    params: tuple = ()
    library: str | None = None  # --library: only this library's copies are shown

    @property
    def active(self) -> bool:
        return bool(self.where)


class _Dense:
    """What ranking reads from a dense index (`ntotal`, `reconstruct_batch`), from PostgreSQL."""

    def __init__(self, generation: StoreGeneration) -> None:
        self.generation = generation

    @property
    def ntotal(self) -> int:
        return self.generation.size

    def reconstruct_batch(self, rows: np.ndarray) -> np.ndarray:
        g = self.generation
        ids = g.ids[np.asarray(rows, dtype=np.int64)]
        found = g.query("SELECT id, embedding FROM photos WHERE id = ANY(%s)", (ids.tolist(),))
        by_id = {int(i): np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, np.float32) for i, v in found}
        return np.stack([by_id[int(i)] for i in ids]) if len(ids) else np.zeros((0, g.dim), np.float32)

    def reconstruct(self, row: int) -> np.ndarray:
        return self.reconstruct_batch(np.array([row]))[0]


class StoreGeneration:
    """One published generation, open for searching through a connection pool."""

    def __init__(self, pool: Any, gen_id: int, meta: dict[str, Any], parts: bytes,
                 filters: StoreFilters | None = None) -> None:
        self.pool = pool
        self.id = gen_id
        self.meta = meta
        self.filters = filters or StoreFilters()
        with zipfile.ZipFile(io.BytesIO(parts)) as z:
            files = {n: z.read(n) for n in z.namelist()}
        self.ids = np.load(io.BytesIO(files["ids.npy"]))
        self.crowding = np.load(io.BytesIO(files["crowding.npy"]))
        sample = np.load(io.BytesIO(files["background.npy"]))
        self.background = sample.astype(np.float32) if len(sample) else None
        self.lexical = LexicalIndex.from_files(_under(files, LEXICAL_DIR))
        self.visible_text = LexicalIndex.from_files(_under(files, VISIBLE_TEXT_DIR))
        self.dim = int(meta["embedding"]["dim"])
        self.index = _Dense(self)
        # absolute_paths() joins stored paths to <folder>/../../..: a library's paths are absolute already
        self.folder = Path("/imgrag/index/store")

    @property
    def size(self) -> int:
        return len(self.ids)

    @property
    def filtered(self) -> bool:
        return self.filters.active

    def with_filters(self, filters: StoreFilters) -> StoreGeneration:
        other = copy.copy(self)  # shares the loaded parts
        other.filters = filters
        other.index = _Dense(other)
        return other

    def close(self) -> None:
        """Nothing of its own to close: the pool is the library's."""

    def query(self, sql: str, params: Any = ()) -> list[tuple]:
        with self.pool.connection() as conn:
            return conn.execute(sql, params).fetchall()

    def rows_of(self, ids: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, which) of photo ids: `which` marks the ids this generation has (photos
        embedded after it was published wait for the next one)."""
        ids = np.asarray(ids, dtype=np.int64)
        rows = np.searchsorted(self.ids, ids)
        which = rows < len(self.ids)
        which[which] = self.ids[rows[which]] == ids[which]
        return rows, which

    def nearest(self, query: np.ndarray, depth: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """pgvector's HNSW search, with the filters in the same SQL (iterative scans keep
        looking until enough rows pass them), re-ordered by exact inner product."""
        dim = self.dim
        depth = min(self.size, max(depth, 1))  # --all asks for sys.maxsize
        where = f" AND {self.filters.where}" if self.filters.active else ""
        if allowed is not None:
            where += " AND p.id = ANY(%s)"
        sql = (f"SELECT p.id, -((p.embedding::vector({dim})) <#> %s::vector({dim})) FROM photos p "
               f"WHERE p.embedding IS NOT NULL{where} ORDER BY (p.embedding::vector({dim})) <#> %s::vector({dim}) "
               f"LIMIT %s")
        from pgvector import Vector

        vec = Vector(np.asarray(query[0], dtype=np.float32))
        params: list[Any] = [vec, *self.filters.params]
        if allowed is not None:
            params.append(self.ids[allowed].tolist())
        params += [vec, depth]
        with self.pool.connection() as conn:
            # The pool's connections search with ef_search = HNSW_EF_SEARCH and iterative scans
            # (search_settings): one round trip, unless --all or a deep page asks for more.
            if depth > HNSW_EF_SEARCH:
                with conn.transaction():
                    conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, depth)}")
                    found = conn.execute(sql, params).fetchall()
            else:
                found = conn.execute(sql, params).fetchall()
        ids = np.array([f[0] for f in found], dtype=np.int64)
        scores = np.array([f[1] for f in found], dtype=np.float32)
        rows, which = self.rows_of(ids)
        rows, scores = rows[which], scores[which]
        best = np.argsort(-scores, kind="stable")  # relaxed_order may return them a little out of order
        return rows[best], scores[best]

    def passing(self, rows: np.ndarray) -> np.ndarray:
        if not self.filters.active or not len(rows):
            return rows
        ids = self.ids[rows]
        found = {int(r[0]) for r in self.query(f"SELECT p.id FROM photos p WHERE p.id = ANY(%s) AND {self.filters.where}",
                                               (ids.tolist(), *self.filters.params))}
        return rows[np.fromiter((int(i) in found for i in ids), bool, len(ids))]

    def _fetch(self, columns: str, rows: Any) -> dict[int, tuple]:
        rows = np.asarray(list(rows), dtype=np.int64)
        if not len(rows):
            return {}
        ids = self.ids[rows]
        library = self.filters.library
        found = self.query(f"SELECT p.id, {columns}, ARRAY(SELECT c.path FROM copies c WHERE c.photo = p.id "
                           f"{'AND c.library = %s ' if library else ''}ORDER BY c.library, c.path) FROM photos p "
                           "WHERE p.id = ANY(%s)", (*([library] if library else []), ids.tolist()))
        row_of = dict(zip(ids.tolist(), rows.tolist(), strict=True))
        return {row_of[int(f[0])]: tuple(f[1:]) for f in found}

    def locate(self, rows: Any) -> dict[int, tuple[list[str], str | None]]:
        return {row: (list(f[1]), f[0]) for row, f in self._fetch("p.photo_time", rows).items()}

    def docs(self, rows: Any) -> dict[int, Doc]:
        found = self._fetch("p.sha256, p.caption, p.text, p.lexical, p.taken, p.mtime, p.photo_time", rows)
        return {row: Doc(f[0], list(f[7]), f[1] or "", f[2] or "", f[3] or "", f[4], f[5], f[6])
                for row, f in found.items()}

    def row_of_sha(self, sha: str) -> tuple[int, str] | None:
        """(row, caption) of a photo by its content hash, if this generation has it."""
        found = self.query("SELECT id, caption FROM photos WHERE sha256 = %s", (sha,))
        if not found:
            return None
        rows, which = self.rows_of([found[0][0]])
        return (int(rows[0]), found[0][1] or "") if which[0] else None


def _under(files: dict[str, bytes], folder: str) -> dict[str, bytes]:
    prefix = folder + "/"
    return {n[len(prefix):]: data for n, data in files.items() if n.startswith(prefix)}
