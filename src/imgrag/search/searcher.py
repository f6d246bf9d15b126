"""The long-lived `Searcher`: one open index generation for any number of searches, with
the query encoder loaded on the first text query and kept. `imgrag search` (and
`--queries-from`), `imgrag ask`, and a server (through `imgrag.search.live`) search with it."""

from __future__ import annotations

import copy
import functools
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from imgrag.errors import UsageError
from imgrag.index import crosslingual
from imgrag.index.embedding import resolve_model_name
from imgrag.index.generations import Generation, open_generation
from imgrag.index.query_encoder import QueryEncoder, open_encoder
from imgrag.search.cutoff import DEFAULT_CUTOFF, MULTILINGUAL_CUTOFF, Cutoff
from imgrag.search.filters import Filters, allowed_rows
from imgrag.search.ranking import Hit, SearchOptions, absolute_paths, rank_rows, read_hits
from imgrag.store.workspace import Workspace

MAX_QUERY_CHARS = 2000  # far past the encoder's window: the rest cannot change the vector


def clean_query(query: str) -> str:
    query = " ".join(query.split())
    if not query:
        raise UsageError("the query is empty: say what to look for, e.g. imgrag search \"dog on beach\"")
    return query[:MAX_QUERY_CHARS]


def open_index(ws: Workspace, embed_model: str | None) -> Generation:
    """The current index, refusing one made with another model than the one configured."""
    generation = open_generation(ws)
    built_with = generation.meta.get("embedding", {}).get("model")
    if embed_model and built_with and embed_model != built_with and resolve_model_name(embed_model) != built_with:
        raise UsageError(
            f"the index in {ws.root} was embedded with {built_with!r}, but IMGRAG_EMBED_MODEL is {embed_model!r}: "
            f"run `{ws.embed_command('--rebuild')}` to re-embed, or unset it"
        )
    return generation


ALLOWED_CACHE_SIZE = 64  # filter sets whose passing rows an open index remembers (web server)
QUERY_CACHE_SIZE = 1024  # query vectors an open index remembers: 1.5 MB at 384 dimensions


@dataclass(frozen=True)
class Window:
    """Which of a search's hits to read: [start:stop] of them (their ranks stay those of the
    whole list), after ordering them newest first when `by_date` (imgrag.search.request)."""

    start: int = 0
    stop: int | None = None
    by_date: bool = False


class QueryVectors:
    """Queries' vectors, the last QUERY_CACHE_SIZE remembered: the same query comes back for
    its next page, another filter or sort, and popular words from many people, and
    embedding it again costs more than ranking it (lru_cache: safe across threads)."""

    def __init__(self, encoder: QueryEncoder) -> None:
        self.encoder = encoder

        def encode(query: str) -> np.ndarray:
            vector = encoder.encode([query])[0]
            vector.flags.writeable = False  # shared by every search of this query
            return vector

        # A closure over the encoder, not a bound method: no cycle keeps a dropped model alive.
        self.get = functools.lru_cache(QUERY_CACHE_SIZE)(encode)
        multilingual = getattr(encoder, "multilingual", None)
        self.multilingual = functools.lru_cache(QUERY_CACHE_SIZE)(multilingual) if multilingual else None

    def cutoff(self, query: str) -> Cutoff:
        """The default set's bar for this query: a query the multilingual model embeds
        scores lower against the photos it means than an English one (imgrag.search.cutoff)."""
        return MULTILINGUAL_CUTOFF if self.multilingual is not None and self.multilingual(query) else DEFAULT_CUTOFF


