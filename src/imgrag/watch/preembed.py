"""Embedding while describe runs: the texts of the descriptions a watcher's run writes are
encoded as they arrive, so that the embed step after describe finds them in the vector
cache and the last photo is searchable seconds after its description, not after every
text of the burst has been encoded (500 texts: ~15 s on a busy 2-core machine).

Reads descriptions.jsonl from where it last stopped (a torn last line waits for the next
read). Vectors are kept in memory and put into the vector cache only in `flush`, under the
writer lock, as every write to `.imgrag/` is. Only with the model's verified ONNX export
(what embed itself uses for a few new texts), and only when the index's model is known: a
first index, or no export, embeds as before."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

from imgrag.store.workspace import IndexBusy, Workspace

EVERY = 1.0  # seconds between two reads of descriptions.jsonl while describe runs
CHUNK = 32  # texts encoded at once (a stop waits for one chunk at most)

log = logging.getLogger("imgrag.watch")


class PreEmbed:
    def __init__(self, ws: Workspace, query_encoder: str = "auto") -> None:
        self.ws = ws
        self.mode = query_encoder
        self.known = ws.read_manifest().get("embedding") or {}
        self.vectors: dict[str, Any] = {}  # text key -> vector
        self._offset = 0
        self._rest = b""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._encoder: Any = None
        self._cancelled = False

    def start(self) -> None:
        if not (self.known.get("model") and self.known.get("fingerprint") and self.known.get("dim")):
            return  # a first index: embed loads the model and makes the export
        try:
            self._offset = self.ws.paths.descriptions.stat().st_size  # only what this run writes
        except OSError:
            self._offset = 0
        self._thread = threading.Thread(target=self._run, name="imgrag-preembed", daemon=True)
        self._thread.start()

    def stop(self, cancel: bool = True) -> None:
        """Stop the thread: at once (`cancel`: the run ended early), or once it has encoded
        what it has read."""
        self._cancelled = self._cancelled or cancel
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def flush(self) -> None:
        """Stop; encode the last descriptions too (the encoder is open: embed would open it
        again); put it all into the vector cache (embed starts next)."""
        self.stop(cancel=False)
        if self._encoder is not None:
            tail = [(k, t) for k, t in self._new_texts().items() if k not in self.vectors]
            if tail:
                self._encode(tail)
        if not self.vectors:
            return
        import numpy as np

        from imgrag.index.embedding import VectorCache, cache_dir_name

        model, fingerprint = self.known["model"], self.known["fingerprint"]
        try:
            with self.ws.writer_lock():
                cache = VectorCache(self.ws.paths.vectors / cache_dir_name(model, fingerprint), self.known["dim"],
                                    fingerprint)
                keys = [k for k in self.vectors if k not in cache]
                if keys:
                    cache.add(keys, np.stack([self.vectors[k] for k in keys]).astype(np.float32))
        except IndexBusy:
            return  # another writer came first: embed encodes these itself

    # -- the thread ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            from imgrag.index.embedding import VectorCache, cache_dir_name
            from imgrag.index.query_encoder import open_text_encoder

            model, fingerprint = self.known["model"], self.known["fingerprint"]
            cache = VectorCache(self.ws.paths.vectors / cache_dir_name(model, fingerprint), self.known["dim"],
                                fingerprint)
            while not self._stop.wait(EVERY):
                todo = [(k, t) for k, t in self._new_texts().items() if k not in cache and k not in self.vectors]
                if not todo:
                    continue
                if self._encoder is None:
                    self._encoder = open_text_encoder(self.ws, model, fingerprint, self.mode)
                    if self._encoder is None:
                        return  # no verified export: embed encodes them all
                self._encode(todo)
        except Exception:  # an optimisation only: embed does the work anyway
            self._encoder = None
            log.warning("imgrag: watch: embedding ahead failed; embed does it", exc_info=True)

    def _encode(self, todo: list[tuple[str, str]]) -> None:
        for start in range(0, len(todo), CHUNK):
            if self._cancelled:
                return
            part = todo[start:start + CHUNK]
            for (key, _), vector in zip(part, self._encoder.encode([t for _, t in part]), strict=True):
                self.vectors[key] = vector

    def _new_texts(self) -> dict[str, str]:
        from imgrag.describe.schema import embedding_text
        from imgrag.index.embedding import text_key

        try:
            with self.ws.paths.descriptions.open("rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return {}
        self._offset += len(data)
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()  # a line still being written
        texts = {}
        for line in lines:
            try:
                record = json.loads(line)
                text = embedding_text(record["description"])
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            texts[text_key(text)] = text
        return texts
