"""The watcher: on each settled burst of changes, the pipeline (describe, then embed) of
the folder that changed, by the rules every writer keeps:

- one writer at a time: when another imgrag (a cron run, a page's job) holds the writer
  lock, it waits and tries again, and never fails for it;
- a provider that is down or out of quota (what makes a cron run exit 75) is tried again
  later, BACKOFF_FIRST seconds doubling up to BACKOFF_CAP; the folder stays marked, so
  nothing that changed meanwhile is lost (each run scans its whole folder);
- `stop()` (Ctrl-C, SIGTERM, a server's shutdown) stops a run as Ctrl-C stops describe:
  requests in flight finish and are written, embed is left for the next start, and the
  index on disk stays the last complete generation.

Moves, renames and deletions cost no vision request: photos are known by content hash."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from imgrag.config import VISION_SETTINGS, Settings
from imgrag.errors import EXIT_TEMPFAIL, Interrupted, TryLater, UsageError
from imgrag.photos.files import discover
from imgrag.pipeline import Report, Steps, run_pipeline
from imgrag.store.workspace import IndexBusy, Workspace
from imgrag.watch.changes import Changes
from imgrag.watch.observe import POLL_INTERVAL, start_observers, stop_observers
from imgrag.watch.preembed import PreEmbed

BACKOFF_FIRST = 5.0  # seconds before trying a provider that was down again; doubles each time
BACKOFF_CAP = 600.0
BUSY_RETRY = 2.0  # seconds between two tries of a writer lock another imgrag holds


@dataclass
class WatchOptions:
    poll: bool = False  # poll every folder, even where the system reports changes
    poll_interval: float = POLL_INTERVAL
    jobs: int | None = None  # describe's requests in flight (None: Settings.jobs)


class Watcher:
    def __init__(self, folders: list[Path], settings: Settings, options: WatchOptions | None = None, *,
                 index: Path | None = None, say: Callable[[str], None] = print,
                 on_written: Callable[[], None] | None = None) -> None:
        if not folders:
            raise UsageError("give the photo folders to watch: imgrag watch ~/Pictures")
        for folder in folders:
            if not folder.is_dir():
                raise UsageError(f"not a folder: {folder}")
            Workspace.for_photos(folder, index)  # refuses a folder inside .imgrag/
        self.settings = settings.checked(*VISION_SETTINGS)
        self.settings.require_api_key()  # now, not at the first new photo
        self.folders = sorted({f.resolve() for f in folders})
        self.options = options or WatchOptions()
        self.index = index
        self.say = say
        self.on_written = on_written  # called once a run has written a new index generation
        self.changes = Changes(self.folders)
        self.stopping = threading.Event()
        self._cancel = threading.Event()  # the running pipeline's: set by stop()
        self._backoff = 0.0
        self._waiting_said = False

    def run(self) -> None:
        """Watch until `stop()`. Raises what no waiting cures (a bad key, a full disk)."""
        observers = start_observers(self.changes, poll=self.options.poll, poll_interval=self.options.poll_interval,
                                    say=self.say)
        try:
            self.say(f"imgrag: watching {', '.join(map(str, self.folders))}")
            for folder in self.folders:  # catch up with what changed while nobody watched
                self.changes.mark(folder)
            while self.changes.wait_ready():
                for root in self.changes.take():
                    if self.stopping.is_set():
                        break
                    self._run(root)
        finally:
            stop_observers(observers)

    def stop(self) -> None:
        """Stop watching; a run in progress stops as Ctrl-C stops describe. Safe from a signal handler."""
        self.stopping.set()
        self._cancel.set()
        self.changes.close()

    # -- one run -------------------------------------------------------------------------------

    def _run(self, root: Path) -> None:
        ws = Workspace.for_photos(root, self.index)
        has_photos = self._has_settled_photo(root)
        if not has_photos and not ws.paths.descriptions.exists():
            return  # nothing to index yet
        steps = Steps(describe=has_photos, jobs=self.options.jobs, cancel=self._cancel, hold=self.changes.holds)
        started = time.monotonic()
        timing = _RunReport(PreEmbed(ws, self.settings.query_encoder) if has_photos else None)
        try:
            result = run_pipeline(root, self.settings, steps, timing, index=self.index)
        except IndexBusy:
            if not self._waiting_said:
                self.say(f"imgrag: watch: another imgrag is writing {ws.root}: waiting for it")
                self._waiting_said = True
            self._again(root, BUSY_RETRY)
            return
        except Interrupted:
            return  # stopped: what was done is kept
        except TryLater as e:  # e.g. another run is building the first index right now
            self._again(root, self._next_backoff(), str(e))
            return
        finally:
            timing.stop()
        self._waiting_said = False
        if self.stopping.is_set():
            return
        described = sum(s.described for s in result.described)
        failed = sum(s.failed for s in result.described)
        if result.exit_code == EXIT_TEMPFAIL:
            reason = next((s.stop_reason for s in result.described if s.stop_reason), "the provider is unavailable")
            self._again(root, self._next_backoff(), reason)
        else:
            self._backoff = 0.0
        embedded = result.embedded
        if embedded is not None and embedded.rebuilt_index:
            if self.on_written is not None:
                self.on_written()
            what = f"{described} photo(s) described" + (f", {failed} failed" if failed else "") + "; " \
                if described or failed else ""
            self.say(f"imgrag: watch: {root}: {what}index updated: {embedded.described} photo(s) searchable "
                     f"({timing.line(time.monotonic() - started)})")
        elif failed:
            self.say(f"imgrag: watch: {root}: {failed} photo(s) could not be described (see `imgrag status`)")

    def _again(self, root: Path, delay: float, reason: str | None = None) -> None:
        """Run `root` again after `delay` seconds (sooner never: the provider or the lock needs the time)."""
        if reason is not None:
            self.say(f"imgrag: watch: {reason}: trying {root} again in {delay:.0f} s")
        self.stopping.wait(delay)
        self.changes.mark(root)

    def _next_backoff(self) -> float:
        self._backoff = min(BACKOFF_CAP, self._backoff * 2 if self._backoff else BACKOFF_FIRST)
        return self._backoff

    def _has_settled_photo(self, root: Path) -> bool:
        """Whether `root` holds a photo that is not still being written (describe finds none
        otherwise, and says so as an error)."""
        from imgrag.store.scan import PhotoFile

        for path in discover(root):
            try:
                st = path.stat()
            except OSError:
                continue
            if not self.changes.holds(PhotoFile(path, "", st.st_size, st.st_mtime_ns, "")):
                return True
        return False


class _RunReport(Report):
    """Embeds ahead while describe runs (preembed.py); times the steps for the summary line."""

    def __init__(self, ahead: PreEmbed | None) -> None:
        self.ahead = ahead
        self.began = time.monotonic()
        self.steps: dict[str, float] = {}

    def phase(self, name: str) -> None:
        if self.ahead is not None:
            if name == "describe":
                self.ahead.start()
            else:
                self.ahead.flush()
        self.steps[name] = time.monotonic()

    def stop(self) -> None:
        if self.ahead is not None:
            self.ahead.stop()

    def line(self, total: float) -> str:
        if "embed" not in self.steps:
            return f"{total:.1f} s"
        embed = self.began + total - self.steps["embed"]
        ahead = f", {len(self.ahead.vectors)} text(s) embedded ahead" if self.ahead and self.ahead.vectors else ""
        return f"{total:.1f} s, embed {embed:.1f} s{ahead}"
