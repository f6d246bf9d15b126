"""Query -> ranked hits. `imgrag search` (through `rank()`) and bench/retrieval.py both rank
with `candidates()` + `order()`."""

from __future__ import annotations

import copy
import functools
import os
import re
import sys
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from imgrag.errors import UsageError
from imgrag.index.generations import PHOTO_TIME, Generation, open_generation
from imgrag.search.cutoff import DEFAULT_CUTOFF, Cutoff
from imgrag.store.workspace import Workspace

DEFAULT_LIMIT = 10
MAX_QUERY_CHARS = 2000  # far past the encoder's window: the rest cannot change the vector


@dataclass
class Hit:
    rank: int
    score: float
    sha256: str
    path: str  # absolute path of the first copy
    paths: list[str]  # every copy, absolute
    caption: str
    taken: str | None
    date: str | None = None  # the time the date filters and sort=date see (index.PHOTO_TIME)
    why: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class SearchOptions:
    limit: int = DEFAULT_LIMIT
    min_score: float | None = None  # a fixed cut-off; None: the default set, fitted to the query (imgrag.search.cutoff)
    allowed_rows: set[int] | None = None  # only these index rows may be returned (filters); None: any
    show_all: bool = False  # no cut-off at all (`--all`): the ranking as it is, up to `limit`


def search_options(*, limit: int | None = None, min_score: float | None = None, show_all: bool = False) -> SearchOptions:
    """The options `imgrag search` flags ask for: `limit` None is DEFAULT_LIMIT, or every
    photo with `show_all`; `show_all` and a `min_score` contradict each other."""
    if show_all and min_score is not None:
        raise UsageError("--all and --min-score cannot be combined: --all shows every photo, --min-score only those scoring X or more")
    if limit is None:
        limit = sys.maxsize if show_all else DEFAULT_LIMIT
    return SearchOptions(limit=limit, min_score=min_score, show_all=show_all)


class QueryEncoder:
    """Embeds queries with the index's own model (sentence-transformers)."""

    def __init__(self, model_name: str) -> None:
        from imgrag.index.embedding import load_model

        self.loaded = load_model(model_name)

    def encode(self, queries: list[str]) -> np.ndarray:
        return self.loaded.encode(queries)


def clean_query(query: str) -> str:
    query = " ".join(query.split())
    if not query:
        raise UsageError("the query is empty: say what to look for, e.g. imgrag search \"dog on beach\"")
    return query[:MAX_QUERY_CHARS]


def open_index(ws: Workspace, embed_model: str | None) -> Generation:
    """The current index, refusing one made with another model than the one configured."""
    generation = open_generation(ws)
    built_with = generation.meta.get("embedding", {}).get("model")
    if embed_model and built_with and embed_model != built_with and _resolved(embed_model) != built_with:
        raise UsageError(
            f"the index in {ws.root} was embedded with {built_with!r}, but IMGRAG_EMBED_MODEL is {embed_model!r}: "
            f"run `{ws.embed_command('--rebuild')}` to re-embed, or unset it"
        )
    return generation


def _resolved(embed_model: str) -> str:
    from imgrag.index.embedding import resolve_model_name  # light: torch is imported only when a model loads

    return resolve_model_name(embed_model)


# -- ranking: dense similarity, exact-word evidence where it is strong, less for hubs ----

# The fixed cut-off imgrag used before the default set fitted each query (imgrag.search.cutoff);
# bench/retrieval.py and bench/cutoff.py still report it beside the default set.
DEFAULT_MIN_SCORE = 0.25
DENSE_CANDIDATES = 200  # nearest rows by meaning that fusion may reorder
LEXICAL_CANDIDATES = 50  # best exact-word rows added even when meaning alone ranks them lower


@dataclass(frozen=True)
class Fusion:
    """score = dense cosine
               + rare_words   * (share of the query's idf-weighted words a description has as rare words)
               + visible_text * (share of the query's idf-weighted words seen written in the photo)
               - crowding     * (the photo's crowding: see `imgrag.index.crowding`)

    Plain rank fusion of BM25 and dense hurts caption retrieval, and exact words in a
    paraphrase are weak evidence: `rare_words` and `crowding` were chosen together with
    bench/retrieval.py (Flickr8k train and COCO, checked on Flickr8k dev), inside the range
    where every figure beats dense alone on all three. Words written on the photo (a sign,
    a shop name, a number plate) are the evidence meaning cannot see; no benchmark here has
    them, so `visible_text` is set by hand, four times the rare-word weight (README)."""

    rare_words: float = 0.05
    visible_text: float = 0.2
    crowding: float = 0.06

    def combine(self, found: Candidates) -> np.ndarray:
        """Scores from 0 (an opposite meaning shows as 0, so --min-score 0 shows everything)."""
        score = found.dense + self.rare_words * found.lexical + self.visible_text * found.visible_text
        return np.maximum(0.0, score - self.crowding * found.crowding).astype(np.float32)


