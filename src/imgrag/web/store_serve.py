"""`imgrag serve --store URL`: the search page and the read side of the HTTP API over a
library in PostgreSQL (imgrag.library). It keeps no state of its own: the published
generation, the photos' rows and their thumbnails all come from the database, so any number
of these can run behind a load balancer and give the same answers. No jobs: the store is
written by `imgrag index --store` on the machines that hold the photos. The original file
is served when this machine can read one of its copies; else a 404 says why."""

from __future__ import annotations

import logging
import mimetypes
import re
import threading
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import uvicorn
from fastapi import APIRouter, Body, FastAPI, Query, Request, Response
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import Field

from imgrag.config import load_settings
from imgrag.errors import UsageError
from imgrag.search.request import cut_off, make_filters, make_options, search_page, why_nothing
from imgrag.search.searcher import clean_query
from imgrag.store.files import json_bytes
from imgrag.web.api import Login, login_response, logout_response
from imgrag.web.app import STATIC, _errors, _version
from imgrag.web.ask_api import AskBody
from imgrag.web.http_errors import NotFound
from imgrag.web.security import Guard, Rules, is_loopback
from imgrag.web.sessions import Sessions, SignedSessions, Throttle

log = logging.getLogger("imgrag.serve")
_SHA = re.compile(r"[0-9a-f]{64}")
MAX_LIMIT, MAX_OFFSET, MAX_QUERY = 100, 10_000, 4096  # as web.api
CACHE_FOREVER = "private, max-age=31536000, immutable"
CHECK_EVERY = 1.0  # seconds between looks for a newer published generation


class StoreLive:
    """The newest published generation, as a StoreSearcher; a newer one is swapped in whole."""

    def __init__(self, library: Any, embed_model: str | None, query_encoder: str) -> None:
        self.library = library
        self.embed_model = embed_model
        self.query_encoder = query_encoder
        self.searcher: Any = None
        self._checked = 0.0
        self._lock = threading.Lock()

    def current(self) -> Any:
        now = time.monotonic()
        if self.searcher is None or now - self._checked > CHECK_EVERY:
            with self._lock:
                if self.searcher is None or now - self._checked > CHECK_EVERY:
                    self._checked = now
                    newest = self.library.newest_generation_id()
                    if newest is not None and (self.searcher is None or self.searcher.generation.id != newest):
                        self.searcher = self._open(self.searcher)
        return self.searcher

    def _open(self, previous: Any) -> Any:
        from imgrag.library.searcher import StoreSearcher

        searcher = StoreSearcher(self.library, embed_model=self.embed_model, query_encoder=self.query_encoder)
        if previous is not None and previous.generation.meta.get("embedding") == searcher.generation.meta.get("embedding"):
            searcher._vectors = previous._vectors  # the loaded query encoder, and its remembered vectors
        return searcher


router = APIRouter()


def _live(request: Request) -> StoreLive:
    return request.app.state.live


def _urls(sha: str) -> dict[str, str]:
    return {"thumbnail_url": f"/api/photos/{sha}/thumbnail", "preview_url": f"/api/photos/{sha}/preview",
            "file_url": f"/api/photos/{sha}/file"}


