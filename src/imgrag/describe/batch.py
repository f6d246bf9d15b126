"""`imgrag describe --batch`: describe through the provider's Batch API, at half the price.

One run does, in order:
1. settle submissions a killed run left half-done (see batch_log): adopt the batch the
   server holds under the intent's token, or free the photos if there is none;
2. poll every open batch; collect a finished one: each output line is validated exactly as
   a live reply is (same completion parsing, same pydantic model, same record), failures are
   recorded with their strikes towards quarantine (records.py, as for a live run), and the
   photos it never reached (expired, cancelled) are left for the next batch;
3. submit what still has no description, is in no open batch and is not quarantined: one
   JSONL line per photo (custom_id = content hash, body = the request live describe sends),
   split into files of at most 50,000 lines and 200 MB, each uploaded and made a batch.

`--cancel` cancels the open batches instead of step 3; `--dry-run` sends nothing and says
what would be submitted and what it costs at the batch price. Requests to the Batch API follow
the one retry policy (providers/retry.py, batch_api.py): a server that keeps failing, or a
spent quota, ends the run with 75; a bad key or a plan without the Batch API with 2."""

from __future__ import annotations

import itertools
import json
import re
import tempfile
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

from imgrag.config import Settings
from imgrag.describe.live import PREPARERS
from imgrag.describe.outcomes import Recorder, description_record
from imgrag.describe.plan import DescribeOptions, Estimate, estimate, plan
from imgrag.describe.progress import Progress
from imgrag.describe.schema import ReplyError, parse_reply, request_messages
from imgrag.errors import EXIT_OK, EXIT_SOME_FAILED, EXIT_TEMPFAIL, UsageError
from imgrag.photos.files import PhotoError, PhotoMeta, prepare_image, read_metadata
from imgrag.providers import (
    FatalProviderError,
    ProviderError,
    QuotaExhausted,
    TransientError,
    VisionProvider,
    make_provider,
    redact,
)
from imgrag.providers.batch_api import BatchAPI, BatchRefused, RemoteBatch, Uncertain
from imgrag.providers.retry import GaveUp, Stopped
from imgrag.store.batch_log import METADATA_KEY, TERMINAL, BatchEntry, BatchLog
from imgrag.store.files import json_line, read_jsonl
from imgrag.store.scan import PhotoFile, by_content, scan
from imgrag.store.workspace import Workspace

BATCH_DISCOUNT = 0.5  # Groq bills batch tokens at half the on-demand price
MAX_LINES = 50_000  # Groq's limits for one batch input file
MAX_BYTES = 200 * 1024 * 1024
CHAT_URL = "/v1/chat/completions"
# Line outcomes that are not the photo's fault: it goes into the next batch, no failure recorded.
UNFINISHED_CODES = {"batch_expired", "batch_cancelled"}
_WINDOW = re.compile(r"^(\d+)([hd])$")


@dataclass
class BatchOptions:
    window: str = "24h"
    cancel: bool = False
    dry_run: bool = False
    limit: int | None = None
    force: bool = False
    refresh: bool = False
    wait: bool = False
    max_lines: int = MAX_LINES
    max_bytes: int = MAX_BYTES


@dataclass
class Collected:
    batch_id: str
    status: str
    described: int = 0
    failed: int = 0
    unfinished: int = 0  # left for the next batch
    errors: list[str] = field(default_factory=list)  # why a batch failed validation


@dataclass
class BatchSummary:
    found: int = 0
    already: int = 0
    held: int = 0  # photos waiting in open batches after this run
    todo: int = 0  # photos this run would submit (or did)
    submitted: list[tuple[str, int]] = field(default_factory=list)  # (batch id, photos)
    collected: list[Collected] = field(default_factory=list)
    open: list[dict[str, Any]] = field(default_factory=list)  # BatchEntry.summary() of batches still running
    adopted: list[str] = field(default_factory=list)  # batches an interrupted run had submitted
    cancelled: list[str] = field(default_factory=list)
    described: int = 0
    failed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    quarantined: int = 0  # photos skipped as quarantined (not failures of this run)
    newly_quarantined: list[tuple[str, str, int]] = field(default_factory=list)  # (path, reason, strikes), this run
    window: str = "24h"
    estimate: Estimate | None = None
    stopped_by: str | None = None  # "unavailable" when the server could not be reached
    stop_reason: str = ""
    workspace: Path | None = None

    @property
    def exit_code(self) -> int:
        if self.stopped_by:
            return EXIT_TEMPFAIL
        return EXIT_SOME_FAILED if self.failed else EXIT_OK


