"""Query -> ranked hits. `imgrag search` and bench/retrieval.py both rank through `rank()`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UsageError
from .index import Bundle, load_bundle
from .workspace import Workspace

DEFAULT_LIMIT = 10
MAX_QUERY_CHARS = 2000  # far past the encoder's window: the rest cannot change the vector


@dataclass
class Hit:
    rank: int
    score: float
    sha256: str
    path: str  # absolute path of the first copy
    paths: list[str]  # every copy, relative to the workspace base
    caption: str
    taken: str | None
    why: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class SearchOptions:
    limit: int = DEFAULT_LIMIT
    min_score: float | None = None


class QueryEncoder:
    """Embeds queries with the index's own model (sentence-transformers)."""

    def __init__(self, model_name: str) -> None:
        from .embed import load_model

        self.loaded = load_model(model_name)

    def encode(self, queries: list[str]) -> np.ndarray:
        return self.loaded.encode(queries)


def clean_query(query: str) -> str:
    query = " ".join(query.split())
    if not query:
        raise UsageError("the query is empty: say what to look for, e.g. imgrag search \"dog on beach\"")
    return query[:MAX_QUERY_CHARS]


def open_index(ws: Workspace, embed_model: str | None) -> Bundle:
    """The current index, refusing one made with another model than the one configured."""
    bundle = load_bundle(ws)
    built_with = bundle.meta.get("embedding", {}).get("model")
    if embed_model and built_with and embed_model != built_with:
        raise UsageError(
            f"the index in {ws.root} was embedded with {built_with!r}, but IMGRAG_EMBED_MODEL is {embed_model!r}: "
            "run `imgrag embed --rebuild PHOTOS` to re-embed, or unset it"
        )
    return bundle


def rank(bundle: Bundle, query_vec: np.ndarray, query: str, options: SearchOptions) -> list[Hit]:
    """The ranked hits for one query vector."""
    if bundle.size == 0:
        return []
    k = min(bundle.size, max(options.limit, 1))
    scores, rows = bundle.index.search(np.ascontiguousarray(query_vec.reshape(1, -1), dtype=np.float32), k)
    pairs = [(int(r), float(s)) for r, s in zip(rows[0], scores[0]) if r >= 0]
    if options.min_score is not None:
        pairs = [(r, s) for r, s in pairs if s >= options.min_score]
    docs = bundle.docs([r for r, _ in pairs])
    ws_base = bundle.folder.parent.parent.parent  # <base>/.imgrag/index/<gen>
    hits = []
    for i, (row, score) in enumerate(pairs, start=1):
        d = docs[row]
        hits.append(Hit(
            rank=i,
            score=round(score, 4),
            sha256=d.sha256,
            path=str(ws_base / d.paths[0]) if d.paths else "",
            paths=d.paths,
            caption=d.caption,
            taken=d.taken,
            why=d.caption,
        ))
    return hits


def run_search(query: str, *, index: Path | None, embed_model: str | None, options: SearchOptions) -> list[Hit]:
    query = clean_query(query)
    ws = Workspace.find(Path.cwd(), index)
    bundle = open_index(ws, embed_model)
    model_name = bundle.meta["embedding"]["model"]
    encoder = QueryEncoder(model_name)
    return rank(bundle, encoder.encode([query])[0], query, options)