@router.get("/api/search", summary="Search photos (the same results as `imgrag search --store URL --json`)")
def search(
    request: Request,
    q: str | None = Query(None, max_length=MAX_QUERY, description="What to look for"),
    limit: int = Query(10, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    in_: str | None = Query(None, alias="in", max_length=4096, description="Only photos inside this folder (absolute, as the store records paths)"),
    after: str | None = Query(None, max_length=64, description="Taken on or after (YYYY[-MM[-DD]] or ISO time)"),
    before: str | None = Query(None, max_length=64, description="Taken before"),
    min_score: float | None = Query(None, ge=0, le=10, description="Fixed cut-off (default: the set fitted to the query)"),
    like: str | None = Query(None, max_length=64, description="A photo id: photos like it"),
    library: str | None = Query(None, max_length=64, description="Only photos with a copy in this library (machine), shown at that copy"),
    sort: Literal["relevance", "date"] = "relevance",
    all_: bool = Query(False, alias="all", description="Every photo ranked, as `--all` (not with min_score)"),
):
    if (q is None) == (like is None):
        raise UsageError("give q (what to look for) or like (a photo id), not both or neither")
    options = make_options(limit, min_score, all_)
    doc: dict[str, Any] = {"query": clean_query(q) if q is not None else None, "like": like, "results": [],
                           "next_offset": None, "min_score": cut_off(options), "sort": sort, "hint": None,
                           "generation": None}
    filters = make_filters(Path(in_) if in_ else None, after, before, names=("after", "before", "in"), library=library,
                           library_flag="library")
    searcher = _live(request).current()
    if searcher is None:
        doc.update(index="none", hint="nothing searchable in the store yet: run `imgrag index PHOTOS --store ...`")
        return doc
    searcher = searcher.with_filters(filters) if filters.active() else searcher
    if like is not None:
        page = _like_page(searcher, like, options, offset)
    else:
        page = search_page(searcher, options, query=doc["query"], offset=offset, sort=sort)
    doc.update(index="ready", generation=str(searcher.generation.id), next_offset=page.next_offset, results=[{
        "id": h.sha256, "rank": h.rank, "score": h.score, "path": h.path, "paths": h.paths, "abs_path": h.path,
        "caption": h.caption, "date": h.date, "taken": h.taken, "why": h.why, **_urls(h.sha256), "extra": h.extra,
    } for h in page.hits])
    if not page.hits and offset == 0:
        doc["hint"] = "no matching photos" + why_nothing(searcher, options, flag="min_score", all_flag="all=1",
                                                         filter_flags="the folder/date/library filters")
    return Response(json_bytes(doc), media_type="application/json")


def _like_page(searcher: Any, sha: str, options: Any, offset: int) -> Any:
    """like=<id>: as `search --like`, by the photo's id (its file need not be on this machine)."""
    from dataclasses import replace

    from imgrag.search.request import Page
    from imgrag.search.searcher import Window

    found = searcher.like_sha(sha) if _SHA.fullmatch(sha) else None
    if found is None:
        raise NotFound(f"like={sha}: no such photo in the store")
    row, caption = found
    stop = offset + options.limit + 1
    hits = searcher._rank(searcher._stored_vector(row), caption, replace(options, limit=stop), exclude_rows=[row],
                          window=Window(offset, stop))
    shown = hits[: options.limit]
    return Page(shown, offset + len(shown) if len(hits) > options.limit else None)


def _photo_row(request: Request, photo_id: str) -> tuple[int, Any]:
    searcher = _live(request).current()
    if not _SHA.fullmatch(photo_id) or searcher is None:
        raise NotFound(f"no photo {photo_id[:80]!r} in the store")
    found = searcher.generation.query("SELECT id, record FROM photos WHERE sha256 = %s", (photo_id,))
    if not found:
        raise NotFound(f"no photo {photo_id[:80]!r} in the store")
    return found[0][0], found[0][1]


@router.get("/api/photos/{photo_id}", summary="A photo's description record")
def photo(request: Request, photo_id: str):
    from imgrag.library.records import photo_record

    searcher = _live(request).current()
    record = photo_record(searcher.generation, photo_id) if searcher is not None and _SHA.fullmatch(photo_id) else None
    if record is None:
        raise NotFound(f"no photo {photo_id[:80]!r} in the store")
    return {**record, **_urls(photo_id), "like_url": f"/api/search?like={photo_id}"}


def _stored_jpeg(request: Request, photo_id: str, size: int) -> Response:
    from imgrag.library.records import stored_jpeg

    _photo_row(request, photo_id)
    etag = f'"{photo_id}-{size}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_FOREVER}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    found = stored_jpeg(_live(request).current().generation, photo_id, size)
    if found is None:
        raise NotFound(f"the store has no {size}-pixel image of photo {photo_id}: run `imgrag push` or "
                       "`imgrag index --store` on a machine that holds it")
    return Response(found, media_type="image/jpeg", headers=headers)


@router.get("/api/photos/{photo_id}/thumbnail", summary="A JPEG thumbnail, from the store")
def thumbnail(request: Request, photo_id: str):
    return _stored_jpeg(request, photo_id, 256)


@router.get("/api/photos/{photo_id}/preview", summary="A large JPEG preview, from the store")
def preview(request: Request, photo_id: str):
    return _stored_jpeg(request, photo_id, 1600)


@router.get("/api/photos/{photo_id}/file", summary="The original file, when this server can read a copy")
def original(request: Request, photo_id: str):
    photo, _ = _photo_row(request, photo_id)
    copies = _live(request).current().generation.query("SELECT library, path FROM copies WHERE photo = %s "
                                                       "ORDER BY library, path", (photo,))
    for _, path in copies:
        if Path(path).is_file():
            media = mimetypes.guess_type(path)[0] or "application/octet-stream"
            return FileResponse(path, media_type=media, headers={"ETag": f'"{photo_id}"', "Cache-Control": CACHE_FOREVER})
    held = ", ".join(sorted({lib for lib, _ in copies})) or "no machine"
    raise NotFound(f"the original of photo {photo_id} is not readable from this server: its copies are on {held} "
                   "(the thumbnail and preview come from the store)")


class StoreAskBody(AskBody):
    library: str | None = Field(None, max_length=64, description="Only photos with a copy in this library")


@router.post("/api/ask", summary="Answer a question from the photos (the shape of `imgrag ask --store URL --json`)")
async def ask(request: Request, body: StoreAskBody):
    """As `imgrag serve`'s POST /api/ask (JSON, or server-sent events with `Accept:
    text/event-stream`), over the store: `look` is refused, the files may be on other machines."""
    import asyncio

    from fastapi.responses import JSONResponse, StreamingResponse

    from imgrag.ask.answer import AskResult, answer_plan
    from imgrag.errors import TryLater
    from imgrag.web.ask_api import _doc, _events

    plan = await asyncio.to_thread(_ask_plan, request, body)
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_events(answer_plan(plan)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        events = await asyncio.to_thread(list, answer_plan(plan))
    except TryLater as e:
        return JSONResponse({"error": str(e)}, status_code=429, headers={"Retry-After": "60"})
    result = events[-1]
    assert isinstance(result, AskResult)
    return _doc(result)


def _ask_plan(request: Request, body: StoreAskBody) -> Any:
    from imgrag.ask.answer import plan_ask
    from imgrag.config import VISION_SETTINGS

    if body.look:
        raise UsageError("look cannot be used with a store: the photo files may be on other machines")
    searcher = _live(request).current()
    if searcher is None:
        raise UsageError("nothing searchable in the store yet: run `imgrag index PHOTOS --store ...`")
    filters = make_filters(Path(body.in_) if body.in_ else None, body.after, body.before, names=("after", "before", "in"),
                           library=body.library, library_flag="library")
    searcher = searcher.with_filters(filters) if filters.active() else searcher
    settings = request.app.state.settings.checked(*VISION_SETTINGS)
    settings.require_api_key()
    return plan_ask(body.question, searcher, settings, limit=body.limit, look=0,
                    min_score=cut_off(make_options(body.limit, body.min_score)))


@router.post("/api/login", summary="Log the page in: sets a session cookie when the token is right")
async def login(request: Request, body: Annotated[Login, Body()]):
    """The session is signed, not held (web.sessions.SignedSessions): every server with the
    same token accepts it, so the page stays logged in behind a load balancer."""
    state = request.app.state
    return login_response(request, body.token, state.token, state.sessions, state.throttle)


@router.post("/api/logout", summary="Log out: the session cookie is removed (a signed session cannot be revoked)")
def logout(request: Request):
    return logout_response(request, request.app.state.sessions)


@router.get("/api/status", summary="The store's counts, and the server's own")
def status(request: Request):
    from imgrag.library.run import store_status

    live = _live(request)
    state = store_status(live.library.url, request.app.state.settings)
    # and the fields the page reads from a local index's status (web/static/js/status.js)
    page = {"exists": True, "failed": state["gave_up"], "index_size": state["searchable"],
            "index_up_to_date": state["up_to_date"],
            "read_only_hint": "This server only reads the shared library: run imgrag index PHOTOS --store ... "
                              "on the machines that hold the photos."}
    return {**state, **page, "read_only": True, "auth": request.app.state.auth,
            "index_loaded": live.searcher is not None, "job": None}


def create_store_app(live: StoreLive, *, host: str, port: int, token: str | None, allow_hosts: list[str],
                     cors: str | None, settings: Any) -> FastAPI:
    app = FastAPIOffline(title="imgrag", summary="Find photos by what is in them (a library in PostgreSQL)",
                         version=_version(), redoc_url=None, static_url="/docs-static")
    app.state.live = live
    app.state.settings = settings
    app.state.auth = bool(token)
    app.state.token = token
    app.state.sessions = SignedSessions(token) if token else Sessions()
    app.state.throttle = Throttle()
    _errors(app)
    app.include_router(router)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    if cors:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=[cors], allow_methods=["GET"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)
    app.add_middleware(Guard, rules=Rules(host=host, port=port, token=token, allow_hosts=allow_hosts, cors=cors),
                       sessions=app.state.sessions, throttle=app.state.throttle)
    return app


def run_store_serve(url: str, *, host: str, port: int, allow_hosts: list[str], token_file: Path | None,
                    cors: str | None, open_browser: bool = False) -> int:
    import sys

    from imgrag.library.run import library_for
    from imgrag.web.serve import _check_cors, _log_to_stderr, bind_socket, read_token, url_for, uvicorn_config

    settings = load_settings()
    token = read_token(token_file, settings)
    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} lets other machines in: set a token first (IMGRAG_SERVE_TOKEN=..., or --token-file FILE)")
    library = library_for(url, settings)
    live = StoreLive(library, settings.embed_model, settings.query_encoder)
    searcher = live.current()  # one clear line now if the store cannot be read
    if searcher is not None and searcher.generation.size:
        searcher.encoder().encode(["warm up"])  # the model loaded now, not on a user's first search
    sock = bind_socket(host, port)
    bound = sock.getsockname()[1]
    _log_to_stderr()
    app = create_store_app(live, host=host, port=bound, token=token, allow_hosts=allow_hosts, cors=_check_cors(cors),
                           settings=settings)
    server = uvicorn.Server(uvicorn_config(app, graceful_seconds=30))
    print(f"imgrag: serving {library.safe_name} at {url_for(host, bound)} (read-only)  (Ctrl-C stops)", file=sys.stderr,
          flush=True)
    if open_browser:  # the socket listens already: the browser's request waits for the server to start
        import webbrowser

        threading.Thread(target=webbrowser.open, args=(url_for(host, bound),), daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        library.close()
    return 0
