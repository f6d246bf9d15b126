"""Crash-safe files: whole files written to a temporary name and renamed over the old one,
append-only JSONL with one fsynced line per record (a torn last line is ignored on read and
cut off before the next append), and a failed write turned into one clear line.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from imgrag.errors import StorageError


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

    def __enter__(self) -> JsonlAppender:  # noqa: PYI034 - typing.Self is Python 3.11+
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
