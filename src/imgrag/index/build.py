"""The embed job: the described photos that exist now -> vectors (cached) -> a new index.

Photos are matched to descriptions by content hash, so a moved photo keeps its vector
and a deleted one leaves the index. Only texts not yet in the cache are encoded; when
there are none, the model is never loaded."""

from __future__ import annotations

import hashlib
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgrag.describe.quarantine import load_quarantine
from imgrag.errors import Interrupted, UsageError
from imgrag.index.embedding import (
    DEFAULT_MODEL,
    LoadedModel,
    VectorCache,
    cache_dir_name,
    is_local_model,
    load_model,
    resolve_model_name,
    text_key,
)
from imgrag.index.generations import (
    GENERATION_CONTENTS,
    INDEX_FORMAT,
    Doc,
    current_generation,
    previous_rows,
    read_meta,
    stable_order,
    write_generation,
)
from imgrag.index.onnx_export import ensure_export
from imgrag.index.query_encoder import open_text_encoder
from imgrag.store.descriptions import load_descriptions
from imgrag.store.files import json_bytes, storage_errors
from imgrag.store.scan import PhotoFile, by_content, scan
from imgrag.store.workspace import Workspace


@dataclass
class EmbedSummary:
    photos: int = 0  # distinct photos found now
    described: int = 0  # of those, with a description (= rows in the index)
    encoded: int = 0  # texts embedded this run
    cached: int = 0  # texts whose vector was in the cache before this run
    copies: int = 0  # photos whose text was encoded this run for another photo with the same text
    quarantined: int = 0  # photos without a description because they are quarantined (never described)
    rebuilt_index: bool = False
    index_type: str = ""  # the dense index kind: flat (exact) or ivf-sq8
    model: str = ""
    workspace: Path | None = None


def workspace_for(photos: Path | None, index: Path | None) -> Workspace:
    """The workspace of the photo folder given, else the one found from the current directory."""
    return Workspace.for_photos(photos, index) if photos is not None else Workspace.find(Path.cwd(), index)


def collect_docs(ws: Workspace, photos: Path | None) -> tuple[list[Doc], int, int]:
    """The index rows: every photo under the roots that has a description; with the count
    of photos, and of those quarantined (they will not get one: not "to describe")."""
    if photos is not None:
        ws.add_root(photos)
    # A root that is gone (unplugged drive, deleted folder) contributes no photos.
    groups = by_content(scan(ws, [r for r in ws.roots() if r.is_dir()]))
    described = load_descriptions(ws)
    held = load_quarantine(ws, described)
    return docs_for(groups, described), len(groups), sum(1 for sha in groups if sha in held)


