"""What changed in the watched folders since the last run, and when a run may start.

Debouncing (why not one run per event): copying 5,000 photos raises tens of thousands of
events; a run starts only once they have stopped for `quiet` seconds and every file they
named keeps its size over `quiet` seconds (a file still being copied waits). A copy that
goes on and on still gets a run every `longest` seconds: the files still being written are
held back (`holds`) and wait for the next run.

Every run scans its whole folder, so the events only say *when* to run and which files to
wait for: a missed or merged event loses nothing."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from imgrag.store.scan import PhotoFile

QUIET = 1.0  # seconds with no new event, and with every changed file keeping its size
LONGEST = 60.0  # seconds a stream of changes may defer a run
CHECK_EVERY = 0.25  # seconds between size checks while files are settling


@dataclass
class _Seen:
    signature: tuple[int, int] | None  # (size, mtime_ns) when last checked; None: not checked yet
    since: float  # when it was last seen to change


class Changes:
    """Thread-safe: observers call `changed`, the watcher calls `wait_ready` and `take`."""

    def __init__(self, roots: list[Path], quiet: float = QUIET, longest: float = LONGEST) -> None:
        self.roots = roots
        self.quiet, self.longest = quiet, longest
        self._cond = threading.Condition()  # an RLock inside: a signal handler may call close() at any point
        self._files: dict[Path, _Seen] = {}  # files named by events, not settled yet
        self._dirty: dict[Path, float] = {}  # root -> when its first change not yet run happened
        self._last_event = 0.0
        self._closed = False
        self.events = 0  # events heard so far (how many a burst raised)

    # -- from the observers -----------------------------------------------------------------

    def changed(self, path: Path | None, root: Path) -> None:
        """Something changed under `root`; `path` is a file that may still be being written
        (None: a deletion, a folder: nothing to wait for)."""
        now = time.monotonic()
        with self._cond:
            self.events += 1
            self._last_event = now
            self._dirty.setdefault(root, now)
            if path is not None:
                self._files[path] = _Seen(None, now)
            self._cond.notify_all()

    def mark(self, root: Path) -> None:
        """Run `root` again (at start, after a failed run), without waiting for quiet."""
        with self._cond:
            self._dirty.setdefault(root, time.monotonic() - self.longest)
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- for the watcher ------------------------------------------------------------------------

    def wait_ready(self) -> bool:
        """Block until a run may start (True), or until closed (False). Idle, it sleeps on
        the condition: no timer wakes it while nothing changes."""
        with self._cond:
            while not self._closed:
                if not self._dirty:
                    self._cond.wait()
                    continue
                now = time.monotonic()
                settling = self._settle(now)
                overdue = now - min(self._dirty.values()) >= self.longest
                if overdue or (not settling and now - self._last_event >= self.quiet):
                    return True
                self._cond.wait(CHECK_EVERY)
            return False

    def take(self) -> list[Path]:
        """The roots to run now; they count as clean from here on (a change during the run
        marks them again). Files still settling stay, to be held and waited for."""
        with self._cond:
            roots = sorted(self._dirty)
            now = time.monotonic()
            self._dirty = {root: now for root in self._roots_of(self._files)}
            return roots

    def holds(self, photo: PhotoFile) -> bool:
        """Whether a run leaves this photo for later: it is still being written (its size
        changed within `quiet` seconds, or its mtime is that recent: an event on the way)."""
        age = time.time() - photo.mtime_ns / 1e9
        with self._cond:
            if photo.path in self._files:
                return True
            if 0 <= age < self.quiet:
                self._files[photo.path] = _Seen(None, time.monotonic())
                for root in self._roots_of([photo.path]):
                    self._dirty.setdefault(root, time.monotonic())
                return True
        return False

    def settling(self, root: Path) -> bool:
        """Whether files under `root` are still being written (so its run leaves some for later)."""
        with self._cond:
            return bool(self._roots_of(self._files) & {root})

    def _settle(self, now: float) -> bool:
        """Check the sizes of the changed files; drop those that kept theirs `quiet` seconds
        (and those gone). True while some are still changing."""
        for path, seen in list(self._files.items()):
            try:
                st = os.stat(path)
                signature: tuple[int, int] | None = (st.st_size, st.st_mtime_ns)
            except OSError:
                signature = None
            if signature is None and seen.signature is not None:
                del self._files[path]  # gone (deleted, or moved on)
            elif signature != seen.signature:
                seen.signature, seen.since = signature, now
            elif now - seen.since >= self.quiet:
                del self._files[path]
        return bool(self._files)

    def _roots_of(self, paths) -> set[Path]:
        return {root for p in paths for root in self.roots if p == root or root in p.parents}
