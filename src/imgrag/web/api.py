"""The native HTTP API: /api/search, /api/photos/..., /api/status, /api/jobs, /api/login.
Each route turns its parameters into the calls `imgrag search/status/describe/embed` make."""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import time
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from imgrag.errors import UsageError
from imgrag.photos.files import PhotoError
from imgrag.search.live import Served
from imgrag.search.photo_record import indexed_file, indexed_names, is_indexed, named_photo_file, photo_record
from imgrag.search.request import cut_off, make_filters, make_options, search_page, why_nothing
from imgrag.search.searcher import clean_query
from imgrag.status import collect_status, next_step
from imgrag.store.files import json_bytes
from imgrag.store.serving import PhotoFile, Refused
from imgrag.web.ask_api import verified
from imgrag.web.http_errors import Forbidden, NotFound
from imgrag.web.jobs import Job
from imgrag.web.security import SESSION_COOKIE, session_cookie, throttled
from imgrag.web.server import Server, ServerDep
from imgrag.web.thumbnails import DEFAULT_THUMBNAIL, MAX_SIZE, MIN_SIZE, PREVIEW_SIZE, thumbnail_size

router = APIRouter()

MAX_LIMIT = 100
MAX_OFFSET = 10_000
MAX_QUERY = 4096  # characters; the encoder reads far fewer (search.MAX_QUERY_CHARS)
CACHE_FOREVER = "private, max-age=31536000, immutable"  # URLs name content by its hash
# On everything sent as a photo (with the nosniff every answer carries, see security.py): a
# photo opened on its own is a sandboxed document that may run nothing and load nothing.
PHOTO_CSP = "default-src 'none'; style-src 'unsafe-inline'; sandbox"
STATUS_TTL = 5.0  # seconds a status is reused (it scans the photo folders)


def _urls(sha: str) -> dict[str, str]:
    return {"thumbnail_url": f"/api/photos/{sha}/thumbnail", "preview_url": f"/api/photos/{sha}/preview",
            "file_url": f"/api/photos/{sha}/file"}


def _rel(base: Path, path: str) -> str:
    return PurePath(os.path.relpath(path, base)).as_posix()


# -- search ------------------------------------------------------------------------------------


@router.get("/api/search", summary="Search photos (the same results as `imgrag search --json`)")
def search(
    server: ServerDep,
    request: Request,
    q: str | None = Query(None, max_length=MAX_QUERY, description="What to look for"),
    limit: int = Query(10, ge=1, le=MAX_LIMIT),
    offset: int = Query(0, ge=0, le=MAX_OFFSET),
    in_: str | None = Query(None, alias="in", max_length=4096, description="Only photos inside this folder (relative to the folder holding .imgrag/)"),
    after: str | None = Query(None, max_length=64, description="Taken on or after (YYYY[-MM[-DD]] or ISO time)"),
    before: str | None = Query(None, max_length=64, description="Taken before"),
    min_score: float | None = Query(None, ge=0, le=10, description="Fixed cut-off (default: the set fitted to the query, as the CLI)"),
    like: str | None = Query(None, max_length=4096, description="A photo id or indexed path: photos like it"),
    sort: Literal["relevance", "date"] = "relevance",
    all_: bool = Query(False, alias="all", description="Every photo ranked, as `--all` (not with min_score)"),
    verify: bool = Query(False, description="Have the answer model check this page's results (`search --verify`)"),
):
    if (q is None) == (like is None):
        raise UsageError("give q (what to look for) or like (a photo id or indexed path), not both or neither")
    options = make_options(limit, min_score, all_)
    doc: dict[str, Any] = {"query": None, "like": like, "results": [], "next_offset": None,
                           "min_score": cut_off(options), "sort": sort, "hint": None, "generation": None}
    if q is not None:
        doc["query"] = clean_query(q)
    filters = make_filters(server.ws.absolute(in_) if in_ else None, after, before, names=("after", "before", "in"))
    served = server.index.current()
    if served is None:
        doc.update(index="none", hint=server.index.problem or "no search index yet: run an index job (or `imgrag index PHOTOS`)")
        return doc
    searcher = served.searcher.with_filters(filters) if filters.active() else served.searcher
    like_path = named_photo_file(server.ws, served, like, f"like={like}", NotFound) if like is not None else None
    page = search_page(searcher, options, query=doc["query"], like=like_path, offset=offset, sort=sort)
    base = server.ws.base
    verdicts = _verdicts(server, request, doc["query"], page.hits) if verify else None
    doc.update(index="ready", generation=served.name, next_offset=page.next_offset, results=[{
        "id": h.sha256, "rank": h.rank, "score": h.score, "path": _rel(base, h.path), "paths": [_rel(base, p) for p in h.paths],
        "abs_path": h.path, "caption": h.caption, "date": h.date, "taken": h.taken,
        "why": h.why, **_urls(h.sha256), "extra": h.extra,
        **({"verified": verdicts[i].verified, "reason": verdicts[i].reason} if verdicts is not None else {}),
    } for i, h in enumerate(page.hits)])
    if not page.hits and offset == 0:
        doc["hint"] = "no matching photos" + why_nothing(searcher, options, flag="min_score", all_flag="all=1",
                                                         filter_flags="the folder/date filters")
    return _fast_json(doc)


