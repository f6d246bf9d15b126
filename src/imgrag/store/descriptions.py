"""descriptions.jsonl and failures.jsonl: append-only logs, newest record per photo wins."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgrag.store.files import JsonlAppender, read_jsonl
from imgrag.store.workspace import Workspace


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_descriptions(ws: Workspace) -> dict[str, dict[str, Any]]:
    """sha256 -> newest valid description record."""
    return newest_per_photo(ws.paths.descriptions, lambda record: isinstance(record.get("description"), dict))


def load_failures(ws: Workspace) -> dict[str, dict[str, Any]]:
    """sha256 -> newest failure record (a later success makes it moot)."""
    return newest_per_photo(ws.paths.failures, lambda record: True)


def newest_per_photo(path: Path, valid: Callable[[dict[str, Any]], bool]) -> dict[str, dict[str, Any]]:
    """sha256 -> the newest `valid` record of an append-only per-photo log (also quarantine.jsonl)."""
    latest: dict[str, dict[str, Any]] = {}
    for record in read_jsonl(path):
        sha = record.get("sha256")
        if isinstance(sha, str) and valid(record):
            latest[sha] = record
    return latest


def average_usage(records: dict[str, dict[str, Any]], recent: int = 200) -> tuple[int, int] | None:
    """(prompt, completion) tokens an average photo cost in the newest records, if known.
    Newest by when they were written: a photo described again keeps its first place in `records`."""
    prompt = completion = count = 0
    for record in sorted(records.values(), key=lambda r: str(r.get("created") or ""))[-recent:]:
        usage = record.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int) and usage["prompt_tokens"] > 0:
            prompt += usage["prompt_tokens"]
            completion += int(usage.get("completion_tokens") or 0)
            count += 1
    return (prompt // count, completion // count) if count else None


class RecordWriter:
    """Thread-safe appends to both logs; every record is on disk when `add_*` returns.

    Once closed, late records (from requests abandoned by a second Ctrl-C) are dropped:
    the writer lock on the folder is released by then and another run may be writing."""

    def __init__(self, ws: Workspace) -> None:
        self._lock = threading.Lock()
        self._descriptions = JsonlAppender(ws.paths.descriptions)
        self._failures = JsonlAppender(ws.paths.failures)
        self._quarantine: JsonlAppender | None = None  # opened at the first photo quarantined
        self._ws = ws
        self._closed = False

    def add_description(self, record: dict[str, Any]) -> bool:
        return self._add(self._descriptions, record)

    def add_failure(self, record: dict[str, Any]) -> bool:
        return self._add(self._failures, record)

    def add_quarantine(self, record: dict[str, Any]) -> bool:
        with self._lock:
            if self._quarantine is None and not self._closed:
                self._quarantine = JsonlAppender(self._ws.paths.quarantine)
        return self._add(self._quarantine, record)

    def _add(self, log: JsonlAppender | None, record: dict[str, Any]) -> bool:
        with self._lock:
            if self._closed or log is None:
                return False
            log.append(record)
            return True

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self._descriptions.close()
                self._failures.close()
                if self._quarantine is not None:
                    self._quarantine.close()
