"""`imgrag status`: what the index holds and what the next `imgrag index` would do.

Read-only: it scans the photo folders (hashing only files the scan cache does not know,
without saving the cache), reads the logs, the manifest and the current generation's
meta.json, and checks which description texts lack a cached vector. It never loads a model."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from imgrag.describe.quarantine import load_quarantine
from imgrag.index.build import docs_for, index_signature
from imgrag.index.embedding import VectorCache, cache_dir_name, text_key
from imgrag.index.generations import INDEX_FORMAT, read_meta
from imgrag.store.batch_log import BatchLog
from imgrag.store.descriptions import load_descriptions, load_failures
from imgrag.store.scan import by_content, scan
from imgrag.store.workspace import Workspace


@dataclass
class Status:
    workspace: str
    exists: bool  # has the .imgrag/ folder been created yet
    roots: list[str]  # photo folders, relative to the workspace's parent
    files: int = 0  # photo files found
    photos: int = 0  # distinct contents among them (copies count once)
    described: int = 0  # photos with a description
    failed: int = 0  # photos whose last description attempt failed (retried by the next run)
    failed_photos: list[dict[str, Any]] = field(default_factory=list)  # path, reason, time: which ones, and why
    quarantined: int = 0  # photos set aside after failing again and again (see quarantine.py)
    quarantined_photos: list[dict[str, Any]] = field(default_factory=list)  # path, reason, strikes, since
    embedded: int = 0  # described photos whose vector is cached
    index_size: int = 0  # rows in the current index
    index_type: str = ""  # flat (exact) or ivf-sq8
    index_up_to_date: bool = False
    index_problem: str = ""  # why the index cannot be searched as it is, if it cannot
    embed_model: str = ""
    embed_fingerprint: str = ""
    dim: int = 0
    vision_models: dict[str, int] = field(default_factory=dict)  # model -> photos it described
    next_describe: int = 0
    next_embed: int = 0
    next_rebuild_index: bool = False
    # Batch API: open batches as last seen by `describe --batch` (id, photos, state, age_s, ...)
    batches: list[dict[str, Any]] = field(default_factory=list)
    in_open_batches: int = 0  # photos without a description that wait in an open batch

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_status(ws: Workspace, photos: Path | None = None) -> Status:
    manifest = ws.read_manifest() if ws.root.is_dir() else {}
    roots = list(manifest.get("roots", []))
    if photos is not None and ws.relative(photos.resolve()) not in roots and not ws.covers(photos):
        roots.append(ws.relative(photos.resolve()))
    status = Status(workspace=str(ws.root), exists=ws.root.is_dir(), roots=sorted(roots))
    folders = [ws.absolute(r) for r in roots if ws.absolute(r).is_dir()]
    files = scan(ws, folders, save=False)
    groups = by_content(files)
    described = load_descriptions(ws)
    failures = load_failures(ws)
    status.files, status.photos = len(files), len(groups)
    status.described = sum(1 for sha in groups if sha in described)
    held = load_quarantine(ws, described)
    failed = [sha for sha in groups if sha in failures and sha not in described and sha not in held]
    status.failed = len(failed)
    status.failed_photos = sorted(({"path": groups[sha][0].rel, "reason": failures[sha].get("reason", ""),
                                    "time": failures[sha].get("time")} for sha in failed), key=lambda r: r["path"])
    _quarantine_status(status, groups, held)
    status.vision_models = dict(Counter(str(described[sha].get("model")) for sha in groups if sha in described))
    status.next_describe = status.photos - status.described - status.quarantined
    _batch_status(ws, status, groups, described)
    _embedding_status(ws, manifest, status, groups, described)
    return status


def _quarantine_status(status: Status, groups: dict, held: dict[str, dict[str, Any]]) -> None:
    rows = [held[sha] | {"path": files[0].rel} for sha, files in groups.items() if sha in held]
    status.quarantined = len(rows)
    status.quarantined_photos = [
        {"path": r["path"], "reason": r.get("reason", ""), "strikes": r.get("strikes"), "since": r.get("time")}
        for r in sorted(rows, key=lambda r: r["path"])
    ]


def _batch_status(ws: Workspace, status: Status, groups: dict, described: dict) -> None:
    entries = BatchLog(ws).open_entries()
    status.batches = [e.summary() for e in entries]
    held = {sha for e in entries for sha in e.photos}
    status.in_open_batches = sum(1 for sha in groups if sha in held and sha not in described)
    status.next_describe -= status.in_open_batches


def _embedding_status(ws: Workspace, manifest: dict, status: Status, groups: dict, described: dict) -> None:
    embedding = manifest.get("embedding") or {}
    status.embed_model = embedding.get("model", "")
    status.embed_fingerprint = embedding.get("fingerprint", "")
    status.dim = embedding.get("dim", 0)
    docs = docs_for(groups, described)
    keys = [text_key(d.text) for d in docs]
    cached: set[str] = set()
    if status.embed_fingerprint and status.dim:
        cache = VectorCache(ws.paths.vectors / cache_dir_name(status.embed_model, status.embed_fingerprint), status.dim)
        cached = {k for k in keys if k in cache}
    status.embedded = sum(1 for k in keys if k in cached)
    status.next_embed = len(set(keys) - cached)
    meta = read_meta(ws) or {}
    status.index_size = int(meta.get("count", 0))
    status.index_type = meta.get("dense", {}).get("type", "flat" if meta else "")
    if meta and meta.get("format") != INDEX_FORMAT:
        status.index_problem = f"index format {meta.get('format')}, this imgrag reads {INDEX_FORMAT}: run `imgrag embed --rebuild`"
    elif meta and meta.get("embedding") != embedding:
        status.index_problem = "index made with another embedding model: run `imgrag embed --rebuild`"
    status.index_up_to_date = bool(meta) and not status.index_problem and meta.get("signature") == index_signature(docs, keys)
    status.next_rebuild_index = bool(docs) and not status.index_up_to_date


def next_step(status: Status) -> str:
    """What `imgrag index` would do now, in words."""
    work = []
    if status.batches:
        work.append(f"collect {len(status.batches)} open batch{'es' if len(status.batches) > 1 else ''} "
                    "(with --batch)")
    if status.next_describe:
        failed = f" ({status.failed} failed before)" if status.failed else ""
        work.append(f"describe {status.next_describe}{failed}")
    if status.next_embed:
        work.append(f"embed {status.next_embed}")
    if status.next_rebuild_index and not status.next_embed:
        work.append("update the index")
    return ", ".join(work) if work else "nothing (up to date)"
