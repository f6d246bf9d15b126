"""What the MCP tools do, without the protocol: one photo library (a workspace, its live
index, its description records and, with --allow-index, its jobs), searched and read by
the functions `imgrag search/ask/status/index` and `imgrag serve` call. Every method is
blocking (the server runs it in a worker thread) and returns plain JSON-ready data; bad
input raises UsageError, as on the command line."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgrag.config import VISION_SETTINGS, Settings
from imgrag.errors import ImgragError, UsageError
from imgrag.search.live import Served
from imgrag.search.photo_record import indexed_file, indexed_names, named_photo, named_photo_file, photo_record
from imgrag.search.ranking import Hit, SearchOptions
from imgrag.search.request import cut_off, make_filters, make_options, why_nothing
from imgrag.search.searcher import Searcher, clean_query
from imgrag.status import collect_status, next_step
from imgrag.store.workspace import Workspace

if TYPE_CHECKING:
    from imgrag.ask.answer import AskPlan
    from imgrag.providers.retry import Caller
    from imgrag.web.jobs import Job

FILTER_FLAGS = "the folder/after/before filters"
ESTIMATE_VALID = 15 * 60  # seconds an index estimate stays good for starting the run it priced


def hit_json(hit: Hit) -> dict[str, Any]:
    """A search result as the search tool returns it (a local library's, or a store's)."""
    found = {"rank": hit.rank, "id": hit.sha256, "score": hit.score, "path": hit.path, "caption": hit.caption,
             "why": hit.why, "date": hit.date, "taken": hit.taken}
    if len(hit.paths) > 1:
        found["copies"] = hit.paths
    return found


# What a local library's tools and a store's (store_library.py) share: the arguments checked
# as the command line checks its flags, and the answers in the same shape.


def search_options(query: str | None, like: str | None, limit: int, min_score: float | None,
                   show_all: bool) -> SearchOptions:
    """The search tool's arguments, as `imgrag search` takes QUERY or --like and its flags."""
    if (query is None) == (like is None):
        raise UsageError("give query (what to look for) or like (a photo's id or path), not both or neither")
    return make_options(limit, min_score, show_all)


def search_answer(searcher: Any, options: SearchOptions, query: str | None, like: str | None, filter_flags: str,
                  like_hits: Callable[[str], list[Hit]]) -> dict[str, Any]:
    """The search tool's answer: what `imgrag search --json` finds for the query (or, for
    `like`, what `like_hits(like)` finds), and the hint it gives when there is nothing."""
    doc: dict[str, Any] = {"query": clean_query(query) if query is not None else None}
    if like is not None:
        doc["like"] = like
        hits = like_hits(like)
    else:
        hits = searcher.search(doc["query"], options)
    doc.update(count=len(hits), results=[hit_json(h) for h in hits])
    if not hits:
        doc["hint"] = "no matching photos" + why_nothing(searcher, options, flag="min_score", all_flag="all=true",
                                                         filter_flags=filter_flags)
    return doc


def ask_answer(plan: AskPlan, searcher: Any, *, dry_run: bool, limit: int, min_score: float | None,
               filter_flags: str, caller: Caller | None = None) -> dict[str, Any]:
    """The ask tool's answer: `imgrag ask --json` (the plan with `dry_run`), with its hint when
    no photo matched."""
    from imgrag.ask.answer import AskResult, answer_plan

    if dry_run:
        return plan.as_dict()
    result = list(answer_plan(plan, caller))[-1]
    assert isinstance(result, AskResult)
    doc = result.as_dict()
    if not result.found:
        doc["hint"] = "no photo matches the question" + why_nothing(
            searcher, make_options(limit, min_score), flag="min_score", all_flag="min_score=0",
            filter_flags=filter_flags) + "; nothing was sent to the model"
    return doc


