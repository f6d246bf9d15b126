"""Thumbnails and previews: JPEGs made once per (content hash, size) and kept in
`.imgrag/thumbs/`, with the photo's orientation applied and its metadata left out
(HEIC and TIFF become JPEG, which every browser shows).

Only a few sizes are made (the page's), so a client cannot force a fresh decode of a big
photo by asking for one more size; decodes wait in imgrag.photos.files.DECODES; the folder
is kept under CACHE_LIMIT bytes, the oldest made leaving first. A JPEG is made only from a
file imgrag.store.serving has checked, and kept only if the file did not change meanwhile,
so nothing is ever cached under a hash its content does not have."""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from imgrag.photos.files import prepare_image
from imgrag.store.serving import PhotoFile, Refused
from imgrag.store.workspace import Workspace

THUMBNAIL_SIZES = (96, 256, 512)  # the page's: the "like" chip, the grid, the grid on a dense screen
DEFAULT_THUMBNAIL = 256
MIN_SIZE, MAX_SIZE = 32, 1024  # what ?size= accepts; the nearest of THUMBNAIL_SIZES is made
PREVIEW_SIZE = 1600
CACHE_LIMIT = 2 << 30  # bytes of .imgrag/thumbs/: ~150k grid thumbnails
_KEEP_AFTER_SWEEP = 0.8  # a sweep deletes down to this share of the limit, so it runs seldom
_NO_LIMIT = 1 << 40  # prepare_image's base64 cap is for uploads, not for these


def thumbnail_size(asked: int) -> int:
    """The size made for ?size=asked: the nearest offered, the larger on a tie."""
    return min(THUMBNAIL_SIZES, key=lambda s: (abs(s - asked), -s))


class Thumbnails:
    """The thumbnail folder of one workspace, kept under `limit` bytes."""

    def __init__(self, ws: Workspace, limit: int = CACHE_LIMIT) -> None:
        self.ws = ws
        self.limit = limit
        self._lock = threading.Lock()  # guards _making
        self._count_lock = threading.Lock()  # guards _total (a first count or a sweep walks the folder)
        self._total: int | None = None  # bytes in the folder, counted on the first write
        self._making: dict[Path, tuple[threading.Lock, int]] = {}  # thumbnail -> (its lock, requests waiting)

    def jpeg(self, photo: PhotoFile, size: int) -> Path | bytes:
        """The cached file, or the bytes when the cache cannot be written (read-only disk).
        Refused when the photo's file changed while it was read."""
        cached = self.ws.paths.thumbnail(photo.sha256, size)
        if cached.is_file():
            return cached
        with self._one_maker(cached):  # ten requests for one new thumbnail decode it once
            if cached.is_file():
                return cached
            return self._make(photo, size, cached)

    @contextmanager
    def _one_maker(self, cached: Path) -> Iterator[None]:
        with self._lock:
            lock, waiting = self._making.get(cached, (threading.Lock(), 0))
            self._making[cached] = (lock, waiting + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, waiting = self._making[cached]
                if waiting == 1:
                    del self._making[cached]
                else:
                    self._making[cached] = (lock, waiting - 1)

    def _make(self, photo: PhotoFile, size: int, cached: Path) -> Path | bytes:
        jpeg = prepare_image(photo.file, max_side=size, max_base64_bytes=_NO_LIMIT,
                             quality=85 if size > MAX_SIZE else 80).jpeg
        if not photo.unchanged():  # rewritten in place while we read it: these pixels are not sha256's
            raise Refused("changed", f"the file of photo {photo.sha256} changed while it was read")
        try:
            _write(cached, jpeg)
        except OSError:  # a cache that cannot be written only costs a re-encode
            return jpeg
        self._added(len(jpeg))
        return cached

    def _added(self, size: int) -> None:
        with self._count_lock:
            if self._total is None:
                self._total = sum(size for _, size, _ in _files(self.ws.paths.thumbnails))
            else:
                self._total += size
            if self._total > self.limit:
                self._total = self._sweep()

    def _sweep(self) -> int:
        """Delete the oldest thumbnails until the folder holds _KEEP_AFTER_SWEEP of the limit."""
        files = sorted(_files(self.ws.paths.thumbnails))
        total = sum(size for _, size, _ in files)
        for _, size, path in files:
            if total <= self.limit * _KEEP_AFTER_SWEEP:
                break
            try:
                path.unlink()
                total -= size
            except FileNotFoundError:  # another server of this workspace swept it
                total -= size
            except OSError:
                pass
        return total


def _files(folder: Path) -> list[tuple[int, int, Path]]:
    """(mtime_ns, size, path) of every thumbnail under folder."""
    found = []
    for dirpath, _, names in os.walk(folder):
        for name in names:
            path = Path(dirpath, name)
            try:
                st = path.stat()
            except OSError:
                continue
            found.append((st.st_mtime_ns, st.st_size, path))
    return found


def _write(path: Path, data: bytes) -> None:
    """Renamed into place, so a reader sees a whole file; not fsynced: a lost one is remade."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)  # two requests racing here both write the same bytes
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
