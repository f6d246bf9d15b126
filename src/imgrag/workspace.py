"""The `.imgrag/` folder: finding it, its manifest, its writer lock, and crash-safe writes.

Every file in it is either append-only JSONL (one fsynced line per record; a torn
last line is ignored on read and cut off before the next append) or written whole
to a temporary file and renamed over the old one, so a crash at any moment leaves
something readable.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import UsageError

DIR_NAME = ".imgrag"
FORMAT_VERSION = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; match files made with open()
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Records of a JSONL file; lines that do not parse (a torn last line, junk) are skipped."""
    try:
        f = path.open("rb")
    except FileNotFoundError:
        return
    with f:
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # torn tail of an interrupted append
            try:
                record = json.loads(raw)
            except ValueError:
                continue
            if isinstance(record, dict):
                yield record


class JsonlAppender:
    """Appends one record per line, each flushed and fsynced before `append` returns."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("ab")
        self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        # An interrupted append leaves a last line without "\n": cut it off so the next
        # record starts on a line of its own.
        size = self._file.seek(0, os.SEEK_END)
        if size == 0:
            return
        with self.path.open("rb") as f:
            f.seek(max(0, size - 1))
            if f.read(1) == b"\n":
                return
            f.seek(0)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self._file.truncate(cut)
        self._file.seek(cut)
        os.fsync(self._file.fileno())

    def append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
        self._file.write(line.encode("utf-8"))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Workspace:
    """One `.imgrag/` folder. Photo paths inside are relative to `base`, its parent."""

    root: Path

    @property
    def base(self) -> Path:
        return self.root.parent

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def descriptions_path(self) -> Path:
        return self.root / "descriptions.jsonl"

    @property
    def failures_path(self) -> Path:
        return self.root / "failures.jsonl"

    @property
    def scan_cache_path(self) -> Path:
        return self.root / "scan.json"

    @property
    def vectors_dir(self) -> Path:
        return self.root / "vectors"

    @property
    def index_dir(self) -> Path:
        return self.root / "index"

    # -- locating -------------------------------------------------------------------

    @classmethod
    def for_photos(cls, photos: Path, index: Path | None = None) -> Workspace:
        """The workspace that `describe`/`embed PHOTOS` write: `--index`, else PHOTOS/../.imgrag."""
        if index is not None:
            return cls(_as_workspace_dir(index))
        photos = photos.resolve()
        if not photos.exists():
            raise UsageError(f"no such folder: {photos}")
        folder = photos if photos.is_dir() else photos.parent
        return cls(folder.parent / DIR_NAME)

    @classmethod
    def find(cls, start: Path, index: Path | None = None) -> Workspace:
        """The workspace a search reads: `--index`/IMGRAG_INDEX, else `.imgrag/` in start or a parent."""
        if index is not None:
            ws = cls(_as_workspace_dir(index))
            if not ws.root.is_dir():
                raise UsageError(f"no index at {ws.root}: run `imgrag index PHOTOS` first")
            return ws
        start = start.resolve()
        for folder in (start, *start.parents):
            candidate = folder / DIR_NAME
            if candidate.is_dir():
                return cls(candidate)
        raise UsageError(
            f"no {DIR_NAME}/ folder in {start} or its parents: run `imgrag index PHOTOS` "
            "first, or point at one with --index DIR"
        )

    # -- paths ----------------------------------------------------------------------

    def relative(self, path: Path) -> str:
        """How a photo path is stored: relative to `base`, so the whole tree can move."""
        try:
            return os.path.relpath(path.absolute(), self.base)
        except ValueError:  # another drive on Windows
            return str(path.absolute())

    def absolute(self, stored: str) -> Path:
        return self.base / stored

    # -- manifest -------------------------------------------------------------------

    def read_manifest(self) -> dict[str, Any]:
        try:
            manifest = json.loads(self.manifest_path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as e:
            raise UsageError(f"{self.manifest_path} is not valid JSON ({e}); delete it to start over") from e
        fmt = manifest.get("format", FORMAT_VERSION)
        if isinstance(fmt, int) and fmt > FORMAT_VERSION:
            raise UsageError(
                f"{self.root} was written by a newer imgrag (format {fmt}, this one reads {FORMAT_VERSION}): upgrade imgrag"
            )
        return manifest

    def update_manifest(self, **changes: Any) -> dict[str, Any]:
        manifest = self.read_manifest()
        manifest.update(changes)
        manifest["format"] = FORMAT_VERSION
        write_atomic(self.manifest_path, (json.dumps(manifest, indent=2, ensure_ascii=False) + "\n").encode())
        return manifest

    def add_root(self, photos: Path) -> None:
        roots = list(self.read_manifest().get("roots", []))
        rel = self.relative(photos.resolve())
        if rel not in roots:
            self.update_manifest(roots=sorted([*roots, rel]))

    def roots(self) -> list[Path]:
        return [self.absolute(r) for r in self.read_manifest().get("roots", [])]

    # -- the writer lock ------------------------------------------------------------

    @contextmanager
    def writer_lock(self, wait: bool = False) -> Iterator[None]:
        """Held by describe/embed: a second writer is told the index is busy (or waits)."""
        from filelock import FileLock, Timeout

        self.root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(self.root / "lock"))
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            raise UsageError(
                f"{self.root} is busy: another imgrag describe/embed is writing it "
                "(run again later, or pass --wait)"
            ) from None
        try:
            yield
        finally:
            lock.release()


def _as_workspace_dir(index: Path) -> Path:
    """`--index` may name the `.imgrag/` folder itself or the folder that holds it."""
    index = index.expanduser().resolve()
    return index if index.name == DIR_NAME or (index / "manifest.json").exists() else index / DIR_NAME
