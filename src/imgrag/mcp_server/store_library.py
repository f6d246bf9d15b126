"""What the MCP tools do with `imgrag mcp --store URL`: the same tools (search, ask,
get_photo, status) over a library in PostgreSQL, answering as `imgrag search/ask/status
--store` do. Like `imgrag serve --store` it keeps no state of its own and reads what it
shows (records, thumbnails) from the database, so it needs no access to the photo files.

No index tool: the store is written by `imgrag index PHOTOS --store` on the machines that
hold the photos, each under its own library name; the tool's two-step consent rests on a
dry-run estimate that the store's workers do not make (`mcp --store --allow-index` is refused)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from imgrag.config import VISION_SETTINGS, Settings
from imgrag.errors import ImgragError, UsageError
from imgrag.mcp_server.library import ask_answer, search_answer, search_options
from imgrag.search.request import cut_off, make_filters, make_options

FILTER_FLAGS = "the folder/after/before/library filters"


class StoreLibrary:
    """A store as the tools see it (the same methods as mcp_server.library.Library)."""

    allow_index = False
    store_tools = True  # search and ask take the `library` filter

    def __init__(self, url: str, settings: Settings) -> None:
        from imgrag.library.run import library_for
        from imgrag.web.store_serve import StoreLive

        self.settings = settings
        self.store = library_for(url, settings)
        self.where = self.store.safe_name  # never the URL: it may hold a password
        self.live = StoreLive(self.store, settings.embed_model, settings.query_encoder)
        self.live.current()  # one clear line now if the store cannot be read

    def start(self) -> None:
        """Nothing to load in the background: the generation was read when opened."""

    def stop(self) -> None:
        self.store.close()

    # -- search ----------------------------------------------------------------------------

    def _searcher(self, folder: str | None, after: str | None, before: str | None, library: str | None) -> Any:
        searcher = self.live.current()
        if searcher is None:
            raise ImgragError(f"the store {self.where} has nothing searchable yet: "
                              "run `imgrag index PHOTOS --store ...` on a machine that holds photos")
        if folder is not None and not Path(folder).expanduser().is_absolute():
            raise UsageError(f"folder {folder[:100]!r}: give an absolute path, as the store records each copy "
                             "(e.g. /home/ann/Pictures/2024)")
        filters = make_filters(Path(folder) if folder is not None else None, after, before,
                               names=("after", "before", "folder"), library=library, library_flag="library")
        return searcher.with_filters(filters) if filters.active() else searcher

    def search(self, *, query: str | None, like: str | None, limit: int, min_score: float | None, show_all: bool,
               folder: str | None, after: str | None, before: str | None, library: str | None = None) -> dict[str, Any]:
        """`imgrag search QUERY --store URL` (or `--like PHOTO`): the same photos in the same order."""
        options = search_options(query, like, limit, min_score, show_all)
        searcher = self._searcher(folder, after, before, library)
        return search_answer(searcher, options, query, like, FILTER_FLAGS, lambda photo: searcher.like_id(
            self._sha_of(searcher, photo, "like"), options))

    def _sha_of(self, searcher: Any, photo: str, what: str) -> str:
        from imgrag.library.records import sha_of

        sha = sha_of(searcher.generation, photo)
        if sha is None:
            raise UsageError(f"{what} {photo[:100]!r}: no such photo in the store (give an id or a path from search "
                             "results)")
        return sha

    # -- one photo ---------------------------------------------------------------------------

    def photo(self, photo: str) -> tuple[dict[str, Any], bool]:
        """(its description record, whether the store holds an image of it) for an id or a path."""
        from imgrag.library.records import photo_record

        searcher = self._searcher(None, None, None, None)
        record = photo_record(searcher.generation, self._sha_of(searcher, photo, "photo"))
        assert record is not None  # _sha_of found it
        return record, True

    def thumbnail(self, photo_id: str, size: int) -> bytes:
        """A JPEG of the photo nearest `size` px on its long side (as a local library's
        get_photo makes), from the images the store holds."""
        from imgrag.library.records import thumbnail
        from imgrag.web.thumbnails import thumbnail_size

        made = thumbnail(self._searcher(None, None, None, None).generation, photo_id, thumbnail_size(size))
        if made is None:
            raise ImgragError("no thumbnail: the store holds no image of this photo (run `imgrag push` or "
                              "`imgrag index --store` on a machine that holds it)")
        return made

    # -- ask ---------------------------------------------------------------------------------

    def ask(self, *, question: str, limit: int, min_score: float | None, look: int, folder: str | None,
            after: str | None, before: str | None, dry_run: bool, library: str | None = None) -> dict[str, Any]:
        """`imgrag ask QUESTION --store URL --json` (or `--dry-run --json`) with these flags."""
        from imgrag.ask.answer import plan_ask

        if look:
            raise UsageError("look cannot be used with a store: the photo files may be on other machines")
        settings = self.settings.checked(*VISION_SETTINGS)
        if not dry_run:
            settings.require_api_key()  # before retrieval loads anything
        searcher = self._searcher(folder, after, before, library)
        plan = plan_ask(question, searcher, settings, limit=limit, look=0, min_score=cut_off(make_options(limit, min_score)))
        return ask_answer(plan, searcher, dry_run=dry_run, limit=limit, min_score=min_score, filter_flags=FILTER_FLAGS)

    # -- status ------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`imgrag status --store URL --json`, and which generation this server searches."""
        from imgrag.library.run import store_status

        searcher = self.live.current()
        return {**store_status(self.store.url, self.settings), "index_loaded": searcher is not None,
                "serving_generation": searcher.generation.id if searcher is not None else None, "index_tool": False}

    def run_index(self, *, confirm: bool, limit: int | None) -> dict[str, Any]:
        raise UsageError("indexing is off with a store: run `imgrag index PHOTOS --store ...` on the machines "
                         "that hold the photos")
