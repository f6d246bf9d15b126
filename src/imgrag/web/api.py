"""The native HTTP API: /api/search, /api/photos/..., /api/status, /api/jobs, /api/login.
Each route turns its parameters into the calls `imgrag search/status/describe/embed` make."""

from __future__ import annotations

import asyncio
import hmac
import json
import mimetypes
import os
import re
import time
from pathlib import Path, PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from imgrag.errors import UsageError
from imgrag.photos.files import PhotoError
from imgrag.search.live import Served, photo_file
from imgrag.search.request import cut_off, make_filters, make_options, search_page, why_nothing
from imgrag.search.searcher import clean_query
from imgrag.status import collect_status, next_step
from imgrag.store.files import json_bytes
from imgrag.web.ask_api import refuse_cross_site, verified
from imgrag.web.http_errors import Forbidden, NotFound
from imgrag.web.jobs import Job
from imgrag.web.security import SESSION_COOKIE, session_value
from imgrag.web.server import Server, ServerDep
from imgrag.web.thumbnails import DEFAULT_THUMBNAIL, MAX_SIZE, MIN_SIZE, PREVIEW_SIZE, cached_jpeg

router = APIRouter()

_SHA = re.compile(r"[0-9a-f]{64}")
MAX_LIMIT = 100
MAX_OFFSET = 10_000
MAX_QUERY = 4096  # characters; the encoder reads far fewer (search.MAX_QUERY_CHARS)
CACHE_FOREVER = "private, max-age=31536000, immutable"  # URLs name content by its hash
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
    filters = make_filters(server.ws.absolute(in_) if in_ else None, after, before, names=("after", "before"))
    served = server.index.current()
    if served is None:
        doc.update(index="none", hint=server.index.problem or "no search index yet: run an index job (or `imgrag index PHOTOS`)")
        return doc
    searcher = served.searcher.with_filters(filters) if filters.active() else served.searcher
    like_path = _like_path(server, served, like) if like is not None else None
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
    """verify=1: the answer model's verdict on each result of the page (imgrag.ask.verify)."""
    refuse_cross_site(request)
    if query is None:
        raise UsageError("verify=1 checks results against the words of q: it cannot be combined with like")
    return verified(server, query, hits)


def _fast_json(doc: dict) -> Response:
    """Plain json.dumps: FastAPI's generic encoder costs more than the search on a busy server."""
    return Response(json_bytes(doc), media_type="application/json")


def _like_path(server: Server, served: Served, like: str) -> Path:
    """The file of an indexed photo named by id or by indexed path (anything else: not found)."""
    sha = like if _SHA.fullmatch(like) and served.photos.row_of(like) is not None else served.photos.sha_of(like)
    if sha is None:
        raise NotFound(f"like={like}: no such photo in the index")
    for rel in served.paths_of(sha):
        found = photo_file(server.ws, PurePath(rel).as_posix())
        if found is not None:
            return found
    raise NotFound(f"like={like}: the photo's file is gone")


# -- photos ------------------------------------------------------------------------------------


def _indexed(server: Server, photo_id: str) -> tuple[Served, Path | None]:
    """(the generation served, the photo's file) for an id of that generation; raises a 404 otherwise."""
    served = server.index.current()
    if not _SHA.fullmatch(photo_id) or served is None or served.photos.row_of(photo_id) is None:
        raise NotFound(f"no photo {photo_id[:80]!r} in the index")
    for rel in served.paths_of(photo_id):
        found = photo_file(server.ws, PurePath(rel).as_posix())
        if found is not None:
            return served, found
    return served, None