def docs_for(groups: dict[str, list[PhotoFile]], described: dict[str, dict]) -> list[Doc]:
    """One row per photo content that has a description, in content-hash order."""
    docs = []
    for sha, files in sorted(groups.items()):
        record = described.get(sha)
        if record is None:
            continue
        try:
            docs.append(Doc.described(sha, [f.rel for f in files], record["description"], taken=record.get("taken"),
                                      mtime=files[0].mtime_ns // 1_000_000_000))
        except ValueError:
            continue  # a record this version cannot read: describe --force fixes it
    return docs


def run_embed(photos: Path | None, model_name: str | None, *, rebuild: bool = False, wait: bool = False,
              index: Path | None = None, show_progress: bool = False,
              cancel: threading.Event | None = None, on_progress: Callable[[int, int], None] | None = None,
              query_encoder: str = "auto") -> EmbedSummary:
    """`model_name` None: the model the index was built with (the default for a new one).
    `cancel` (set from another thread) stops between chunks of texts, keeping the vectors
    already cached, with `Interrupted`; `on_progress(done, total)` follows the encoding;
    `query_encoder` (Settings.query_encoder) says whether a few new texts may be encoded
    with the model's ONNX export."""
    ws = workspace_for(photos, index)
    if model_name is not None:
        model_name = resolve_model_name(model_name)  # a local folder: its absolute path
    summary = EmbedSummary(model=model_name or "", workspace=ws.root)
    # A full or read-only disk: one line, and the previous index stays searchable.
    with ws.writer_lock(wait=wait), storage_errors(ws.root):
        manifest = ws.read_manifest()
        docs, summary.photos, summary.quarantined = collect_docs(ws, photos)
        summary.described = len(docs)
        if not docs and photos is not None and not ws.paths.descriptions.exists():
            raise UsageError(f"no descriptions yet for {photos}: run `imgrag describe {photos}` first")
        known = manifest.get("embedding") or {}
        if model_name is None:
            model_name = known.get("model") or DEFAULT_MODEL
        elif known.get("model") and known["model"] != model_name and not rebuild:
            known = _same_weights_moved(known, model_name, photos)
        summary.model = model_name
        keys = [text_key(d.text) for d in docs]
        cache, encoder = _cache_for(ws, model_name, known, needed=keys, query_encoder=query_encoder)
        todo = _unique([(k, d.text) for k, d in zip(keys, docs, strict=True) if k not in cache])
        if todo:
            _encode_into(cache, encoder, todo, show_progress, cancel, on_progress)
        model = encoder if isinstance(encoder, LoadedModel) else None
        summary.encoded = len(todo)
        new_keys = {k for k, _ in todo}
        new = sum(1 for k in keys if k in new_keys)  # photos with a text not in the cache before
        summary.copies = new - summary.encoded
        summary.cached = len(docs) - new
        embedding = {"model": model_name, "fingerprint": cache.fingerprint, "dim": cache.dim}
        if manifest.get("embedding") != embedding:
            ws.update_manifest(embedding=embedding)
        signature = index_signature(docs, keys)
        meta = read_meta(ws)
        if rebuild or meta is None or meta.get("signature") != signature or meta.get("embedding") != embedding \
                or meta.get("format") != INDEX_FORMAT:
            previous = None if rebuild else previous_rows(ws, embedding)
            docs, keys = stable_order(docs, keys, previous)
            vectors = cache.get(keys)
            write_generation(ws, docs, vectors, {"embedding": embedding, "signature": signature},
                         keys=keys, previous=previous)
            summary.rebuilt_index = True
            meta = read_meta(ws)
        summary.index_type = (meta or {}).get("dense", {}).get("type", "")
        assert current_generation(ws) is not None
        if docs:
            # Export the model for fast searches, once per model: loads it only when this run
            # did not and no export exists yet. Never fails the embed (falls back to slow search).
            ensure_export(ws, model_name, cache.fingerprint, model)
    return summary


def _same_weights_moved(known: dict, model_name: str, photos: Path | None) -> dict:
    """The index's embedding record for `model_name` when that is the index's own model
    folder moved or copied elsewhere (same weights fingerprint);
    otherwise a clear refusal, since mixing two models' vectors would rank nonsense."""
    if is_local_model(model_name) and is_local_model(known["model"]):
        loaded = load_model(model_name)  # seconds, but only to spare re-encoding everything
        if loaded.fingerprint == known.get("fingerprint") and loaded.dim == known.get("dim"):
            return {**known, "model": model_name}
    where = f" {photos}" if photos is not None else ""
    raise UsageError(
        f"the index was embedded with {known['model']!r}, not {model_name!r}: "
        f"run `imgrag embed --rebuild{where}` to re-embed every description with the new model"
    )


def _cache_for(ws: Workspace, model_name: str, known: dict, needed: list[str],
               query_encoder: str = "auto") -> tuple[VectorCache, Any]:
    """The vector cache of this model, and an encoder only if some needed key is missing:
    the verified ONNX export for a few texts, else the model itself.

    The manifest remembers the model's fingerprint and dimension, so a run with nothing new
    never loads the model. When it must load it and finds other weights under the same name
    (an updated hub model), their vectors go to a cache of their own."""
    if known.get("model") == model_name and known.get("fingerprint") and known.get("dim"):
        cache = VectorCache(ws.paths.vectors / cache_dir_name(model_name, known["fingerprint"]), known["dim"],
                            known["fingerprint"])
        missing = sum(1 for k in set(needed) if k not in cache)
        if missing == 0:
            return cache, None
        small = _small_batch_encoder(ws, model_name, known["fingerprint"], missing, query_encoder)
        if small is not None:
            return cache, small
    model = load_model(model_name)
    return VectorCache(ws.paths.vectors / cache_dir_name(model_name, model.fingerprint), model.dim,
                       model.fingerprint), model


# Below this many new texts, importing torch and loading the model (~5 s) costs more than
# encoding them with the ONNX export, which was verified to give the same vectors.
SMALL_BATCH = 2000


def _small_batch_encoder(ws: Workspace, model_name: str, fingerprint: str, count: int, query_encoder: str) -> Any:
    """The verified ONNX export as a text encoder for a few new texts, or None (torch then)."""
    if count > SMALL_BATCH:
        return None
    return open_text_encoder(ws, model_name, fingerprint, query_encoder)


def _encode_into(cache: VectorCache, model: Any, todo: list[tuple[str, str]], show_progress: bool,
                 cancel: threading.Event | None = None, on_progress: Callable[[int, int], None] | None = None) -> None:
    # Encode and append in chunks so an interrupted run keeps what it paid for.
    chunk = 1024
    bar = _progress(len(todo)) if show_progress and len(todo) > chunk else None
    for start in range(0, len(todo), chunk):
        if on_progress is not None:
            on_progress(start, len(todo))
        if cancel is not None and cancel.is_set():
            raise Interrupted(f"embedding cancelled: {start} of {len(todo)} new texts were embedded and kept")
        part = todo[start : start + chunk]
        # Never sentence-transformers' own "Batches" bar: a bar of ours (above) or none, so a
        # terminal sees imgrag's progress and summary only.
        vecs = model.encode([t for _, t in part], show_progress=False)
        cache.add([k for k, _ in part], vecs)
        if bar is not None:
            bar.update(len(part))
    if bar is not None:
        bar.close()


def _progress(total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="imgrag: embedding", unit=" texts", file=sys.stderr, dynamic_ncols=True)


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict(pairs).items())


def index_signature(docs: list[Doc], keys: list[str]) -> str:
    """Changes whenever a row, its paths or its text would change, or a generation would hold more."""
    h = hashlib.sha256(f"contents {GENERATION_CONTENTS}".encode())
    for d, k in zip(docs, keys, strict=True):
        h.update(json_bytes([d.sha256, d.paths, k, d.taken, d.mtime, d.lexical]))  # paths may hold lone surrogates
    return h.hexdigest()[:32]
