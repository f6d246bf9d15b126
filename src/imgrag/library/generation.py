"""A library's published generation: what ranking needs beside each photo's own row, and the
object `imgrag.search.ranking` ranks (the same calls as a `.imgrag/` index generation).

The embed step publishes one over every embedded photo: the BM25 indexes (index.lexical),
each photo's crowding (index.crowding) and the background sample (index.background), made
by the same functions as a local index, and every photo's date and 1-bit code in date order
(imgrag.library.dated), kept as one zip in the `generations` table. A server reads the
newest whole, once, and asks PostgreSQL for the rest: the nearest photos (by pgvector's
HNSW index with the filters in the same SQL, or, for a folder, a date range or both, the
nearest codes scored exactly), and the few rows it shows.
Row numbers are positions in the generation's sorted photo ids."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tempfile
import threading
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgrag.errors import UsageError
from imgrag.index import background, crowding
from imgrag.index.generations import Doc
from imgrag.index.lexical import LexicalIndex, unique_rows, write_lexical
from imgrag.library.dated import DatedCodes, dated_files
from imgrag.store.paths import LEXICAL_DIR, VISIBLE_TEXT_DIR

# One advisory lock for publishing: two embed workers finishing at once publish one after the other.
_PUBLISH_LOCK = 0x696D67726168
KEEP_GENERATIONS = 2  # the newest, and the one servers may still be reading
HNSW_M, HNSW_EF_CONSTRUCTION = 16, 64  # pgvector's defaults
HNSW_EF_SEARCH = 200  # candidates the HNSW search keeps (search.ranking.DENSE_CANDIDATES): recall@10 >= 0.95
# Each searching connection's settings: a filter keeps the HNSW scan going (pgvector >= 0.8)
# until enough rows pass it, in roughly distance order (nearest() sorts them again).
# JIT compiling pays off for long analytic queries, never for these few-millisecond ones
# (pgvector's cost estimates cross jit_above_cost at a million rows). Each query is planned
# for its own parameters: a plan psycopg's prepared statements would keep for any --in
# folder cannot use the path index for `LIKE $1` (it scanned every copy).
SEARCH_SETTINGS = (f"SET hnsw.ef_search = {HNSW_EF_SEARCH}", "SET hnsw.iterative_scan = relaxed_order",
                   "SET jit = off", "SET plan_cache_mode = force_custom_plan")
_DOC_COLUMNS = "p.sha256, p.caption, p.text, p.lexical, p.taken, p.mtime, p.photo_time"  # docs() reads
# A filter passing at most this many photos is searched exactly, over those photos: faster than
# an HNSW scan that must visit ~depth/share rows to find `depth` that pass (bench/store_scale.py).
EXACT_MAX = 20_000
# A folder (--in, at most EXACT_MAX photos, in one --library or any), a date range
# (--after/--before, without --library), or both, are ranked by the Hamming distance of their
# photos' 1-bit codes, which each generation carries (imgrag.library.dated); this many times
# `depth` of the nearest, at least RERANK_MIN, are scored exactly: at 1M photos the top 10
# equals exact search's for 99.95% of held-out queries in a 10,000-photo folder and 100% in a
# 200,000-photo date range (bench/store_scale.py).
RERANK, RERANK_MIN = 3, 600
_PASSING_CHUNK = 256  # passing(): rows checked by the first query, growing 4x while too few pass


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
        rows = conn.execute("SELECT id, sha256, vkey, lexical, photo_time FROM photos p WHERE embedding IS NOT NULL "
                            "AND EXISTS (SELECT 1 FROM copies c WHERE c.photo = p.id) ORDER BY id").fetchall()
        signature = _signature(rows, embedding)
        newest = conn.execute("SELECT meta FROM generations ORDER BY id DESC LIMIT 1").fetchone()
        if newest is not None and newest[0].get("signature") == signature:
            return False
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        shas = [r[1] for r in rows]
        vectors = read_vectors(conn, ids, int(embedding["dim"]))
        parts = _parts(ids, shas, [r[3] or "" for r in rows], vectors, [r[4] for r in rows])
        from psycopg.types.json import Jsonb

        meta = {"embedding": embedding, "signature": signature, "count": len(rows)}
        conn.execute("INSERT INTO generations (count, meta, parts) VALUES (%s, %s, %s)", (len(rows), Jsonb(meta), parts))
        conn.execute("DELETE FROM generations WHERE id NOT IN (SELECT id FROM generations ORDER BY id DESC LIMIT %s)",
                     (KEEP_GENERATIONS,))
    return True


def _signature(rows: list[tuple], embedding: dict[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(embedding, sort_keys=True).encode())
    for r in rows:
        h.update(f"{r[0]}\0{r[2]}\0{r[3]}\0{r[4]}\n".encode("utf-8", "surrogatepass"))
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


def _parts(ids: np.ndarray, shas: list[str], lexical: list[str], vectors: np.ndarray, times: list[str | None]) -> bytes:
    """The generation's files, zipped: ids, crowding, background, both BM25 indexes, and the
    photos in date order with their 1-bit codes (imgrag.library.dated)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as z:
        for name, array in (("ids.npy", ids), ("crowding.npy", crowding.crowding(vectors, shas)),
                            ("background.npy", background.background_sample(vectors, shas))):
            data = io.BytesIO()
            np.save(data, array)
            z.writestr(name, data.getvalue())
        for name, content in dated_files(times, vectors).items():
            z.writestr(name, content)
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
    # The conditions on one copy (`copies c`) that --in sets, any of which passes it, each as
    # (sql, params): its photos are often few enough to search exactly (StoreGeneration.nearest).
    # only_copies: it is the only filter.
    copies: tuple[tuple[str, tuple], ...] | None = None
    only_copies: bool = False
    # --after/--before as photo_time text; dates_in_memory: they are given and the only other
    # filter, if any, is --in (a generation's dates can check them, StoreGeneration._date_span)
    after: str | None = None
    before: str | None = None
    dates_in_memory: bool = False

    @property
    def active(self) -> bool:
        return bool(self.where)

    @property
    def dates(self) -> tuple[str, tuple]:
        """The date conditions alone: what is left to check of photos --in passes."""
        return date_conditions(self.after, self.before)


