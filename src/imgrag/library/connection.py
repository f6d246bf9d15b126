"""Connections to the library's PostgreSQL: opened from the URL (`--store`, IMGRAG_STORE),
with the password taken from the URL, libpq's environment (PGPASSWORD) or `~/.pgpass`, and
never shown: every message names the store by `safe_name` and has the password cut out."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from typing import Any

from imgrag.errors import UsageError

CONNECT_TIMEOUT = 10  # seconds: an unreachable server is one clear line, not a hang


def is_store_url(text: str) -> bool:
    return bool(re.match(r"(postgres|postgresql)://", text.strip(), re.IGNORECASE))


def safe_name(url: str) -> str:
    """The store as messages name it: user@host:port/database, never a password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(url)
    except Exception:  # an unparsable URL: say nothing of what it holds  # noqa: BLE001
        return "the store"
    host = str(info.get("host") or "localhost")
    where = f"{host}:{info['port']}" if info.get("port") else host
    user = f"{info['user']}@" if info.get("user") else ""
    return f"postgresql://{user}{where}/{info.get('dbname', '')}"


def scrub(message: str, url: str) -> str:
    """A driver's message with the URL's password (and the URL itself) cut out."""
    from psycopg.conninfo import conninfo_to_dict

    with contextlib.suppress(Exception):
        password = conninfo_to_dict(url).get("password")
        if password:
            message = message.replace(str(password), "***")
    return message.replace(url, safe_name(url))


def connect(url: str, **kwargs: Any) -> Any:
    """A psycopg connection with pgvector's types, or one UsageError line."""
    import psycopg

    try:
        conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT, application_name="imgrag", **kwargs)
    except psycopg.Error as e:
        # libpq's message spans lines (a hint under the error): one line, as every error is
        raise UsageError(f"cannot connect to the store {safe_name(url)}: {scrub(' '.join(str(e).split()), url)}") from None
    return conn


def register_vector(conn: Any) -> None:
    """pgvector's numpy adapters on this connection (the extension must exist)."""
    from pgvector.psycopg import register_vector as register

    register(conn)


@contextlib.contextmanager
def store_errors(url: str) -> Iterator[None]:
    """A database error in the middle of a command: one line, without the password."""
    import psycopg

    try:
        yield
    except psycopg.errors.InsufficientPrivilege as e:
        raise UsageError(f"the store {safe_name(url)} refused: {scrub(str(e).strip(), url)} "
                         "(a read-only role can search and serve, not write)") from None
    except psycopg.OperationalError as e:
        raise UsageError(f"the store {safe_name(url)} failed: {scrub(str(e).strip(), url)}") from None
