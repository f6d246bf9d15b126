"""`imgrag mcp`: the photo library for AI assistants, over stdio (the assistant starts the
process) or, with --http, Streamable HTTP at /mcp under the rules of `imgrag serve`:
loopback unless a token is set, the token on every request when it is, the Host header
checked (imgrag.web.security's Guard, the same middleware).

The `mcp` SDK comes with the `imgrag[mcp]` extra, not with a plain install: it brings about
25 MB (cryptography, jsonschema, ...) that describe, search, ask and serve never use."""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from imgrag.config import Settings, load_settings
from imgrag.errors import UsageError
from imgrag.mcp_server.library import Library
from imgrag.store.workspace import Workspace

if TYPE_CHECKING:
    from imgrag.mcp_server.store_library import StoreLibrary

MCP_PATH = "/mcp"
MCP_EXTRA = "pip install 'imgrag[mcp]'"
DEFAULT_PORT = 8765  # beside `imgrag serve`'s 8000: both may run at once


def _workspace(photos: Path | None, index: Path | None) -> tuple[Workspace, Path | None]:
    """The library served and the folder an index run describes (None: the index's own roots).
    An assistant starts us from a folder of its choosing: with no PHOTOS and no --index, the
    index is looked for from there, and its absence is said at once, not at the first call."""
    if photos is not None:
        if not photos.expanduser().is_dir():
            raise UsageError(f"not a folder: {photos}")
        return Workspace.for_photos(photos.expanduser(), index), photos.expanduser().resolve()
    return Workspace.find(Path.cwd(), index), None


def make_library(photos: Path | None, *, index: Path | None, allow_index: bool,
                 store: str | None = None) -> Library | StoreLibrary:
    settings = load_settings()
    url = store or settings.store
    if url is not None:
        return _store_library(url, photos, index=index, allow_index=allow_index, settings=settings)
    ws, folder = _workspace(photos, index)
    if not allow_index and not ws.root.is_dir():
        raise UsageError(f"no index at {ws.root} yet: run `imgrag index {folder or 'PHOTOS'}` first, "
                         "or start with --allow-index to let the assistant index it")
    return Library(ws, folder, settings, allow_index=allow_index)


def _store_library(url: str, photos: Path | None, *, index: Path | None, allow_index: bool,
                   settings: Settings) -> StoreLibrary:
    """`imgrag mcp --store URL` (or IMGRAG_STORE): the tools over the store, read-only."""
    from imgrag.mcp_server.store_library import StoreLibrary

    given = [flag for flag, value in (("PHOTOS", photos), ("--index", index)) if value is not None]
    if given:
        raise UsageError(f"{' and '.join(given)} cannot be combined with --store (IMGRAG_STORE): "
                         "the tools search the store")
    if allow_index:
        raise UsageError("--allow-index cannot be combined with --store (IMGRAG_STORE): the store is written by "
                         "`imgrag index PHOTOS --store ...` on the machines that hold the photos")
    return StoreLibrary(url, settings)


def run_mcp(photos: Path | None, *, index: Path | None, allow_index: bool, http: bool, host: str, port: int,
            allow_hosts: list[str], token_file: Path | None, store: str | None = None) -> int:
    from imgrag.web.security import is_loopback

    require_mcp()
    from imgrag.web.serve import TOKEN_ENV, read_token

    if not http and (host != "127.0.0.1" or port != DEFAULT_PORT or allow_hosts or token_file is not None):
        raise UsageError("--host, --port, --allow-host and --token-file are for --http: without it the server "
                         "speaks over stdin/stdout")
    library = make_library(photos, index=index, allow_index=allow_index, store=store)
    if not http:
        _run_stdio(library)
        return 0
    token = read_token(token_file, library.settings)
    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} lets other machines in: set a token first ({TOKEN_ENV}=..., or --token-file FILE)")
    _run_http(library, host=host, port=port, allow_hosts=allow_hosts, token=token)
    return 0


def require_mcp() -> None:
    """One line naming the extra when the MCP SDK is not installed."""
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise UsageError(f"`imgrag mcp` needs the MCP SDK, which a plain install leaves out: {MCP_EXTRA}") from None


def _run_stdio(library: Library | StoreLibrary) -> None:
    """Serve over stdin/stdout until the assistant closes stdin (the SDK points fd 1 at
    stderr meanwhile, so nothing a library prints can garble the protocol)."""
    import anyio

    from imgrag.mcp_server.server import build_server

    server = build_server(library)
    library.start()
    # On stderr, which an assistant keeps as the server's log; stdout is the protocol's.
    print(f"imgrag: MCP server for {library.where} on stdin/stdout", file=sys.stderr, flush=True)
    try:
        anyio.run(server.run_stdio_async)
    except KeyboardInterrupt:
        pass
    finally:
        library.stop()


def _run_http(library: Library | StoreLibrary, *, host: str, port: int, allow_hosts: list[str], token: str | None) -> None:
    from mcp.server.transport_security import TransportSecuritySettings

    from imgrag.mcp_server.server import build_server
    from imgrag.web.security import MAX_BODY, Guard, Rules
    from imgrag.web.serve import bind_socket, url_for, uvicorn_config
    from imgrag.web.sessions import Sessions, Throttle

    sock = bind_socket(host, port)
    port = sock.getsockname()[1]  # --port 0: the one the system chose
    # The Guard checks the Host header (and the token, and cross-site browsers) as for `imgrag
    # serve`; the SDK's own Host check, which knows neither --allow-host nor the token, is off.
    # The SDK limits bodies itself (413), also one sent without Content-Length: the Guard's
    # check, raised inside the SDK's reading, would come out as a 500.
    app = build_server(library).streamable_http_app(
        streamable_http_path=MCP_PATH, host=host, max_request_body_size=MAX_BODY,
        transport_security=TransportSecuritySettings(enable_dns_rebinding_protection=False))
    rules = Rules(host=host, port=port, token=token, allow_hosts=list(allow_hosts), max_body=None)
    config = uvicorn_config(Guard(app, rules, Sessions(), Throttle()), graceful_seconds=5)
    url = url_for(host, port).rstrip("/") + MCP_PATH
    library.start()
    try:
        _Uvicorn(config, f"imgrag: MCP server for {library.where} at {url}  (Ctrl-C stops)").run(sockets=[sock])
    finally:
        library.stop()


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, saying where it listens once it does (users and tests read that line)."""

    def __init__(self, config: uvicorn.Config, line: str) -> None:
        super().__init__(config)
        self.line = line

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(self.line, file=sys.stderr, flush=True)
