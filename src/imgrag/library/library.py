"""`Library`: one store (a PostgreSQL database holding an imgrag library), opened for
writing (migrated to this imgrag's schema first) or for reading (any role that may SELECT)."""

from __future__ import annotations

import socket
from typing import Any

from imgrag.errors import UsageError
from imgrag.library import connection, schema
from imgrag.library.generation import SEARCH_SETTINGS, StoreGeneration, newest_generation, newest_id
from imgrag.search.filters import LIBRARY_NAME, library_name

POOL_MAX = 8  # connections a server keeps: its threads search at once


def this_library(name: str | None) -> str:
    """The library this machine writes its copies as: the name given, else the host name."""
    if name is not None:
        return library_name(name, "--library (IMGRAG_STORE_LIBRARY)")
    host = socket.gethostname()
    if not LIBRARY_NAME.fullmatch(host):
        raise UsageError(f"this machine's host name {host[:80]!r} cannot name its library: give one with "
                         "--library NAME (or IMGRAG_STORE_LIBRARY)")
    return host


class Library:
    def __init__(self, url: str, *, name: str | None = None) -> None:
        if not connection.is_store_url(url):
            raise UsageError("--store takes a PostgreSQL URL: postgresql://[user@]host[:port]/database")
        self.url = url
        self.safe_name = connection.safe_name(url)
        self.given_name = name  # checked when something is written (this_library): a reader needs none
        self._pool: Any = None

    @property
    def library_name(self) -> str:
        """Whose copies the paths this machine writes are (--library, IMGRAG_STORE_LIBRARY, the host name)."""
        return this_library(self.given_name)

    def __repr__(self) -> str:  # never the URL: it may hold a password
        return f"Library({self.safe_name})"

    def connect(self, *, writing: bool) -> Any:
        """A connection: for writing, the schema migrated first; for reading, checked."""
        conn = connection.connect(self.url)
        try:
            with connection.store_errors(self.url):
                if writing:
                    schema.migrate(conn, self.safe_name)
                else:
                    schema.check_version(conn, self.safe_name, writing=False)
                    conn.rollback()
                connection.register_vector(conn)
        except BaseException:
            conn.close()
            raise
        conn.autocommit = False
        return conn

    def pool(self) -> Any:
        """A connection pool for searching from many threads (opened on first use)."""
        if self._pool is None:
            self.connect(writing=False).close()  # one clear line now if it cannot connect or read
            from psycopg_pool import ConnectionPool

            def configure(conn: Any) -> None:
                connection.register_vector(conn)
                conn.autocommit = True
                for setting in SEARCH_SETTINGS:
                    conn.execute(setting)

            self._pool = ConnectionPool(self.url, min_size=1, max_size=POOL_MAX, configure=configure, open=True,
                                        kwargs={"connect_timeout": connection.CONNECT_TIMEOUT,
                                                "application_name": "imgrag"})
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def newest_generation_id(self) -> int | None:
        with self.pool().connection() as conn, connection.store_errors(self.url):
            return newest_id(conn)

    def open_generation(self) -> StoreGeneration:
        """The newest published generation (one clear line when there is none yet)."""
        with self.pool().connection() as conn, connection.store_errors(self.url):
            found = newest_generation(conn)
        if found is None:
            raise UsageError(f"the store {self.safe_name} has nothing searchable yet: "
                             "run `imgrag index PHOTOS --store ...` or `imgrag push PHOTOS --store ...`")
        gen_id, meta, parts = found
        return StoreGeneration(self.pool(), gen_id, meta, parts)
