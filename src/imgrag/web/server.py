"""What the routes of `imgrag serve` share (the live index, the jobs, the settings), and the
one way a route reaches it: a parameter `server: ServerDep` (FastAPI's `Depends(server_of)`).
Routes hold no logic and build no paths: paths come from `server.ws.paths`."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, Request

from imgrag.config import Settings
from imgrag.errors import UsageError
from imgrag.photos.files import give_decoded_memory_back
from imgrag.providers.retry import Caller
from imgrag.search.live import LiveIndex
from imgrag.store.description_lookup import Descriptions
from imgrag.store.serving import PhotoFiles
from imgrag.store.workspace import Workspace
from imgrag.watch.watcher import Watcher
from imgrag.web.jobs import Jobs
from imgrag.web.sessions import Sessions, Throttle
from imgrag.web.thumbnails import Thumbnails

log = logging.getLogger("imgrag.serve")


@dataclass
class ServeConfig:
    ws: Workspace
    photos: Path | None = None  # the folder given to `imgrag serve PHOTOS`, if any
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None
    allow_hosts: list[str] = field(default_factory=list)
    cors: str | None = None
    read_only: bool = False
    settings: Settings = field(default_factory=Settings)  # read once at start (load_settings)
    watch: bool = False  # --watch: index new photos as they appear (imgrag.watch)


class Server:
    """What the routes share: the live index, the jobs, the settings."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.ws = config.ws
        self.settings = config.settings
        self.index = LiveIndex(config.ws, config.settings.embed_model, config.settings.query_encoder)
        self.jobs = Jobs(config.ws, config.photos, config.settings, on_written=self.index.refresh)
        self.descriptions = Descriptions(config.ws)
        self.photo_files = PhotoFiles(config.ws)  # the one gate a photo's file passes before it is sent
        self.thumbnails = Thumbnails(config.ws)
        give_decoded_memory_back()  # a server lives long: a huge photo's decode must not stay in it
        self.sessions = Sessions()  # the page's logins (with a token)
        self.throttle = Throttle()  # wrong tokens per client address
        self.stopping = threading.Event()  # set on Ctrl-C/SIGTERM: event streams end, jobs stop
        self.watcher = _watcher(config, self.index.refresh) if config.watch else None
        # GET /api/status: (when, key, document), reused for a few seconds (it scans the photo folders).
        self.status_cache: tuple[float, tuple[Any, ...], dict[str, Any]] | None = None
        self.status_lock = threading.Lock()
        self._callers: dict[tuple[str, str | None, str | None], Caller] = {}
        self._callers_lock = threading.Lock()

    def caller_for(self, settings: Settings) -> Caller:
        """One Caller per model for the whole server, so concurrent asks share one pacer."""
        key = (settings.provider, settings.base_url, settings.model)
        with self._callers_lock:
            if key not in self._callers:
                self._callers[key] = Caller(settings)
            return self._callers[key]


def _watcher(config: ServeConfig, on_written) -> Watcher:
    """--watch: the served folder (else the index's photo folders), watched in this process; each
    generation it writes is swapped in as a page job's is."""
    folders = [config.photos] if config.photos is not None else [r for r in config.ws.roots() if r.is_dir()]
    if not folders:
        raise UsageError(f"--watch: {config.ws.root} knows no photo folder: run `imgrag serve PHOTOS --watch`")
    return Watcher(folders, config.settings, index=config.ws.root, say=log.info, on_written=on_written)


async def server_of(request: Request) -> Server:
    # async: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request
    # that cost ~15% of the server's throughput under load (bench/serve_load.py).
    return request.app.state.server


ServerDep = Annotated[Server, Depends(server_of)]
