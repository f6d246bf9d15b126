"""What describe writes about a photo, live or through a batch: its description, or its
failure and the strikes that failure counts towards quarantine (the rules: quarantine.py).

`Recorder` is the one place a run writes them: every failure is counted from the photo's
previous failure, and the photo is quarantined on its QUARANTINE_AFTER-th strike in a row."""

from __future__ import annotations

import threading
from typing import Any, Protocol

from imgrag.describe.quarantine import QUARANTINE_AFTER, permanent_reason, strikes
from imgrag.describe.schema import PROMPT_VERSION
from imgrag.photos.files import PhotoMeta
from imgrag.providers import redact
from imgrag.store.descriptions import RecordWriter, load_failures, now_iso
from imgrag.store.scan import PhotoFile
from imgrag.store.workspace import Workspace

# The fields of a failure a quarantine record keeps.
_QUARANTINE_FIELDS = ("sha256", "paths", "reason", "kind", "permanent", "strikes", "time")


def description_record(sha: str, files: list[PhotoFile], meta: PhotoMeta, provider: str, model: str,
                       usage: dict[str, int], description: dict[str, Any]) -> dict[str, Any]:
    """The line written to descriptions.jsonl for a validated description."""
    first = files[0]
    return {
        "sha256": sha,
        "paths": [f.rel for f in files],
        "size": first.size,
        "mtime": first.mtime_ns // 1_000_000_000,
        "width": meta.width,
        "height": meta.height,
        # Metadata stays here, on this machine: the image sent was re-encoded without it.
        "taken": meta.taken,
        "camera": meta.camera,
        "gps": list(meta.gps) if meta.gps else None,
        "provider": provider,
        "model": model,
        "prompt_version": PROMPT_VERSION,
        "created": now_iso(),
        "usage": usage,
        "description": description,
    }


def failure_record(sha: str, files: list[PhotoFile], reason: str, kind: str, provider: str,
                   model: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The line written to failures.jsonl for a photo that could not be described;
    `previous` is the photo's last failure, for the strikes towards quarantine."""
    permanent = permanent_reason(kind, reason)
    return {
        "sha256": sha,
        "paths": [f.rel for f in files],
        "reason": reason,
        "kind": kind,
        "permanent": permanent,
        "strikes": strikes(previous, permanent),
        "provider": provider,
        "model": model,
        "time": now_iso(),
    }


class Failures(Protocol):
    """Where a run's summary counts its failures (DescribeSummary, BatchSummary)."""

    failed: int
    failures: list[tuple[str, str]]  # (path, reason)
    newly_quarantined: list[tuple[str, str, int]]  # (path, reason, strikes)


class Recorder:
    """Appends a run's descriptions and failures (fsynced when a call returns) and counts its
    failures in `summary`. Thread-safe. Once closed, late records (of requests abandoned by a
    second Ctrl-C) are dropped: the folder's writer lock is released by then."""

    def __init__(self, ws: Workspace, provider: str, model: str, api_key: str | None, summary: Failures) -> None:
        self.provider, self.model = provider, model
        self._api_key = api_key
        self._summary = summary
        self._writer = RecordWriter(ws)
        self._previous = load_failures(ws)  # each photo's last failure, for its strikes
        self._lock = threading.Lock()
        self.quarantined: set[str] = set()  # content hashes quarantined by this run

    def description(self, record: dict[str, Any]) -> bool:
        """False if the run is over (the record is dropped)."""
        return self._writer.add_description(record)

    def failure(self, sha: str, files: list[PhotoFile], reason: str, kind: str,
                batch: str | None = None) -> dict[str, Any] | None:
        """Record that a photo failed (the reason without the API key), one strike more or
        none, and quarantine it at QUARANTINE_AFTER. `batch`: the batch whose result it was.
        The record written, or None if the run is over."""
        reason = redact(reason, self._api_key)
        with self._lock:
            record = failure_record(sha, files, reason, kind, self.provider, self.model, self._previous.get(sha))
            if batch is not None:
                record["batch"] = batch
            if not self._writer.add_failure(record):
                return None
            self._previous[sha] = record
            self._summary.failed += 1
            self._summary.failures.append((files[0].rel if files else sha, reason))
            if record["strikes"] >= QUARANTINE_AFTER:
                self._quarantine(record)
        return record

    def _quarantine(self, failure: dict[str, Any]) -> None:
        """The same permanent reason again and again: set the photo aside (see quarantine.py)."""
        if self._writer.add_quarantine({k: failure[k] for k in _QUARANTINE_FIELDS}):
            self.quarantined.add(failure["sha256"])
            path = failure["paths"][0] if failure["paths"] else failure["sha256"]
            self._summary.newly_quarantined.append((path, failure["reason"], failure["strikes"]))

    def close(self) -> None:
        self._writer.close()
