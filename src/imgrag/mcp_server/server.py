"""The MCP server (the official `mcp` SDK's MCPServer): the tools search, ask, get_photo,
status and, with --allow-index, index; the resource photo://{id}. Each tool runs its
Library method in a worker thread (a search loads a model and reads the index: the event
loop keeps answering meanwhile). imgrag's own errors (bad arguments, no index, a provider
that is down) reach the client as a tool error with imgrag's one-line message; the
process keeps serving."""

from __future__ import annotations

import base64
import functools
import inspect
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import anyio
from mcp.server import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import CallToolResult, ImageContent, TextContent, ToolAnnotations
from pydantic import Field

from imgrag import __version__
from imgrag.errors import ImgragError
from imgrag.mcp_server.library import Library

if TYPE_CHECKING:
    from imgrag.mcp_server.store_library import StoreLibrary
from imgrag.web.thumbnails import MAX_SIZE, MIN_SIZE, THUMBNAIL_SIZES

T = TypeVar("T")

INSTRUCTIONS = """\
imgrag finds photos in the user's own photo library by what is in them. A vision model \
described every photo once (caption, objects, scene, visible text, people, colours); \
searches match those descriptions by meaning and by exact words. Use `search` to find \
photos, `get_photo` to see one (its full description and a thumbnail), `ask` for a \
question answered from the photos with citations, and `status` for what the index holds. \
Photo ids are the `id` fields of results; give them to get_photo, to search's `like`, or \
read them as the resource photo://{id}."""

STORE_INSTRUCTIONS = """ \
This library is shared by several machines (a PostgreSQL store): a result's paths are on \
the machines holding its copies (status lists each library's name and count); pass \
`library` to keep one machine's copies. Thumbnails come from the store, files need not be \
on this machine. New photos are indexed on the machines that hold them, not from here."""

_FOLDER = ("Only photos inside this folder: an absolute path, or one relative to the library's base folder "
           "(the folder holding .imgrag/; a shared library takes absolute paths only). Omit for the whole library.")
_LIBRARY = ("Only photos with a copy in this library (a machine's name in the shared library, as status lists "
            "under `libraries`); each result is shown at that library's copy.")
_DATE = ("a date: YYYY, YYYY-MM or YYYY-MM-DD (or an ISO time such as 2024-06-01T18:30); a photo's date is "
         "when it was taken (EXIF), else its file time.")

SEARCH = """\
Search the user's photos by what is in them; best match first.

Give `query` (plain words describing what is in the photo: objects, people, places, \
activities, visible text, colours, e.g. "dog on the beach", "receipt from a restaurant", \
"whiteboard with a diagram") or `like` (a photo's id or path, to find photos similar to it), \
never both. Describe what a photo shows rather than asking a question; `ask` answers questions.

By default only the photos that stand out as real matches for this query are returned (the \
set is fitted to each query, and may be empty). To see the nearest photos anyway, pass \
min_score=0 or all=true. Narrow with `folder`, `after` and `before`.

Returns {"query", "count", "results": [...]}, the same photos in the same order as \
`imgrag search --json`. Each result: rank (1 = best), id (the photo's content hash: pass it to \
get_photo or like), score (higher is better; compare scores within one search), path (absolute \
path of the photo file), caption (the vision model's one-line description), why (why it \
matched: the query words found in the photo's description and the fields holding them, e.g. \
'matched "stop", "sign" in caption, visible text; visible text: STOP', or 'near in meaning, \
no word in common; objects: ...' when it matched by meaning alone), date (ISO time the date \
filters use: when it was taken per EXIF, else the file's time), taken (the EXIF time, or null), \
copies (every path, when the same photo is stored more than once). When nothing matches, "hint" says why and what to try."""

ASK = """\
Answer a question from the user's photos: the best-matching photos' descriptions are sent to \
a chat model (the user's configured answer model, which costs tokens), which answers briefly \
and cites photos as [1], [2]. Use it for questions ("when were we last at the beach?", \
"what was the restaurant called?"); use `search` to list photos.

Returns {"question", "answer", "citations": [{"n", "id", "path"}], "photos": [every photo \
sent, n = its citation number, with caption, path, score, why], "model", "usage"}. "answer" is \
null (and nothing is sent) when no photo matches; "hint" then says why. With dry_run=true \
nothing is sent: the exact prompt and its estimated tokens and cost come back."""