DEFAULT_FUSION = Fusion()
DENSE_ONLY = Fusion(rare_words=0.0, visible_text=0.0, crowding=0.0)


@dataclass
class Candidates:
    """The rows a query could rank, with each kind of evidence for each."""

    rows: np.ndarray  # dense order first, then rows only exact words found
    dense: np.ndarray
    lexical: np.ndarray  # 0..1 share of the query's words matched (rare words only)
    visible_text: np.ndarray  # 0..1 share of the query's words seen written in the photo
    crowding: np.ndarray  # how crowded each row's neighbourhood is (imgrag.index.crowding)
    terms: list  # the query's content words (lexical.QueryTerm)


def candidates(generation: Generation, query_vec: np.ndarray, query: str, depth: int = DENSE_CANDIDATES,
               allowed: np.ndarray | None = None) -> Candidates:
    """`allowed`: the only rows that may be candidates (filters), so a filter never leaves
    fewer than `depth` candidates when enough rows pass it."""
    q = np.ascontiguousarray(query_vec.reshape(1, -1), dtype=np.float32)
    params = None
    if allowed is not None:
        import faiss

        params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
    scores, found = generation.index.search(q, min(generation.size, max(depth, 1)), params=params)
    keep = found[0] >= 0
    rows, dense = found[0][keep].astype(np.int64), scores[0][keep].astype(np.float32)
    words = written = None
    if generation.lexical is not None:
        words = generation.lexical.scores(query)
        if generation.visible_text is not None:
            written = generation.visible_text.written_share(query, generation.lexical)
    exact = [_best_exact(e, allowed) for e in (words, written) if e is not None]
    if exact:
        extra = np.setdiff1d(np.concatenate(exact), rows)
        extra_dense = _dense_scores(generation.index, q[0], extra)
        if extra_dense is not None and len(extra):
            rows = np.concatenate([rows, extra])
            dense = np.concatenate([dense, extra_dense])
    none = np.zeros(len(rows), np.float32)
    return Candidates(
        rows, dense,
        lexical=words.normalised(rows) if words is not None else none,
        visible_text=written.normalised(rows) if written is not None else none,
        crowding=np.asarray(generation.crowding[rows], np.float32) if generation.crowding is not None else none,
        terms=words.terms if words is not None else [],
    )


def _best_exact(evidence, allowed: np.ndarray | None) -> np.ndarray:
    """The LEXICAL_CANDIDATES rows with the best exact-word evidence (among `allowed`)."""
    if allowed is None:
        return evidence.top(LEXICAL_CANDIDATES)
    ranked = evidence.top(len(evidence.raw))
    return ranked[np.isin(ranked, allowed)][:LEXICAL_CANDIDATES]


def _dense_scores(index, query_vec: np.ndarray, rows: np.ndarray) -> np.ndarray | None:
    """Cosine of the query with given rows, read back from the index (None if it cannot)."""
    if not len(rows):
        return np.zeros(0, np.float32)
    try:
        vectors = index.reconstruct_batch(rows.astype(np.int64))
    except RuntimeError:  # an index type without stored vectors: rank by what it returned
        return None
    return (vectors @ query_vec).astype(np.float32)


def order(found: Candidates, fusion: Fusion) -> tuple[np.ndarray, np.ndarray]:
    """(rows, scores) best first; ties keep dense order."""
    fused = fusion.combine(found)
    best = np.argsort(-fused, kind="stable")
    return found.rows[best], fused[best]


@dataclass
class Ranked:
    """The rows one query shows, best first, with their scores and evidence: what `rank`
    returns before reading the rows from the index (a server reads only the page shown)."""

    rows: np.ndarray
    scores: np.ndarray
    found: Candidates | None  # None: nothing could be ranked

    @classmethod
    def empty(cls) -> Ranked:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.float32), None)


