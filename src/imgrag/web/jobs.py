"""Jobs started over HTTP: describe, embed or index (both) of the served photos, in a thread,
through the pipeline the CLI runs (imgrag.pipeline) and the same writer lock. Cancelling a
job stops it as Ctrl-C stops `imgrag describe`: requests in flight finish and are written."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgrag.config import Settings
from imgrag.describe.batch import BatchSummary
from imgrag.describe.live import DescribeSummary
from imgrag.errors import ImgragError, Interrupted
from imgrag.index.build import EmbedSummary
from imgrag.pipeline import Report, Steps, estimate_line, run_pipeline
from imgrag.store.descriptions import now_iso
from imgrag.store.workspace import Workspace

log = logging.getLogger("imgrag.serve")

_KEEP_FINISHED = 50  # finished jobs remembered for GET /api/jobs


class Busy(Exception):
    """Another writer holds the index: the job is refused (409) with this reason."""


@dataclass
class Job:
    kind: str
    dry_run: bool = False
    limit: int | None = None
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: str = "running"  # running, done, failed, cancelled
    phase: str | None = None  # describe or embed, while running
    done: int = 0
    total: int = 0
    failed: int = 0
    message: str = ""
    error: str | None = None
    estimate: dict[str, Any] | None = None
    result: dict[str, Any] = field(default_factory=dict)
    started: str = field(default_factory=now_iso)
    finished: str | None = None
    version: int = 0  # bumped on every change (SSE sends a new event then)
    cancel: threading.Event = field(default_factory=threading.Event, repr=False)
    ended: threading.Event = field(default_factory=threading.Event, repr=False)

    def as_dict(self) -> dict[str, Any]:
        keys = ("id", "kind", "dry_run", "limit", "state", "phase", "done", "total", "failed", "message", "error",
                "estimate", "result", "started", "finished")
        return {k: getattr(self, k) for k in keys}

    def changed(self, **fields: Any) -> None:
        for k, v in fields.items():
            setattr(self, k, v)
        self.version += 1

    @property
    def running(self) -> bool:
        return self.state == "running"


class Jobs:
    """At most one job at a time (there is one writer lock)."""

    def __init__(self, ws: Workspace, photos: Path | None, settings: Settings,
                 on_written: Callable[[], None] | None = None) -> None:
        self.ws = ws
        self.settings = settings
        self.on_written = on_written  # called before a job that wrote an index says it is done
        self.photos = photos  # the folder `imgrag serve PHOTOS` was given, else the index's roots
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def all(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda j: j.started, reverse=True)

    def running(self) -> Job | None:
        return next((j for j in self._jobs.values() if j.running), None)

    def start(self, kind: str, *, limit: int | None = None, dry_run: bool = False) -> Job:
        with self._lock:
            busy = self.running()
            if busy is not None:
                raise Busy(f"{_a(busy.kind)} {busy.kind} job is already running (id {busy.id}): wait for it or cancel it")
            if not dry_run:
                self._check_lock()
            job = Job(kind=kind, dry_run=dry_run, limit=limit)
            self._jobs[job.id] = job
            self._forget_old()
            thread = threading.Thread(target=self._run, args=(job,), name=f"imgrag-job-{job.id}")
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
            return job

    def cancel(self, job: Job) -> None:
        if job.running:
            job.cancel.set()
            job.changed(message="cancelling: finishing the requests in flight")

    def shutdown(self, timeout: float | None = None) -> None:
        """Cancel what runs and wait for it to stop (nothing it finished is lost)."""
        for job in list(self._jobs.values()):
            self.cancel(job)
        for t in list(self._threads):
            t.join(timeout)

    def _check_lock(self) -> None:
        """409 now rather than a failed job, when a CLI describe/embed holds the lock."""
        if self.ws.writer_busy():
            raise Busy(f"{self.ws.root} is busy: another imgrag describe/embed (e.g. a cron `imgrag index`) "
                       "is writing it; try again when it has finished")

    def _forget_old(self) -> None:
        finished = [j for j in self.all() if not j.running]
        for j in finished[_KEEP_FINISHED:]:
            self._jobs.pop(j.id, None)

    # -- running -------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        steps = Steps(describe=job.kind in ("describe", "index"), embed=job.kind in ("embed", "index"),
                      limit=job.limit, dry_run=job.dry_run, cancel=job.cancel)
        report = _JobReport(job, self.on_written)
        try:
            result = run_pipeline(self.photos, self.settings, steps, report, index=self.ws.root)
            report.flush()
            report.final_counts()
            if result.pending is not None:
                job.changed(estimate={**(job.estimate or {}), "embed": result.pending.next_embed,
                                      "update_index": result.pending.next_rebuild_index})
            if job.cancel.is_set():  # its last word is no longer "cancelling…"
                job.changed(state="cancelled", phase=None, finished=now_iso(),
                            message="cancelled: the requests in flight finished and were kept")
            else:
                job.changed(state="done", phase=None, finished=now_iso())
        except Interrupted as e:
            job.changed(state="cancelled", phase=None, message=str(e), finished=now_iso())
        except ImgragError as e:
            job.changed(state="failed", phase=None, error=str(e), finished=now_iso())
        except Exception as e:  # a bug: keep the server up, say so, log the traceback
            log.exception("imgrag: job %s crashed", job.id)
            job.changed(state="failed", phase=None, error=f"internal error: {type(e).__name__}", finished=now_iso())
        finally:
            job.ended.set()


class _JobReport(Report):
    """The pipeline's progress as the job's counters; what describe did, summed over the
    folders, once it has described them all; the live index refreshed once embed wrote one."""

    def __init__(self, job: Job, on_written: Callable[[], None] | None) -> None:
        self.job = job
        self.on_written = on_written
        self.described_folders: list[DescribeSummary | BatchSummary] = []
        self.describing = False  # the describe step ran, and what it did is not in the job yet

    # describe's progress
    def start(self, total: int) -> None:
        self.job.changed(total=self.job.done + total)

    def advance(self, ok: bool) -> None:
        self.job.changed(done=self.job.done + 1, failed=self.job.failed + (0 if ok else 1))

    def warn(self, message: str) -> None:
        self.job.changed(message=message)

    # the pipeline's steps
    def phase(self, name: str) -> None:
        if name == "describe":
            self.describing = True
            self.job.changed(phase="describe")
        else:
            self.flush()
            self.job.changed(phase="embed", done=0, total=0)  # texts from here; `failed` stays the photos'


    def described(self, summary: DescribeSummary | BatchSummary) -> None:
        self.described_folders.append(summary)

    def flush(self) -> None:
        """What describe did, into the job (once, when it has done every folder)."""
        if not self.describing:
            return
        self.describing = False
        totals: dict[str, Any] = {"described": 0, "failed": 0, "remaining": 0, "already": 0, "found": 0}
        for summary in self.described_folders:
            for k in totals:
                totals[k] += getattr(summary, k)
            if summary.stopped_by:
                totals["stopped_by"], totals["stop_reason"] = summary.stopped_by, summary.stop_reason
        self.job.changed(result={**self.job.result, **totals})
        estimates = [s for s in self.described_folders if isinstance(s, DescribeSummary) and s.estimate is not None]
        if estimates:
            self.job.changed(estimate=_estimate_json(estimates))
        if totals.get("stopped_by") in ("quota", "unavailable"):
            self.job.changed(message=f"stopped: {totals.get('stop_reason')}; run it again later")

    def final_counts(self) -> None:
        """A finished job's done/total/failed agree with its result: the photos it was to
        describe (done: described or failed; total: described and those still to do, the failed
        ones among them), else the texts it embedded."""
        if not self.described_folders:
            return
        r = self.job.result
        self.job.changed(done=r["described"] + r["failed"], total=r["described"] + r["remaining"], failed=r["failed"])

    def embedding(self, done: int, total: int) -> None:
        self.job.changed(done=done, total=total)

    def embedded(self, summary: EmbedSummary) -> None:
        self.job.changed(done=summary.encoded, total=summary.encoded,
                         result={**self.job.result, "embedded": summary.described, "encoded": summary.encoded,
                                 "rebuilt_index": summary.rebuilt_index})
        if self.on_written is not None:
            self.on_written()  # so a search right after "done" sees what the job indexed


def _a(word: str) -> str:
    """The article before `word`: "an index job", "a describe job"."""
    return "an" if word[:1] in "aeiou" else "a"


def _estimate_json(summaries: list[DescribeSummary]) -> dict[str, Any]:
    """The dry-run estimate of each folder, summed, with the CLI's line for each."""
    found = [s.estimate for s in summaries if s.estimate is not None]
    minutes = [e.minutes for e in found]
    return {
        "photos": sum(e.photos for e in found),
        "prompt_tokens": sum(e.prompt_tokens for e in found),
        "completion_tokens": sum(e.completion_tokens for e in found),
        "cost_usd": round(sum(e.cost for e in found), 4),
        "seconds": round(sum(m for m in minutes if m is not None) * 60, 1) if all(m is not None for m in minutes) else None,
        "runs": max(e.runs for e in found),
        "limits": found[0].limits,
        "limits_source": found[0].limits_source,
        "text": "; ".join(estimate_line(s) for s in summaries),
    }


def wait(job: Job, poll: float = 0.25) -> Job:
    """Block until the job ends (short waits, so a shutdown is never stuck here)."""
    while not job.ended.wait(poll):
        pass
    return job
