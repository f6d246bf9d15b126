"""Which photos a search may return: `--in FOLDER`, `--after`, `--before` (or the `in`,
`after`, `before` URL parameters), as the index rows that pass them."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from imgrag.errors import UsageError
from imgrag.index.generations import PHOTO_TIME, Generation
from imgrag.store.workspace import Workspace


@dataclass(frozen=True)
class Filters:
    """Which photos a search may return. Dates compare local wall-clock times: the EXIF time
    as the camera recorded it, else the file's modification time in this machine's zone."""

    under: Path | None = None  # a photo matches when any of its copies is inside this folder
    after: datetime | None = None  # taken at or after
    before: datetime | None = None  # taken strictly before
    in_name: str = "--in"  # how the user named `under`, for messages ("in" over HTTP)
    library: str | None = None  # a store's (--store) photos with a copy in this library (machine)

    def active(self) -> bool:
        return self.under is not None or self.after is not None or self.before is not None or self.library is not None


# A library's name (imgrag.library): a host name's letters (laptop, nas-1, studio.lan).
LIBRARY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def library_name(name: str, flag: str = "--library") -> str:
    """A library (machine) name as given, or one line saying what a name may hold."""
    if not LIBRARY_NAME.fullmatch(name):
        raise UsageError(f"{flag} {name[:80]!r} is not a library name: use 1 to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (e.g. laptop, nas-1)")
    return name


_PERIOD = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?")


def parse_date(text: str, flag: str) -> datetime:
    """YYYY, YYYY-MM or YYYY-MM-DD (the first moment of that period), or a full ISO 8601 time."""
    text = text.strip()
    try:
        period = _PERIOD.fullmatch(text)
        if period:
            year, month, day = (int(p) if p else 1 for p in period.groups())
            return datetime(year, month, day)
        when = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"{flag} {text[:80]!r} is not a date: use YYYY-MM-DD (or YYYY, YYYY-MM, or a time such as 2024-06-01T18:30)"
        ) from None
    if when.tzinfo is not None:
        try:
            when = when.astimezone().replace(tzinfo=None)  # the same instant on this machine's clock
        except (OverflowError, ValueError):  # 0001-01-01T00:00+14:00 is before year 1 here
            raise UsageError(f"{flag} {text!r} is out of range: give a date between the years 1 and 9999") from None
    return when


def allowed_rows(generation: Generation, ws: Workspace, filters: Filters) -> set[int] | None:
    """The index rows that pass the filters (None: no filter, every row)."""
    if not filters.active():
        return None
    if filters.library is not None:  # library.run.open_library says so first; this keeps any other caller honest
        raise UsageError("--library names a library in a store: give --store URL (or set IMGRAG_STORE)")
    clauses: list[str] = []
    params: list[object] = []
    if filters.under is not None:
        folder = _folder_in_workspace(ws, filters.under, filters.in_name)
        if folder != ".":
            prefix = folder + os.sep
            clauses.append("EXISTS (SELECT 1 FROM json_each(docs.paths) WHERE value = ? OR substr(value, 1, ?) = ?)")
            params += [folder, len(prefix), prefix]
    if filters.after is not None:
        clauses.append(f"{PHOTO_TIME} >= ?")
        params.append(filters.after.isoformat(timespec="seconds"))
    if filters.before is not None:
        clauses.append(f"{PHOTO_TIME} < ?")
        params.append(filters.before.isoformat(timespec="seconds"))
    where = " WHERE " + " AND ".join(clauses) if clauses else ""
    # One string in one step: row by row, a busy server waited for the GIL at each (index.rows_at_once).
    (found,) = generation.scan.execute(f"SELECT group_concat(row) FROM docs{where}", params).fetchone()
    return set(map(int, found.split(","))) if found else set()


def _folder_in_workspace(ws: Workspace, under: Path, flag: str = "--in") -> str:
    """`--in` as stored paths spell it: relative to the workspace base ('.' for the base itself).
    Every refusal says the same, so that `in=` over HTTP cannot tell which paths exist."""
    refused = UsageError(f"{flag} {str(under)[:300]}: no such folder inside {ws.base}, the folder the index in "
                         f"{ws.root} covers")
    try:
        # strict: a missing path, a NUL, a name too long or a symlink loop all raise here
        folder = Path(os.path.realpath(under.expanduser(), strict=True))
        base = Path(os.path.realpath(ws.base, strict=True))
    except (OSError, ValueError, RuntimeError):
        raise refused from None
    rel = os.path.relpath(folder, base)
    if rel == os.pardir or rel.startswith(os.pardir + os.sep) or os.path.isabs(rel):
        raise refused
    return rel
