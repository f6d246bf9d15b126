"""One photo of a library in PostgreSQL, for whoever shows it (`serve --store`'s
/api/photos/{id}, `mcp --store`'s get_photo): its record, found by id or by a copy's path,
and its thumbnails, which come from the database (the serving machine may not hold the files)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from imgrag.library.workers import THUMBNAIL_SIZES

_SHA = re.compile(r"[0-9a-f]{64}")


def sha_of(generation: Any, name: str) -> str | None:
    """The content hash `name` stands for: a photo id, a path some library recorded for a copy,
    or a photo file on this machine (hashed); None when the store has no such photo."""
    if _SHA.fullmatch(name):
        found = generation.query("SELECT sha256 FROM photos WHERE sha256 = %s", (name,))
        return name if found else None
    found = generation.query("SELECT p.sha256 FROM copies c JOIN photos p ON p.id = c.photo WHERE c.path = %s "
                             "LIMIT 1", (str(Path(name).expanduser()),))
    if found:
        return found[0][0]
    path = Path(name).expanduser()
    if path.is_absolute() and path.is_file():
        from imgrag.photos.files import PhotoError, file_sha256

        try:
            sha = file_sha256(path)
        except (OSError, PhotoError):
            return None
        return sha if generation.query("SELECT 1 FROM photos WHERE sha256 = %s", (sha,)) else None
    return None


def photo_record(generation: Any, sha: str) -> dict[str, Any] | None:
    """What the store knows of a photo, as a `.imgrag/` index's record reads (imgrag.search.
    photo_record), with each copy's library; None when the store has no such photo."""
    found = generation.query("SELECT id, record, photo_time FROM photos WHERE sha256 = %s", (sha,))
    if not found:
        return None
    photo, record, date = found[0]
    record = record or {}
    copies = generation.query("SELECT library, path FROM copies WHERE photo = %s ORDER BY library, path", (photo,))
    desc = record.get("description") or {}
    return {
        "id": sha, "paths": [p for _, p in copies], "abs_paths": [p for _, p in copies],
        "copies": [{"library": lib, "path": p} for lib, p in copies], "caption": desc.get("caption", ""),
        "description": desc, "taken": record.get("taken"), "date": date, "camera": record.get("camera"),
        "gps": record.get("gps"), "width": record.get("width"), "height": record.get("height"),
        "size": record.get("size"), "model": record.get("model"), "provider": record.get("provider"),
        "created": record.get("created"), "file_exists": any(Path(p).is_file() for _, p in copies),
    }


def stored_jpeg(generation: Any, sha: str, size: int) -> bytes | None:
    """The stored JPEG of exactly `size` px (256: the thumbnail, 1600: the preview), or None."""
    found = generation.query("SELECT t.jpeg FROM thumbnails t JOIN photos p ON p.id = t.photo "
                             "WHERE p.sha256 = %s AND t.size = %s", (sha, size))
    return bytes(found[0][0]) if found else None


def thumbnail(generation: Any, sha: str, side: int) -> bytes | None:
    """A JPEG `side` px on its long side, from the smallest stored image at least that large
    (downscaled when larger); None when the store holds no image of the photo."""
    for size in sorted(THUMBNAIL_SIZES, key=lambda s: (s < side, s)):
        jpeg = stored_jpeg(generation, sha, size)
        if jpeg is not None:
            return jpeg if size == side else _downscaled(jpeg, side)
    return None


def _downscaled(jpeg: bytes, side: int) -> bytes:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as image:
        if max(image.size) <= side:
            return jpeg
        image.thumbnail((side, side))
        out = io.BytesIO()
        image.convert("RGB").save(out, "JPEG", quality=80)
        return out.getvalue()
