"""`imgrag serve`: check the settings, bind, run uvicorn; Ctrl-C/SIGTERM let requests in
flight finish and stop a running job as describe stops on Ctrl-C."""

from __future__ import annotations

import logging
import os
import socket
import sys
import threading
import webbrowser
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import uvicorn

from imgrag.config import Settings, load_settings
from imgrag.demo import demo_photos
from imgrag.errors import UsageError
from imgrag.store.workspace import DIR_NAME, Workspace
from imgrag.web.app import create_app
from imgrag.web.protocol import GuardedH11Protocol
from imgrag.web.security import is_loopback
from imgrag.web.server import ServeConfig, Server

TOKEN_ENV = "IMGRAG_SERVE_TOKEN"
MAX_HEADER_BYTES = 2 * 1024 * 1024  # h11's limit: past our own (security.MAX_URL_QUERY), so ours answers in JSON


def resolve_workspace(photos: Path | None, index: Path | None, settings: Settings) -> tuple[Workspace, Path | None]:
    """The workspace to serve and the photo folder jobs index (None: the index's own roots).
    With PHOTOS, its workspace also when it does not exist yet (a job creates it)."""
    if photos is not None:
        if not photos.is_dir():
            raise UsageError(f"not a folder: {photos}")
        return Workspace.for_photos(photos, index), photos.resolve()
    try:
        return Workspace.find(Path.cwd(), index), None
    except UsageError:
        if index is not None:
            raise
    return _no_workspace_found(settings)


def _no_workspace_found(settings: Settings) -> tuple[Workspace, Path | None]:
    """No PHOTOS and no index found: serve the demo photos (made once, offline), so a new
    user sees the page working, and say how to serve their own."""
    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    photos = demo_photos(say, settings.query_encoder)
    say(f"imgrag: no {DIR_NAME}/ folder here or in a parent folder: serving the demo photos; "
        "serve yours with `imgrag serve ~/Pictures` (the page can index them)")
    return Workspace.for_photos(photos), photos


def read_token(token_file: Path | None, settings: Settings) -> str | None:
    """The access token: from --token-file, else IMGRAG_SERVE_TOKEN (Settings.serve_token)."""
    if token_file is not None:
        try:
            token = token_file.expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UsageError(f"--token-file {token_file}: cannot read it ({getattr(e, 'strerror', None) or e})") from None
        if not token:
            raise UsageError(f"--token-file {token_file} is empty")
        return token
    return settings.serve_token


def _check_cors(origin: str | None) -> str | None:
    if origin is None:
        return None
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise UsageError(f"--cors {origin!r}: give an origin such as https://photos.example.org (scheme, host, port)")
    return f"{parts.scheme}://{parts.netloc}"


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise UsageError(f"cannot listen on {host}:{port} ({e.strerror or e}): pass another --port or --host") from None
    # Accepted connections inherit this: without it, an answer's body waits for the ACK of its
    # headers (Nagle vs delayed ACK), ~40 ms on every request.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def url_for(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def serve_config(photos: Path | None, *, index: Path | None, host: str, port: int, allow_hosts: list[str],
                 read_only: bool, token_file: Path | None, cors: str | None, watch: bool = False) -> ServeConfig:
    """What `imgrag serve` serves, and how, after its checks (a non-loopback host needs a token)."""
    settings = load_settings()  # read once: the routes and jobs receive it
    ws, folder = resolve_workspace(photos, index, settings)
    token = read_token(token_file, settings)
    if not is_loopback(host) and not token:
        raise UsageError(f"--host {host} lets other machines in: set a token first ({TOKEN_ENV}=..., or --token-file FILE)")
    if watch and read_only:
        raise UsageError("--watch writes the index and --read-only forbids that: choose one")
    return ServeConfig(ws=ws, photos=folder, host=host, port=port, token=token, allow_hosts=list(allow_hosts),
                       cors=_check_cors(cors), read_only=read_only, settings=settings, watch=watch)


def run_serve(photos: Path | None, *, index: Path | None, host: str, port: int, allow_hosts: list[str],
              open_browser: bool, read_only: bool, token_file: Path | None, cors: str | None,
              watch: bool = False) -> int:
    config = serve_config(photos, index=index, host=host, port=port, allow_hosts=allow_hosts, read_only=read_only,
                          token_file=token_file, cors=cors, watch=watch)
    sock = bind_socket(host, port)
    config.port = sock.getsockname()[1]  # --port 0: the one the system chose
    _log_to_stderr()
    shared = Server(config)
    app = create_app(shared)
    server = _Uvicorn(uvicorn_config(app, graceful_seconds=30), shared, url_for(host, config.port), open_browser)
    server.run(sockets=[sock])
    return 0


def uvicorn_config(app, *, graceful_seconds: int) -> uvicorn.Config:
    """How imgrag runs uvicorn (`serve`, `mcp --http`). GuardedH11Protocol: h11 with
    header/body deadlines and a connection cap (web/protocol.py)."""
    return uvicorn.Config(app, http=GuardedH11Protocol, h11_max_incomplete_event_size=MAX_HEADER_BYTES, lifespan="on",
                          log_level="warning", access_log=False, server_header=False,
                          timeout_graceful_shutdown=graceful_seconds)


class _Uvicorn(uvicorn.Server):
    """uvicorn's server, told about Ctrl-C first so event streams end and jobs stop in time."""

    def __init__(self, config: uvicorn.Config, shared: Server, url: str, open_browser: bool) -> None:
        super().__init__(config)
        self.shared = shared
        self.url = url
        self.open_browser = open_browser

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            mode = " (read-only)" if self.shared.config.read_only else ""
            print(f"imgrag: serving {self.shared.ws.root} at {self.url}{mode}  (Ctrl-C stops)", file=sys.stderr,
                  flush=True)
            if self.open_browser:
                threading.Thread(target=webbrowser.open, args=(self.url,), daemon=True).start()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        shared = self.shared
        if shared.stopping.is_set():
            # A second Ctrl-C: abandon what is in flight (every record already written is safe).
            print("imgrag: stopped at once", file=sys.stderr, flush=True)
            os._exit(130)
        shared.stopping.set()
        if shared.watcher is not None:
            shared.watcher.stop()  # its run finishes its requests in flight, as a job does
        running = shared.jobs.running()
        if running is not None:
            print(f"imgrag: stopping: the {running.kind} job finishes its requests in flight "
                  "(Ctrl-C again to abandon them)", file=sys.stderr, flush=True)
            shared.jobs.cancel(running)
        super().handle_exit(sig, frame)


def _log_to_stderr() -> None:
    """The server's log lines (imgrag.serve, imgrag.live), as they are, on stderr."""
    log = logging.getLogger("imgrag")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
