"""The describe job: which photos need a description, then ask, pace, retry, validate, append.

Each finished description is fsynced to descriptions.jsonl before it is counted, so a
crash or Ctrl-C loses at most the requests in flight, and the next run resumes.

Stopping: a spent daily quota (or a server that keeps failing) stops new requests, lets
those in flight finish and be written, and ends with exit 75 so cron tries again later.
A photo that gave up on transient faults (server errors, timeouts, no connection) is
blamed only once the server has described another photo after it: until then the server
is the suspect, the photo stays to do and the run ends with 75, however many were new.
Ctrl-C does the same with exit 130; a second Ctrl-C abandons the requests in flight.
A bad key or an unknown/retired model stops at once with exit 2."""

from __future__ import annotations

import math
import queue
import random
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgrag.config import Settings
from imgrag.describe.quarantine import QUARANTINE_AFTER, load_quarantine, permanent_reason, strikes
from imgrag.describe.schema import PROMPT_VERSION, ReplyError, parse_reply
from imgrag.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_TEMPFAIL, UsageError
from imgrag.photos.files import PhotoError, PhotoMeta, Skipped, prepare_image, read_metadata
from imgrag.providers import (
    FatalProviderError,
    InvalidReply,
    PhotoRejected,
    ProviderReply,
    QuotaExhausted,
    RateLimited,
    TransientError,
    VisionProvider,
    make_provider,
)
from imgrag.providers.base import MAX_REPLY_TOKENS
from imgrag.providers.pacing import Pacer
from imgrag.store.descriptions import RecordWriter, average_usage, load_descriptions, load_failures, now_iso
from imgrag.store.scan import PhotoFile, by_content, scan
from imgrag.store.workspace import Workspace

# What one photo costs before a run has measured it: the image (Qwen 3.8 on Groq counts
# 2,048 tokens an image) + the prompt (~300) in, the JSON description out.
EST_IMAGE_TOKENS = 2048
EST_PROMPT_TOKENS = EST_IMAGE_TOKENS + 300
EST_COMPLETION_TOKENS = 250
EST_TOKENS_PER_PHOTO = EST_PROMPT_TOKENS + EST_COMPLETION_TOKENS
# Groq's free tier for its vision models: the --dry-run estimate until a run has learned better.
GROQ_FREE_TIER = {"requests_per_minute": 30, "tokens_per_minute": 8000, "requests_per_day": 1000}
BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
MAX_RATE_LIMITED = 30  # 429s for one photo before it is recorded as a failure
# This many photos in a row giving up on transient faults: the server is down, stop (exit 75).
UNAVAILABLE_STREAK = 3
# Threads reading and encoding photos ahead of the requests (Pillow decodes without the GIL).
PREPARERS = 2


@dataclass
class DescribeOptions:
    jobs: int = 4
    limit: int | None = None
    force: bool = False
    refresh: bool = False
    dry_run: bool = False
    wait: bool = False
    # Seconds in a rate-limit "minute": only a time-scaled stand-in server (benchmarks) differs.
    rate_window: float = 60.0
    retry_failed: bool = False  # try quarantined photos again too
    # Set from another thread (imgrag serve's cancel) to stop as Ctrl-C does: what is in flight is written.
    cancel: threading.Event | None = None


@dataclass
class Estimate:
    """What --dry-run says a run would cost and take."""

    photos: int
    prompt_tokens: int
    completion_tokens: int
    cost: float  # USD at the configured prices
    minutes: float | None  # at the limits below; None when no limits are known
    runs: int  # daily runs needed (1 unless a daily limit is known and too small)
    limits: dict[str, Any]
    limits_source: str


