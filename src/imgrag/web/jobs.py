"""Jobs started over HTTP: describe, embed or index (both) of the served photos, in a thread,
through the same functions and the same writer lock as the CLI. Cancelling a job stops it
as Ctrl-C stops `imgrag describe`: requests in flight finish and are written."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from imgrag.config import VISION_SETTINGS, Settings
from imgrag.describe.live import DescribeOptions, Progress
from imgrag.errors import ImgragError, Interrupted
from imgrag.store.descriptions import now_iso
from imgrag.store.workspace import Workspace

log = logging.getLogger("imgrag.serve")

KINDS = ("describe", "embed", "index")
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


class _JobProgress(Progress):
    """describe's progress, as the job's counters."""

    def __init__(self, job: Job) -> None:
        self.job = job

    def start(self, total: int) -> None:
        self.job.changed(total=self.job.done + total)

    def advance(self, ok: bool) -> None:
        self.job.changed(done=self.job.done + 1, failed=self.job.failed + (0 if ok else 1))

    def warn(self, message: str) -> None:
        self.job.changed(message=message)


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
                raise Busy(f"a {busy.kind} job is already running (id {busy.id}): wait for it or cancel it")
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
        from filelock import FileLock, Timeout

        if not self.ws.root.is_dir():
            return  # no workspace yet: nobody can be writing it
        lock = FileLock(str(self.ws.root / "lock"))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise Busy(f"{self.ws.root} is busy: another imgrag describe/embed (e.g. a cron `imgrag index`) "
                       "is writing it; try again when it has finished") from None
        lock.release()

    def _forget_old(self) -> None:
        finished = [j for j in self.all() if not j.running]
        for j in finished[_KEEP_FINISHED:]:
            self._jobs.pop(j.id, None)

    # -- running -------------------------------------------------------------------

    def _run(self, job: Job) -> None:
        try:
            if job.kind in ("describe", "index"):
                self._describe(job)
            if job.kind in ("embed", "index") and not job.cancel.is_set():
                self._embed(job)
                if not job.dry_run and self.on_written is not None:
                    self.on_written()  # so a search right after "done" sees what the job indexed
            state = "cancelled" if job.cancel.is_set() else "done"
            job.changed(state=state, phase=None, finished=now_iso())
        except Interrupted as e:
            job.changed(state="cancelled", phase=None, message=str(e), finished=now_iso())
        except ImgragError as e:
            job.changed(state="failed", phase=None, error=str(e), finished=now_iso())
        except Exception as e:  # a bug: keep the server up, say so, log the traceback
            log.exception("imgrag: job %s crashed", job.id)
            job.changed(state="failed", phase=None, error=f"internal error: {type(e).__name__}", finished=now_iso())
        finally:
            job.ended.set()

    def _folders(self) -> list[Path]:
        if self.photos is not None:
            return [self.photos]
        roots = [r for r in self.ws.roots() if r.is_dir()]
        if not roots:
            raise ImgragError(f"{self.ws.root} knows no photo folder: run `imgrag serve PHOTOS` with the folder to index")
        return roots

    def _describe(self, job: Job) -> None:
        from imgrag.describe.live import run_describe

        settings = self.settings.checked(*VISION_SETTINGS)
        job.changed(phase="describe")
        left = job.limit
        totals: dict[str, Any] = {"described": 0, "failed": 0, "remaining": 0, "already": 0, "found": 0}
        estimates = []
        for folder in self._folders():
            if job.cancel.is_set() or left == 0:
                break
            options = DescribeOptions(jobs=settings.jobs, limit=left, dry_run=job.dry_run, cancel=job.cancel)
            summary = run_describe(folder, settings, options, _JobProgress(job), index=self.ws.root)
            for k in totals:
                totals[k] += getattr(summary, k)
            if summary.stopped_by:
                totals["stopped_by"], totals["stop_reason"] = summary.stopped_by, summary.stop_reason
            if left is not None:
                left = max(0, left - summary.todo)
            if summary.estimate is not None:
                estimates.append(summary)
        job.changed(result={**job.result, **totals})
        if estimates:
            job.changed(estimate=_estimate_json(estimates))
        if totals.get("stopped_by") in ("quota", "unavailable"):
            job.changed(message=f"stopped: {totals.get('stop_reason')}; run it again later")

    def _embed(self, job: Job) -> None:
        from imgrag.index.build import run_embed

        job.changed(phase="embed", done=0, total=0, failed=0)
        if job.dry_run:
            from imgrag.status import collect_status

            status = collect_status(self.ws, self.photos)
            job.changed(estimate={**(job.estimate or {}), "embed": status.next_embed,
                                  "update_index": status.next_rebuild_index})
            return
        photos = self.photos
        summary = run_embed(photos, self.settings.embed_model, index=self.ws.root, cancel=job.cancel,
                            on_progress=lambda done, total: job.changed(done=done, total=total),
                            query_encoder=self.settings.query_encoder)
        job.changed(done=summary.encoded, total=summary.encoded,
                    result={**job.result, "embedded": summary.described, "encoded": summary.encoded,
                            "rebuilt_index": summary.rebuilt_index})


def _estimate_json(summaries: list) -> dict[str, Any]:
    """The dry-run estimate of each folder, summed, with the CLI's line for each."""
    from imgrag.cli.render import _dry_run_line

    found = [s.estimate for s in summaries]
    minutes = [e.minutes for e in found]
    return {
        "photos": sum(e.photos for e in found),
        "prompt_tokens": sum(e.prompt_tokens for e in found),
        "completion_tokens": sum(e.completion_tokens for e in found),
        "cost_usd": round(sum(e.cost for e in found), 4),
        "seconds": round(sum(minutes) * 60, 1) if all(m is not None for m in minutes) else None,
        "runs": max(e.runs for e in found),
        "limits": found[0].limits,
        "limits_source": found[0].limits_source,
        "text": "; ".join(_dry_run_line(s) for s in summaries),
    }


def wait(job: Job, poll: float = 0.25) -> Job:
    """Block until the job ends (short waits, so a shutdown is never stuck here)."""
    while not job.ended.wait(poll):
        pass
    return job