def _verdicts(server: Server, request: Request, query: str | None, hits: list) -> list:
    """verify=1: the answer model's verdict on each result of the page (imgrag.ask.verify).
    (Cross-site browsers were refused before this ran: security.spends.)"""
    if query is None:
        raise UsageError("verify=1 checks results against the words of q: it cannot be combined with like")
    return verified(server, query, hits)


def _fast_json(doc: dict) -> Response:
    """Plain json.dumps: FastAPI's generic encoder costs more than the search on a busy server."""
    return Response(json_bytes(doc), media_type="application/json")


# -- photos ------------------------------------------------------------------------------------


def _indexed(server: Server, photo_id: str) -> tuple[Served, Path | None]:
    """(the generation served, the photo's file) for an id of that generation; raises a 404 otherwise."""
    served = server.index.current()
    if served is None or not is_indexed(served, photo_id):
        raise NotFound(f"no photo {photo_id[:80]!r} in the index")
    return served, indexed_file(server.ws, served, photo_id)


@router.get("/api/photos/{photo_id}", summary="A photo's description record")
def photo(server: ServerDep, photo_id: str):
    served, path = _indexed(server, photo_id)
    return {**photo_record(server.ws, served, server.descriptions, photo_id, path), **_urls(photo_id),
            "like_url": f"/api/search?like={photo_id}"}


def _not_modified(request: Request, etag: str) -> bool:
    return any(t.strip() in (etag, "*") for t in request.headers.get("if-none-match", "").split(","))


def checked_photo(server: Server, photo_id: str, names: list[str]) -> PhotoFile:
    """The photo's file, open, once imgrag.store.serving has let it through (else a 404 with
    its reason, never cached: the id's old content must not keep its immutable caching)."""
    try:
        return server.photo_files.open(photo_id, names)
    except Refused as e:
        raise PhotoRefused(e) from None


class PhotoRefused(NotFound):
    """404 for a photo whose file may not be served; the app adds `reason` and no-store."""

    def __init__(self, refused: Refused) -> None:
        super().__init__(str(refused))
        self.reason = refused.reason


def refused_response(e: PhotoRefused) -> JSONResponse:
    return JSONResponse({"error": str(e), "reason": e.reason}, status_code=404, headers={"Cache-Control": "no-store"})


def _indexed_names(server: Server, photo_id: str) -> list[str]:
    served = server.index.current()
    if served is None or not is_indexed(served, photo_id):
        raise NotFound(f"no photo {photo_id[:80]!r} in the index")
    return indexed_names(served, photo_id)


