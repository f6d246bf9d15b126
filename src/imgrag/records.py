"""descriptions.jsonl and failures.jsonl: append-only logs, newest record per photo wins."""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from typing import Any

from .workspace import JsonlAppender, Workspace, read_jsonl


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_descriptions(ws: Workspace) -> dict[str, dict[str, Any]]:
    """sha256 -> newest valid description record."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(ws.descriptions_path):
        sha = record.get("sha256")
        if isinstance(sha, str) and isinstance(record.get("description"), dict):
            latest[sha] = record
    return latest


def load_failures(ws: Workspace) -> dict[str, dict[str, Any]]:
    """sha256 -> newest failure record (a later success makes it moot)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(ws.failures_path):
        sha = record.get("sha256")
        if isinstance(sha, str):
            latest[sha] = record
    return latest


class RecordWriter:
    """Thread-safe appends to both logs; every record is on disk when `add_*` returns."""

    def __init__(self, ws: Workspace) -> None:
        self._lock = threading.Lock()
        self._descriptions = JsonlAppender(ws.descriptions_path)
        self._failures = JsonlAppender(ws.failures_path)

    def add_description(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._descriptions.append(record)

    def add_failure(self, record: dict[str, Any]) -> None:
        with self._lock:
            self._failures.append(record)

    def close(self) -> None:
        with self._lock:
            self._descriptions.close()
            self._failures.close()
