""".imgrag/batches.jsonl: every step of every batch, appended and fsynced before the step after it.

A submission is recorded in steps, so that a kill at any moment neither loses a batch that
was submitted nor lets its photos be paid for twice:

    intent      token, photos, model, window     before anything is uploaded
    uploaded    token, file_id                   the request file is on the server
    submitted   token, batch_id                  the batch exists (also: adopted after a kill)
    abandoned   token, reason                    no batch was made: its photos are free again
    seen        batch_id, status, counts         each poll
    closed      batch_id, status, counts         its results are all written

The batch carries the token in its metadata: an intent with no `submitted` step is settled
by the next run, which looks for the token among the server's batches (adopts it) or finds
none (abandons it). Until then its photos count as in an open batch. A torn last line (a kill
mid-append) is ignored and cut off by the next append."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from imgrag.store.descriptions import now_iso
from imgrag.store.files import JsonlAppender, read_jsonl
from imgrag.store.workspace import Workspace

TERMINAL = {"completed", "failed", "expired", "cancelled"}
METADATA_KEY = "imgrag_token"  # the batch's metadata entry naming the intent it fulfils


@dataclass
class BatchEntry:
    """One submission, folded from its steps."""

    token: str
    photos: list[str]
    model: str = ""
    window: str = ""
    created: str = ""
    file_id: str | None = None
    batch_id: str | None = None
    status: str = ""  # as last seen on the server
    counts: dict[str, int] = field(default_factory=dict)
    seen: str = ""
    abandoned: bool = False
    closed: bool = False

    @property
    def open(self) -> bool:
        """Submitted (or maybe submitted) and its results not all written yet."""
        return not self.abandoned and not self.closed

    @property
    def settled(self) -> bool:
        return self.batch_id is not None or self.abandoned

    def age_seconds(self) -> float:
        try:
            created = datetime.fromisoformat(self.created)
        except ValueError:
            return 0.0
        return max(0.0, (datetime.now(timezone.utc) - created).total_seconds())

    def summary(self) -> dict[str, Any]:
        return {"id": self.batch_id, "photos": len(self.photos), "state": self.status or "submitting",
                "age_s": round(self.age_seconds()), "created": self.created, "seen": self.seen,
                "counts": self.counts}


class BatchLog:
    def __init__(self, ws: Workspace) -> None:
        self.path = ws.paths.batches
        self._appender: JsonlAppender | None = None

    # -- reading -------------------------------------------------------------------------

    def entries(self) -> list[BatchEntry]:
        by_token: dict[str, BatchEntry] = {}
        by_batch: dict[str, BatchEntry] = {}
        for step in read_jsonl(self.path):
            event, token = step.get("event"), step.get("token")
            if event == "intent" and isinstance(token, str) and isinstance(step.get("photos"), list):
                by_token[token] = BatchEntry(token, [str(p) for p in step["photos"]], str(step.get("model", "")),
                                             str(step.get("window", "")), str(step.get("time", "")))
                continue
            entry = by_token.get(token) if isinstance(token, str) else by_batch.get(str(step.get("batch_id")))
            if entry is None:
                continue
            if event == "uploaded":
                entry.file_id = step.get("file_id")
            elif event == "submitted":
                entry.batch_id = step.get("batch_id")
                entry.status = str(step.get("status") or "validating")
                by_batch[str(entry.batch_id)] = entry
            elif event == "abandoned":
                entry.abandoned = True
            elif event in ("seen", "closed"):
                entry.status = str(step.get("status") or entry.status)
                entry.counts = dict(step.get("counts") or {})
                entry.seen = str(step.get("time", ""))
                entry.closed = entry.closed or event == "closed"
        return list(by_token.values())

    def open_entries(self) -> list[BatchEntry]:
        return [e for e in self.entries() if e.open]

    def held_photos(self) -> set[str]:
        """Photos in a batch that is open or whose submission is not settled yet."""
        return {sha for entry in self.open_entries() for sha in entry.photos}

    # -- writing (under the workspace's writer lock) --------------------------------------

    def intent(self, photos: list[str], model: str, window: str) -> str:
        token = uuid.uuid4().hex
        self._append({"event": "intent", "token": token, "photos": photos, "model": model, "window": window})
        return token

    def uploaded(self, token: str, file_id: str) -> None:
        self._append({"event": "uploaded", "token": token, "file_id": file_id})

    def submitted(self, token: str, batch_id: str, status: str, adopted: bool = False) -> None:
        self._append({"event": "submitted", "token": token, "batch_id": batch_id, "status": status,
                      **({"adopted": True} if adopted else {})})

    def abandoned(self, token: str, reason: str) -> None:
        self._append({"event": "abandoned", "token": token, "reason": reason})

    def seen(self, batch_id: str, status: str, counts: dict[str, int], closed: bool = False) -> None:
        self._append({"event": "closed" if closed else "seen", "batch_id": batch_id, "status": status,
                      "counts": counts})

    def _append(self, step: dict[str, Any]) -> None:
        if self._appender is None:
            self._appender = JsonlAppender(self.path)
        self._appender.append({**step, "time": now_iso()})

    def close(self) -> None:
        if self._appender is not None:
            self._appender.close()
            self._appender = None