def rank(generation: Generation, query_vec: np.ndarray, query: str, options: SearchOptions,
         fusion: Fusion = DEFAULT_FUSION, *, cutoff: Cutoff = DEFAULT_CUTOFF,
         exclude_rows: Iterable[int] = ()) -> list[Hit]:
    """The hits shown for one query (what `imgrag search` shows), best first, paths absolute.
    `exclude_rows` are never shown nor weigh in the default set (--like: the photo itself)."""
    ranked = rank_rows(generation, query_vec, query, options, fusion, cutoff=cutoff, exclude_rows=exclude_rows)
    return read_hits(generation, ranked, range(len(ranked.rows)))


def rank_rows(generation: Generation, query_vec: np.ndarray, query: str, options: SearchOptions,
              fusion: Fusion = DEFAULT_FUSION, *, cutoff: Cutoff = DEFAULT_CUTOFF,
              exclude_rows: Iterable[int] = ()) -> Ranked:
    """`rank`'s rows and scores, up to options.limit, not yet read from the index."""
    allowed = None if options.allowed_rows is None else np.fromiter(options.allowed_rows, np.int64)
    if generation.size == 0 or (allowed is not None and not len(allowed)):
        return Ranked.empty()
    exclude = np.fromiter(exclude_rows, np.int64)
    depth = max(DENSE_CANDIDATES, options.limit) + len(exclude)
    found = candidates(generation, query_vec, query, depth=depth, allowed=allowed)
    rows, scores = order(found, fusion)
    if len(exclude):
        keep = ~np.isin(rows, exclude)
        rows, scores = rows[keep], scores[keep]
    keep = shown_set(generation, query_vec, query, rows, scores, options, cutoff)
    rows, scores = rows[keep], scores[keep]
    return Ranked(rows[: max(options.limit, 1)], scores[: max(options.limit, 1)], found)


def read_hits(generation: Generation, ranked: Ranked, picked: Iterable[int], paths: dict[int, list[str]] | None = None) -> list[Hit]:
    """Hits for the ranked rows at positions `picked`, read from the index and explained,
    ranked 1, 2, ... in that order; `paths` (by row) replaces a row's stored copies."""
    picked = list(picked)
    if ranked.found is None or not picked:
        return []
    found = ranked.found
    parts = {"dense": found.dense, "lexical": found.lexical, "visible_text": found.visible_text,
             "crowding": found.crowding}
    at = {row: i for i, row in enumerate(found.rows.tolist())}
    rows = ranked.rows[picked].tolist()
    docs = generation.docs(rows)
    hits = []
    for i, (row, score) in enumerate(zip(rows, ranked.scores[picked].tolist()), start=1):
        d = docs[row]
        shown = paths[row] if paths is not None else absolute_paths(generation, d.paths)
        hits.append(Hit(
            rank=i,
            score=round(score, 4),
            sha256=d.sha256,
            path=shown[0] if shown else "",
            paths=shown,
            caption=d.caption,
            taken=d.taken,
            date=d.date,
            why=why_matched(found.terms, d.lexical, d.caption),
            extra={name: round(float(values[at[row]]), 4) for name, values in parts.items()},
        ))
    return hits


def absolute_paths(generation: Generation, stored: list[str]) -> list[str]:
    """A row's copies as absolute paths (stored relative to the folder holding .imgrag/)."""
    base = str(generation.folder.parent.parent.parent)  # <base>/.imgrag/index/<gen>
    return [os.path.join(base, p) for p in stored]


def shown_set(generation: Generation, query_vec: np.ndarray, query: str, rows: np.ndarray, scores: np.ndarray,
              options: SearchOptions, cutoff: Cutoff = DEFAULT_CUTOFF) -> np.ndarray:
    """Which of the ranked rows (best first) to show: all with `show_all`, those scoring
    `min_score` or more when it is set, else the default set for this query (imgrag.search.cutoff)."""
    if options.show_all:
        return np.ones(len(rows), dtype=bool)
    if options.min_score is not None:
        return scores >= options.min_score
    from imgrag.search import cutoff as default_set

    lexical = generation.lexical
    words = lexical.words_present(query, rows) if lexical is not None else np.zeros(len(rows), np.float32)
    return default_set.shown(scores, words, default_set.background_for(generation.background, query_vec, cutoff), cutoff)


_WHY_CHARS = 160
_SNIPPET_CHARS = 60


