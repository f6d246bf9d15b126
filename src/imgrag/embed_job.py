"""The embed job: the described photos that exist now -> vectors (cached) -> a new index.

Photos are matched to descriptions by content hash, so a moved photo keeps its vector
and a deleted one leaves the index. Only texts not yet in the cache are encoded; when
there are none, the model is never loaded."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import numpy as np

from .embed import LoadedModel, VectorCache, cache_dir_name, load_model, text_key
from .errors import UsageError
from .index import Doc, current_generation, read_meta, write_bundle
from .records import load_descriptions
from .scan import by_content, scan
from .schema import embedding_text, lexical_text
from .workspace import Workspace


@dataclass
class EmbedSummary:
    photos: int = 0  # distinct photos found now
    described: int = 0  # of those, with a description (= rows in the index)
    encoded: int = 0  # texts embedded this run
    cached: int = 0
    rebuilt_index: bool = False
    model: str = ""
    workspace: Path | None = None


def collect_docs(ws: Workspace, photos: Path | None) -> tuple[list[Doc], int]:
    """The index rows: every photo under the roots that has a description."""
    if photos is not None:
        ws.add_root(photos)
    # A root that is gone (unplugged drive, deleted folder) contributes no photos.
    groups = by_content(scan(ws, [r for r in ws.roots() if r.is_dir()]))
    described = load_descriptions(ws)
    docs = []
    for sha, files in sorted(groups.items()):
        record = described.get(sha)
        if record is None:
            continue
        desc = record["description"]
        try:
            text, lexical = embedding_text(desc), lexical_text(desc)
        except ValueError:
            continue  # a record this version cannot read: describe --force fixes it
        docs.append(Doc(
            sha256=sha,
            paths=[f.rel for f in files],
            caption=str(desc.get("caption", "")),
            text=text,
            lexical=lexical,
            taken=record.get("taken"),
            mtime=files[0].mtime_ns // 1_000_000_000,
        ))
    return docs, len(groups)


def run_embed(photos: Path | None, model_name: str, *, rebuild: bool = False, wait: bool = False,
              index: Path | None = None, show_progress: bool = False) -> EmbedSummary:
    if photos is not None:
        ws = Workspace.for_photos(photos, index)
    else:
        ws = Workspace.find(Path.cwd(), index)
    summary = EmbedSummary(model=model_name, workspace=ws.root)
    with ws.writer_lock(wait=wait):
        manifest = ws.read_manifest()
        docs, summary.photos = collect_docs(ws, photos)
        summary.described = len(docs)
        if not docs and photos is not None and not ws.descriptions_path.exists():
            raise UsageError(f"no descriptions yet for {photos}: run `imgrag describe {photos}` first")
        known = manifest.get("embedding") or {}
        if known.get("model") and known["model"] != model_name and not rebuild:
            raise UsageError(
                f"the index was embedded with {known['model']!r}, not {model_name!r}: "
                "run `imgrag embed --rebuild PHOTOS` to re-embed with the new model"
            )
        keys = [text_key(d.text) for d in docs]
        model: LoadedModel | None = None
        fingerprint = known.get("fingerprint") if known.get("model") == model_name else None
        dim = known.get("dim")
        if fingerprint is None or dim is None:
            model = load_model(model_name)
            fingerprint, dim = model.fingerprint, model.dim
        cache = VectorCache(ws.vectors_dir / cache_dir_name(model_name, fingerprint), dim)
        todo = _unique([(k, d.text) for k, d in zip(keys, docs) if k not in cache])
        if todo:
            if model is None:
                model = load_model(model_name)
                if model.fingerprint != fingerprint:  # same name, other weights: start a new cache
                    fingerprint, dim = model.fingerprint, model.dim
                    cache = VectorCache(ws.vectors_dir / cache_dir_name(model_name, fingerprint), dim)
                    todo = _unique([(k, d.text) for k, d in zip(keys, docs) if k not in cache])
            _encode_into(cache, model, todo, show_progress)
        summary.encoded = len(todo)
        summary.cached = len(docs) - summary.encoded
        embedding = {"model": model_name, "fingerprint": fingerprint, "dim": dim}
        if manifest.get("embedding") != embedding:
            ws.update_manifest(embedding=embedding)
        signature = _signature(docs, keys)
        meta = read_meta(ws)
        if rebuild or meta is None or meta.get("signature") != signature or meta.get("embedding") != embedding:
            vectors = cache.get(keys) if docs else np.zeros((0, dim), np.float32)
            write_bundle(ws, docs, vectors, {"embedding": embedding, "signature": signature})
            summary.rebuilt_index = True
        assert current_generation(ws) is not None
    return summary


def _encode_into(cache: VectorCache, model: LoadedModel, todo: list[tuple[str, str]], show_progress: bool) -> None:
    # Encode and append in chunks so an interrupted run keeps what it paid for.
    chunk = 1024
    for start in range(0, len(todo), chunk):
        part = todo[start : start + chunk]
        vecs = model.encode([t for _, t in part], show_progress=show_progress)
        cache.add([k for k, _ in part], vecs)


def _unique(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return list(dict(pairs).items())


def _signature(docs: list[Doc], keys: list[str]) -> str:
    """Changes whenever a row, its paths or its text would change."""
    import hashlib
    import json

    h = hashlib.sha256()
    for d, k in zip(docs, keys):
        h.update(json.dumps([d.sha256, d.paths, k, d.taken, d.mtime, d.lexical], ensure_ascii=False).encode())
    return h.hexdigest()[:32]
