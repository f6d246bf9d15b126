"""The index a long-lived server searches (`imgrag serve`, and any other server): loaded once
in the background, then replaced whole when a new generation appears (a cron `imgrag
index`, or a job of the server), so every answer comes from one complete generation and no
request waits for a reload. With it: one generation's photos by id and by indexed name, and
the file an indexed name stands for."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path, PurePath

from imgrag.errors import ImgragError
from imgrag.index.generations import Generation, current_generation
from imgrag.search.ranking import SearchOptions
from imgrag.search.searcher import Searcher
from imgrag.store.workspace import Workspace

log = logging.getLogger("imgrag.live")

FIRST_LOAD_WAIT = 60.0  # seconds a search waits for the first load before saying "not ready"


class Photos:
    """One generation's photos by id (sha256) and by indexed name, for serving them.

    Two tables in an in-memory SQLite database attached to the generation's whole-table
    connection (Generation.scan, already open: the folder may be pruned later): built by one
    statement each, in C and without the GIL, ~13 MB at 100k photos. Python dicts of the
    same took 52 MB per generation (and a server holds two while it swaps them), and
    reading them row by row stalled every request for seconds under load."""

    def __init__(self, generation: Generation) -> None:
        self.db = generation.scan
        name = "value" if os.sep == "/" else f"replace(value, '{os.sep}', '/')"  # indexed names use '/'
        if any(db[1] == "lookup" for db in self.db.execute("PRAGMA database_list")):  # a retry
            self.db.execute("DETACH DATABASE lookup")
        with self.db:
            self.db.execute("ATTACH DATABASE ':memory:' AS lookup")
            self.db.execute("CREATE TABLE lookup.by_sha (sha256 TEXT PRIMARY KEY, row INTEGER) WITHOUT ROWID")
            self.db.execute("INSERT OR REPLACE INTO lookup.by_sha SELECT sha256, row FROM main.docs ORDER BY row")
            self.db.execute("CREATE TABLE lookup.by_name (name TEXT PRIMARY KEY, row INTEGER) WITHOUT ROWID")
            # A name two rows claim goes to the first.
            self.db.execute(f"INSERT OR IGNORE INTO lookup.by_name SELECT {name}, row FROM main.docs, "
                            "json_each(main.docs.paths) ORDER BY row")

    def row_of(self, sha: str) -> int | None:
        found = self.db.execute("SELECT row FROM lookup.by_sha WHERE sha256 = ?", (sha,)).fetchone()
        return found[0] if found else None

    def sha_of(self, name: str) -> str | None:
        """The photo an indexed name (relative to the workspace base, with '/') stands for."""
        found = self.db.execute("SELECT sha256 FROM lookup.by_name JOIN main.docs USING (row) WHERE name = ?",
                                (name,)).fetchone()
        return found[0] if found else None


class Served:
    """One generation, open and ready: what a request uses from start to end. Its photo
    tables are read in the background, so the first search does not wait for them."""

    def __init__(self, name: str, searcher: Searcher) -> None:
        self.name = name  # the generation's folder name (what CURRENT named when it was opened)
        self.searcher = searcher
        self._photos: Photos | None = None
        self._read = threading.Event()
        threading.Thread(target=self._read_photos, name="imgrag-photos", daemon=True).start()

    def _read_photos(self) -> None:
        try:
            self._photos = Photos(self.searcher.generation)
        except Exception:
            log.exception("imgrag: reading the index's photo table failed")
        finally:
            self._read.set()

    @property
    def photos(self) -> Photos:
        self._read.wait()
        if self._photos is None:
            self._photos = Photos(self.searcher.generation)
        return self._photos

    def doc(self, sha: str):
        """The photo's row of the index (imgrag.index.generations.Doc), None when it has none."""
        row = self.photos.row_of(sha)
        return None if row is None else self.searcher.generation.docs([row]).get(row)

    def paths_of(self, sha: str) -> list[str]:
        doc = self.doc(sha)
        return list(doc.paths) if doc else []