def window_hours(window: str) -> int:
    """--window: 24h to 7d, as Groq accepts."""
    match = _WINDOW.match(window.strip().lower())
    hours = int(match[1]) * (24 if match[2] == "d" else 1) if match else 0
    if not 24 <= hours <= 168:
        raise UsageError(f"--window {window!r}: give a completion window from 24h to 7d (e.g. 24h, 48h, 7d)")
    return hours


def run_batch(photos: Path, settings: Settings, options: BatchOptions, progress: Progress,
              index: Path | None = None, provider: VisionProvider | None = None) -> BatchSummary:
    ws = Workspace.for_photos(photos, index)
    if not photos.is_dir():
        raise UsageError(f"not a folder: {photos}")
    window_hours(options.window)
    options.window = options.window.strip().lower()
    summary = BatchSummary(workspace=ws.root, window=options.window)
    with nullcontext() if options.dry_run else ws.writer_lock(wait=options.wait):  # a dry run writes nothing
        manifest = ws.read_manifest()
        chosen = plan(ws, photos, DescribeOptions(force=options.force, refresh=options.refresh), settings,
                      on_skip=lambda s: progress.warn(f"skipped {s.path}: {s.reason}"))
        groups, todo = chosen.groups, chosen.todo
        summary.found, summary.already, summary.quarantined = len(groups), chosen.already, chosen.quarantined
        if not groups:
            raise UsageError(f"no photos found under {photos} (looked for jpg, png, webp, gif, bmp, tiff, heic)")
        log = BatchLog(ws)
        if options.dry_run:
            held = log.held_photos()
            todo = [sha for sha in todo if sha not in held]
            todo = todo if options.limit is None else todo[: options.limit]
            summary.held, summary.todo = len(held & set(groups)), len(todo)
            summary.estimate = batch_estimate(len(todo), settings, manifest, chosen.described)
            summary.open = [e.summary() for e in log.open_entries()]
            return summary
        ws.add_root(photos)
        job = _BatchJob(ws, log, provider or make_provider(settings), settings, groups, options, summary, progress)
        key = settings.api_key
        try:
            job.run(todo)
        except GaveUp as e:  # the server kept failing: said as when it fails at once
            summary.stopped_by, summary.stop_reason = "unavailable", redact(e.fault or str(e), key)
        except (TransientError, QuotaExhausted, Stopped) as e:
            summary.stopped_by, summary.stop_reason = "unavailable", redact(str(e), key)
        except FatalProviderError as e:
            raise UsageError(redact(str(e), key)) from None
        finally:
            job.close()
            summary.held = len(log.held_photos() & set(groups))
    return summary


def batch_estimate(count: int, settings: Settings, manifest: dict[str, Any],
                   described: dict[str, dict[str, Any]]) -> Estimate:
    """The live estimate at the batch price; time is the completion window, not the rate limits."""
    live = estimate(count, settings, manifest, described)
    live.cost *= BATCH_DISCOUNT
    live.minutes, live.runs, live.limits = None, 1, {}
    live.limits_source = "batch"
    return live


