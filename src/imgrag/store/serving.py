"""Whether an indexed photo's file may be served, decided in one place for every route that
sends a photo or something made from one (`imgrag serve`: the file, thumbnails, previews,
the original service's /images/{name}).

A file is served only when
- its indexed name holds no '..', no hidden part, and resolves to a regular file inside a
  photo root (the folders indexed; not the folder holding .imgrag/, nor .imgrag/ itself),
  so a symlink planted in the photo folder cannot reach `.env`, the description log or
  anything else;
- its content is still the indexed content: size and mtime as scan.json recorded them when
  it was hashed (or as this server last hashed it), else it is hashed again; a replaced
  photo is refused rather than sent under the old id and its immutable caching;
- (for the file itself) its content is a photo format Pillow reads, which names its media
  type: never the file name.

What is checked is the file opened once: the bytes served (or decoded) are read from that
same open file, so swapping the path after the check changes nothing."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import BinaryIO

from imgrag.photos.files import PhotoError, media_type
from imgrag.store.workspace import Workspace

_CHUNK = 1 << 20
_MEMO_SIZE = 20_000  # files this server hashed itself: (path, device, inode, size, mtime) -> sha256
# Not following a link at the last step, and not blocking on a FIFO planted as a photo.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


class Refused(Exception):
    """The photo's file cannot be served; str(e) says why without naming where a link leads.
    `reason` is one of: "gone", "not allowed", "changed", "not a photo"."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class PhotoFile:
    """An indexed photo's file, open and checked: read it from `file`, nothing else."""

    sha256: str
    name: str  # the indexed name it was found under
    file: BinaryIO = field(repr=False)
    size: int
    mtime_ns: int

    def unchanged(self) -> bool:
        """Still the size and mtime it had when checked (nothing rewrote it in place since)."""
        st = os.fstat(self.file.fileno())
        return (st.st_size, st.st_mtime_ns) == (self.size, self.mtime_ns)

    def media_type(self) -> str:
        """The media type its content is (Refused when it is no photo format)."""
        try:
            return media_type(self.file)
        except PhotoError as e:
            raise Refused("not a photo", f"the file of photo {self.sha256} is not a photo ({e})") from None

    def close(self) -> None:
        self.file.close()


class PhotoFiles:
    """The one gate photo files pass before they are served (see the module's docstring)."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._lock = threading.Lock()
        self._memo: OrderedDict[tuple, str] = OrderedDict()
        self._scan_lock = threading.Lock()
        self._scan_key: tuple[int, int] | None = None
        self._scan_db: sqlite3.Connection | None = None

    def open(self, sha256: str, names: list[str]) -> PhotoFile:
        """The first of `names` (the photo's indexed names) that may be served as photo sha256;
        Refused (with the reason of the first name) when none may."""
        first: Refused | None = None
        for name in names:
            try:
                return self._open(sha256, name)
            except Refused as e:
                first = first or e
        raise first or Refused("gone", f"the file of photo {sha256} is gone")

    def _open(self, sha256: str, name: str) -> PhotoFile:
        real = self._inside_roots(sha256, name)
        try:
            fd = os.open(real, _OPEN_FLAGS)
        except OSError:
            raise Refused("gone", f"the file of photo {sha256} is gone or unreadable") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a folder, a FIFO, a device
            os.close(fd)
            raise Refused("not allowed", f"the file of photo {sha256} is not a regular file")
        f = os.fdopen(fd, "rb")
        try:
            found = PhotoFile(sha256, name, f, st.st_size, st.st_mtime_ns)
            if self._content(name, real, st, f) != sha256:
                raise Refused("changed", f"the file of photo {sha256} ({name}) has changed since it was indexed: "
                                         "run `imgrag index` again to index the new content")
            return found
        except BaseException:
            f.close()
            raise

    def _inside_roots(self, sha256: str, name: str) -> Path:
        parts = PurePath(name).parts
        if not name or "\x00" in name or os.path.isabs(name) or ".." in parts:
            raise Refused("not allowed", f"the file of photo {sha256} has a name that is not served")
        try:
            real = self.ws.absolute(name).resolve(strict=True)
        except (OSError, RuntimeError):  # gone, or a link loop
            raise Refused("gone", f"the file of photo {sha256} is gone") from None
        state = self.ws.root.resolve()
        for root in self._roots():
            # discover() never indexes hidden files or folders: nothing hidden is served either
            if real.is_relative_to(root) and not real.is_relative_to(state) \
                    and not any(part.startswith(".") for part in real.relative_to(root).parts):
                return real
        raise Refused("not allowed", f"the file of photo {sha256} leads outside the photo folders")

    def _roots(self) -> list[Path]:
        roots = [r.resolve() for r in self.ws.roots()]
        # A workspace written before roots were recorded: the folder holding .imgrag/, whose
        # hidden parts (.imgrag/ itself, .env) the check above leaves out.
        return roots or [self.ws.base.resolve()]

    # -- content --------------------------------------------------------------------------

    def _content(self, name: str, real: Path, st: os.stat_result, f: BinaryIO) -> str:
        """The file's sha256: as recorded when its size and mtime are the same, else hashed."""
        key = (str(real), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        with self._lock:
            known = self._memo.get(key)
            if known is not None:
                self._memo.move_to_end(key)
                return known
        recorded = self._scanned(name)
        if recorded is not None and recorded[:2] == (st.st_size, st.st_mtime_ns):
            return recorded[2]
        digest = hashlib.sha256()
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
        f.seek(0)
        sha = digest.hexdigest()
        with self._lock:
            self._memo[key] = sha
            if len(self._memo) > _MEMO_SIZE:
                self._memo.popitem(last=False)
        return sha

    def _scanned(self, name: str) -> tuple[int, int, str] | None:
        """(size, mtime_ns, sha256) as the last scan recorded the file (.imgrag/scan.json), held
        as an in-memory SQLite table read again when the file changes."""
        try:
            st = self.ws.paths.scan_cache.stat()
        except OSError:
            return None
        with self._scan_lock:
            if (st.st_size, st.st_mtime_ns) != self._scan_key:
                if self._scan_db is not None:
                    self._scan_db.close()
                self._scan_key, self._scan_db = (st.st_size, st.st_mtime_ns), _load_scan(self.ws.paths.scan_cache)
            if self._scan_db is None:
                return None
            row = self._scan_db.execute("SELECT size, mtime, sha FROM scan WHERE name = ?",
                                        (os.path.normpath(name),)).fetchone()
        return (row[0], row[1], row[2]) if row else None


def _load_scan(path: Path) -> sqlite3.Connection | None:
    """scan.json parsed by SQLite (json_each): as a dict, 100k entries would cost ~35 MB."""
    try:
        text = path.read_text(encoding="utf-8")
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.execute("CREATE TABLE scan (name TEXT PRIMARY KEY, size INTEGER, mtime INTEGER, sha TEXT) WITHOUT ROWID")
        db.execute("INSERT OR REPLACE INTO scan SELECT key, json_extract(value, '$[0]'), json_extract(value, '$[1]'), "
                   "json_extract(value, '$[2]') FROM json_each(?, '$.files')", (text,))
        return db
    except (OSError, UnicodeError, sqlite3.Error):  # a damaged cache only costs hashing
        return None