class LiveIndex:
    def __init__(self, ws: Workspace, embed_model: str | None, query_encoder: str = "auto") -> None:
        self.ws = ws
        self.embed_model = embed_model  # Settings.embed_model, Settings.query_encoder: as Searcher takes them
        self.query_encoder = query_encoder
        self._served: Served | None = None
        self._loading = threading.Lock()  # one load at a time
        self._first = threading.Event()  # set once the first load has been tried
        self.problem: str | None = None  # why the index cannot be searched, when it cannot

    def start(self) -> None:
        threading.Thread(target=self._load_first, name="imgrag-index-load", daemon=True).start()

    def _load_first(self) -> None:
        try:
            self.refresh()
        finally:
            self._first.set()

    @property
    def loaded(self) -> bool:
        return self._served is not None

    def current(self, wait: float = FIRST_LOAD_WAIT) -> Served | None:
        """The generation to answer from (None: there is no index yet). A new generation on
        disk is loaded in the background while the previous one keeps answering."""
        if not self._first.wait(wait):
            return self._served  # still loading, and the caller would rather not wait (status)
        served = self._served
        gen = current_generation(self.ws)  # one small file read: cheap enough for every request
        if gen is not None and (served is None or served.name != gen):
            if served is None:
                self.refresh()  # nothing to answer from meanwhile
            elif not self._loading.locked():
                threading.Thread(target=self.refresh, name="imgrag-index-reload", daemon=True).start()
        return self._served

    def refresh(self) -> None:
        """Open the current generation (if it is not the one served) and swap it in."""
        with self._loading:
            gen = current_generation(self.ws)
            previous = self._served
            if gen is None or (previous is not None and previous.name == gen):
                return
            started = time.perf_counter()
            try:
                served = self._open(gen, previous)
            except ImgragError as e:
                self.problem = str(e)
                log.warning("imgrag: %s", e)
                return
            except OSError as e:  # a generation pruned while we opened it: the next request retries
                log.warning("imgrag: could not open index generation %s (%s)", gen, e)
                return
            self.problem = None
            self._served = served  # one reference swap: a request holds the old or the new, whole
            if previous is not None:
                log.info("imgrag: now serving index generation %s (%d photos, opened in %.2f s)", gen,
                         served.searcher.generation.size, time.perf_counter() - started)

    def _open(self, gen: str, previous: Served | None) -> Served:
        searcher = Searcher(index=self.ws.root, embed_model=self.embed_model, query_encoder=self.query_encoder)
        generation = searcher.generation
        # Read everything a search touches now: a later cron run prunes this folder, and
        # only files already open stay readable after that.
        generation.lexical, generation.visible_text, generation.crowding  # noqa: B018
        if previous is not None:
            searcher.reuse_encoder(previous.searcher)
        if generation.size:
            searcher.encoder().encode(["warm up"])  # load the model now, not on a user's first search
        served = Served(generation.folder.name, searcher)
        if previous is not None and generation.size:
            # The old generation answers meanwhile: let one search and the photo tables touch
            # the new one's pages here, so that no request after the swap waits for them.
            searcher.search("warm up", SearchOptions(limit=1, show_all=True))
            served.photos  # noqa: B018
        return served


def photo_file(ws: Workspace, name: str) -> Path | None:
    """The file an indexed name stands for, if it is a regular file inside the photo tree
    (the folder holding .imgrag/, or a photo root): a symlink leading elsewhere is refused."""
    if not name or os.path.isabs(name) or ".." in PurePath(name).parts or "\x00" in name:
        return None
    try:
        real = ws.absolute(name).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    allowed = [ws.base.resolve(), *(r.resolve() for r in ws.roots())]
    if not any(real == a or a in real.parents for a in allowed):
        return None
    return real if real.is_file() else None