def why_matched(terms: list, lexical: str, caption: str) -> str:
    """One short line: the query words found in the description, the fields holding them
    and a snippet of the best such field (visible text first; the caption is shown anyway),
    or, with no word in common, that the match is by meaning and what else the photo holds."""
    from imgrag.index.lexical import VISIBLE_TEXT_LABEL, field_lines, stems
    from imgrag.index.lexical import words as words_of

    query_stems = {t.stem for t in terms}
    matched: set[str] = set()  # query words found in some field
    labels: list[str] = []  # the fields holding them, in field order
    snippets: list[tuple[bool, str]] = []
    for label, words in field_lines(lexical):
        field_words = words_of(words)
        field_stems = stems(field_words)
        present = set(field_stems)
        hit_words = [t.word for t in terms if t.stem in present]
        if not hit_words:
            continue
        matched.update(hit_words)
        labels.append(label)
        if label != "caption":
            first = next(w for w, st in zip(field_words, field_stems) if st in query_stems)
            snippets.append((label != VISIBLE_TEXT_LABEL, f"{label}: {_snippet(words, first)}"))
    if not matched:
        return _clip(_by_meaning(lexical))
    ordered = [t.word for t in terms if t.word in matched]
    line = "matched " + ", ".join(f'"{w}"' for w in ordered) + " in " + ", ".join(dict.fromkeys(labels))
    best = [text for _, text in sorted(snippets, key=lambda s: s[0])[:1]]  # stable: field order otherwise
    return _clip("; ".join([line, *best]))


# With no word in common, the first of these fields says what the caption may not.
_MEANING_FIELDS = ("objects", "phrases", "setting", "tags")


def _by_meaning(lexical: str) -> str:
    from imgrag.index.lexical import field_lines

    fields = dict(field_lines(lexical))
    shown = next((f"; {label}: {_snippet(fields[label], '')}" for label in _MEANING_FIELDS if fields.get(label)), "")
    return "near in meaning, no word in common" + shown


