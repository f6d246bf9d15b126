"""Describe and embed workers writing into a library in PostgreSQL, any number at once on
any number of machines, with no file lock:

- `register` records the photos under a folder: one `photos` row per content hash
  (INSERT ... ON CONFLICT DO NOTHING), one `copies` row per (library, path);
- a worker *claims* a few photos at a time (SELECT ... FOR UPDATE SKIP LOCKED, then a lease
  `claim_until`), so two workers never ask for the same photo; a worker killed with -9
  loses only its requests in flight, and its claims expire after the lease;
- each description (and each vector) is committed as soon as it is made, and written only
  where none is yet (`WHERE record IS NULL`): one description per photo, however many
  workers race;
- after embedding, the worker publishes a generation (imgrag.library.generation).

A worker only claims photos it can read (those it registered). When the rest are claimed
by others, it waits for them to finish or for their claims to expire, and takes them over."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from imgrag.config import Settings
from imgrag.errors import EXIT_OK, EXIT_SOME_FAILED, TryLater, UsageError
from imgrag.library.connection import store_errors
from imgrag.library.generation import publish, searchable_count, set_embedding
from imgrag.library.library import Library

CLAIM_BATCH = 16  # photos claimed at a time by default (a describe worker claims `jobs`: those in flight)
GIVE_UP_AFTER = 3  # failures of one photo before workers stop claiming it
THUMBNAIL_SIZES = (256, 1600)  # the web page's thumbnail and preview (imgrag.web.thumbnails)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def photo_time(taken: str | None, mtime: int | None) -> str | None:
    """The time date filters see: index.generations.PHOTO_TIME, computed here (this machine's zone)."""
    if taken:
        return taken[:19]
    if mtime is None:
        return None
    return datetime.fromtimestamp(mtime).strftime("%Y-%m-%dT%H:%M:%S")


@dataclass
class Registered:
    """The photos a worker can read: content hash -> its copies' paths on this machine."""

    paths: dict[str, list[Path]]
    new: int = 0
    vanished: int = 0  # this library's copies under the folder that are gone from it (their rows removed)


def register(conn: Any, library: Library, root: Path, on_skip: Callable[[str], None] | None = None) -> Registered:
    """Record every photo under `root` (and where it is) in the store, and forget this
    library's copies under `root` that are gone (deleted, renamed, moved away)."""
    from imgrag.photos.files import PhotoError, discover, file_sha256

    if not root.is_dir():
        raise UsageError(f"not a folder: {root}")
    name = library.library_name  # a bad name is refused before anything is read or written
    found: dict[str, list[Path]] = {}
    rows = []
    seen: set[str] = set()  # every file the walk met, even one it could not read: its copy stays
    unread: list[str] = []  # folders (or files) the walk could not enter: copies under them stay

    def skipped(s: Any) -> None:
        unread.append(str(s.path.absolute()))
        if on_skip:
            on_skip(f"skipped {s.path}: {s.reason}")

    for path in discover(root, on_skip=skipped):
        absolute = path.absolute()
        seen.add(str(absolute))
        try:
            st = path.stat()
            sha = file_sha256(path)
        except (OSError, PhotoError) as e:
            if on_skip:
                on_skip(f"skipped {path}: {e}")
            continue
        found.setdefault(sha, []).append(absolute)
        rows.append((sha, str(absolute), st.st_mtime_ns // 1_000_000_000))
    if not found:
        raise UsageError(f"no photos found under {root} (looked for jpg, png, webp, gif, bmp, tiff, heic)")
    with conn.transaction():
        before = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO photos (sha256, mtime) VALUES (%s, %s) ON CONFLICT (sha256) DO NOTHING",
                            [(sha, mtime) for sha, _, mtime in rows])
            cur.executemany("INSERT INTO copies (library, path, photo) SELECT %s, %s, id FROM photos WHERE sha256 = %s "
                            "ON CONFLICT (library, path) DO UPDATE SET photo = excluded.photo, seen = now()",
                            [(name, path, sha) for sha, path, _ in rows])
        after = conn.execute("SELECT count(*) FROM photos").fetchone()[0]
        vanished = forget_vanished(conn, name, root, seen, unread)
    return Registered(found, new=after - before, vanished=vanished)


def forget_vanished(conn: Any, name: str, root: Path, seen: set[str], unread: list[str]) -> int:
    """Remove library `name`'s copies under `root` that the walk did not meet (a photo left
    with no copy stays described, but is searchable again only when a copy comes back)."""
    prefix = str(root.absolute()).rstrip(os.sep) + os.sep
    like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    recorded = [r[0] for r in conn.execute("SELECT path FROM copies WHERE library = %s AND path LIKE %s",
                                           (name, like)).fetchall()]
    kept = tuple(u.rstrip(os.sep) + os.sep for u in unread)
    # and only a path that is not there: a file the walk passed over (now hidden, say) keeps its copy
    gone = [p for p in recorded if p not in seen and p not in unread and not p.startswith(kept)
            and not os.path.lexists(p)]
    if gone:
        conn.execute("DELETE FROM copies WHERE library = %s AND path = ANY(%s)", (name, gone))
    return len(gone)


def claim(conn: Any, shas: list[str], *, kind: str, who: str, lease: float, batch: int = CLAIM_BATCH) -> list[tuple[int, str]]:
    """Claim up to `batch` of these photos that need `kind` ("describe" or "embed"):
    rows another worker holds (locked now, or leased) are skipped, never waited for."""
    needs = "p.record IS NULL AND p.failures < %s" if kind == "describe" else \
        "p.record IS NOT NULL AND p.embedding IS NULL"
    params: list[Any] = [GIVE_UP_AFTER] if kind == "describe" else []
    with conn.transaction():
        return conn.execute(
            f"WITH picked AS (SELECT p.id FROM photos p WHERE {needs} AND p.sha256 = ANY(%s) "
            "AND (p.claim_until IS NULL OR p.claim_until < now()) ORDER BY p.id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "UPDATE photos SET claimed_by = %s, claim_until = now() + make_interval(secs => %s) FROM picked "
            "WHERE photos.id = picked.id RETURNING photos.id, photos.sha256",
            [*params, shas, batch, who, lease]).fetchall()


def held_by_others(conn: Any, shas: list[str], *, kind: str) -> int:
    """Photos of these still to do whose claim another live worker holds."""
    needs = "record IS NULL AND failures < %s" if kind == "describe" else "record IS NOT NULL AND embedding IS NULL"
    params: list[Any] = [GIVE_UP_AFTER] if kind == "describe" else []
    with conn.transaction():
        return conn.execute(f"SELECT count(*) FROM photos WHERE {needs} AND sha256 = ANY(%s) AND claim_until >= now()",
                            [*params, shas]).fetchone()[0]


# -- describe ----------------------------------------------------------------------------------


@dataclass
class StoreDescribeSummary:
    store: str = ""
    found: int = 0  # distinct photos under the folder
    new: int = 0  # of those, new to the store
    described: int = 0  # by this worker
    failed: int = 0
    requests: int = 0
    already: int = 0  # described before (by any machine)
    vanished: int = 0  # this library's copies under the folder found gone, and forgotten

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


def describe_into(library: Library, photos: Path, settings: Settings, *, jobs: int, lease: float,
                  limit: int | None = None, progress: Callable[[str], None] | None = None) -> StoreDescribeSummary:
    """Describe the photos under `photos` that the store has no description of yet."""
    from imgrag.providers import make_provider

    say = progress or (lambda _m: None)
    summary = StoreDescribeSummary(store=library.safe_name)
    _ = library.library_name  # a bad library name: one line before connecting
    conn = library.connect(writing=True)
    try:
        with store_errors(library.url):
            registered = register(conn, library, photos, on_skip=say)
            shas = sorted(registered.paths)
            summary.found, summary.new, summary.vanished = len(shas), registered.new, registered.vanished
            with conn.transaction():
                summary.already = conn.execute("SELECT count(*) FROM photos WHERE record IS NOT NULL AND sha256 = ANY(%s)",
                                               (shas,)).fetchone()[0]
            if limit == 0 or summary.already == len(shas):
                return summary
            describer = _Describer(make_provider(settings), settings, registered.paths, summary)
            who = worker_id()
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                while limit is None or summary.described + summary.failed < limit:
                    want = max(1, jobs) if limit is None else min(max(1, jobs), limit - summary.described - summary.failed)
                    claimed = claim(conn, shas, kind="describe", who=who, lease=lease, batch=want)
                    if not claimed:
                        if held_by_others(conn, shas, kind="describe"):
                            time.sleep(min(1.0, lease / 4))  # theirs finish, or their claims expire
                            continue
                        break
                    made = list(pool.map(describer.describe, claimed))
                    for (photo, sha), outcome in zip(claimed, made, strict=True):
                        _record(conn, photo, sha, outcome, registered.paths[sha], summary)
                    if describer.stop_reason:
                        break
            if describer.fatal is not None:
                raise UsageError(str(describer.fatal))
            if describer.stop_reason:
                raise TryLater(f"stopped: {describer.stop_reason}; {summary.described} photos described and kept")
    finally:
        conn.close()
    return summary


class _Describer:
    """One photo -> (record, error): the request and its checks, as `imgrag describe` makes them."""

    def __init__(self, provider: Any, settings: Settings, paths: dict[str, list[Path]], summary: StoreDescribeSummary) -> None:
        from imgrag.describe.plan import EST_TOKENS_PER_PHOTO
        from imgrag.providers.pacing import Pacer

        self.provider = provider
        self.settings = settings
        self.paths = paths
        self.summary = summary
        self.pacer = Pacer(est_tokens=EST_TOKENS_PER_PHOTO)
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.fatal: Exception | None = None
        self.stop_reason: str | None = None

    def describe(self, claimed: tuple[int, str]) -> tuple[dict[str, Any] | None, str | None, dict[int, bytes]]:
        from imgrag.describe.outcomes import description_record
        from imgrag.describe.schema import ReplyError, parse_reply
        from imgrag.photos.files import PhotoError, prepare_image, read_metadata
        from imgrag.providers import FatalProviderError, InvalidReply, PhotoRejected, QuotaExhausted
        from imgrag.providers.retry import GaveUp, Stopped, send_with_retries
        from imgrag.store.scan import PhotoFile

        _, sha = claimed
        path = self.paths[sha][0]
        try:
            image = prepare_image(path, max_side=self.settings.max_side)
            meta = read_metadata(path)
            thumbs = {size: _jpeg(path, size) for size in THUMBNAIL_SIZES}
        except (PhotoError, OSError) as e:
            return None, f"unreadable photo: {e}", {}
        feedback = None
        for _ in range(2):
            try:
                reply = send_with_retries(partial(self._send, image.data_url(), feedback), pacer=self.pacer,
                                          stop=self.stop, max_retries=self.settings.max_retries)
            except InvalidReply as e:
                feedback = (e.reply, str(e))
                continue
            except (GaveUp, PhotoRejected) as e:
                return None, str(e), {}
            except Stopped as e:
                return None, "stopped" if not e.quota_spent else "quota", {}
            except (FatalProviderError, QuotaExhausted) as e:
                with self.lock:
                    self.fatal = self.fatal or (e if isinstance(e, FatalProviderError) else None)
                    self.stop_reason = self.stop_reason or (str(e) if isinstance(e, QuotaExhausted) else None)
                self.stop.set()
                return None, "stopped", {}
            try:
                desc = parse_reply(reply.text)
            except ReplyError as e:
                feedback = (reply.text, str(e))
                continue
            st = path.stat()
            files = [PhotoFile(p, str(p), st.st_size, st.st_mtime_ns, sha) for p in self.paths[sha]]
            usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
            return description_record(sha, files, meta, self.provider.name, self.provider.model, usage,
                                      desc.model_dump()), None, thumbs
        return None, f"the reply did not validate twice: {feedback[1] if feedback else ''}", {}

    def _send(self, data_url: str, feedback: tuple[str, str] | None) -> Any:
        from imgrag.describe.schema import request_messages

        with self.lock:
            self.summary.requests += 1
        return self.provider.complete(request_messages(data_url, feedback))


def _jpeg(path: Path, size: int) -> bytes:
    from imgrag.photos.files import prepare_image

    return prepare_image(path, max_side=size, max_base64_bytes=1 << 40, quality=85 if size > 1024 else 80).jpeg


def _record(conn: Any, photo: int, sha: str, outcome: tuple[dict[str, Any] | None, str | None, dict[int, bytes]],
            paths: list[Path], summary: StoreDescribeSummary) -> None:
    """One photo's outcome, committed at once; the claim let go either way."""
    record, error, thumbs = outcome
    with conn.transaction():
        if record is not None:
            wrote = write_description(conn, photo, record)
            for size, jpeg in thumbs.items():
                conn.execute("INSERT INTO thumbnails (photo, size, jpeg) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                             (photo, size, jpeg))
            summary.described += int(wrote)
        elif error in ("stopped", "quota"):
            conn.execute("UPDATE photos SET claimed_by = NULL, claim_until = NULL WHERE id = %s", (photo,))
        else:
            conn.execute("UPDATE photos SET failures = failures + 1, last_error = %s, claimed_by = NULL, "
                         "claim_until = NULL WHERE id = %s", (error, photo))
            summary.failed += 1


def write_description(conn: Any, photo: int, record: dict[str, Any]) -> bool:
    """Store a description where the photo has none yet (True if this one was written)."""
    from psycopg.types.json import Jsonb

    from imgrag.index.generations import Doc

    doc = Doc.described(record["sha256"], [], record["description"], taken=record.get("taken"), mtime=record.get("mtime"))
    kept = {k: v for k, v in record.items() if k != "paths"}
    done = conn.execute(
        "UPDATE photos SET record = %s, caption = %s, text = %s, lexical = %s, taken = %s, "
        "mtime = COALESCE(%s, mtime), photo_time = %s, claimed_by = NULL, claim_until = NULL "
        "WHERE id = %s AND record IS NULL",
        (Jsonb(kept), doc.caption, doc.text, doc.lexical, doc.taken, doc.mtime,
         photo_time(doc.taken, record.get("mtime")), photo)).rowcount
    return bool(done)


# -- embed -------------------------------------------------------------------------------------


@dataclass
class StoreEmbedSummary:
    store: str = ""
    embedded: int = 0  # photos given a vector by this worker
    encoded: int = 0  # texts encoded (the rest had a vector in the store already)
    published: bool = False  # a new generation is searchable
    searchable: int = 0  # photos in the newest generation
    model: str = ""


def embed_into(library: Library, model_name: str | None, *, lease: float, shas: list[str] | None = None,
               progress: Callable[[str], None] | None = None) -> StoreEmbedSummary:
    """Give every described photo (of `shas`, or all) a vector, then publish a generation."""
    from imgrag.index.embedding import DEFAULT_MODEL, load_model, resolve_model_name, text_key

    summary = StoreEmbedSummary(store=library.safe_name)
    conn = library.connect(writing=True)
    try:
        with store_errors(library.url):
            known = _embedding_setting(conn)
            name = resolve_model_name(model_name) if model_name else (known or {}).get("model") or DEFAULT_MODEL
            if known is not None and known["model"] != name:
                raise UsageError(f"the store {library.safe_name} is embedded with {known['model']!r}, not {name!r}: "
                                 "use the same IMGRAG_EMBED_MODEL on every machine")
            summary.model = name
            if shas is None:
                with conn.transaction():
                    shas = [r[0] for r in conn.execute("SELECT sha256 FROM photos WHERE record IS NOT NULL "
                                                       "AND embedding IS NULL").fetchall()]
            model = None
            who = worker_id()
            while shas:
                claimed = claim(conn, shas, kind="embed", who=who, lease=lease, batch=256)
                if not claimed:
                    if held_by_others(conn, shas, kind="embed"):
                        time.sleep(min(1.0, lease / 4))
                        continue
                    break
                with conn.transaction():
                    texts = dict(conn.execute("SELECT id, text FROM photos WHERE id = ANY(%s)",
                                              ([c[0] for c in claimed],)).fetchall())
                keys = {photo: text_key(text or "") for photo, text in texts.items()}
                with conn.transaction():  # pay once: a text some photo has a vector for already
                    have = dict(conn.execute("SELECT DISTINCT ON (vkey) vkey, embedding FROM photos WHERE vkey = ANY(%s) "
                                             "AND embedding IS NOT NULL", (list(set(keys.values())),)).fetchall())
                todo = sorted({keys[p] for p in keys if keys[p] not in have})
                if todo:
                    if model is None:
                        model = load_model(name)
                        set_embedding(conn, {"model": name, "fingerprint": model.fingerprint, "dim": model.dim},
                                      library.safe_name)
                    by_key = {keys[p]: texts[p] for p in keys}
                    vectors = model.encode([by_key[k] for k in todo])
                    have.update(zip(todo, vectors, strict=True))
                    summary.encoded += len(todo)
                with conn.transaction():
                    for photo, key in keys.items():
                        conn.execute("UPDATE photos SET embedding = %s, vkey = %s, claimed_by = NULL, claim_until = NULL "
                                     "WHERE id = %s", (_as_vector(have[key]), key, photo))
                summary.embedded += len(keys)
                if progress:
                    progress(f"embedded {summary.embedded} photos")
            if _embedding_setting(conn) is not None:
                summary.published = publish(conn)
                conn.commit()
            summary.searchable = searchable_count(conn)
    finally:
        conn.close()
    return summary


def _embedding_setting(conn: Any) -> dict[str, Any] | None:
    from imgrag.library.generation import embedding_of

    with conn.transaction():
        return embedding_of(conn)


def _as_vector(value: Any) -> Any:
    import numpy as np
    from pgvector import Vector

    if isinstance(value, Vector):
        return value
    return Vector(np.asarray(value, dtype=np.float32))
