"""The original imgrag service's endpoints, same contract, as thin adapters over the code
the native API uses (jobs for describe/embed, the live index for search):

    GET  /healthcheck                      -> {"is_alive": true}
    POST /generate_description             -> [{"page_content": text, "metadata": {"image_path": abs}}, ...]
    POST /generate_description_embeddings  {"descriptions": [...]} -> {"embedded": N}
    POST /get_image {"query": "..."}       -> a JSON *string* holding {"image_name": [names...]}
    GET  /images/{name}                    -> the photo's bytes, for the names /get_image returns"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import PurePath

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from imgrag.describe.schema import embedding_text
from imgrag.errors import UsageError
from imgrag.pipeline import photo_folders
from imgrag.search.request import make_options
from imgrag.store.descriptions import load_descriptions
from imgrag.store.scan import scan
from imgrag.web.api import checked_photo, photo_response
from imgrag.web.ask_api import verified
from imgrag.web.http_errors import Forbidden, NotFound
from imgrag.web.jobs import Job, wait
from imgrag.web.server import Server, ServerDep

router = APIRouter(tags=["original service"])

GET_IMAGE_LIMIT = 5


@router.get("/healthcheck", summary="Liveness probe (no token needed)")
def healthcheck():
    return {"is_alive": True}


def _writable(server: Server) -> None:
    if server.config.read_only:
        raise Forbidden("this server is read-only (--read-only): it does not describe or embed")


async def _run_job(server: Server, kind: str) -> Job:
    """Start a job as POST /api/jobs does and answer when it has ended."""
    job = server.jobs.start(kind)
    await asyncio.to_thread(wait, job)
    if job.state == "failed":
        raise UsageError(job.error or "the job failed")
    return job


@router.post("/generate_description", summary="Describe the photos not described yet; list every description")
async def generate_description(server: ServerDep):
    _writable(server)
    await _run_job(server, "describe")
    return await asyncio.to_thread(_descriptions_list, server)


def _descriptions_list(server: Server) -> list[dict]:
    """One item per photo file under the served folders that has a description."""
    ws = server.ws
    folders = photo_folders(server.config.photos, ws)
    described = load_descriptions(ws)
    items = []
    for f in scan(ws, folders, save=False):
        record = described.get(f.sha256)
        if record is None:
            continue
        try:
            text = embedding_text(record["description"])
        except ValueError:
            continue
        items.append({"page_content": text, "metadata": {"image_path": str(ws.absolute(f.rel))}})
    return items


class _Item(BaseModel):
    page_content: str = ""
    metadata: dict = Field(default_factory=dict)


class EmbedRequest(BaseModel):
    descriptions: list[_Item] = Field(default_factory=list)


@router.post("/generate_description_embeddings", summary="Embed the descriptions (incremental)")
async def generate_description_embeddings(server: ServerDep, body: EmbedRequest):
    # The descriptions sent back are the ones /generate_description listed: the index is
    # built from imgrag's own records of them, so a client cannot plant text in it.
    _writable(server)
    job = await _run_job(server, "embed")
    return {"embedded": job.result.get("embedded", 0)}


class ImageQuery(BaseModel):
    query: str = Field(..., max_length=4096)


@router.post("/get_image", summary="Up to 5 photo names for a query, as a JSON string")
def get_image(server: ServerDep, body: ImageQuery) -> str:
    served = server.index.current()
    names: list[str] = []
    if served is not None and body.query.strip():
        hits = served.searcher.search(body.query, make_options(GET_IMAGE_LIMIT, None))
        if server.settings.verify_get_image and hits:  # IMGRAG_VERIFY=1: the model keeps the real matches, as the original did
            hits = [h for h, v in zip(hits, verified(server, body.query, hits), strict=True) if v.verified]
        names = [PurePath(os.path.relpath(h.path, server.ws.base)).as_posix() for h in hits]
    return json.dumps({"image_name": names})


@router.get("/images/{name:path}", summary="A photo by the name /get_image gave")
def image(server: ServerDep, request: Request, name: str):
    served = server.index.current()
    sha = served.photos.sha_of(name) if served is not None else None
    if sha is None:
        raise NotFound(f"no indexed photo named {name[:200]!r}")
    return photo_response(request, checked_photo(server, sha, [name]))