@dataclass
class DescribeSummary:
    found: int = 0  # distinct photos (by content) under the folder
    already: int = 0
    todo: int = 0  # to describe this run
    described: int = 0
    failed: int = 0
    remaining: int = 0  # still without a description after this run
    requests: int = 0
    rate_limited: int = 0  # 429s received
    prompt_tokens: int = 0
    completion_tokens: int = 0
    stopped_by: str | None = None  # "quota", "unavailable" or "interrupt"
    stop_reason: str = ""
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    quarantined: int = 0  # photos skipped as quarantined (not failures of this run)
    newly_quarantined: list[tuple[str, str, int]] = field(default_factory=list)  # (path, reason, strikes), this run
    estimate: Estimate | None = None
    workspace: Path | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped_by == "interrupt":
            return EXIT_INTERRUPTED
        if self.stopped_by in ("quota", "unavailable"):
            return EXIT_TEMPFAIL
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


class Progress:
    """What describe reports while it runs; the CLI supplies a renderer."""

    def start(self, total: int) -> None: ...
    def advance(self, ok: bool) -> None: ...
    def warn(self, message: str) -> None: ...
    def stop(self) -> None: ...


def plan(ws: Workspace, photos: Path, options: DescribeOptions, settings: Settings,
         on_skip: Callable[[Skipped], None] | None = None
         ) -> tuple[dict[str, list[PhotoFile]], list[str], int, dict[str, dict[str, Any]]]:
    """(photos by content hash, hashes to describe in order, how many are done, the records).

    A photo is done when some record has its content hash, whichever model or prompt
    wrote it: a new model re-describes only with --refresh, and the old description stays
    searchable until the new one replaces it."""
    groups = by_content(scan(ws, [photos], on_skip=on_skip))
    described = load_descriptions(ws)
    held = {} if options.retry_failed else load_quarantine(ws, described)
    model = settings.vision_model
    todo: list[str] = []
    already = 0
    for sha in groups:
        if sha in held:
            continue  # can never be described: skipped until --retry-failed
        record = described.get(sha)
        stale = record is not None and (
            record.get("model") != model or record.get("prompt_version") != PROMPT_VERSION
        )
        if record is None or options.force or (options.refresh and stale):
            todo.append(sha)
        else:
            already += 1
    return groups, todo, already, described


def run_describe(photos: Path, settings: Settings, options: DescribeOptions, progress: Progress,
                 index: Path | None = None, provider: VisionProvider | None = None) -> DescribeSummary:
    ws = Workspace.for_photos(photos, index)
    if not photos.is_dir():
        raise UsageError(f"not a folder: {photos}")
    if options.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    summary = DescribeSummary(workspace=ws.root)
    with ws.writer_lock(wait=options.wait):
        manifest = ws.read_manifest()  # refuse a manifest from a newer version before writing anything
        groups, todo, summary.already, described = plan(
            ws, photos, options, settings, on_skip=lambda s: progress.warn(f"skipped {s.path}: {s.reason}")
        )
        summary.found = len(groups)
        if not options.retry_failed:
            summary.quarantined = len(load_quarantine(ws, described).keys() & groups.keys())
        if not groups:
            raise UsageError(f"no photos found under {photos} (looked for jpg, png, webp, gif, bmp, tiff, heic)")
        todo = _skip_photos_in_open_batches(ws, todo, progress)
        todo_now = todo if options.limit is None else todo[: options.limit]
        summary.todo = len(todo_now)
        summary.remaining = len(todo)
        if options.dry_run:
            summary.estimate = estimate(len(todo_now), settings, manifest, described)
            return summary
        ws.add_root(photos)
        if not todo_now:
            return summary
        provider = provider or make_provider(settings)
        usage = average_usage(described)
        pacer = Pacer(est_tokens=sum(usage) if usage else EST_TOKENS_PER_PHOTO, window=options.rate_window)
        job = _Job(ws, provider, pacer, settings, groups, options.jobs, summary, progress, cancel=options.cancel)
        try:
            job.run(todo_now)
        finally:
            summary.remaining = len(todo) - summary.described
            _remember_limits(ws, settings, pacer)
    return summary