GET_PHOTO = """\
One photo: its full description record and a JPEG thumbnail to look at.

`photo` is a photo's id (the `id` of a search or ask result) or its path. Returns the record \
as JSON: id, paths, abs_paths, caption, description (everything the vision model wrote: \
caption, objects, scene, visible text, people, colours, ...), date, taken, camera, gps, \
width, height, size (bytes), model (the vision model that described it), created (when), \
file_exists; then the thumbnail as an image (none when the file is gone or no longer holds \
the described content: "thumbnail_error" then says why)."""

STATUS = """\
What the photo library's index holds: photos found, described, failed, embedded, the index's \
size and whether it is up to date, the models used, and "next": what an index run would do \
now (e.g. "describe 12, embed 12"). With indexing allowed, "job" is the latest index run \
(state running/done/failed/cancelled, phase, done/total, message)."""

INDEX = """\
Describe the library's new photos with the vision model and add them to the search index \
(what `imgrag index` does). This sends photos to the user's vision provider and can cost \
money and time, so it works in two steps:

1. Call with confirm=false (the default): a dry run that sends nothing and returns the \
estimate: photos to describe, tokens, cost in USD, and time at the provider's rate limits. \
Show it to the user and ask before going on.
2. Call with confirm=true (within 15 minutes of the estimate) to start the run. It runs in \
the background, paced to the provider's rate limits as `imgrag describe` is; follow it with \
`status` (its "job" field). Photos become searchable when it has finished.

`limit` describes at most that many photos this run (the rest wait for the next run)."""


def _runs_in_thread(method: Callable[..., T]) -> Callable[..., Any]:
    """`method` in a worker thread, its ImgragError a ToolError (one line, no traceback)."""

    @functools.wraps(method)
    async def run(*args: Any, **kwargs: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(functools.partial(method, *args, **kwargs))
        except ImgragError as e:
            raise ToolError(str(e)) from None

    return run


def _given(**arguments: Any) -> dict[str, Any]:
    """The arguments a client gave (a local library's methods take no `library`)."""
    return {k: v for k, v in arguments.items() if v is not None}


def _for(library: Library | StoreLibrary, tool: Callable[..., Any]) -> Callable[..., Any]:
    """The tool as this library offers it: the `library` filter only over a store (a folder's
    index has one library), so an assistant is never offered an argument that cannot work."""
    if library.store_tools:
        return tool
    signature = inspect.signature(tool, eval_str=True)  # the SDK reads the arguments from it
    tool.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "library"])
    return tool


