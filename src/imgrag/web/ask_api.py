"""The answer model over HTTP: `POST /api/ask` (the shape of `imgrag ask --json`, or
server-sent events as the answer streams in, for the page), and the verdicts of
`search --verify` for `GET /api/search?verify=1` and, with IMGRAG_VERIFY=1, the original
service's `POST /get_image`. The routes call `answer.plan_ask`/`answer_plan` and
`verify.verify_hits`, as the CLI does, and hold no logic of their own."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import iterate_in_threadpool

from imgrag.ask.answer import AskPlan, AskResult, answer_plan, plan_ask
from imgrag.ask.verify import Verdict, verify_hits
from imgrag.config import VISION_SETTINGS, answer_settings
from imgrag.errors import ImgragError, TryLater
from imgrag.search.ranking import Hit
from imgrag.search.request import cut_off, make_filters, make_options
from imgrag.web.server import Server, ServerDep

router = APIRouter(tags=["answers"])


class AskBody(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="forbid", strict=True)

    question: str = Field(..., min_length=1, max_length=2000)
    in_: str | None = Field(None, alias="in", max_length=4096, description="Only photos inside this folder")
    after: str | None = Field(None, max_length=64)
    before: str | None = Field(None, max_length=64)
    limit: int = Field(8, ge=1, le=50)
    look: int = Field(0, ge=0, le=10)
    min_score: float | None = Field(None, ge=0, le=10)


def _urls(sha: str) -> dict[str, str]:
    return {"thumbnail_url": f"/api/photos/{sha}/thumbnail", "preview_url": f"/api/photos/{sha}/preview"}


def _doc(result) -> dict[str, Any]:
    doc = result.as_dict()
    for item in (*doc["citations"], *doc["photos"]):
        item.update(_urls(item["id"]))
    return doc


def _plan(server: Server, body: AskBody) -> AskPlan:
    served = server.index.current()
    if served is None:
        raise ImgragError(server.index.problem or "no search index yet: run an index job (or `imgrag index PHOTOS`)")
    filters = make_filters(server.ws.absolute(body.in_) if body.in_ else None, body.after, body.before,
                           names=("after", "before", "in"))
    searcher = served.searcher.with_filters(filters) if filters.active() else served.searcher
    settings = server.settings.checked(*VISION_SETTINGS)
    settings.require_api_key()
    cutoff = cut_off(make_options(body.limit, body.min_score))
    return plan_ask(body.question, searcher, settings, limit=body.limit, look=body.look, min_score=cutoff)


@router.post("/api/ask", summary="Answer a question from the photos (the shape of `imgrag ask --json`)")
async def ask(server: ServerDep, request: Request, body: AskBody):
    """JSON by default; with `Accept: text/event-stream`, events `chunk` ({"text"}) as the
    answer arrives, then `result` (the JSON document) or `error` ({"error", "status"})."""
    plan = await asyncio.to_thread(_plan, server, body)
    caller = server.caller_for(plan.settings) if plan.hits and plan.settings is not None else None
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(_events(answer_plan(plan, caller)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    try:
        events = await asyncio.to_thread(list, answer_plan(plan, caller))
    except TryLater as e:
        return JSONResponse({"error": str(e)}, status_code=429, headers={"Retry-After": "60"})
    result = events[-1]
    assert isinstance(result, AskResult)
    return _doc(result)


async def _events(events: Iterator[str | AskResult]) -> AsyncIterator[str]:
    def line(kind: str, data: dict) -> str:
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    try:
        async for event in iterate_in_threadpool(events):
            if isinstance(event, AskResult):
                yield line("result", _doc(event))
            else:
                yield line("chunk", {"text": event})
    except TryLater as e:
        yield line("error", {"error": str(e), "status": 429})
    except ImgragError as e:
        yield line("error", {"error": str(e), "status": 400})


def verified(server: Server, query: str, hits: list[Hit]) -> list[Verdict]:
    """The verdict on each hit (imgrag.ask.verify), through the server's shared Caller.
    Raises TryLater as a 429 (HTTPException) so the routes stay one line."""
    settings = server.settings.checked(*VISION_SETTINGS)
    try:
        return verify_hits(query, hits, server.ws, settings, server.caller_for(answer_settings(settings))).verdicts
    except TryLater as e:
        raise HTTPException(429, str(e), headers={"Retry-After": "60"}) from None