def _skip_photos_in_open_batches(ws: Workspace, todo: list[str], progress: Progress) -> list[str]:
    """A photo in an open batch is paid for there: never send it again until that batch ends."""
    from imgrag.store.batch_log import BatchLog

    held = BatchLog(ws).held_photos()
    if not held:
        return todo
    kept = [sha for sha in todo if sha not in held]
    if len(kept) < len(todo):
        progress.warn(f"{len(todo) - len(kept)} photo(s) are in an open batch and are left to it: "
                      "`imgrag describe --batch` collects them")
    return kept


def description_record(sha: str, files: list[PhotoFile], meta: PhotoMeta, provider: str, model: str,
                       usage: dict[str, int], description: dict[str, Any]) -> dict[str, Any]:
    """The line written to descriptions.jsonl for a validated description (live or batch)."""
    first = files[0]
    return {
        "sha256": sha,
        "paths": [f.rel for f in files],
        "size": first.size,
        "mtime": first.mtime_ns // 1_000_000_000,
        "width": meta.width,
        "height": meta.height,
        # Metadata stays here, on this machine: the image sent was re-encoded without it.
        "taken": meta.taken,
        "camera": meta.camera,
        "gps": list(meta.gps) if meta.gps else None,
        "provider": provider,
        "model": model,
        "prompt_version": PROMPT_VERSION,
        "created": now_iso(),
        "usage": usage,
        "description": description,
    }