class Library:
    """One photo library as the tools see it: `imgrag serve`'s shared state (web.server.Server:
    the live index, the jobs, the description records, one Caller per model) without the page."""

    store_tools = False  # the tools take no `library` filter: one folder's index is one library

    def __init__(self, ws: Workspace, photos: Path | None, settings: Settings, *, allow_index: bool = False) -> None:
        from imgrag.web.server import ServeConfig, Server

        # read_only: no jobs unless --allow-index (the `index` tool is not even listed then).
        self.server = Server(ServeConfig(ws=ws, photos=photos, read_only=not allow_index, settings=settings))
        self.ws, self.photos, self.settings = ws, photos, settings
        self.where = str(ws.root)  # what the server serves, in its first line
        self.index = self.server.index
        self.allow_index = allow_index
        self._estimated_at: float | None = None  # when `index` last gave its estimate
        self._job: Job | None = None  # the last index run `index` started (status shows it)

    def start(self) -> None:
        self.index.start()  # load the index in the background: the first call need not wait for it

    def stop(self) -> None:
        self.server.jobs.shutdown(timeout=30)  # what is in flight finishes and is written

    # -- search ----------------------------------------------------------------------------

    def _served(self) -> Served:
        served = self.index.current()
        if served is None:
            raise ImgragError(self.index.problem or f"no search index in {self.ws.root} yet: "
                              f"run `imgrag index {self.photos or 'PHOTOS'}` (or the index tool, if enabled)")
        return served

    def _searcher(self, served: Served, folder: str | None, after: str | None, before: str | None) -> Searcher:
        # as `in=` over HTTP: relative to the library, or absolute; checked strictly by the filters
        under = self.ws.absolute(folder) if folder is not None else None
        filters = make_filters(under, after, before, names=("after", "before", "folder"))
        return served.searcher.with_filters(filters) if filters.active() else served.searcher

    def search(self, *, query: str | None, like: str | None, limit: int, min_score: float | None, show_all: bool,
               folder: str | None, after: str | None, before: str | None) -> dict[str, Any]:
        """`imgrag search QUERY` (or `--like PHOTO`) with these flags: the same photos in the same order."""
        options = search_options(query, like, limit, min_score, show_all)
        served = self._served()
        searcher = self._searcher(served, folder, after, before)
        return search_answer(searcher, options, query, like, FILTER_FLAGS, lambda photo: searcher.like(
            named_photo_file(self.ws, served, photo, f"like {photo!r}"), options))

    # -- one photo ---------------------------------------------------------------------------

    def photo(self, photo: str) -> tuple[dict[str, Any], Path | None]:
        """(its description record, its file on disk or None) for an id or a path."""
        served = self._served()
        sha = named_photo(self.ws, served, photo, f"photo {photo[:100]!r}")
        file = indexed_file(self.ws, served, sha)
        return photo_record(self.ws, served, self.server.descriptions, sha, file), file

    def thumbnail(self, photo_id: str, size: int) -> bytes:
        """The page's JPEG thumbnail of the photo nearest `size` px on its long side (orientation
        applied, no metadata), made from a file the serving gate let through, and cached."""
        from imgrag.photos.files import PhotoError
        from imgrag.store.serving import Refused
        from imgrag.web.thumbnails import thumbnail_size

        try:
            photo = self.server.photo_files.open(photo_id, indexed_names(self._served(), photo_id))
            try:
                made = self.server.thumbnails.jpeg(photo, thumbnail_size(size))
            finally:
                photo.close()
        except (Refused, PhotoError) as e:
            raise ImgragError(f"no thumbnail: {e}") from None
        return made if isinstance(made, bytes) else made.read_bytes()

    # -- ask ---------------------------------------------------------------------------------

    def ask(self, *, question: str, limit: int, min_score: float | None, look: int, folder: str | None,
            after: str | None, before: str | None, dry_run: bool) -> dict[str, Any]:
        """`imgrag ask QUESTION --json` (or `--dry-run --json`) with these flags."""
        from imgrag.ask.answer import plan_ask

        settings = self.settings.checked(*VISION_SETTINGS)
        if not dry_run:
            settings.require_api_key()  # before retrieval loads anything
        served = self._served()
        searcher = self._searcher(served, folder, after, before)
        cutoff = cut_off(make_options(limit, min_score))  # search's default set, as `imgrag ask` takes it
        plan = plan_ask(question, searcher, settings, limit=limit, look=look, min_score=cutoff)
        # the server's Caller for that model (its pacing shared), only when something is sent
        caller = self.server.caller_for(plan.settings) if not dry_run and plan.hits and plan.settings is not None else None
        return ask_answer(plan, searcher, dry_run=dry_run, limit=limit, min_score=min_score, filter_flags=FILTER_FLAGS,
                          caller=caller)

    # -- status and index --------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """`imgrag status --json`, and what this server serves (and the index job, if one ran)."""
        state = collect_status(self.ws, self.photos)
        served = self.index.current(wait=0)
        doc = {**state.as_dict(), "next": next_step(state), "index_loaded": served is not None,
               "generation": served.name if served else None, "index_tool": self.allow_index}
        if self.allow_index:
            doc["job"] = self._job.as_dict() if self._job else None
        return doc

    def run_index(self, *, confirm: bool, limit: int | None) -> dict[str, Any]:
        """Without confirm: the dry-run estimate (what `imgrag index --dry-run` says: photos,
        tokens, cost, time at the provider's limits). With confirm, after an estimate: the
        index job, started in the background and paced as `imgrag describe` paces itself."""
        from imgrag.web.jobs import Busy, wait

        if not self.allow_index:
            raise UsageError("indexing is off: start the server with `imgrag mcp --allow-index` to allow it")
        try:
            if not confirm:
                job = wait(self.server.jobs.start("index", limit=limit, dry_run=True))
                if job.state != "done":
                    raise ImgragError(job.error or job.message or f"the estimate {job.state}")
                self._estimated_at = time.monotonic()
                return {"dry_run": True, "estimate": job.estimate, "result": job.result,
                        "next": "nothing was sent; call index again with confirm=true to describe and embed"}
            if self._estimated_at is None or time.monotonic() - self._estimated_at > ESTIMATE_VALID:
                raise UsageError("call index without confirm first: it gives the estimate (photos, cost, time) "
                                 "to show the user before anything is sent")
            job = self._job = self.server.jobs.start("index", limit=limit)
        except Busy as e:
            raise UsageError(str(e)) from None
        self._estimated_at = None  # the next run is priced again
        return {"started": True, "job": job.as_dict(),
                "next": "it runs in the background; call status to follow it (its `job` field)"}