@router.get("/api/photos/{photo_id}", summary="A photo's description record")
def photo(server: ServerDep, photo_id: str):
    served, path = _indexed(server, photo_id)
    sha = photo_id
    record = server.descriptions.get(sha) or {}
    indexed = served.doc(sha)
    paths = [PurePath(p).as_posix() for p in indexed.paths] if indexed else []
    desc = record.get("description") or {}
    return {
        "id": sha, "paths": paths, "abs_paths": [str(server.ws.absolute(p)) for p in paths],
        "caption": desc.get("caption", ""),
        "description": desc, "taken": record.get("taken"), "date": indexed.date if indexed else None,
        "camera": record.get("camera"), "gps": record.get("gps"), "width": record.get("width"),
        "height": record.get("height"), "size": record.get("size"), "model": record.get("model"),
        "provider": record.get("provider"), "created": record.get("created"), "file_exists": path is not None,
        **_urls(sha), "like_url": f"/api/search?like={sha}",
    }


def _not_modified(request: Request, etag: str) -> bool:
    return any(t.strip() in (etag, "*") for t in request.headers.get("if-none-match", "").split(","))


def _jpeg(server: Server, request: Request, photo_id: str, size: int) -> Response:
    _, path = _indexed(server, photo_id)
    sha = photo_id
    etag = f'"{sha}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_FOREVER}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    if path is None:
        raise NotFound(f"the file of photo {sha} is gone")
    try:
        made = cached_jpeg(server.ws, sha, path, size)
    except PhotoError as e:
        return JSONResponse({"error": f"cannot read this photo: {e}"}, status_code=422)
    if isinstance(made, bytes):
        return Response(made, media_type="image/jpeg", headers=headers)
    return FileResponse(made, media_type="image/jpeg", headers=headers)


@router.get("/api/photos/{photo_id}/thumbnail", summary="A JPEG thumbnail (orientation applied, no metadata)")
def thumbnail(server: ServerDep, request: Request, photo_id: str,
              size: int = Query(DEFAULT_THUMBNAIL, ge=MIN_SIZE, le=MAX_SIZE)):
    return _jpeg(server, request, photo_id, size)


@router.get("/api/photos/{photo_id}/preview", summary="A large JPEG preview")
def preview(server: ServerDep, request: Request, photo_id: str):
    return _jpeg(server, request, photo_id, PREVIEW_SIZE)


@router.get("/api/photos/{photo_id}/file", summary="The original file")
def original(server: ServerDep, request: Request, photo_id: str):
    _, path = _indexed(server, photo_id)
    if path is None:
        raise NotFound(f"the file of photo {photo_id} is gone")
    return photo_response(request, photo_id, path)


def photo_response(request: Request, sha: str, path: Path) -> Response:
    etag = f'"{sha}"'
    headers = {"ETag": etag, "Cache-Control": CACHE_FOREVER}
    if _not_modified(request, etag):
        return Response(status_code=304, headers=headers)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers=headers)


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
    kind: Literal["describe", "embed", "index"]
    limit: int | None = Field(None, ge=0, le=10_000_000)
    dry_run: bool = False


def _read_only(server: Server) -> None:
    if server.config.read_only:
        raise Forbidden("this server is read-only (--read-only): jobs are off")


@router.post("/api/jobs", status_code=202, summary="Start describe, embed or index (dry_run first gives the estimate)")
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


@router.get("/api/jobs/{job_id}/events", summary="A job's progress as server-sent events")
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
    token: str = Field(..., max_length=4096)


@router.post("/api/login", summary="Log the page in: sets a session cookie when the token is right")
async def login(server: ServerDep, request: Request, body: Annotated[Login, Body()]):
    token = server.config.token
    if token is None:
        return {"ok": True, "auth": False}
    if not hmac.compare_digest(body.token.encode(), token.encode()):
        await asyncio.sleep(0.5)  # slows guessing
        return JSONResponse({"error": "wrong token", "login": True}, status_code=401)
    response = JSONResponse({"ok": True, "auth": True})
    response.set_cookie(SESSION_COOKIE, session_value(token), httponly=True, samesite="strict", path="/",
                        secure=request.url.scheme == "https")
    return response


@router.post("/api/logout", summary="Forget the page's session cookie")
def logout():
    response = JSONResponse({"ok": True})
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response