def date_conditions(after: str | None, before: str | None) -> tuple[str, tuple]:
    """--after/--before (photo_time text) as SQL over `photos p`, and its params."""
    clauses = [sql for sql, bound in (("p.photo_time >= %s", after), ("p.photo_time < %s", before)) if bound is not None]
    return " AND ".join(clauses), tuple(bound for bound in (after, before) if bound is not None)


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
        # binary: a vector's text form costs more to parse in Python than the query takes
        found = g.query("SELECT id, embedding FROM photos WHERE id = ANY(%s)", (ids.tolist(),), binary=True)
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
        self.dated = DatedCodes.from_files(files, len(self.ids))
        # Each photo id's row (-1: none), when ids are dense enough: a folder's 10,000 ids are
        # then rows in one gather, where a binary search of each in a million took 1 ms.
        self._row_at_id: np.ndarray | None = None
        if len(self.ids) and int(self.ids[-1]) < 4 * len(self.ids) + 1024:
            self._row_at_id = np.full(int(self.ids[-1]) + 1, -1, dtype=np.int32)
            self._row_at_id[self.ids] = np.arange(len(self.ids), dtype=np.int32)
        self.dim = int(meta["embedding"]["dim"])
        self.index = _Dense(self)
        self._located = threading.local()  # each search thread's rows just located (locate, docs)
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

    def query(self, sql: str, params: Any = (), *, binary: bool = False) -> list[tuple]:
        with self.pool.connection() as conn:
            return conn.execute(sql, params, binary=binary).fetchall()

    def rows_of(self, ids: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, which) of photo ids: `which` marks the ids this generation has (photos
        embedded after it was published wait for the next one)."""
        ids = np.asarray(ids, dtype=np.int64)
        if self._row_at_id is not None:
            at = np.clip(ids, 0, len(self._row_at_id) - 1)
            rows = self._row_at_id[at].astype(np.int64)
            return rows, (at == ids) & (rows >= 0)
        rows = np.searchsorted(self.ids, ids)
        which = rows < len(self.ids)
        which[which] = self.ids[rows[which]] == ids[which]
        return rows, which

    def nearest(self, query: np.ndarray, depth: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The nearest photos that pass the filters, by exact inner product: a folder or a date
        range or both by the generation's codes (imgrag.library.dated), few photos exactly, and
        otherwise pgvector's HNSW search with the filters in the same SQL (iterative scans
        keep looking until enough rows pass them)."""
        dim = self.dim
        depth = min(self.size, max(depth, 1))  # --all asks for sys.maxsize
        few = self._few_photos()
        # passing() of this search's exact words reads them: the folder's ids, and its rows as a mask
        self._located.few = (self.filters, few)
        self._located.folder_mask = None if few is None else self._mask_of(few)
        span = self._date_span()
        if self.dated is not None and (span is not None or self.filters.only_copies) \
                and (self.filters.copies is None or few is not None):
            # The photos in the date range, the folder, or both, nearest by their codes, the
            # few hundred nearest scored exactly (a date filter stays in that SQL).
            rows = None if allowed is None else np.asarray(allowed, dtype=np.int64)
            if few is not None:
                in_folder, which = self.rows_of(few)
                rows = in_folder[which] if rows is None else np.intersect1d(in_folder[which], rows)
            near = self.dated.nearest(query[0], self._rerank(depth), span=span, rows=rows)
            return self._exact(query, depth, None, np.sort(self.ids[near]))
        if few is not None or (self.filters.active and self.filters.copies is None and self._few_pass()):
            return self._exact(query, depth, allowed, few)
        where = f" AND {self.filters.where}" if self.filters.active else ""
        if allowed is not None:
            where += " AND p.id = ANY(%s)"
        # ORDER BY the output column: the distance is computed once per row (the HNSW index
        # matches it all the same), and the planner reads a selective filter's few rows exactly.
        sql = (f"SELECT p.id, (p.embedding::vector({dim})) <#> %s::vector({dim}) AS distance FROM photos p "
               f"WHERE p.embedding IS NOT NULL{where} ORDER BY distance LIMIT %s")
        from pgvector import Vector

        vec = Vector(np.asarray(query[0], dtype=np.float32))
        params: list[Any] = [vec, *self.filters.params]
        if allowed is not None:
            params.append(self.ids[allowed].tolist())
        params.append(depth)
        with self.pool.connection() as conn:
            # The pool's connections search with ef_search = HNSW_EF_SEARCH and iterative scans
            # (search_settings): one round trip, unless --all or a deep page asks for more.
            if depth > HNSW_EF_SEARCH:
                with conn.transaction():
                    conn.execute(f"SET LOCAL hnsw.ef_search = {min(1000, depth)}")
                    found = conn.execute(sql, params, binary=True).fetchall()
            else:
                found = conn.execute(sql, params, binary=True).fetchall()
        ids = np.array([f[0] for f in found], dtype=np.int64)
        scores = -np.array([f[1] for f in found], dtype=np.float32)  # <#> is the negative inner product
        rows, which = self.rows_of(ids)
        rows, scores = rows[which], scores[which]
        best = np.argsort(-scores, kind="stable")  # relaxed_order may return them a little out of order
        return rows[best], scores[best]

    @staticmethod
    def _rerank(depth: int) -> int:
        """How many of the nearest by Hamming distance are scored exactly (RERANK)."""
        return max(RERANK * depth, RERANK_MIN)

    def _date_span(self) -> tuple[int, int] | None:
        """[lo, hi) of a date filter (--after/--before, alone or with --in) in the generation's
        date order, when it has one (a generation published by an older imgrag has not)."""
        if self.dated is None or not self.filters.dates_in_memory:
            return None
        return self.dated.span(self.filters.after, self.filters.before)

    def passes_nothing(self) -> bool:
        """Whether no photo of this generation passes the filters: asked when a search found
        nothing, so that it says why."""
        if not self.filters.active:
            return False
        span = self._date_span()
        if span is not None:
            return span[0] == span[1]
        found = self.query(f"SELECT p.id FROM photos p WHERE p.embedding IS NOT NULL AND {self.filters.where} LIMIT 1",
                           self.filters.params)
        return not found

    def _few_photos(self) -> np.ndarray | None:
        """The ids of the photos with a copy --in passes, sorted, when there are at most
        EXACT_MAX of them (a folder of a large library); None otherwise."""
        if self.filters.copies is None:
            return None
        # One index-only scan of the path index per condition (an OR would visit every copy's page).
        sql = " UNION ALL ".join(f"(SELECT c.photo FROM copies c WHERE {where} LIMIT %s)" for where, _ in self.filters.copies)
        params = [p for _, each in self.filters.copies for p in (*each, EXACT_MAX + 1)]
        # one bytea of 8-byte integers, not a row (a Python tuple) nor an int per photo
        packed = self.query(f"SELECT string_agg(int8send(f.photo), ''::bytea) FROM ({sql}) f", params, binary=True)[0][0]
        found = np.frombuffer(packed or b"", dtype=">i8").astype(np.int64)
        return None if len(found) > EXACT_MAX else unique_rows(found)

    def _few_pass(self) -> bool:
        """Whether the planner expects at most EXACT_MAX photos to pass the filters (a
        narrow date range): its estimate, from the date index's statistics."""
        plan = self.query(f"EXPLAIN (FORMAT JSON) SELECT 1 FROM photos p WHERE p.embedding IS NOT NULL "
                          f"AND {self.filters.where}", self.filters.params)[0][0]
        plan = json.loads(plan) if isinstance(plan, str) else plan
        return float(plan[0]["Plan"]["Plan Rows"]) <= EXACT_MAX

    def _exact(self, query: np.ndarray, depth: int, allowed: np.ndarray | None,
               few: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """nearest() over the few photos that pass the filters (`few`: their ids, when
        known): every one's inner product, ordered by the score, not by the distance the
        HNSW index serves, so that the planner reads just these rows. An HNSW scan would
        step over ~depth/share rows to find `depth` that pass, and iterative scans grow
        slow past a few thousand (a 6% date range took 0.2-0.7 s at 200k photos)."""
        dim = self.dim
        from pgvector import Vector

        vec = Vector(np.asarray(query[0], dtype=np.float32))
        where = ""
        params: list[Any] = [vec]
        if few is not None:
            if allowed is not None:
                few = np.intersect1d(few, self.ids[allowed])
            where += " AND p.id = ANY(%s::bigint[])"
            params.append(_int_array(few))
        elif allowed is not None:
            where += " AND p.id = ANY(%s)"
            params.append(self.ids[allowed].tolist())
        # the photos --in passes were read (few): only the dates, if any, are left to check
        condition, condition_params = (self.filters.where, self.filters.params) if few is None else self.filters.dates
        if condition:
            where += f" AND {condition}"
            params += condition_params
        params.append(depth)
        sql = (f"SELECT p.id, -((p.embedding::vector({dim})) <#> %s::vector({dim})) AS score FROM photos p "
               f"WHERE p.embedding IS NOT NULL{where} ORDER BY score DESC, p.id LIMIT %s")
        found = self.query(sql, params, binary=True)
        ids = np.array([f[0] for f in found], dtype=np.int64)
        scores = np.array([f[1] for f in found], dtype=np.float32)
        rows, which = self.rows_of(ids)
        return rows[which], scores[which]

    def passing(self, rows: np.ndarray, enough: int | None = None) -> np.ndarray:
        """The rows the filters pass, in order; with `enough`, at least the first that many
        of them (or all): a query's exact words may match tens of thousands of rows, of which
        ranking wants the best few that pass, so they are checked a chunk at a time."""
        if not self.filters.active or not len(rows):
            return rows
        check = self._in_memory_check() or self._passing
        if enough is None:
            return check(rows)
        # a chunk at a time here too: the exact words' rows are often 10^5 at 1M photos
        kept: list[np.ndarray] = []
        start, size, count = 0, max(_PASSING_CHUNK, 4 * enough), 0
        while start < len(rows) and count < enough:
            kept.append(check(rows[start : start + size]))
            count += len(kept[-1])
            start, size = start + size, size * 4
        return np.concatenate(kept)

    @property
    def filters_in_memory(self) -> bool:
        """Whether passing() checks rows without a query (so every row at once costs little)."""
        return not self.filters.active or self._in_memory_check() is not None

    def _in_memory_check(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """passing()'s check without a query: the folder's rows nearest() read (as a mask
        over the generation's rows), the generation's dates; None when only
        SQL can tell (--library without --in, a large folder, a generation without dates)."""
        filters, few = getattr(self._located, "few", (None, None))
        known = self.filters.copies is not None and filters == self.filters and few is not None
        span, dated = self._date_span(), self.dated
        if (self.filters.copies is not None and not known) or (span is None and not self.filters.only_copies):
            return None
        mask = self._located.folder_mask if known else None

        def check(part: np.ndarray) -> np.ndarray:
            if mask is not None:
                part = part[mask[part]]
            if span is not None and dated is not None:
                part = part[dated.passes(part, span)]
            return part

        return check

    def _mask_of(self, ids: np.ndarray) -> np.ndarray:
        """The generation's rows of these photo ids, as a mask over every row."""
        rows, which = self.rows_of(ids)
        mask = np.zeros(self.size, dtype=bool)
        mask[rows[which]] = True
        return mask

    def _passing(self, rows: np.ndarray) -> np.ndarray:
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
        # A search reads the rows it shows right after locating them (ranking.read_hits):
        # the same query reads both, and this thread's docs() takes them from here.
        found = self._fetch(_DOC_COLUMNS, rows)
        self._located.rows = found
        return {row: (list(f[7]), f[6]) for row, f in found.items()}

    def docs(self, rows: Any) -> dict[int, Doc]:
        rows = list(rows)
        found, self._located.rows = getattr(self._located, "rows", None) or {}, None
        if not all(row in found for row in rows):
            found = self._fetch(_DOC_COLUMNS, rows)
        return {row: Doc(f[0], list(f[7]), f[1] or "", f[2] or "", f[3] or "", f[4], f[5], f[6])
                for row in rows if (f := found.get(row)) is not None}

    def row_of_sha(self, sha: str) -> tuple[int, str] | None:
        """(row, caption) of a photo by its content hash, if this generation has it."""
        found = self.query("SELECT id, caption FROM photos WHERE sha256 = %s", (sha,))
        if not found:
            return None
        rows, which = self.rows_of([found[0][0]])
        return (int(rows[0]), found[0][1] or "") if which[0] else None


def _int_array(ids: np.ndarray) -> str:
    """Ids as one array literal: psycopg adapts a list element by element in Python (14 ms
    for a folder of 10,000 photos), this joins them in one go."""
    return "{" + ",".join(map(str, ids.tolist())) + "}"


def _under(files: dict[str, bytes], folder: str) -> dict[str, bytes]:
    prefix = folder + "/"
    return {n[len(prefix):]: data for n, data in files.items() if n.startswith(prefix)}
