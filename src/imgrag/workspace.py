"""The `.imgrag/` folder: finding it, its manifest, its writer lock, and crash-safe writes.

Every file in it is either append-only JSONL (one fsynced line per record; a torn
last line is ignored on read and cut off before the next append) or written whole
to a temporary file and renamed over the old one, so a crash at any moment leaves
something readable.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import StorageError, UsageError

DIR_NAME = ".imgrag"
FORMAT_VERSION = 1


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that readers see the old or the new file, never half."""
    with storage_errors(path):
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


_STORAGE_REASONS = {
    errno.ENOSPC: "no space left on the disk",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EFBIG: "file too large for this file system",
}


@contextmanager
def storage_errors(path: Path) -> Iterator[None]:
    """Turn a failed write under `.imgrag/` into one clear line (exit 2) instead of a traceback."""
    try:
        yield
    except OSError as e:
        error = as_storage_error(e, path)
        if error is None:
            raise
        raise error from None


def as_storage_error(e: OSError, path: Path | str | None = None) -> StorageError | None:
    """The one-line StorageError for a disk-full / read-only / permission failure, else None."""
    reason = _STORAGE_REASONS.get(e.errno or 0)
    if reason is None:
        return None
    where = path or e.filename or "the index"
    return StorageError(
        f"cannot write {where}: {reason}; what was already saved is intact, run again once the disk is writable"
    )


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


def json_bytes(value: Any, **dumps: Any) -> bytes:
    """UTF-8 JSON. A file name that is not valid UTF-8 reaches us as lone surrogates
    (Python's surrogateescape); those are written as \\udcXX escapes, which read back
    to the very same name, instead of failing or writing invalid UTF-8."""
    try:
        return json.dumps(value, ensure_ascii=False, **dumps).encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, **dumps).encode("ascii")


def json_line(record: dict[str, Any]) -> bytes:
    return json_bytes(record, separators=(",", ":")) + b"\n"


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
    """Appends one record per line, each fsynced before `append` returns.

    A write that fails (disk full) is cut back off, so the file never holds half a
    line followed by more records; the appender then refuses further records."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._broken: StorageError | None = None
        with storage_errors(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = path.open("ab", buffering=0)
            self._repair_torn_tail()

    def _repair_torn_tail(self) -> None:
        # An interrupted append leaves a last line without "\n": cut it off so the next
        # record starts on a line of its own.
        size = self._file.seek(0, os.SEEK_END)
        if size == 0:
            return
        cut = _after_last_newline(self.path, size)
        if cut == size:
            return
        self._file.truncate(cut)
        self._file.seek(cut)
        os.fsync(self._file.fileno())

    def append(self, record: dict[str, Any]) -> None:
        if self._broken is not None:
            raise self._broken
        line = json_line(record)
        start = self._file.seek(0, os.SEEK_END)
        try:
            with storage_errors(self.path):
                view = memoryview(line)
                while view:
                    view = view[self._file.write(view):]
                os.fsync(self._file.fileno())
        except StorageError as e:
            self._broken = e
            try:
                self._file.truncate(start)  # truncating frees space, so it works on a full disk
            except OSError:
                pass  # the torn tail is cut off when the file is next opened
            raise

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
        resolved = photos.resolve()
        if DIR_NAME in resolved.parts:
            # Photos kept in our own state folder would index themselves (and nest a new .imgrag/).
            raise UsageError(f"{photos} is inside an {DIR_NAME}/ folder, which holds imgrag's own files: "
                             "keep photos outside it")
        if index is not None:
            return cls(_as_workspace_dir(index))
        if not resolved.exists():
            raise UsageError(f"no such folder: {resolved}")
        folder = resolved if resolved.is_dir() else resolved.parent
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
        write_atomic(self.manifest_path, json_bytes(manifest, indent=2) + b"\n")
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

        lock_path = self.root / "lock"
        lock = FileLock(str(lock_path))
        try:
            with storage_errors(lock_path):
                self.root.mkdir(parents=True, exist_ok=True)
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

    def writer_busy(self) -> bool:
        """Whether another describe/embed holds the writer lock right now (not waiting for it)."""
        from filelock import FileLock, Timeout

        if not (self.root / "lock").exists():
            return False
        lock = FileLock(str(self.root / "lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:  # a read-only workspace: nobody can be writing it either
            return False
        lock.release()
        return False

    def command(self, verb: str, *flags: str) -> str | None:
        """The exact `imgrag embed|index` for this workspace's photos, for hints: the photo
        folder (with --index when that folder alone would find another workspace); `embed`
        of several folders names the workspace only; None for `index` of several or none."""
        import shlex

        roots = self.roots()
        if len(roots) == 1:
            where = [str(roots[0])] + ([] if roots[0].parent == self.base else ["--index", str(self.root)])
        elif verb == "embed":
            where = ["--index", str(self.root)]
        else:
            return None
        return shlex.join(["imgrag", verb, *flags, *where])

    def embed_command(self, *flags: str) -> str:
        """`imgrag embed FLAGS ...` that (re)builds this index (see `command`)."""
        return self.command("embed", *flags) or ""


def _after_last_newline(path: Path, size: int, chunk: int = 1 << 16) -> int:
    """Offset just past the last b"\\n" of the first `size` bytes (0 if there is none)."""
    with path.open("rb") as f:
        end = size
        while end > 0:
            start = max(0, end - chunk)
            f.seek(start)
            block = f.read(end - start)
            at = block.rfind(b"\n")
            if at != -1:
                return start + at + 1
            end = start
    return 0


def _as_workspace_dir(index: Path) -> Path:
    """`--index` may name the `.imgrag/` folder itself or the folder that holds it."""
    index = index.expanduser().resolve()
    return index if index.name == DIR_NAME or (index / "manifest.json").exists() else index / DIR_NAME
