"""One indexed photo as a server shows it: its file on disk (if it is still there, inside
the photo tree) and its description record. `imgrag serve` (GET /api/photos/ID) and
`imgrag mcp` (get_photo, photo://ID) both answer from here."""

from __future__ import annotations

import re
from pathlib import Path, PurePath
from typing import Any

from imgrag.errors import UsageError
from imgrag.search.live import Served, photo_file
from imgrag.store.description_lookup import Descriptions
from imgrag.store.workspace import Workspace

SHA = re.compile(r"[0-9a-f]{64}")  # a photo's id: the sha256 of its content


def is_indexed(served: Served, photo_id: str) -> bool:
    return bool(SHA.fullmatch(photo_id)) and served.photos.row_of(photo_id) is not None


def indexed_names(served: Served, photo_id: str) -> list[str]:
    """Every name the photo is indexed under (relative to the folder holding .imgrag/, with
    '/'): what imgrag.store.serving checks before a file or a thumbnail is sent."""
    return [PurePath(rel).as_posix() for rel in served.paths_of(photo_id)]


def indexed_file(ws: Workspace, served: Served, photo_id: str) -> Path | None:
    """The first copy of an indexed photo still on disk inside the photo tree (None: all gone)."""
    for rel in served.paths_of(photo_id):
        found = photo_file(ws, PurePath(rel).as_posix())
        if found is not None:
            return found
    return None


def photo_record(ws: Workspace, served: Served, descriptions: Descriptions, photo_id: str,
                 file: Path | None) -> dict[str, Any]:
    """What is known of an indexed photo: its paths, its description, when and with what it
    was taken, and which model described it."""
    record = descriptions.get(photo_id) or {}
    indexed = served.doc(photo_id)
    paths = [PurePath(p).as_posix() for p in indexed.paths] if indexed else []
    desc = record.get("description") or {}
    return {
        "id": photo_id, "paths": paths, "abs_paths": [str(ws.absolute(p)) for p in paths],
        "caption": desc.get("caption", ""),
        "description": desc, "taken": record.get("taken"), "date": indexed.date if indexed else None,
        "camera": record.get("camera"), "gps": record.get("gps"), "width": record.get("width"),
        "height": record.get("height"), "size": record.get("size"), "model": record.get("model"),
        "provider": record.get("provider"), "created": record.get("created"), "file_exists": file is not None,
    }


def photo_id_of(ws: Workspace, served: Served, name: str) -> str | None:
    """The id of the indexed photo `name` stands for: its id, its indexed path (relative to
    the folder holding .imgrag/, with '/'), or its absolute path inside that folder."""
    if is_indexed(served, name):
        return name
    if Path(name).is_absolute():
        try:
            name = PurePath(Path(name).relative_to(ws.base)).as_posix()
        except ValueError:
            return None
    return served.photos.sha_of(name)


def named_photo(ws: Workspace, served: Served, name: str, label: str, error: type[UsageError] = UsageError) -> str:
    """The id of the indexed photo `name` stands for (photo_id_of), for a server's argument
    shown as `label` in the `error` raised when there is no such photo."""
    sha = photo_id_of(ws, served, name)
    if sha is None:
        raise error(f"{label}: no such photo in the index (give an id or a path from search results)")
    return sha


def named_photo_file(ws: Workspace, served: Served, name: str, label: str,
                     error: type[UsageError] = UsageError) -> Path:
    """The file on disk of the indexed photo `name` stands for, as a search `like` it reads it
    (`/api/search?like=` and the MCP search tool's `like`); an `error` when it has none."""
    found = indexed_file(ws, served, named_photo(ws, served, name, label, error))
    if found is None:
        raise error(f"{label}: the photo's file is gone from disk")
    return found
