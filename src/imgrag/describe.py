"""The describe job: which photos need a description, then ask, pace, retry, validate, append.

Each finished description is fsynced to descriptions.jsonl before it is counted, so a
crash or Ctrl-C loses at most the requests in flight, and the next run resumes."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME, EXIT_TEMPFAIL, UsageError
from .pacing import Pacer
from .photos import PhotoError, Skipped, prepare_image, read_metadata
from .providers import (
    FatalProviderError,
    PhotoRejected,
    QuotaExhausted,
    RateLimited,
    TransientError,
    VisionProvider,
    make_provider,
)
from .records import RecordWriter, load_descriptions, now_iso
from .scan import PhotoFile, by_content, scan
from .schema import PROMPT_VERSION, ReplyError, parse_reply
from .workspace import Workspace

MAX_ATTEMPTS = 6  # per photo, for transient faults
BACKOFF_CAP = 60.0
# About what one photo costs: the image (~1,800 tokens at any size past ~1,000 px) + prompt + reply.
EST_TOKENS_PER_PHOTO = 2300


@dataclass
class DescribeOptions:
    jobs: int = 4
    limit: int | None = None
    force: bool = False
    refresh: bool = False
    dry_run: bool = False
    wait: bool = False


@dataclass
class DescribeSummary:
    found: int = 0  # distinct photos (by content) under the folder
    already: int = 0
    todo: int = 0
    described: int = 0
    failed: int = 0
    remaining: int = 0  # still to describe after this run
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped_by: str | None = None  # "quota", "interrupt", or a fatal error's message
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    workspace: Path | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped_by == "interrupt":
            return EXIT_INTERRUPTED
        if self.stopped_by == "quota":
            return EXIT_TEMPFAIL
        return EXIT_SOME if self.failed else EXIT_OK


class Progress:
    """What describe reports while it runs; the CLI supplies a renderer."""

    def start(self, total: int) -> None: ...
    def advance(self, ok: bool) -> None: ...
    def warn(self, message: str) -> None: ...
    def stop(self) -> None: ...


def plan(ws: Workspace, photos: Path, options: DescribeOptions, settings: Settings,
         on_skip: Callable[[Skipped], None] | None = None) -> tuple[dict[str, list[PhotoFile]], list[str], int]:
    """(photos by content hash, hashes to describe in order, how many are already done)."""
    groups = by_content(scan(ws, [photos], on_skip=on_skip))
    described = load_descriptions(ws)
    model = settings.vision_model
    todo: list[str] = []
    already = 0
    for sha in groups:
        record = described.get(sha)
        stale = record is not None and (
            record.get("model") != model or record.get("prompt_version") != PROMPT_VERSION
        )
        if record is None or options.force or (options.refresh and stale):
            todo.append(sha)
        else:
            already += 1
    return groups, todo, already


def run_describe(photos: Path, settings: Settings, options: DescribeOptions, progress: Progress,
                 index: Path | None = None, provider: VisionProvider | None = None) -> DescribeSummary:
    ws = Workspace.for_photos(photos, index)
    if not photos.is_dir():
        raise UsageError(f"not a folder: {photos}")
    if options.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    summary = DescribeSummary(workspace=ws.root)
    with ws.writer_lock(wait=options.wait):
        ws.read_manifest()  # refuse a manifest from a newer version before writing anything
        groups, todo, summary.already = plan(
            ws, photos, options, settings, on_skip=lambda s: progress.warn(f"skipped {s.path}: {s.reason}")
        )
        summary.found = len(groups)
        if not groups:
            raise UsageError(f"no photos found under {photos} (looked for jpg, png, webp, gif, bmp, tiff, heic)")
        if options.limit is not None:
            todo_now = todo[: options.limit]
        else:
            todo_now = todo
        summary.todo = len(todo_now)
        summary.remaining = len(todo)
        if options.dry_run:
            return summary
        ws.add_root(photos)
        if not todo_now:
            return summary
        provider = provider or make_provider(settings)
        job = _Job(ws, provider, groups, options.jobs, summary, progress)
        job.run(todo_now)
        summary.remaining = len(todo) - summary.described
    return summary


class _Job:
    def __init__(self, ws: Workspace, provider: VisionProvider, groups: dict[str, list[PhotoFile]],
                 jobs: int, summary: DescribeSummary, progress: Progress) -> None:
        self.ws = ws
        self.provider = provider
        self.groups = groups
        self.jobs = jobs
        self.summary = summary
        self.progress = progress
        self.pacer = Pacer(est_tokens=EST_TOKENS_PER_PHOTO)
        self.stop = threading.Event()
        self.count_lock = threading.Lock()
        self.fatal: FatalProviderError | None = None

    def run(self, todo: list[str]) -> None:
        writer = RecordWriter(self.ws)
        self.writer = writer
        self.progress.start(len(todo))
        pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="describe")
        pending: set[Future] = set()
        queue = iter(todo)
        try:
            # Keep at most `jobs` photos in flight: nothing is prepared that may never be sent.
            for sha in queue:
                pending.add(pool.submit(self._describe_one, sha))
                if len(pending) >= self.jobs:
                    break
            while pending:
                done, pending = wait(pending, timeout=0.25, return_when=FIRST_COMPLETED)
                for fut in done:
                    fut.result()  # re-raise bugs, not provider faults (handled inside)
                if not self.stop.is_set():
                    for sha in queue:
                        pending.add(pool.submit(self._describe_one, sha))
                        if len(pending) >= self.jobs:
                            break
        except KeyboardInterrupt:
            # Finish what is in flight (each writes its own record), start nothing new.
            self.stop.set()
            self.summary.stopped_by = "interrupt"
            self.progress.warn("interrupted: finishing requests in flight (Ctrl-C again to abandon them)")
            wait(pending)
        finally:
            self.stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            writer.close()
            self.progress.stop()
        if self.fatal is not None:
            raise UsageError(str(self.fatal))

    # -- one photo ---------------------------------------------------------------------

    def _describe_one(self, sha: str) -> None:
        if self.stop.is_set():
            return
        files = self.groups[sha]
        first = files[0]
        try:
            image = prepare_image(first.path)
            meta = read_metadata(first.path)
        except PhotoError as e:
            self._fail(sha, f"unreadable photo: {e}", "photo")
            return
        try:
            desc, usage = self._ask(image.data_url())
        except _GiveUp as e:
            self._fail(sha, str(e), e.kind)
            return
        except _Stopped:
            return
        record: dict[str, Any] = {
            "sha256": sha,
            "paths": [f.rel for f in files],
            "size": first.size,
            "mtime": first.mtime_ns // 1_000_000_000,
            "width": meta.width,
            "height": meta.height,
            "taken": meta.taken,
            "camera": meta.camera,
            "gps": list(meta.gps) if meta.gps else None,
            "provider": self.provider.name,
            "model": self.provider.model,
            "prompt_version": PROMPT_VERSION,
            "created": now_iso(),
            "usage": usage,
            "description": desc,
        }
        self.writer.add_description(record)
        with self.count_lock:
            self.summary.described += 1
        self.progress.advance(True)

    def _ask(self, data_url: str) -> tuple[dict[str, Any], dict[str, int]]:
        """Ask until a valid description comes back: transient faults are retried with
        backoff; an invalid reply is retried once with what was wrong with it."""
        feedback: tuple[str, str] | None = None
        transient_failures = 0
        while True:
            if not self.pacer.acquire(self.stop):
                raise _Stopped()
            try:
                reply = self.provider.describe(data_url, feedback)
            except RateLimited as e:
                self._count_request(0, 0)
                self.pacer.pause(e.retry_after if e.retry_after is not None else 2.0)
                self.pacer.observe(e.headers)
                transient_failures += 1
                if transient_failures >= MAX_ATTEMPTS * 2:
                    raise _GiveUp(str(e), "provider") from None
                continue
            except TransientError as e:
                self._count_request(0, 0)
                transient_failures += 1
                if transient_failures >= MAX_ATTEMPTS:
                    raise _GiveUp(f"gave up after {transient_failures} attempts: {e}", "provider") from None
                delay = e.retry_after or min(BACKOFF_CAP, 2 ** (transient_failures - 1)) * random.uniform(0.8, 1.2)
                if self.stop.wait(delay):
                    raise _Stopped() from None
                continue
            except PhotoRejected as e:
                self._count_request(0, 0)
                raise _GiveUp(str(e), "rejected") from None
            except QuotaExhausted as e:
                self._count_request(0, 0)
                self._halt("quota", None)
                self.progress.warn(str(e))
                raise _Stopped() from None
            except FatalProviderError as e:
                self._count_request(0, 0)
                self._halt(str(e), e)
                raise _Stopped() from None
            self._count_request(reply.prompt_tokens, reply.completion_tokens)
            self.pacer.observe(reply.headers)
            self.pacer.learn_tokens(reply.prompt_tokens + reply.completion_tokens)
            try:
                desc = parse_reply(reply.text)
            except ReplyError as e:
                if feedback is not None:
                    raise _GiveUp(f"invalid reply twice: {e}", "reply") from None
                feedback = (reply.text, str(e))
                continue
            usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
            return desc.model_dump(), usage

    def _count_request(self, prompt_tokens: int, completion_tokens: int) -> None:
        with self.count_lock:
            self.summary.requests += 1
            self.summary.prompt_tokens += prompt_tokens
            self.summary.completion_tokens += completion_tokens

    def _halt(self, reason: str, fatal: FatalProviderError | None) -> None:
        with self.count_lock:
            if self.summary.stopped_by is None:
                self.summary.stopped_by = reason
            if fatal is not None and self.fatal is None:
                self.fatal = fatal
        self.stop.set()

    def _fail(self, sha: str, reason: str, kind: str) -> None:
        files = self.groups[sha]
        self.writer.add_failure({
            "sha256": sha,
            "paths": [f.rel for f in files],
            "reason": reason,
            "kind": kind,
            "provider": self.provider.name,
            "model": self.provider.model,
            "time": now_iso(),
        })
        with self.count_lock:
            self.summary.failed += 1
            self.summary.failures.append((files[0].rel, reason))
        self.progress.advance(False)


class _GiveUp(Exception):
    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class _Stopped(Exception):
    """The run is stopping (Ctrl-C, quota, fatal error): drop this photo, write nothing."""
