"""One photo's description record by content hash, without loading every record: the
byte offset of each photo's newest line in descriptions.jsonl, kept up to date as the
append-only log grows."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

from imgrag.store.workspace import Workspace

_SHA = re.compile(rb'"sha256":\s*"([0-9a-f]{64})"')


class Descriptions:
    def __init__(self, ws: Workspace) -> None:
        self.path = ws.paths.descriptions
        self._offset: dict[str, int] = {}
        self._read_to = 0
        self._lock = threading.Lock()

    def get(self, sha: str) -> dict[str, Any] | None:
        with self._lock:
            self._catch_up()
            at = self._offset.get(sha)
        if at is None:
            return None
        with self.path.open("rb") as f:
            f.seek(at)
            try:
                record = json.loads(f.readline())
            except ValueError:
                return None
        return record if isinstance(record, dict) and isinstance(record.get("description"), dict) else None

    def _catch_up(self) -> None:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            self._offset, self._read_to = {}, 0
            return
        if size < self._read_to:  # replaced by a shorter file: start over
            self._offset, self._read_to = {}, 0
        if size == self._read_to:
            return
        with self.path.open("rb") as f:
            f.seek(self._read_to)
            at = self._read_to
            for line in f:
                if not line.endswith(b"\n"):
                    break  # a line still being written (or torn): read it next time
                found = _SHA.search(line, 0, 200)  # the hash is the record's first key
                if found and b'"description"' in line:
                    self._offset[found.group(1).decode()] = at
                at += len(line)
            self._read_to = at
