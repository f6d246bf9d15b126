"""The FastAPI app of `imgrag serve`: the native API (api.py), the original service's
endpoints (original_service.py), the page (static/), and errors as `{"error": ...}` with a 4xx status."""

from __future__ import annotations

import logging
import mimetypes
import threading
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from imgrag.errors import ImgragError
from imgrag.web import api, ask_api, original_service
from imgrag.web.http_errors import Forbidden, NotFound
from imgrag.web.jobs import Busy
from imgrag.web.security import Guard, Rules
from imgrag.web.server import Server

STATIC = Path(__file__).parent / "static"
# The page's scripts are ES modules, which browsers refuse unless served as JavaScript; some
# systems' mimetypes tables (the Windows registry) map .js to text/plain.
mimetypes.add_type("text/javascript", ".js")
log = logging.getLogger("imgrag.serve")


def create_app(server: Server) -> FastAPI:
    """The app serving `server` (what its routes share)."""
    config = server.config

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.index.start()
        watching = _start_watching(server)
        yield
        if server.watcher is not None:  # its run stops as describe does on Ctrl-C: nothing lost
            server.watcher.stop()
        server.jobs.shutdown()  # a running job stops as describe does on Ctrl-C: nothing lost
        if watching is not None:
            watching.join()

    # fastapi-offline: /docs with Swagger UI's files served from here, not from a CDN (works offline).
    app = FastAPIOffline(title="imgrag", summary="Find photos by what is in them", lifespan=lifespan,
                         version=_version(), redoc_url=None, static_url="/docs-static")
    app.state.server = server  # routes reach it through imgrag.web.server.ServerDep
    _errors(app)
    _document_errors(app)
    app.include_router(api.router)
    app.include_router(ask_api.router)
    app.include_router(original_service.router)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    if config.cors:
        app.add_middleware(CORSMiddleware, allow_origins=[config.cors], allow_methods=["GET", "POST", "DELETE"],
                           allow_headers=["Authorization", "Content-Type"], allow_credentials=False)
    app.add_middleware(Guard, rules=Rules(host=config.host, port=config.port, token=config.token,
                                          allow_hosts=config.allow_hosts, cors=config.cors),
                       sessions=server.sessions, throttle=server.throttle)
    return app


def _start_watching(server: Server) -> threading.Thread | None:
    """serve --watch: the watcher in a thread of the server process; what it cannot get past
    (a bad key, a full disk) is logged and ends the watching, not the serving."""
    watcher = server.watcher
    if watcher is None:
        return None

    def watch() -> None:
        try:
            watcher.run()
        except ImgragError as e:
            log.error("imgrag: watch stopped: %s", e)
        except Exception:
            log.exception("imgrag: watch crashed")

    thread = threading.Thread(target=watch, name="imgrag-watch")
    thread.start()
    return thread


def _version() -> str:
    try:
        return version("imgrag")
    except PackageNotFoundError:
        return "0"


def _as_json(status: int):
    async def handler(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": str(exc)}, status_code=status)

    return handler


def _errors(app: FastAPI) -> None:
    """Every error is `{"error": "..."}`; a traceback never reaches a client."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"not found: {request.url.path}"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette's Allow names the first route of that path only
            headers = {**(headers or {}), "Allow": ", ".join(_allowed(request) or [(headers or {}).get("Allow", "")])}
        return JSONResponse({"error": message}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _validation_message(exc)}, status_code=400)

    # Our own errors: their message as it is, with the status each kind means.
    for kind, status in ((NotFound, 404), (Forbidden, 403), (ImgragError, 400), (Busy, 409)):
        app.add_exception_handler(kind, _as_json(status))

    @app.exception_handler(api.PhotoRefused)
    async def photo_refused(request: Request, exc: api.PhotoRefused):
        return api.refused_response(exc)

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception):
        log.exception("imgrag: internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); see the server's log"}, status_code=500)


# What any route may answer besides its own success (the Guard's refusals, bad parameters).
COMMON_ERRORS = {
    "400": "Bad parameter or body (FastAPI's validation errors, answered as 400, not 422)",
    "401": "Authentication required, or a wrong token (only when the server has a token)",
    "403": "Refused: a Host name this server does not answer to, a cross-site browser request, or --read-only",
    "404": "No such photo, job or route",
    "413": "Request body over 1 MB",
    "414": "URL path or query over 16 KB",
    "429": "Too many wrong tokens from this client (Retry-After says when to try again), or the model's quota",
}


def _document_errors(app: FastAPI) -> None:
    """The schema says what is sent: errors are `{"error": ...}` (never FastAPI's 422 shape),
    with the statuses of COMMON_ERRORS on every route."""
    made = app.openapi

    def openapi() -> dict:
        if app.openapi_schema:
            return app.openapi_schema
        schema = made()
        schemas = schema.setdefault("components", {}).setdefault("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        schemas["Error"] = {"type": "object", "required": ["error"], "properties": {
            "error": {"type": "string", "description": "What went wrong, in one line"},
            "login": {"type": "boolean", "description": "true when logging in would help"}}}
        error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                responses = operation.setdefault("responses", {})
                if "HTTPValidationError" in str(responses.get("422")):
                    del responses["422"]
                for status, why in COMMON_ERRORS.items():
                    responses.setdefault(status, {"description": why})
                for status, response in responses.items():
                    if status.startswith("4"):  # a route's own errors (409, 422) as well
                        response["content"] = error
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _allowed(request: Request) -> list[str]:
    """The methods the schema gives this path, for a 405's Allow header (FastAPI's included
    routers hide their routes, and Starlette's Allow names only the first route of the path)."""
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.scope["path"]):
            methods |= {m.upper() for m in operations}
    return sorted(methods | ({"HEAD"} if "GET" in methods else set()))


def _validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: 'limit: Input should be less than or equal to 100'."""
    parts = []
    for e in exc.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "body", "path"))
        msg = str(e.get("msg", "invalid"))
        parts.append(f"{where}: {msg}" if where else msg)
    return "bad request: " + "; ".join(parts or ["invalid input"])