def _jpeg(server: Server, request: Request, photo_id: str, size: int) -> Response:
    photo = checked_photo(server, photo_id, _indexed_names(server, photo_id))
    try:
        etag = f'"{photo_id}-{size}"'  # each size is other bytes
        headers = {"ETag": etag, "Cache-Control": CACHE_FOREVER, "Content-Security-Policy": PHOTO_CSP}
        if _not_modified(request, etag):
            return Response(status_code=304, headers=headers)
        try:
            made = server.thumbnails.jpeg(photo, size)
        except PhotoError as e:
            return JSONResponse({"error": f"cannot read this photo: {e}"}, status_code=422)
        except Refused as e:
            raise PhotoRefused(e) from None
    finally:
        photo.close()
    if isinstance(made, bytes):
        return Response(made, media_type="image/jpeg", headers=headers)
    return FileResponse(made, media_type="image/jpeg", headers=headers)


UNREADABLE: dict[int | str, dict[str, Any]] = {422: {"description": "The photo's file cannot be read as an image"}}


def answers(description: str, *media_types: str) -> dict[int | str, dict[str, Any]]:
    """A route's 200 in the schema, for a route that answers other than JSON (with response_class=Response)."""
    return {200: {"description": description, "content": {t: {} for t in media_types}}}


JPEG = {**answers("A JPEG image", "image/jpeg"), **UNREADABLE}
# The original file: an image of any kind imgrag indexes (or a type the system cannot name).
ORIGINAL = answers("The original file", "image/*", "application/octet-stream")


@router.get("/api/photos/{photo_id}/thumbnail", summary="A JPEG thumbnail (orientation applied, no metadata)",
            response_class=Response, responses=JPEG)
def thumbnail(server: ServerDep, request: Request, photo_id: str,
              size: int = Query(DEFAULT_THUMBNAIL, ge=MIN_SIZE, le=MAX_SIZE,
                                description="Pixels on the long side: 96, 256 or 512 are made; "
                                            "another size gets the nearest of them")):
    return _jpeg(server, request, photo_id, thumbnail_size(size))


@router.get("/api/photos/{photo_id}/preview", summary="A large JPEG preview", response_class=Response, responses=JPEG)
def preview(server: ServerDep, request: Request, photo_id: str):
    return _jpeg(server, request, photo_id, PREVIEW_SIZE)


@router.get("/api/photos/{photo_id}/file", summary="The original file (only while it still holds the indexed content)",
            response_class=Response, responses=ORIGINAL)
def original(server: ServerDep, request: Request, photo_id: str):
    return photo_response(request, checked_photo(server, photo_id, _indexed_names(server, photo_id)))


def photo_response(request: Request, photo: PhotoFile) -> Response:
    """The checked file's bytes, read from the file that was checked (not its path again),
    typed by its content. Closes the photo."""
    etag = f'"{photo.sha256}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_FOREVER, "Content-Security-Policy": PHOTO_CSP}
    try:
        if _not_modified(request, etag):
            photo.close()
            return Response(status_code=304, headers=headers)
        media = photo.media_type()
    except Refused as e:
        photo.close()
        raise PhotoRefused(e) from None
    return StreamingResponse(_chunks(photo), media_type=media,
                             headers={**headers, "Content-Length": str(photo.size)})


def _chunks(photo: PhotoFile, chunk: int = 1 << 20):
    try:
        left = photo.size  # the size checked: a file growing meanwhile does not send more
        while left > 0 and (data := photo.file.read(min(chunk, left))):
            left -= len(data)
            yield data
    finally:
        photo.close()


# -- status ------------------------------------------------------------------------------------

@router.get("/api/status", summary="The fields of `imgrag status --json`, and the server's own")
def status(server: ServerDep):
    job = server.jobs.running()
    served = server.index.current(wait=0)
    # The logs' sizes: a describe job that only failed photos changes failures.jsonl alone.
    key = (served.name if served else None, job.version if job else None, _log_size(server.ws.paths.descriptions),
           _log_size(server.ws.paths.failures))
    with server.status_lock:
        cached = server.status_cache
        if cached is None or cached[1] != key or time.monotonic() - cached[0] > STATUS_TTL:
            state = collect_status(server.ws, server.config.photos)
            cached = (time.monotonic(), key, {**state.as_dict(), "next": next_step(state)})
            server.status_cache = cached
    return {**cached[2], "read_only": server.config.read_only, "auth": bool(server.config.token),
            "index_loaded": served is not None, "index_problem_serving": server.index.problem,
            "generation": served.name if served else None, "job": job.as_dict() if job else None}


