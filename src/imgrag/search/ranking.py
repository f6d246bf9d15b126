"""Query -> ranked rows: candidates (the nearest rows by meaning, and those exact words
find), their fusion into one score, the order, and which of them are shown. `imgrag search`
(through `Searcher`, which calls `rank_rows` and `read_hits`) and bench/retrieval.py both
rank with `candidates()` + `order()`."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from imgrag.errors import UsageError
from imgrag.index.generations import Generation
from imgrag.search import cutoff as default_set
from imgrag.search.cutoff import DEFAULT_CUTOFF, Cutoff
from imgrag.search.why import why_matched

DEFAULT_LIMIT = 10


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

    def as_dict(self) -> dict[str, Any]:
        """The hit in JSON (`imgrag search --json`, `ask --json`): `extra` holds the score's
        parts (dense, lexical, visible_text, crowding)."""
        return {"rank": self.rank, "score": self.score, "path": self.path, "paths": self.paths,
                "caption": self.caption, "why": self.why, "taken": self.taken, "sha256": self.sha256,
                "extra": self.extra}


@dataclass
class SearchOptions:
    limit: int = DEFAULT_LIMIT
    min_score: float | None = None  # a fixed cut-off; None: the default set, fitted to the query (imgrag.search.cutoff)
    allowed_rows: set[int] | None = None  # only these index rows may be returned (filters); None: any
    show_all: bool = False  # no cut-off at all (`--all`): the ranking as it is, up to `limit`
    cutoff: Cutoff | None = None  # the default set's rule; None: DEFAULT_CUTOFF (`ask` relaxes it: imgrag.ask.context)


def search_options(*, limit: int | None = None, min_score: float | None = None, show_all: bool = False) -> SearchOptions:
    """The options `imgrag search` flags ask for: `limit` None is DEFAULT_LIMIT, or every
    photo with `show_all`; `show_all` and a `min_score` contradict each other."""
    if show_all and min_score is not None:
        raise UsageError("--all and --min-score cannot be combined: --all shows every photo, --min-score only those scoring X or more")
    if limit is None:
        limit = sys.maxsize if show_all else DEFAULT_LIMIT
    return SearchOptions(limit=limit, min_score=min_score, show_all=show_all)


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
    rows, dense = generation.nearest(q, depth, allowed)
    words = written = None
    if generation.lexical is not None:
        words = generation.lexical.scores(query)
        if generation.visible_text is not None:
            written = generation.visible_text.written_share(query, generation.lexical)
    exact = [_best_exact(generation, e, allowed) for e in (words, written) if e is not None]
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


def _best_exact(generation: Generation, evidence, allowed: np.ndarray | None) -> np.ndarray:
    """The LEXICAL_CANDIDATES rows with the best exact-word evidence (among `allowed`, and
    among those the generation's own filters pass: a library in PostgreSQL filters in SQL)."""
    if allowed is None and not generation.filtered:
        return evidence.top(LEXICAL_CANDIDATES)
    rows = evidence.matched_rows()
    if allowed is not None:
        rows = rows[np.isin(rows, allowed)]
    checked = generation.filters_in_memory  # every row at once costs less than a chunk at a time
    if checked:
        rows = generation.passing(rows)
    # The best rows a chunk at a time, until enough of them pass: a query's words may match
    # 10^5 rows at a million photos, and sorting them all cost more than the search. A chunk
    # holds every row scoring at least its last one's score, so the order is top()'s.
    scores = evidence.raw[rows]
    take = 4 * LEXICAL_CANDIDATES
    while True:
        chunk = rows if take >= len(rows) else rows[scores >= np.partition(scores, len(rows) - take)[len(rows) - take]]
        chunk = chunk[np.argsort(-evidence.raw[chunk], kind="stable")]
        found = (chunk if checked else generation.passing(chunk, LEXICAL_CANDIDATES))[:LEXICAL_CANDIDATES]
        if len(found) >= LEXICAL_CANDIDATES or len(chunk) == len(rows):
            return found
        take *= 4


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
    for i, (row, score) in enumerate(zip(rows, ranked.scores[picked].tolist(), strict=True), start=1):
        d = docs[row]
        shown = paths[row] if paths is not None else absolute_paths(generation, d.paths)
        hits.append(Hit(
            rank=i,
            # Shown from 0 to 1, as documented: meaning plus word evidence can sum past 1 (a
            # --like of a photo whose copy has the same description); the order uses the sum.
            score=round(min(score, 1.0), 4),
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
    cutoff = options.cutoff or cutoff
    lexical = generation.lexical
    words = lexical.words_present(query, rows) if lexical is not None else np.zeros(len(rows), np.float32)
    return default_set.shown(scores, words, default_set.background_for(generation.background, query_vec, cutoff), cutoff)