class _BatchJob:
    def __init__(self, ws: Workspace, log: BatchLog, provider: VisionProvider, settings: Settings,
                 groups: dict[str, list[PhotoFile]], options: BatchOptions, summary: BatchSummary,
                 progress: Progress) -> None:
        self.ws, self.log, self.provider, self.settings = ws, log, provider, settings
        self.api = BatchAPI(provider, settings.max_retries)
        self.groups = groups
        self.options, self.summary, self.progress = options, summary, progress
        self.recorder = Recorder(ws, provider.name, provider.model, settings.api_key, summary)
        self.just_described: set[str] = set()
        self._all_groups: dict[str, list[PhotoFile]] | None = None
        self._written: dict[str, set[str]] | None = None

    def close(self) -> None:
        self.recorder.close()
        self.log.close()

    def run(self, todo: list[str]) -> None:
        remote = self.api.batches()
        first = next(remote, None)  # the first call tells at once whether this key's plan has the Batch API
        self.settle(itertools.chain([first] if first else [], remote))
        for entry in self.log.open_entries():
            if entry.batch_id is not None:
                self.poll(entry)
        if self.options.cancel:
            self.cancel_open()
            return
        # Neither what an open batch holds, nor what this run collected or quarantined.
        done = self.log.held_photos() | self.just_described | self.recorder.quarantined
        todo = [sha for sha in todo if sha not in done]
        todo = todo if self.options.limit is None else todo[: self.options.limit]
        self.summary.todo = len(todo)
        if todo:
            self.submit(todo)

    # -- 1. submissions a killed run left half-done --------------------------------------

    def settle(self, remote: Iterator[RemoteBatch]) -> None:
        """An intent not followed by its batch: adopt the batch holding its token, or, once the
        list has gone back past the intent (newest first, an hour's margin for clocks), free it."""
        pending = {e.token: e for e in self.log.entries() if not e.settled}
        if not pending:
            return
        oldest = min(_epoch(e.created) for e in pending.values()) - 3600
        for batch in remote:
            if batch.created_at and batch.created_at < oldest:
                break
            entry = pending.pop(str(batch.metadata.get(METADATA_KEY, "")), None)
            if entry is not None:
                self.log.submitted(entry.token, batch.id, batch.status, adopted=True)
                self.summary.adopted.append(batch.id)
                self.progress.warn(f"batch {batch.id} of {len(entry.photos)} photo(s), submitted by an "
                                   "interrupted run, is recorded now")
            if not pending:
                return
        for entry in pending.values():  # no batch was made: nothing is paid, the photos are free again
            self.log.abandoned(entry.token, "the run was interrupted before its batch was created")
            if entry.file_id:
                self.api.delete_file(entry.file_id)

    # -- 2. poll and collect ---------------------------------------------------------------

    def poll(self, entry: BatchEntry) -> None:
        try:
            remote = self.api.retrieve(str(entry.batch_id))
        except BatchRefused as e:
            if e.status != 404:
                raise
            # Another account's, or deleted: its results cannot come, so its photos go into a new batch.
            self.progress.warn(f"batch {entry.batch_id} is unknown to the server ({e}); its photos go into a new batch")
            self.log.seen(str(entry.batch_id), "missing", {}, closed=True)
            return
        if remote.status not in TERMINAL:
            self.log.seen(remote.id, remote.status, remote.counts)
            entry.status, entry.counts = remote.status, remote.counts
            self.summary.open.append(entry.summary())
            return
        self.collect(entry, remote)

    def collect(self, entry: BatchEntry, remote: RemoteBatch) -> None:
        """Write every result of a finished batch, then close it. Killed half-way, the next run
        downloads the files again and writes only what this batch has not written yet."""
        done = self._written_by(remote.id)
        outcome = Collected(remote.id, remote.status, errors=remote.errors[:3])
        photos = set(entry.photos)
        answered: set[str] = set()
        for file_id in (remote.output_file_id, remote.error_file_id):
            if not file_id:
                continue
            for line in _jsonl(self.api.content(file_id)):
                sha = line.get("custom_id")
                if sha not in photos or sha in answered:
                    continue  # not ours, or a line repeated
                answered.add(sha)
                if sha in done:
                    continue
                self._record_line(sha, line, remote.id, outcome)
        outcome.unfinished += len(photos - answered)
        self.log.seen(remote.id, remote.status, remote.counts, closed=True)
        # Groq keeps batch files 30 days unless deleted: the photos and their descriptions need not stay there.
        for file_id in {remote.input_file_id, entry.file_id, remote.output_file_id, remote.error_file_id} - {None}:
            self.api.delete_file(str(file_id))
        self.summary.collected.append(outcome)
        if remote.status == "failed":
            self.progress.warn(f"batch {remote.id} failed validation ({'; '.join(outcome.errors) or 'no reason given'}); "
                               "its photos go into a new batch")

    def _record_line(self, sha: str, line: dict[str, Any], batch_id: str, outcome: Collected) -> None:
        result = self._result(line)
        if result is None:
            outcome.unfinished += 1
            return
        kind, value, usage = result
        files = self._files(sha)
        if kind == "ok":
            record = self._description(sha, files, value, usage)
            self.recorder.description({**record, "batch": batch_id})
            self.just_described.add(sha)
            outcome.described += 1
            self.summary.described += 1
            return
        self.recorder.failure(sha, files or [], value, kind, batch=batch_id)
        outcome.failed += 1

    def _result(self, line: dict[str, Any]) -> tuple[str, Any, dict[str, int]] | None:
        """("ok", description, usage), (failure kind, reason, {}), or None: not reached, try again."""
        response, error = line.get("response"), _object(line.get("error"))
        if isinstance(response, dict) and response.get("status_code") == 200:
            try:
                reply = self.provider.parse_completion(_object(response.get("body")), {})
                description = parse_reply(reply.text)
            except (TransientError, ReplyError) as e:
                return "reply", f"the reply did not validate: {e}", {}
            usage = {"prompt_tokens": reply.prompt_tokens, "completion_tokens": reply.completion_tokens}
            return "ok", description.model_dump(), usage
        if isinstance(response, dict):
            status = int(response.get("status_code") or 0)
            message = str(_object(_object(response.get("body")).get("error")).get("message") or "")[:300]
            if status == 429 or status >= 500:
                return None  # the server's trouble, not the photo's: as a transient fault, tried again
            if status in (400, 413, 415, 422):
                return "rejected", f"rejected by the model ({status}: {message})", {}
            return "provider", f"batch request failed ({status}: {message})", {}
        code = str(error.get("code") or "")
        if code in UNFINISHED_CODES or not code:
            return None
        return "provider", f"batch request failed ({code}: {str(error.get('message') or '')[:300]})", {}

    def _description(self, sha: str, files: list[PhotoFile] | None, description: dict[str, Any],
                     usage: dict[str, int]) -> dict[str, Any]:
        meta = PhotoMeta(None, None, None, None, None, None)
        if files:
            try:
                meta = read_metadata(files[0].path)
            except (PhotoError, OSError):
                pass  # gone or damaged since it was sent: the paid description is kept all the same
            return description_record(sha, files, meta, self.provider.name, self.provider.model, usage, description)
        # The photo left every folder since it was sent; keep what was paid for.
        placeholder = [PhotoFile(Path(), "", 0, 0, sha)]
        record = description_record(sha, placeholder, meta, self.provider.name, self.provider.model, usage, description)
        return {**record, "paths": []}

    def _files(self, sha: str) -> list[PhotoFile] | None:
        """The photo's copies now: in the folder of this run, else in any folder of the index."""
        if sha in self.groups:
            return self.groups[sha]
        if self._all_groups is None:
            self._all_groups = by_content(scan(self.ws, [r for r in self.ws.roots() if r.is_dir()]))
        return self._all_groups.get(sha)

    def _written_by(self, batch_id: str) -> set[str]:
        """Photos whose result from this batch is already on disk (a collection cut short)."""
        if self._written is None:
            self._written = {}
            for path in (self.ws.paths.descriptions, self.ws.paths.failures):
                for r in read_jsonl(path):
                    if isinstance(r.get("batch"), str) and isinstance(r.get("sha256"), str):
                        self._written.setdefault(r["batch"], set()).add(r["sha256"])
        return self._written.get(batch_id, set())

    def cancel_open(self) -> None:
        for entry in self.log.open_entries():
            if entry.batch_id is None or entry.status in TERMINAL:
                continue
            remote = self.api.cancel(entry.batch_id)
            self.log.seen(remote.id, remote.status, remote.counts)
            self.summary.cancelled.append(remote.id)
        self.summary.open = [e.summary() for e in self.log.open_entries() if e.batch_id in self.summary.cancelled]

    # -- 3. submit ---------------------------------------------------------------------------

    def submit(self, todo: list[str]) -> None:
        self.progress.start(len(todo))
        try:
            chunk: list[str] = []
            content = self._request_file()
            for sha, line in self._lines(todo):
                if chunk and (len(chunk) >= self.options.max_lines
                              or content.tell() + len(line) > self.options.max_bytes):
                    self._submit_file(chunk, content)
                    chunk, content = [], self._request_file()
                content.write(line)
                chunk.append(sha)
                self.progress.advance(True)
            if chunk:
                self._submit_file(chunk, content)
        finally:
            self.progress.stop()

    def _request_file(self) -> IO[bytes]:
        """A file for one batch's request lines (closed by _submit_file), gone with the process."""
        return tempfile.TemporaryFile(dir=self.ws.root, prefix=".batch-")

    def _lines(self, todo: list[str]) -> Iterator[tuple[str, bytes]]:
        """(content hash, JSONL request line) per readable photo, prepared a few ahead in threads."""
        with ThreadPoolExecutor(PREPARERS, thread_name_prefix="batch-prepare") as pool:
            ahead: deque[tuple[str, Future[str]]] = deque()
            pending = iter(todo)
            for sha in pending:
                ahead.append((sha, pool.submit(self._data_url, sha)))
                if len(ahead) < 2 * PREPARERS:
                    continue
                yield from self._ready(ahead.popleft())
            while ahead:
                yield from self._ready(ahead.popleft())

    def _ready(self, item: tuple[str, Future[str]]) -> Iterator[tuple[str, bytes]]:
        sha, future = item
        try:
            data_url = future.result()
        except (PhotoError, OSError) as e:
            self.recorder.failure(sha, self.groups[sha], f"unreadable photo: {e}", "photo")
            self.progress.advance(False)
            return
        body = self.provider.params_for(request_messages(data_url))
        yield sha, json_line({"custom_id": sha, "method": "POST", "url": CHAT_URL, "body": body})

    def _data_url(self, sha: str) -> str:
        image = prepare_image(self.groups[sha][0].path, max_side=self.settings.max_side)
        if image.warning:  # a JPEG cut short: described as far as it decodes, as viewers show it
            self.progress.warn(f"{self.groups[sha][0].rel}: {image.warning}")
        return image.data_url()

    def _submit_file(self, photos: list[str], content: IO[bytes]) -> None:
        """intent -> upload -> uploaded -> create (token in its metadata) -> submitted: a kill
        between any two steps is settled by the next run, never paid twice."""
        with content:
            token = self.log.intent(photos, self.provider.model, self.options.window)
            content.seek(0)
            try:
                file_id = self.api.upload(f"imgrag-{token}.jsonl", content)
            except ProviderError:
                self.log.abandoned(token, "the upload failed")  # no batch without a file: nothing is paid
                raise
        self.log.uploaded(token, file_id)
        try:
            batch = self.api.create(file_id, self.options.window, {METADATA_KEY: token})
        except Uncertain:
            raise  # it may exist: the next run looks for its token before anything else
        except ProviderError:
            self.log.abandoned(token, "the server refused the batch")
            self.api.delete_file(file_id)
            raise
        self.log.submitted(token, batch.id, batch.status)
        self.summary.submitted.append((batch.id, len(photos)))


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


def _object(value: Any) -> dict[str, Any]:
    """A JSON object of a result line, or {} for whatever else is there."""
    return value if isinstance(value, dict) else {}


def _jsonl(data: bytes) -> Iterator[dict[str, Any]]:
    for raw in data.splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if isinstance(line, dict):
            yield line
