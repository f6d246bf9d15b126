"""Thumbnails and previews: JPEGs made once per (content hash, size) and kept in
`.imgrag/thumbs/`, with the photo's orientation applied and its metadata left out
(HEIC and TIFF become JPEG, which every browser shows)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from imgrag.photos.files import prepare_image
from imgrag.store.workspace import Workspace

DEFAULT_THUMBNAIL = 256
MIN_SIZE, MAX_SIZE = 32, 1024
PREVIEW_SIZE = 1600
_NO_LIMIT = 1 << 40  # prepare_image's base64 cap is for uploads, not for these


def cached_jpeg(ws: Workspace, sha: str, photo: Path, size: int) -> Path | bytes:
    """The cached file, or the bytes when the cache cannot be written (read-only disk)."""
    cached = ws.paths.thumbnail(sha, size)
    if cached.is_file():
        return cached
    jpeg = prepare_image(photo, max_side=size, max_base64_bytes=_NO_LIMIT, quality=85 if size > MAX_SIZE else 80).jpeg
    try:
        _write(cached, jpeg)
    except OSError:  # a cache that cannot be written only costs a re-encode
        return jpeg
    return cached


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