def failure_record(sha: str, files: list[PhotoFile], reason: str, kind: str, provider: str,
                   model: str, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """The line written to failures.jsonl for a photo that could not be described (live or batch);
    `previous` is the photo's last failure, for the strikes towards quarantine."""
    permanent = permanent_reason(kind, reason)
    return {
        "sha256": sha,
        "paths": [f.rel for f in files],
        "reason": reason,
        "kind": kind,
        "permanent": permanent,
        "strikes": strikes(previous, permanent),
        "provider": provider,
        "model": model,
        "time": now_iso(),
    }


# -- --dry-run and the limits it estimates with ---------------------------------------------


def _limits_key(settings: Settings) -> str:
    return f"{settings.provider} {settings.base_url or 'default'} {settings.vision_model}"


def _remember_limits(ws: Workspace, settings: Settings, pacer: Pacer) -> None:
    """Keep what this run learned about the server's limits for the next --dry-run."""
    if not pacer.calibrated:
        return
    known = dict(ws.read_manifest().get("provider_limits") or {})
    known[_limits_key(settings)] = {**pacer.limits(), "learned": now_iso()}
    ws.update_manifest(provider_limits=known)


def estimate(count: int, settings: Settings, manifest: dict[str, Any],
             described: dict[str, dict[str, Any]]) -> Estimate:
    """Tokens, cost and time to describe `count` photos at the limits last seen."""
    prompt, completion = average_usage(described) or (EST_PROMPT_TOKENS, EST_COMPLETION_TOKENS)
    limits = (manifest.get("provider_limits") or {}).get(_limits_key(settings))
    if limits:
        source = f"as measured by the last run, {limits.get('learned', 'earlier')}"
    elif settings.provider == "groq":
        limits, source = GROQ_FREE_TIER, "Groq's free tier; no run has measured yours yet"
    else:
        limits, source = {}, "no run has measured this server's limits yet"
    rates = []  # photos per minute each limit allows
    if limits.get("requests_per_minute"):
        rates.append(float(limits["requests_per_minute"]))
    if limits.get("tokens_per_minute"):
        rates.append(limits["tokens_per_minute"] / (prompt + completion))
    per_day = limits.get("requests_per_day")
    return Estimate(
        photos=count,
        prompt_tokens=count * prompt,
        completion_tokens=count * completion,
        cost=count * (prompt * settings.price_input + completion * settings.price_output) / 1e6,
        minutes=count / min(rates) if rates else None,
        runs=max(1, math.ceil(count / per_day)) if per_day else 1,
        limits={k: v for k, v in limits.items() if k != "learned"},
        limits_source=source,
    )


# -- the run ---------------------------------------------------------------------------------


class _Job:
    def __init__(self, ws: Workspace, provider: VisionProvider, pacer: Pacer, settings: Settings,
                 groups: dict[str, list[PhotoFile]], jobs: int, summary: DescribeSummary, progress: Progress,
                 cancel: threading.Event | None = None) -> None:
        self.ws = ws
        self.cancel = cancel
        self.provider = provider
        self.pacer = pacer
        self.settings = settings
        self.groups = groups
        self.jobs = jobs
        self.summary = summary
        self.progress = progress
        self.stop = threading.Event()
        self.lock = threading.Lock()  # guards the summary, the queue and the fields below
        self.queue: deque[str] = deque()
        self.fatal: FatalProviderError | None = None
        self.crash: BaseException | None = None
        self.giveup_streak = 0
        # Transient give-ups not recorded as failures yet: (sha, message, fault), see _hold.
        self.unblamed: list[tuple[str, str, str]] = []
        self.ready: queue.Queue[_Prepared | None] = queue.Queue(maxsize=jobs)
        self.running = self.preparing = 0
        self.finished = threading.Event()

    def run(self, todo: list[str]) -> None:
        self.queue.extend(todo)
        self.previous_failures = load_failures(self.ws)  # for the strikes towards quarantine
        self.writer = RecordWriter(self.ws)
        self.progress.start(len(todo))
        # Photos are read, downscaled and encoded ahead of their request slot, so a slow
        # decode (a 24 MP HEIC) never leaves a slot idle. Daemon threads, so that a second
        # Ctrl-C can walk away from requests in flight.
        workers = [
            threading.Thread(target=self._work, name=f"describe-{i}", daemon=True)
            for i in range(min(self.jobs, len(todo)))
        ]
        preparers = [
            threading.Thread(target=self._prepare_all, args=(len(workers),), name=f"prepare-{i}", daemon=True)
            for i in range(min(PREPARERS, len(todo)))
        ]
        self.running, self.preparing = len(workers), len(preparers)
        try:
            for t in (*preparers, *workers):
                t.start()
            try:
                self._wait_for_workers()
            except KeyboardInterrupt:
                self._interrupted()
        finally:
            self.stop.set()
            self.writer.close()  # from here on, late records of abandoned requests are dropped
            self.progress.stop()
        if self.crash is not None:
            raise self.crash  # a bug, not a provider fault: let it show
        if self.unblamed and self.summary.stopped_by is None:
            # No photo was described after these gave up: the server, not they, is at fault.
            self.summary.stopped_by = "unavailable"
            self.summary.stop_reason = self._redact(self.unblamed[-1][2])
        if self.fatal is not None:
            raise UsageError(self._redact(str(self.fatal)))

    def _wait_for_workers(self) -> None:
        # An Event, not Thread.join: a join interrupted by Ctrl-C can mark a live thread
        # as finished (Python 3.11), and short waits keep Ctrl-C responsive.
        while not self.finished.wait(0.2):
            if self.cancel is not None and self.cancel.is_set() and not self.stop.is_set():
                self._halt("interrupt", "")  # a cancel is a Ctrl-C from afar

    def _interrupted(self) -> None:
        self._halt("interrupt", "")
        busy = self.pacer.in_flight
        self.progress.warn(f"interrupted: finishing {busy} request(s) in flight (Ctrl-C again to abandon them)")
        try:
            self._wait_for_workers()
        except KeyboardInterrupt:
            self.progress.warn(f"abandoned {self.pacer.in_flight} request(s) in flight")

    def _prepare_all(self, workers: int) -> None:
        """Feed prepared photos to the workers; the last preparer out tells them it is over."""
        try:
            while not self.stop.is_set():
                with self.lock:
                    if not self.queue:
                        break
                    sha = self.queue.popleft()
                photo = self._prepare(sha)
                if photo is not None:
                    self._put(photo)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self._crashed(e)
        finally:
            with self.lock:
                self.preparing -= 1
                last = self.preparing == 0
            if last:
                for _ in range(workers):
                    self._put(None)

    def _put(self, item: _Prepared | None) -> None:
        while not self.stop.is_set():
            try:
                self.ready.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _work(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    photo = self.ready.get(timeout=0.2)
                except queue.Empty:
                    continue
                if photo is None:
                    return
                self._describe(photo)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread, which re-raises it
            self._crashed(e)
        finally:
            with self.lock:
                self.running -= 1
                if self.running == 0:
                    self.finished.set()

    def _crashed(self, e: BaseException) -> None:
        with self.lock:
            self.crash = self.crash or e
        self.stop.set()

    # -- one photo ---------------------------------------------------------------------

    def _prepare(self, sha: str) -> _Prepared | None:
        """The image to send and the metadata to keep; None (and a failure) if unreadable."""
        path = self.groups[sha][0].path
        try:
            image = prepare_image(path, max_side=self.settings.max_side)
            meta = read_metadata(path)
        except (PhotoError, OSError) as e:
            self._fail(sha, f"unreadable photo: {e}", "photo")
            return None
        return _Prepared(sha, image.data_url(), meta)

    def _describe(self, photo: _Prepared) -> None:
        sha, meta = photo.sha, photo.meta
        files = self.groups[sha]
        try:
            desc, usage = self._ask(photo.data_url)
        except _GiveUp as e:
            if e.transient:
                self._hold(sha, str(e), e.reason)
            else:
                self._fail(sha, str(e), e.kind)
            return
        except _Stopped:
            return
        record = description_record(sha, files, meta, self.provider.name, self.provider.model, usage, desc)
        if not self.writer.add_description(record):
            return  # abandoned by a second Ctrl-C
        with self.lock:  # counted only once it is on disk
            self.summary.described += 1
            self.giveup_streak = 0
            blamed, self.unblamed = self.unblamed, []
        for gave_up, message, _ in blamed:  # the server works: those photos are the problem
            self._fail(gave_up, message, "provider")
        self.progress.advance(True)

    def _ask(self, data_url: str) -> tuple[dict[str, Any], dict[str, int]]:
        """Ask until a valid description comes back: transient faults are retried with
        backoff, 429s after the pause the server asked for; a reply that does not
        validate is retried once, with what was wrong with it."""
        feedback: tuple[str, str] | None = None
        faults = rate_limited = 0
        while True:
            try:
                reply = self._request(data_url, feedback)
                text = reply.text
            except RateLimited as e:
                rate_limited += 1
                if rate_limited > MAX_RATE_LIMITED:
                    raise _GiveUp(f"still rate limited after {rate_limited} tries: {e}", "provider") from None
                continue
            except InvalidReply as e:
                text, reply = e.reply, None
                problem = str(e)
            except TransientError as e:
                faults += 1
                if faults > self.settings.max_retries:
                    raise _GiveUp(f"gave up after {faults} attempts: {e}", "provider", reason=str(e)) from None
                self._backoff(faults, e.retry_after)
                continue
            except PhotoRejected as e:
                raise _GiveUp(str(e), "rejected") from None
            if reply is not None:
                try:
                    desc = parse_reply(text)
                except ReplyError as e:
                    problem = str(e)
                else:
                    usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
                    return desc.model_dump(), usage
            if feedback is not None:
                raise _GiveUp(f"the reply did not validate twice: {problem}", "reply")
            if self.stop.is_set():
                raise _Stopped()  # stopping: no second try, the photo stays to do
            feedback = (text, problem)

    def _request(self, data_url: str, feedback: tuple[str, str] | None) -> ProviderReply:
        """One paced request; stops the run on a spent quota or a fatal error."""
        if not self.pacer.acquire(self.stop):
            if self.pacer.quota_spent:
                self._halt("quota", "the daily request quota is spent (x-ratelimit-remaining-requests: 0)")
            raise _Stopped()
        try:
            reply = self.provider.describe(data_url, feedback)
        except RateLimited as e:
            self._count(rate_limited=1)
            self.pacer.rate_limited(str(e), e.retry_after, e.headers)
            raise
        except QuotaExhausted as e:
            self._count()
            self._halt("quota", str(e), mine_in_flight=1)
            raise _Stopped() from None
        except FatalProviderError as e:
            self._count()
            with self.lock:
                self.fatal = self.fatal or e
            self.stop.set()
            raise _Stopped() from None
        except (TransientError, PhotoRejected, InvalidReply) as e:
            self._count()
            if e.headers:
                self.pacer.observe(e.headers)
            raise
        finally:
            self.pacer.release()
        self._count(reply.prompt_tokens, reply.completion_tokens)
        self.pacer.observe(reply.headers)
        # A reply cannot have cost more than was asked for, whatever its usage claims.
        self.pacer.learn_tokens(reply.prompt_tokens + min(reply.completion_tokens, MAX_REPLY_TOKENS))
        return reply

    def _backoff(self, attempt: int, retry_after: float | None) -> None:
        if self.stop.wait(backoff_delay(attempt, retry_after)):
            raise _Stopped()

    # -- bookkeeping ---------------------------------------------------------------------

    def _count(self, prompt_tokens: int = 0, completion_tokens: int = 0, rate_limited: int = 0) -> None:
        with self.lock:
            self.summary.requests += 1
            self.summary.rate_limited += rate_limited
            self.summary.prompt_tokens += prompt_tokens
            self.summary.completion_tokens += completion_tokens

    def _halt(self, why: str, reason: str, mine_in_flight: int = 0) -> None:
        """Start nothing new; what is in flight finishes and is written. The reason is
        said once, in the summary; here only what is still being waited for."""
        reason = self._redact(reason)
        with self.lock:
            first = self.summary.stopped_by is None
            if first:
                self.summary.stopped_by, self.summary.stop_reason = why, reason
        self.stop.set()
        others = self.pacer.in_flight - mine_in_flight
        if first and reason and others > 0:
            self.progress.warn(f"stopping ({_STOP_WORDS.get(why, why)}): finishing {others} request(s) in flight")

    def _hold(self, sha: str, message: str, fault: str) -> None:
        """A photo lost to transient faults: not blamed yet (see the module's docstring).
        Photos in a row lost that way mean the server is down: stop, exit 75."""
        with self.lock:
            self.unblamed.append((sha, message, fault))
            self.giveup_streak += 1
            down = self.giveup_streak >= UNAVAILABLE_STREAK
        if down:
            self._halt("unavailable", fault)

    def _fail(self, sha: str, reason: str, kind: str) -> None:
        files = self.groups[sha]
        reason = self._redact(reason)
        record = failure_record(sha, files, reason, kind, self.provider.name, self.provider.model,
                                self.previous_failures.get(sha))
        if not self.writer.add_failure(record):
            return
        with self.lock:
            self.summary.failed += 1
            self.summary.failures.append((files[0].rel, reason))
        if record["strikes"] >= QUARANTINE_AFTER:
            self._quarantine(record)
        self.progress.advance(False)

    def _quarantine(self, failure: dict[str, Any]) -> None:
        """The same permanent reason again and again: set the photo aside (see quarantine.py)."""
        fields = ("sha256", "paths", "reason", "kind", "permanent", "strikes", "time")
        if self.writer.add_quarantine({k: failure[k] for k in fields}):
            with self.lock:
                self.summary.newly_quarantined.append((failure["paths"][0], failure["reason"], failure["strikes"]))

    def _redact(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...) after a transient fault: what the
    server asked for, else exponential; jittered so that workers do not retry in step."""
    delay = retry_after if retry_after is not None else min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return delay * random.uniform(0.8, 1.2)


@dataclass
class _Prepared:
    sha: str
    data_url: str = field(repr=False)
    meta: PhotoMeta


_STOP_WORDS = {"quota": "quota spent", "unavailable": "the server is failing"}


class _GiveUp(Exception):
    """`reason`: set when the photo gave up on transient faults (the fault, without the count)."""

    def __init__(self, message: str, kind: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.reason = reason
        self.transient = reason is not None


class _Stopped(Exception):
    """The run is stopping (Ctrl-C, quota, fatal error): drop this photo, write nothing."""