def build_server(library: Library | StoreLibrary) -> MCPServer:
    library_ = library  # the tools' own `library` argument is the store's library filter
    instructions = INSTRUCTIONS + (STORE_INSTRUCTIONS if library.store_tools else "")
    server = MCPServer("imgrag", title="imgrag: your photos, by what is in them", version=__version__,
                    instructions=instructions, log_level="WARNING")
    reading = ToolAnnotations(read_only_hint=True, open_world_hint=False)

    async def search(
        query: Annotated[str | None, Field(max_length=4096, description="What to look for, in plain words.")] = None,
        like: Annotated[str | None, Field(max_length=4096, description=(
            "Instead of query: a photo's id (or path) to find photos similar to it (it is left out).")
        )] = None,
        limit: Annotated[int, Field(ge=1, le=100, description="At most this many results.")] = 10,
        min_score: Annotated[float | None, Field(ge=0, le=10, description=(
            "Return the photos scoring this or more instead of the set fitted to the query; 0 returns the nearest "
            "photos however weak the match. Not with all."))] = None,
        all: Annotated[bool, Field(description=(  # `imgrag search --all`, as the HTTP API names it
            "Every photo ranked, best first, however weak the match (up to limit)."))] = False,
        folder: Annotated[str | None, Field(max_length=4096, description=_FOLDER)] = None,
        after: Annotated[str | None, Field(max_length=64, description="Only photos taken on or after " + _DATE)] = None,
        before: Annotated[str | None, Field(max_length=64, description="Only photos taken before " + _DATE)] = None,
        library: Annotated[str | None, Field(max_length=64, description=_LIBRARY)] = None,
    ) -> dict[str, Any]:
        return await _runs_in_thread(library_.search)(query=query, like=like, limit=limit, min_score=min_score,
                                                      show_all=all, folder=folder, after=after, before=before,
                                                      **_given(library=library))

    server.tool(description=SEARCH, annotations=reading, structured_output=True)(_for(library_, search))

    async def ask(
        question: Annotated[str, Field(min_length=1, max_length=2000, description="The question, in plain words.")],
        limit: Annotated[int, Field(ge=1, le=50, description="How many of the best-matching photos the model reads.")] = 8,
        min_score: Annotated[float | None, Field(ge=0, le=10, description=(
            "Send only photos scoring this or more (default: the photos search would return; 0 sends the nearest "
            "anyway)."))] = None,
        look: Annotated[int, Field(ge=0, le=10, description=(
            "Also send the N best photos themselves (downscaled, no metadata) to the vision model, for questions "
            "the descriptions may not answer (a colour, a detail). Costs more."))] = 0,
        folder: Annotated[str | None, Field(max_length=4096, description=_FOLDER)] = None,
        after: Annotated[str | None, Field(max_length=64, description="Only photos taken on or after " + _DATE)] = None,
        before: Annotated[str | None, Field(max_length=64, description="Only photos taken before " + _DATE)] = None,
        dry_run: Annotated[bool, Field(description="Send nothing: return the exact prompt and its estimated cost.")] = False,
        library: Annotated[str | None, Field(max_length=64, description=_LIBRARY)] = None,
    ) -> dict[str, Any]:
        return await _runs_in_thread(library_.ask)(question=question, limit=limit, min_score=min_score, look=look,
                                                   folder=folder, after=after, before=before, dry_run=dry_run,
                                                   **_given(library=library))

    server.tool(description=ASK, annotations=ToolAnnotations(read_only_hint=True, open_world_hint=True),
                structured_output=True)(_for(library_, ask))

    @server.tool(description=GET_PHOTO, annotations=reading)
    async def get_photo(
        photo: Annotated[str, Field(min_length=1, max_length=4096, description="A photo's id or path.")],
        size: Annotated[int, Field(ge=MIN_SIZE, le=MAX_SIZE, description=(
            "The thumbnail's longer side in pixels: 96, 256 or 512 are made, another size gets the nearest.")
        )] = max(THUMBNAIL_SIZES),
    ) -> CallToolResult:
        record, viewable = await _runs_in_thread(library.photo)(photo)  # a file here, or the store's images
        image: list[ImageContent] = []
        if viewable:
            try:
                jpeg = await _runs_in_thread(library.thumbnail)(record["id"], size)
            except (ToolError, OSError) as e:  # an unreadable or replaced file: the record still helps
                record["thumbnail_error"] = str(e)
            else:
                image.append(ImageContent(type="image", data=base64.b64encode(jpeg).decode(), mime_type="image/jpeg"))
        text = TextContent(type="text", text=json.dumps(record, ensure_ascii=False))
        return CallToolResult(content=[text, *image], structured_content=record)

    @server.tool(description=STATUS, annotations=reading, structured_output=True)
    async def status() -> dict[str, Any]:
        return await _runs_in_thread(library.status)()

    if library.allow_index:
        @server.tool(description=INDEX, structured_output=True,
                  annotations=ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True,
                                              open_world_hint=True))
        async def index(
            confirm: Annotated[bool, Field(description=(
                "false: only the estimate (nothing sent); true: start the run the last estimate priced."))] = False,
            limit: Annotated[int | None, Field(ge=0, le=10_000_000, description=(
                "Describe at most this many photos this run."))] = None,
        ) -> dict[str, Any]:
            return await _runs_in_thread(library.run_index)(confirm=confirm, limit=limit)

    @server.resource("photo://{id}", name="photo", mime_type="application/json", description=(
        "A photo's description record (as get_photo returns it, without the thumbnail); id: a search result's id."))
    async def photo_resource(id: str) -> str:
        try:
            record, _ = await _runs_in_thread(library.photo)(id)
        except ToolError as e:
            raise ResourceError(str(e)) from None
        return json.dumps(record, ensure_ascii=False)

    return server
