"""The photos under a workspace's roots right now, each with its content hash.

Hashing is the slow part of a scan, so hashes are cached in `.imgrag/scan.json` by
(relative path, size, mtime): an unchanged folder of 10,000 photos rescans in a blink."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from imgrag.photos.files import PhotoError, Skipped, discover, file_sha256
from imgrag.store.files import write_atomic
from imgrag.store.workspace import Workspace


@dataclass(frozen=True)
class PhotoFile:
    path: Path
    rel: str  # relative to the workspace base
    size: int
    mtime_ns: int
    sha256: str


def scan(
    ws: Workspace,
    roots: Iterable[Path],
    *,
    on_skip: Callable[[Skipped], None] | None = None,
    save: bool = True,
) -> list[PhotoFile]:
    """Every photo under `roots`, hashed (from the cache where size and mtime match)."""
    cache = _load_cache(ws)
    fresh: dict[str, list] = {}
    found: list[PhotoFile] = []
    seen: set[str] = set()
    for root in roots:
        for path in discover(root, on_skip=on_skip):
            rel = ws.relative(path)
            if rel in seen:
                continue
            seen.add(rel)
            try:
                st = path.stat()
                cached = cache.get(rel)
                if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
                    digest = cached[2]
                else:
                    digest = file_sha256(path)
            except (OSError, PhotoError) as e:
                if on_skip:
                    on_skip(Skipped(path, _reason(e)))
                continue
            fresh[rel] = [st.st_size, st.st_mtime_ns, digest]
            found.append(PhotoFile(path, rel, st.st_size, st.st_mtime_ns, digest))
    if save and fresh != cache:
        write_atomic(ws.paths.scan_cache, json.dumps({"version": 1, "files": fresh}).encode())
    return found


def by_content(files: Iterable[PhotoFile]) -> dict[str, list[PhotoFile]]:
    """Photos grouped by content hash: copies of one photo cost one description."""
    groups: dict[str, list[PhotoFile]] = {}
    for f in files:
        groups.setdefault(f.sha256, []).append(f)
    return groups


def _load_cache(ws: Workspace) -> dict[str, list]:
    try:
        data = json.loads(ws.paths.scan_cache.read_bytes())
        files = data.get("files", {})
        return files if isinstance(files, dict) else {}
    except (OSError, ValueError, AttributeError):
        return {}  # a missing or damaged cache only costs a rehash


def _reason(e: Exception) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, FileNotFoundError):
        return "file vanished"
    return str(e)