class Searcher:
    """An open index for any number of searches; the query encoder is loaded on the first
    text query and kept (so `--queries-from` pays for the model once, and `--like` never)."""

    def __init__(self, *, index: Path | None, embed_model: str | None, filters: Filters | None = None,
                 query_encoder: str = "auto") -> None:
        """`embed_model`: the model the user chose (Settings.embed_model; an index made with
        another is refused); `query_encoder`: Settings.query_encoder."""
        self.ws = Workspace.find(Path.cwd(), index)
        self.query_encoder = query_encoder
        self.generation = open_index(self.ws, embed_model)
        self.allowed = allowed_rows(self.generation, self.ws, filters or Filters())
        self.inside = _inside(self.ws, filters)  # --in: the copies inside it are the ones shown
        self.missing: set[str] = set()  # indexed files found gone while searching (see _rank)
        # A server is asked the same few filters again and again, and the rows that pass them
        # stay the same for this index generation: select them once (at 100k photos the SQL
        # takes ~50 ms, several times the search itself). Not an lru_cache of a closure over
        # self: that cycle kept a replaced generation open until the garbage collector ran.
        self._allowed_by_filters: dict[Filters, set[int] | None] = {}
        self._allowed_lock = threading.Lock()
        self._vectors: QueryVectors | None = None  # the query encoder and its vectors, from the first text query

    def encoder(self) -> QueryEncoder:
        return self._query_vectors().encoder

    def _query_vectors(self) -> QueryVectors:
        """The query encoder, with the vectors it made, loaded on first use."""
        if self._vectors is None:
            # The ONNX export made at embed time when valid (no torch import), else this model.
            embedding = self.generation.meta["embedding"]
            encoder = self._open_encoder(embedding["model"], embedding.get("fingerprint"))
            # Queries in other languages through the multilingual model (imgrag.index.crosslingual)
            self._vectors = QueryVectors(crosslingual.for_model(encoder, embedding["model"]))
        return self._vectors

    def _open_encoder(self, model: str, fingerprint: str | None) -> QueryEncoder:
        return open_encoder(self.ws, model, fingerprint, self.query_encoder)

    def search(self, query: str, options: SearchOptions, window: Window | None = None) -> list[Hit]:
        """The hits of `query` still on disk, up to options.limit (`window`: only some of them)."""
        query = clean_query(query)
        if self._nothing_to_find():
            return []
        vectors = self._query_vectors()
        if options.cutoff is None:  # `ask` brings its own bar
            options = replace(options, cutoff=vectors.cutoff(query))
        return self._rank(vectors.get(query), query, options, window=window)

    def like(self, photo: Path, options: SearchOptions, window: Window | None = None) -> list[Hit]:
        """Photos whose descriptions are nearest to that of `photo` (an indexed photo), itself left out."""
        row, _, caption = self._indexed_row(photo)
        if self._nothing_to_find():
            return []
        # Its caption stands in for query words, so exact-word evidence and "why" work as
        # for a typed query; the photo itself is left out before the default set is chosen.
        return self._rank(self._stored_vector(row), caption, options, exclude_rows=[row], window=window)

    def _nothing_to_find(self) -> bool:
        return self.generation.size == 0 or (self.allowed is not None and not self.allowed)

    def filters_pass_nothing(self) -> bool:
        """Whether no indexed photo passes the filters (said when a search finds nothing)."""
        return self.allowed is not None and not self.allowed

    def _rank(self, query_vec: np.ndarray, query: str, options: SearchOptions, exclude_rows: Iterable[int] = (),
              window: Window | None = None) -> list[Hit]:
        """The ranked hits whose photo is still on disk, up to options.limit, of which only
        those in `window` are read and explained. A photo deleted since the last embed is
        skipped and the next rows fill the limit; only the rows looked at are stat'ed."""
        window = window or Window()
        options = replace(options, allowed_rows=self.allowed)
        # By relevance, the rows past the window need not be looked at; by date, all are sorted.
        need = options.limit if window.by_date or window.stop is None else min(window.stop, options.limit)
        asked = options.limit
        while True:
            ranked = rank_rows(self.generation, query_vec, query, replace(options, limit=asked), exclude_rows=exclude_rows)
            located = self.generation.locate(ranked.rows.tolist())
            kept: list[tuple[int, list[str]]] = []  # (position in `ranked`, copies on disk)
            for i, row in enumerate(ranked.rows.tolist()):
                there = self._shown_first(self._on_disk(absolute_paths(self.generation, located[row][0])))
                if there:
                    kept.append((i, there))
                    if len(kept) == need:
                        break
            if len(kept) >= need or len(ranked.rows) < asked:
                break
            asked *= 2  # some were gone: look further down the same ranking
        kept = kept[: options.limit]
        if window.by_date:  # newest first; stable: ties keep relevance order
            kept.sort(key=lambda k: located[int(ranked.rows[k[0]])][1] or "", reverse=True)
        kept = kept[window.start : window.stop]
        hits = read_hits(self.generation, ranked, [i for i, _ in kept], paths={int(ranked.rows[i]): p for i, p in kept})
        for h in hits:
            h.rank += window.start
        return hits

    def _shown_first(self, paths: list[str]) -> list[str]:
        """The copies inside the `--in` folder first: a photo found there is shown there,
        not at a copy elsewhere (`path` is the first copy)."""
        if self.inside is None:
            return paths
        prefix = self.inside + os.sep
        return sorted(paths, key=lambda p: not (p == self.inside or p.startswith(prefix)))

    def _on_disk(self, paths: list[str]) -> list[str]:
        """The copies that still exist (each one gone is remembered, for stale_warning)."""
        there = [p for p in paths if p not in self.missing and os.path.exists(p)]
        if len(there) < len(paths):
            self.missing.update(p for p in paths if p not in there)
        return there

    def stale_warning(self) -> str | None:
        """One line for stderr when searching found indexed photos gone, with the command that refreshes it."""
        if not self.missing:
            return None
        n = len(self.missing)
        return (f"imgrag: warning: {n} indexed photo file{'s are' if n > 1 else ' is'} gone from disk and "
                f"{'were' if n > 1 else 'was'} left out: the index is out of date; refresh it with "
                f"`{self.ws.embed_command()}`")

    def _indexed_row(self, photo: Path) -> tuple[int, str, str]:
        """(row, sha256, caption) of a photo in the index, found by its content."""
        from imgrag.photos.files import PHOTO_SUFFIXES

        sha = like_photo_sha(photo)
        found = self.generation.scan.execute("SELECT row, caption FROM docs WHERE sha256 = ?", (sha,)).fetchone()
        if found is None and photo.suffix.lower() not in PHOTO_SUFFIXES:
            raise UsageError(f"--like {photo}: not a photo (imgrag finds {', '.join(sorted(PHOTO_SUFFIXES))} files)")
        if found is None:
            raise UsageError(
                f"--like {photo}: this photo is not in the index in {self.ws.root} "
                "(run `imgrag index` on its folder first)"
            )
        return int(found[0]), sha, found[1] or ""

    # -- for a long-lived server (imgrag serve): one open index, many requests --------

    def with_filters(self, filters: Filters) -> Searcher:
        """This open index and its loaded encoder, under other filters (one request's)."""
        other = copy.copy(self)  # shares this one's caches
        other.allowed = self._allowed_for(filters)
        other.inside = _inside(self.ws, filters)
        return other

    def _allowed_for(self, filters: Filters) -> set[int] | None:
        with self._allowed_lock:
            if filters in self._allowed_by_filters:
                return self._allowed_by_filters[filters]
        rows = allowed_rows(self.generation, self.ws, filters)  # unlocked: another filter need not wait
        with self._allowed_lock:
            if len(self._allowed_by_filters) >= ALLOWED_CACHE_SIZE:
                self._allowed_by_filters.pop(next(iter(self._allowed_by_filters)))
            self._allowed_by_filters[filters] = rows
        return rows

    def reuse_encoder(self, previous: Searcher) -> None:
        """Keep the query encoder (and the query vectors it made) of the previous generation
        when it embeds with the same model."""
        if previous._vectors is not None and previous.generation.meta.get("embedding") == self.generation.meta.get("embedding"):
            self._vectors = previous._vectors

    def description_vectors(self, shas: list[str]) -> np.ndarray | None:
        """The stored vectors of these photos (by content hash), one row each; None when the
        index keeps no vectors or a photo is not in it."""
        rows = []
        for sha in shas:
            found = self.generation.scan.execute("SELECT row FROM docs WHERE sha256 = ?", (sha,)).fetchone()
            if found is None:
                return None
            rows.append(int(found[0]))
        try:
            return np.asarray(self.generation.index.reconstruct_batch(np.asarray(rows, np.int64)), dtype=np.float32)
        except RuntimeError:  # an index type that keeps no vectors
            return None

    def _stored_vector(self, row: int) -> np.ndarray:
        try:
            return np.asarray(self.generation.index.reconstruct(row), dtype=np.float32)
        except RuntimeError:  # an index type that keeps no vectors: embed its text again
            text = self.generation.docs([row])[row].text
            return self.encoder().encode([text])[0]


def like_photo_sha(photo: Path) -> str:
    """The content hash of `--like PHOTO`, or one line saying why it cannot be read."""
    # photos.files loads PIL: only --like needs it, and a text search should not wait for it
    from imgrag.photos.files import PhotoError, file_sha256

    if not photo.expanduser().is_file():
        raise UsageError(f"--like {photo}: no such photo")
    try:
        return file_sha256(photo.expanduser())
    except PhotoError as e:
        raise UsageError(f"--like {photo}: cannot read it ({e})") from None


def _inside(ws: Workspace, filters: Filters | None) -> str | None:
    """The `--in` folder as the index's absolute paths spell it (under the workspace base)."""
    if filters is None or filters.under is None:
        return None
    folder = os.path.relpath(filters.under.expanduser().resolve(), ws.base.resolve())
    return os.path.normpath(os.path.join(ws.base, folder))


def run_search(query: str, *, index: Path | None, embed_model: str | None, options: SearchOptions,
               filters: Filters | None = None, query_encoder: str = "auto") -> list[Hit]:
    """One search with a Searcher of its own."""
    searcher = Searcher(index=index, embed_model=embed_model, filters=filters, query_encoder=query_encoder)
    return searcher.search(query, options)
