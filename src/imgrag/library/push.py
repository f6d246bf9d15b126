"""`imgrag push PHOTOS --store URL`: a `.imgrag/` folder's descriptions, cached vectors and
thumbnails uploaded into a library, with no vision request and no re-embedding; then a
generation is published, so the photos are searchable from the store at once. Pushing
again uploads only what the store lacks (a photo's description is never replaced)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgrag.errors import UsageError
from imgrag.library.connection import store_errors
from imgrag.library.generation import publish, searchable_count, set_embedding
from imgrag.library.library import Library
from imgrag.library.workers import THUMBNAIL_SIZES, _as_vector, _jpeg, forget_vanished, write_description

BATCH = 500  # photos per transaction


@dataclass
class PushSummary:
    store: str = ""
    photos: int = 0  # distinct photos found under the folder's roots
    described: int = 0  # of those, with a description in .imgrag/
    uploaded: int = 0  # descriptions the store did not have
    vectors: int = 0  # vectors uploaded from the cache
    without_vector: int = 0  # described but not embedded yet: `imgrag embed --store` embeds them
    thumbnails: int = 0
    vanished: int = 0  # this library's copies under the folder's roots that are gone, forgotten
    searchable: int = 0  # photos in the store's newest generation


def push(library: Library, photos: Path | None, index: Path | None,
         progress: Callable[[str], None] | None = None) -> PushSummary:
    from imgrag.index.build import docs_for, workspace_for
    from imgrag.index.embedding import VectorCache, cache_dir_name, text_key
    from imgrag.store.descriptions import load_descriptions
    from imgrag.store.scan import by_content, scan

    name = library.library_name  # a bad name is refused before anything is read or written
    ws = workspace_for(photos, index)
    if not ws.root.is_dir():
        raise UsageError(f"no .imgrag folder for {photos or Path.cwd()}: run `imgrag index` on it first, "
                         "or `imgrag index PHOTOS --store ...` to describe straight into the store")
    described = load_descriptions(ws)
    unread: list[str] = []  # what the scan could not read or enter: copies under it stay
    roots = [r for r in ws.roots() if r.is_dir()]
    groups = by_content(scan(ws, roots, save=False, on_skip=lambda s: unread.append(str(s.path.absolute()))))
    docs = docs_for(groups, described)
    summary = PushSummary(store=library.safe_name, photos=len(groups), described=len(docs))
    embedding = ws.read_manifest().get("embedding")
    cache = None
    if embedding and embedding.get("fingerprint") and embedding.get("dim"):
        cache = VectorCache(ws.paths.vectors / cache_dir_name(embedding["model"], embedding["fingerprint"]),
                            int(embedding["dim"]), embedding["fingerprint"])
    conn = library.connect(writing=True)
    try:
        with store_errors(library.url):
            if cache is not None and embedding is not None:
                set_embedding(conn, {"model": embedding["model"], "fingerprint": embedding["fingerprint"],
                                     "dim": int(embedding["dim"])}, library.safe_name)
            for start in range(0, len(docs), BATCH):
                with conn.transaction():
                    for doc in docs[start : start + BATCH]:
                        _push_one(conn, name, doc, groups[doc.sha256], described[doc.sha256], cache, ws,
                                  text_key(doc.text), summary)
                if progress:
                    progress(f"pushed {min(start + BATCH, len(docs))} of {len(docs)} photos")
            seen = {str(f.path.absolute()) for files in groups.values() for f in files}
            if groups:  # a folder where nothing is found (an unmounted disk) forgets nothing
                with conn.transaction():
                    summary.vanished = sum(forget_vanished(conn, name, root, seen, unread) for root in roots)
            if cache is not None:
                publish(conn)
                conn.commit()
            summary.searchable = searchable_count(conn)
    finally:
        conn.close()
    return summary


def _push_one(conn: Any, name: str, doc: Any, files: list[Any], record: dict[str, Any], cache: Any, ws: Any,
              key: str, summary: PushSummary) -> None:
    sha = doc.sha256
    photo = conn.execute("INSERT INTO photos (sha256, mtime) VALUES (%s, %s) ON CONFLICT (sha256) DO UPDATE "
                         "SET sha256 = excluded.sha256 RETURNING id", (sha, doc.mtime)).fetchone()[0]
    for f in files:
        conn.execute("INSERT INTO copies (library, path, photo) VALUES (%s, %s, %s) ON CONFLICT (library, path) "
                     "DO UPDATE SET photo = excluded.photo, seen = now()",
                     (name, str(f.path.absolute()), photo))
    record = {**record, "mtime": doc.mtime}  # as the local index dates it: the file's mtime now
    summary.uploaded += int(write_description(conn, photo, record))
    if cache is not None and key in cache:
        done = conn.execute("UPDATE photos SET embedding = %s, vkey = %s WHERE id = %s AND embedding IS NULL",
                            (_as_vector(cache.get([key])[0]), key, photo)).rowcount
        summary.vectors += done
    else:
        summary.without_vector += 1
    have = {r[0] for r in conn.execute("SELECT size FROM thumbnails WHERE photo = %s", (photo,)).fetchall()}
    for size in THUMBNAIL_SIZES:
        if size in have:
            continue
        cached = ws.paths.thumbnail(sha, size)
        try:
            jpeg = cached.read_bytes() if cached.is_file() else _jpeg(files[0].path, size)
        except Exception:  # noqa: BLE001, S112 - an unreadable file: the page shows no thumbnail, search still finds it
            continue
        conn.execute("INSERT INTO thumbnails (photo, size, jpeg) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                     (photo, size, jpeg))
        summary.thumbnails += 1
