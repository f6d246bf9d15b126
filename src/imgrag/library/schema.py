"""The library's schema: numbered SQL files (migrations/NNNN_name.sql, package data) applied
in order, each recorded in `imgrag_migrations` in the same transaction as its changes. A
store whose schema is newer than this imgrag knows is refused with one line, before
anything is read or written."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from imgrag.errors import UsageError

_NAME = re.compile(r"(\d{4})_[a-z0-9_]+\.sql")
# Two writers starting at once on a fresh store: one migrates, the other waits (an arbitrary
# but fixed key for pg_advisory_xact_lock).
_MIGRATION_LOCK = 0x696D67726167


def migrations() -> list[tuple[int, str, str]]:
    """(number, name, sql) of every migration this imgrag ships, in order."""
    found = []
    for entry in resources.files("imgrag.library").joinpath("migrations").iterdir():
        match = _NAME.fullmatch(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    return sorted(found)


def latest() -> int:
    return migrations()[-1][0]


def applied_version(conn: Any) -> int | None:
    """The newest migration applied to this database; None when imgrag never wrote to it."""
    exists = conn.execute("SELECT to_regclass('imgrag_migrations') IS NOT NULL").fetchone()[0]
    if not exists:
        return None
    return conn.execute("SELECT max(version) FROM imgrag_migrations").fetchone()[0]


def check_version(conn: Any, name: str, *, writing: bool) -> int | None:
    """Refuse a schema newer than this imgrag knows; a missing one is refused for reading."""
    version = applied_version(conn)
    if version is not None and version > latest():
        raise UsageError(f"the store {name} has schema version {version}, newer than this imgrag knows "
                         f"({latest()}): upgrade imgrag on this machine")
    if version is None and not writing:
        raise UsageError(f"the store {name} holds no imgrag library yet: "
                         f"run `imgrag push PHOTOS --store ...` or `imgrag index PHOTOS --store ...` first")
    return version


def migrate(conn: Any, name: str) -> int:
    """Apply the migrations the database lacks, all in one transaction (a failed one leaves none applied); the version after."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS imgrag_migrations (version integer PRIMARY KEY, "
                     "name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")
        version = check_version(conn, name, writing=True) or 0
        for number, file, sql in migrations():
            if number > version:
                conn.execute(sql)
                conn.execute("INSERT INTO imgrag_migrations (version, name) VALUES (%s, %s)", (number, file))
                version = number
    return version