def _log_size(log: Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return -1


# -- jobs --------------------------------------------------------------------------------------


class JobRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # JSON types as the schema says: "dry_run": 0 is not false

    kind: Literal["describe", "embed", "index"]
    limit: int | None = Field(None, ge=0, le=10_000_000)
    dry_run: bool = False


def _read_only(server: Server) -> None:
    if server.config.read_only:
        raise Forbidden("this server is read-only (--read-only): jobs are off")


@router.post("/api/jobs", status_code=202, summary="Start describe, embed or index (dry_run first gives the estimate)",
             responses={409: {"description": "Another job, or a CLI describe/embed, is writing the index"}})
def start_job(server: ServerDep, body: JobRequest):
    _read_only(server)
    job = server.jobs.start(body.kind, limit=body.limit, dry_run=body.dry_run)
    return job.as_dict()


@router.get("/api/jobs", summary="Jobs of this server, newest first")
def list_jobs(server: ServerDep):
    return {"jobs": [j.as_dict() for j in server.jobs.all()]}


def _job(server: Server, job_id: str) -> Job:
    job = server.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id[:40]!r}")
    return job


@router.get("/api/jobs/{job_id}", summary="A job's state and progress")
def get_job(server: ServerDep, job_id: str):
    return _job(server, job_id).as_dict()


@router.delete("/api/jobs/{job_id}", summary="Cancel a job (what is in flight finishes and is kept)")
def cancel_job(server: ServerDep, job_id: str):
    job = _job(server, job_id)
    server.jobs.cancel(job)
    return job.as_dict()


@router.get("/api/jobs/{job_id}/events", summary="A job's progress as server-sent events", response_class=Response,
            responses=answers("Events `job`, each the whole job as GET /api/jobs/{id} gives it", "text/event-stream"))
async def job_events(server: ServerDep, request: Request, job_id: str):
    job = _job(server, job_id)

    async def events():
        sent = -1
        while True:
            version = job.version
            if version != sent:
                sent = version
                yield f"event: job\ndata: {json.dumps(job.as_dict())}\n\n"
            if not job.running and job.version == sent:
                return
            if server.stopping.is_set() or await request.is_disconnected():
                return
            await asyncio.sleep(0.2)

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# -- login (only when a token is set) ----------------------------------------------------------


class Login(BaseModel):
    model_config = ConfigDict(strict=True)

    token: str = Field(..., max_length=4096)


@router.post("/api/login", summary="Log the page in: sets a session cookie when the token is right")
async def login(server: ServerDep, request: Request, body: Annotated[Login, Body()]):
    """A new random session, held by the server (revoked by logout, expires after a week).
    Wrong tokens are throttled per client address: 429 with Retry-After once past the allowance."""
    return login_response(request, body.token, server.config.token, server.sessions, server.throttle)


def login_response(request: Request, given: str, token: str | None, sessions: Any, throttle: Any) -> Response | dict:
    """POST /api/login's answer (also `serve --store`'s, whose sessions are signed, not held)."""
    if token is None:
        return {"ok": True, "auth": False}
    client = request.client.host if request.client else "unknown"
    refusal = throttled(throttle, client)
    if refusal is not None:
        return refusal
    if not hmac.compare_digest(given.encode(), token.encode()):
        throttle.failed(client)
        return JSONResponse({"error": "wrong token", "login": True}, status_code=401)
    response = JSONResponse({"ok": True, "auth": True})
    response.set_cookie(SESSION_COOKIE, sessions.new(), max_age=int(sessions.lifetime), httponly=True,
                        samesite="strict", path="/", secure=request.url.scheme == "https")
    return response


@router.post("/api/logout", summary="Log out: the session is revoked on the server and its cookie removed")
def logout(server: ServerDep, request: Request):
    return logout_response(request, server.sessions)


def logout_response(request: Request, sessions: Any) -> Response:
    session = session_cookie(request.headers.get("cookie", ""))
    if session is not None:
        sessions.revoke(session)
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict",
                           secure=request.url.scheme == "https")
    return response
