"""What the commands do with `--store URL` (IMGRAG_STORE): open the library, describe and
embed into it, push a `.imgrag/` folder, report its status. The CLI (and an MCP server, or
any other front end) calls these, never the modules below directly."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgrag.config import Settings
from imgrag.errors import UsageError


def store_url(settings: Settings, flag: str | None = None) -> str | None:
    """The store a command was given: --store, else IMGRAG_STORE; None: a .imgrag/ folder."""
    return flag or settings.store


def library_for(url: str, settings: Settings) -> Any:
    """The Library at `url` (imgrag.library.library), or one line saying how to install its driver."""
    try:
        import pgvector.psycopg  # noqa: F401
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError:
        raise UsageError("--store needs PostgreSQL's driver: pip install 'imgrag[store]'") from None
    from imgrag.library.library import Library

    return Library(url, name=settings.store_library)


def open_library(settings: Settings, *, index: Path | None = None, store: str | None = None, filters: Any = None) -> Any:
    """The library a search reads: the store (--store or IMGRAG_STORE) when one is given,
    else the `.imgrag/` index found from here (or `index`). Both are Searchers
    (imgrag.search.searcher): the same ranking, cut-off, why-it-matched and --like."""
    url = store_url(settings, store)
    if url is None and filters is not None and filters.library is not None:
        raise UsageError("--library names a library in a store: give --store URL (or set IMGRAG_STORE)")
    if url is None:
        from imgrag.search.searcher import Searcher

        return Searcher(index=index, embed_model=settings.embed_model, filters=filters,
                        query_encoder=settings.query_encoder)
    if index is not None:
        raise UsageError("--index and --store cannot be combined: search one library or the other")
    from imgrag.library.searcher import StoreSearcher

    return StoreSearcher(library_for(url, settings), embed_model=settings.embed_model, filters=filters,
                         query_encoder=settings.query_encoder)


@dataclass
class StoreRun:
    described: Any = None  # workers.StoreDescribeSummary
    embedded: Any = None  # workers.StoreEmbedSummary

    @property
    def exit_code(self) -> int:
        return self.described.exit_code if self.described is not None else 0


def run_store_pipeline(url: str, photos: Path | None, settings: Settings, *, describe: bool, embed: bool,
                       jobs: int | None = None, limit: int | None = None, embed_model: str | None = None,
                       progress: Callable[[str], None] | None = None) -> StoreRun:
    """describe / embed / index with --store: the photos under `photos` described into the
    store (claimed, so many machines can run this at once), then every described photo embedded."""
    from imgrag.config import VISION_SETTINGS
    from imgrag.library.workers import describe_into, embed_into

    library = library_for(url, settings)
    result = StoreRun()
    if describe:
        if photos is None:
            raise UsageError("describe --store needs the photo folder: imgrag describe PHOTOS --store URL")
        settings = settings.checked(*VISION_SETTINGS)
        result.described = describe_into(library, photos, settings, jobs=jobs or settings.jobs,
                                         lease=settings.store_lease, limit=limit, progress=progress)
    if embed:
        result.embedded = embed_into(library, embed_model or settings.embed_model, lease=settings.store_lease,
                                     progress=progress)
    return result


def push_to_store(url: str, photos: Path | None, index: Path | None, settings: Settings,
                  progress: Callable[[str], None] | None = None) -> Any:
    from imgrag.library.push import push

    return push(library_for(url, settings), photos, index, progress=progress)


def store_status(url: str, settings: Settings) -> dict[str, Any]:
    """`imgrag status --store`: the library's counts (read-only roles may ask)."""
    from imgrag.library.connection import store_errors

    library = library_for(url, settings)
    conn = library.connect(writing=False)
    try:
        with store_errors(url):
            row = conn.execute(
                "SELECT count(*), count(record), count(embedding), count(*) FILTER (WHERE record IS NULL AND failures >= 3), "
                "count(*) FILTER (WHERE claim_until >= now()), "
                "count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM copies c WHERE c.photo = photos.id)), "
                "count(*) FILTER (WHERE embedding IS NOT NULL AND EXISTS (SELECT 1 FROM copies c WHERE c.photo = photos.id)) "
                "FROM photos").fetchone()
            libraries = conn.execute("SELECT library, count(*) FROM copies GROUP BY library ORDER BY library").fetchall()
            gen = conn.execute("SELECT id, count, created, meta FROM generations ORDER BY id DESC LIMIT 1").fetchone()
            version = conn.execute("SELECT max(version) FROM imgrag_migrations").fetchone()[0]
    finally:
        conn.close()
    return {"store": library.safe_name, "schema_version": version, "photos": row[0], "described": row[1],
            "embedded": row[2], "gave_up": row[3], "claimed_now": row[4],
            "without_copy": row[5],  # every copy gone: kept described, not searchable until a copy is back
            "libraries": {name: count for name, count in libraries},
            "searchable": gen[1] if gen else 0,
            # every described photo embedded, and the newest generation holds each one with a copy
            "up_to_date": row[1] == row[2] and (gen[1] if gen else 0) == row[6], "generation": gen[0] if gen else None,
            "published": gen[2].isoformat() if gen else None,
            "embedding": (gen[3] or {}).get("embedding") if gen else None}
