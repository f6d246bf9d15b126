"""The describe job: the photos plan.py chose, each asked for, paced, retried (retry.py),
validated and appended.

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

import queue
import threading
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from imgrag.config import Settings
from imgrag.describe.outcomes import Recorder, description_record
from imgrag.describe.plan import (
    EST_TOKENS_PER_PHOTO,
    DescribeOptions,
    Estimate,
    estimate,
    plan,
    remember_limits,
    skip_photos_in_open_batches,
)
from imgrag.describe.progress import Progress
from imgrag.describe.schema import ReplyError, parse_reply, request_messages
from imgrag.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_TEMPFAIL, UsageError
from imgrag.photos.files import PhotoError, PhotoMeta, prepare_image, read_metadata
from imgrag.providers import (
    FatalProviderError,
    InvalidReply,
    PhotoRejected,
    ProviderError,
    ProviderReply,
    QuotaExhausted,
    RateLimited,
    VisionProvider,
    make_provider,
    redact,
)
from imgrag.providers.base import MAX_REPLY_TOKENS
from imgrag.providers.pacing import Pacer
from imgrag.providers.retry import QUOTA_SPENT, GaveUp, Stopped, Tries, send_with_retries
from imgrag.store.descriptions import average_usage
from imgrag.store.scan import PhotoFile
from imgrag.store.workspace import Workspace

# This many photos in a row giving up on transient faults: the server is down, stop (exit 75).
UNAVAILABLE_STREAK = 3
# Threads reading and encoding photos ahead of the requests (Pillow decodes without the GIL).
PREPARERS = 2


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


def run_describe(photos: Path, settings: Settings, options: DescribeOptions, progress: Progress,
                 index: Path | None = None, provider: VisionProvider | None = None) -> DescribeSummary:
    ws = Workspace.for_photos(photos, index)
    if not photos.is_dir():
        raise UsageError(f"not a folder: {photos}")
    if options.jobs < 1:
        raise UsageError("--jobs must be at least 1")
    summary = DescribeSummary(workspace=ws.root)
    # A dry run writes nothing, so it needs no lock: it runs beside a writer (a cron `imgrag index`).
    with nullcontext() if options.dry_run else ws.writer_lock(wait=options.wait):
        manifest = ws.read_manifest()  # refuse a manifest from a newer version before writing anything
        chosen = plan(ws, photos, options, settings, on_skip=lambda s: progress.warn(f"skipped {s.path}: {s.reason}"))
        summary.found, summary.already, summary.quarantined = len(chosen.groups), chosen.already, chosen.quarantined
        if not chosen.groups:
            raise UsageError(f"no photos found under {photos} (looked for jpg, png, webp, gif, bmp, tiff, heic)")
        todo = skip_photos_in_open_batches(ws, chosen.todo, progress)
        todo_now = todo if options.limit is None else todo[: options.limit]
        summary.todo = len(todo_now)
        summary.remaining = len(todo)
        if options.dry_run:
            summary.estimate = estimate(len(todo_now), settings, manifest, chosen.described)
            return summary
        ws.add_root(photos)
        if not todo_now:
            return summary
        provider = provider or make_provider(settings)
        usage = average_usage(chosen.described)
        pacer = Pacer(est_tokens=sum(usage) if usage else EST_TOKENS_PER_PHOTO, window=options.rate_window)
        job = _Job(ws, provider, pacer, settings, chosen.groups, options.jobs, summary, progress, cancel=options.cancel)
        try:
            job.run(todo_now)
        finally:
            summary.remaining = len(todo) - summary.described
            remember_limits(ws, settings, pacer)
    return summary


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
        self.recorder = Recorder(self.ws, self.provider.name, self.provider.model, self.settings.api_key, self.summary)
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
            self.recorder.close()  # from here on, late records of abandoned requests are dropped
            self.progress.stop()
        if self.crash is not None:
            raise self.crash  # a bug, not a provider fault: let it show
        if self.unblamed and self.summary.stopped_by is None:
            # No photo was described after these gave up: the server, not they, is at fault.
            self.summary.stopped_by = "unavailable"
            self.summary.stop_reason = redact(self.unblamed[-1][2], self.settings.api_key)
        if self.fatal is not None:
            raise UsageError(redact(str(self.fatal), self.settings.api_key))

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
        if image.warning:  # a JPEG cut short: described as far as it decodes, as viewers show it
            self.progress.warn(f"{self.groups[sha][0].rel}: {image.warning}")
        return _Prepared(sha, image.data_url(), meta)

    def _describe(self, photo: _Prepared) -> None:
        sha, meta = photo.sha, photo.meta
        files = self.groups[sha]
        try:
            desc, usage = self._ask(photo.data_url)
        except _Failed as e:
            if e.fault is not None:
                self._hold(sha, str(e), e.fault)
            else:
                self._fail(sha, str(e), e.kind)
            return
        except _Stopped:
            return
        record = description_record(sha, files, meta, self.provider.name, self.provider.model, usage, desc)
        if not self.recorder.description(record):
            return  # abandoned by a second Ctrl-C
        with self.lock:  # counted only once it is on disk
            self.summary.described += 1
            self.giveup_streak = 0
            blamed, self.unblamed = self.unblamed, []
        for gave_up, message, _ in blamed:  # the server works: those photos are the problem
            self._fail(gave_up, message, "provider")
        self.progress.advance(True)

    def _ask(self, data_url: str) -> tuple[dict[str, Any], dict[str, int]]:
        """Ask until a valid description comes back, as retry.py says; a reply that does not
        validate is asked for once more, with what was wrong with it."""
        feedback: tuple[str, str] | None = None
        tries = Tries()  # the photo's, across both chances
        while True:
            try:
                reply: ProviderReply | None = send_with_retries(
                    partial(self._send, data_url, feedback), pacer=self.pacer, stop=self.stop,
                    max_retries=self.settings.max_retries, tries=tries)
            except InvalidReply as e:
                text, reply, problem = e.reply, None, str(e)
            except GaveUp as e:
                raise _Failed(str(e), "provider", fault=e.fault) from None
            except PhotoRejected as e:
                raise _Failed(str(e), "rejected") from None
            except Stopped as e:
                if e.quota_spent:
                    self._halt("quota", QUOTA_SPENT)
                raise _Stopped() from None
            if reply is not None:
                # A reply cannot have cost more than was asked for, whatever its usage claims.
                self.pacer.learn_tokens(reply.prompt_tokens + min(reply.completion_tokens, MAX_REPLY_TOKENS))
                text = reply.text
                try:
                    desc = parse_reply(text)
                except ReplyError as e:
                    problem = str(e)
                else:
                    usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
                    return desc.model_dump(), usage
            if feedback is not None:
                raise _Failed(f"the reply did not validate twice: {problem}", "reply")
            if self.stop.is_set():
                raise _Stopped()  # stopping: no second try, the photo stays to do
            feedback = (text, problem)

    def _send(self, data_url: str, feedback: tuple[str, str] | None) -> ProviderReply:
        """One request, in its pacer slot: counted; a spent quota or a fatal error stops the run."""
        try:
            reply = self.provider.complete(request_messages(data_url, feedback))
        except RateLimited:
            self._count(rate_limited=1)
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
        except ProviderError:
            self._count()
            raise
        self._count(reply.prompt_tokens, reply.completion_tokens)
        return reply

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
        reason = redact(reason, self.settings.api_key)
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
        if self.recorder.failure(sha, self.groups[sha], reason, kind) is not None:
            self.progress.advance(False)


@dataclass
class _Prepared:
    sha: str
    data_url: str = field(repr=False)
    meta: PhotoMeta


_STOP_WORDS = {"quota": "quota spent", "unavailable": "the server is failing"}


class _Failed(Exception):
    """The photo could not be described: `kind` of failure (see failures.jsonl); `fault` is
    set when it gave up on transient faults (the last fault, without the count)."""

    def __init__(self, message: str, kind: str, fault: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.fault = fault


class _Stopped(Exception):
    """The run is stopping (Ctrl-C, quota, fatal error): drop this photo, write nothing."""
