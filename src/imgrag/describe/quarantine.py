"""Photos that can never be described, set aside so that they stop failing every run.

A failure whose reason no retry can cure (the file is not a readable image, it is a
decompression bomb, or the server refuses it as an invalid image) is a *strike*. After
`QUARANTINE_AFTER` strikes in a row for the same reason the photo is quarantined: one
record is appended to `.imgrag/quarantine.jsonl` (fsynced, like failures.jsonl), and
later runs skip it without counting it as a failure. `describe --retry-failed` tries
quarantined photos again; an edited photo has a new content hash and starts afresh.
Transient failures (timeouts, 5xx, rate limits) and replies that did not validate are
never strikes: they break a streak instead of adding to it."""

from __future__ import annotations

from typing import Any

from imgrag.store.descriptions import newest_per_photo
from imgrag.store.workspace import Workspace

QUARANTINE_AFTER = 3

# What `photos` says of a file whose bytes are not a usable image: reading it again
# gives the same answer. (Permission errors and vanished files are not here: they pass.)
_UNUSABLE = ("empty file", "not an image", "truncated or corrupt image", "base64 bytes")


def permanent_reason(kind: str, reason: str) -> str | None:
    """'decompression bomb', 'unreadable' or 'invalid image' when retrying cannot help."""
    text = reason.lower()
    if kind == "photo":
        if "decompression bomb" in text:
            return "decompression bomb"
        return "unreadable" if any(m in text for m in _UNUSABLE) else None
    if kind == "rejected" and "image" in text:  # e.g. "rejected by the model (400: Invalid image data ...)"
        return "invalid image"
    return None


def strikes(previous: dict[str, Any] | None, permanent: str | None) -> int:
    """Strikes after a failure for `permanent`, given the photo's newest failure record before it."""
    if permanent is None:
        return 0
    if previous is not None and previous.get("permanent") == permanent:
        return int(previous.get("strikes") or 0) + 1
    return 1


def load_quarantine(ws: Workspace, described: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    """sha256 -> newest quarantine record, for photos not described since."""
    held = newest_per_photo(ws.paths.quarantine, lambda record: True)
    return {sha: r for sha, r in held.items() if not described or sha not in described}