def _snippet(text: str, word: str) -> str:
    """The field, or for a long one the stretch around its first matched word."""
    text = " ".join(text.split())
    if len(text) <= _SNIPPET_CHARS:
        return text
    at = max(0, text.lower().find(word))
    start = max(0, text.rfind(" ", 0, max(0, at - _SNIPPET_CHARS // 3)) + 1)
    end = text.find(" ", min(len(text), start + _SNIPPET_CHARS))
    end = len(text) if end == -1 else end
    return ("…" if start else "") + text[start:end] + ("…" if end < len(text) else "")


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _WHY_CHARS else text[: _WHY_CHARS - 1].rstrip() + "…"


# -- searching: filters, --like, and many queries over one loaded index ------------------


@dataclass(frozen=True)
class Filters:
    """Which photos a search may return. Dates compare local wall-clock times: the EXIF time
    as the camera recorded it, else the file's modification time in this machine's zone."""

    under: Path | None = None  # a photo matches when any of its copies is inside this folder
    after: datetime | None = None  # taken at or after
    before: datetime | None = None  # taken strictly before

    def active(self) -> bool:
        return self.under is not None or self.after is not None or self.before is not None


_PERIOD = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def parse_date(text: str, flag: str) -> datetime:
    """YYYY, YYYY-MM or YYYY-MM-DD (the first moment of that period), or a full ISO 8601 time."""
    text = text.strip()
    try:
        period = _PERIOD.fullmatch(text)
        if period:
            year, month, day = (int(p) if p else 1 for p in period.groups())
            return datetime(year, month, day)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{flag} {text!r} is not a date: use YYYY-MM-DD (or YYYY, YYYY-MM, or a time such as 2024-06-01T18:30)"
        ) from None
    if when.tzinfo is not None:
        when = when.astimezone().replace(tzinfo=None)  # the same instant on this machine's clock
    return when


def allowed_rows(generation: Generation, ws: Workspace, filters: Filters) -> set[int] | None:
    """The index rows that pass the filters (None: no filter, every row)."""
    if not filters.active():
        return None
    clauses: list[str] = []
    params: list[object] = []
    if filters.under is not None:
        folder = _folder_in_workspace(ws, filters.under)
        if folder != ".":
            prefix = folder + os.sep
            clauses.append("EXISTS (SELECT 1 FROM json_each(docs.paths) WHERE value = ? OR substr(value, 1, ?) = ?)")
            params += [folder, len(prefix), prefix]
    if filters.after is not None:
        clauses.append(f"{PHOTO_TIME} >= ?")
        params.append(filters.after.isoformat(timespec="seconds"))
    if filters.before is not None:
        clauses.append(f"{PHOTO_TIME} < ?")
        params.append(filters.before.isoformat(timespec="seconds"))
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    # One string in one step: row by row, a busy server waited for the GIL at each (index.rows_at_once).
    (found,) = generation.scan.execute(f"SELECT group_concat(row) FROM docs{where}", params).fetchone()
    return set(map(int, found.split(","))) if found else set()


def _folder_in_workspace(ws: Workspace, under: Path) -> str:
    """`--in` as stored paths spell it: relative to the workspace base ('.' for the base itself)."""
    folder = under.expanduser().resolve()
    if not folder.exists():
        raise UsageError(f"--in {under}: no such folder")
    rel = os.path.relpath(folder, ws.base.resolve())
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise UsageError(f"--in {under}: not inside {ws.base}, the folder the index in {ws.root} covers")
    return rel


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
        def encode(query: str) -> np.ndarray:
            vector = encoder.encode([query])[0]
            vector.flags.writeable = False  # shared by every search of this query
            return vector

        # A closure over the encoder, not a bound method: no cycle keeps a dropped model alive.
        self.get = functools.lru_cache(QUERY_CACHE_SIZE)(encode)


class Searcher:
    """An open index for any number of searches; the query encoder is loaded on the first
    text query and kept (so `--queries-from` pays for the model once, and `--like` never)."""

    def __init__(self, *, index: Path | None, embed_model: str | None, filters: Filters | None = None) -> None:
        self.ws = Workspace.find(Path.cwd(), index)
        self.generation = open_index(self.ws, embed_model)
        self.allowed = allowed_rows(self.generation, self.ws, filters or Filters())
        self._encoder: QueryEncoder | None = None
        self.missing: set[str] = set()  # indexed files found gone while searching (see _rank)
        # A server is asked the same few filters again and again, and the rows that pass them
        # stay the same for this index generation: select them once (at 100k photos the SQL
        # takes ~50 ms, several times the search itself). Not an lru_cache of a closure over
        # self: that cycle kept a replaced generation open until the garbage collector ran.
        self._allowed_by_filters: dict[Filters, set[int] | None] = {}
        self._allowed_lock = threading.Lock()
        self._vectors: QueryVectors | None = None  # made with the encoder

    def encoder(self) -> QueryEncoder:
        if self._encoder is None:
            # The ONNX export made at embed time when valid (no torch import), else this model.
            from imgrag.index.query_encoder import open_encoder

            embedding = self.generation.meta["embedding"]
            self._encoder = open_encoder(self.ws, embedding["model"], embedding.get("fingerprint"))
            self._vectors = QueryVectors(self._encoder)
        return self._encoder

    def search(self, query: str, options: SearchOptions, window: Window | None = None) -> list[Hit]:
        """The hits of `query` still on disk, up to options.limit (`window`: only some of them)."""
        query = clean_query(query)
        if self._nothing_to_find():
            return []
        self.encoder()  # made with self._vectors
        return self._rank(self._vectors.get(query), query, options, window=window)

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
                there = self._on_disk(absolute_paths(self.generation, located[row][0]))
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
        from imgrag.photos.files import PHOTO_SUFFIXES, PhotoError, file_sha256

        if not photo.expanduser().is_file():
            raise UsageError(f"--like {photo}: no such photo")
        try:
            sha = file_sha256(photo.expanduser())
        except PhotoError as e:
            raise UsageError(f"--like {photo}: cannot read it ({e})") from None
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
        if previous._encoder is not None and previous.generation.meta.get("embedding") == self.generation.meta.get("embedding"):
            self._encoder, self._vectors = previous._encoder, previous._vectors

    def _stored_vector(self, row: int) -> np.ndarray:
        try:
            return np.asarray(self.generation.index.reconstruct(row), dtype=np.float32)
        except RuntimeError:  # an index type that keeps no vectors: embed its text again
            text = self.generation.docs([row])[row].text
            return self.encoder().encode([text])[0]


def queries_from(source: str) -> Iterator[str]:
    """`--queries-from FILE|-`: one query per line, blank lines skipped, each read as it
    arrives (a script may write a query and read its answer before writing the next)."""
    if source == "-":
        yield from _queries(sys.stdin, source)
        return
    try:
        f = open(source, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--queries-from {source}: {e.strerror or e}") from None
    with f:
        yield from _queries(f, source)


def _queries(lines: Iterable[str], source: str) -> Iterator[str]:
    try:
        for line in lines:
            if line.strip():
                yield clean_query(line)
    except UnicodeDecodeError:
        raise UsageError(f"--queries-from {source}: not UTF-8 text") from None


def run_search(query: str, *, index: Path | None, embed_model: str | None, options: SearchOptions,
               filters: Filters | None = None) -> list[Hit]:
    return Searcher(index=index, embed_model=embed_model, filters=filters).search(query, options)
