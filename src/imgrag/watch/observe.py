"""The system's change events for the watched folders, through watchdog (inotify on Linux,
FSEvents on macOS, ReadDirectoryChangesW on Windows), into `Changes`. Folders on a network
filesystem, whose changes made elsewhere raise no events, are polled instead (watchdog's
PollingObserver: a stat of every file each `poll_interval` seconds), as is every folder
with `poll=True`, or when the system refuses more watches (inotify's limit)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from imgrag.photos.files import PHOTO_SUFFIXES
from imgrag.store.paths import DIR_NAME
from imgrag.watch.changes import Changes
from imgrag.watch.filesystems import filesystem_type, is_network

POLL_INTERVAL = 30.0  # seconds between two scans of a polled folder


def start_observers(changes: Changes, *, poll: bool = False, poll_interval: float = POLL_INTERVAL,
                    say: Callable[[str], None]) -> list[Any]:
    """Watch every root of `changes`; the observers run in threads of their own until
    `stop_observers`. Each polled folder is said once, with why."""
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    native = Observer()
    polled = PollingObserver(timeout=poll_interval)
    used: list[Any] = []
    for root in changes.roots:
        handler = _handler(changes, root)
        kind = filesystem_type(root)
        why = "as asked (--poll)" if poll else f"it is on a network filesystem ({kind})" if is_network(kind) else None
        if why is None:
            try:
                native.schedule(handler, str(root), recursive=True, event_filter=_EVENTS())
                if native not in used:
                    native.start()  # starting is what adds the watches: a refused one shows here
                    used.append(native)
                continue
            except OSError as e:  # e.g. inotify's max_user_watches reached
                why = f"the system refused to watch it ({e.strerror or e})"
        say(f"imgrag: watch: polling {root} every {poll_interval:g} s: {why}; changes show within that time")
        polled.schedule(handler, str(root), recursive=True)
        if polled not in used:
            polled.start()
            used.append(polled)
    return used


def stop_observers(observers: list[Any]) -> None:
    for observer in observers:
        observer.stop()
    for observer in observers:
        observer.join(5)


def _EVENTS() -> list[type]:
    """The events that matter: not opens and reads (our own scans would wake us)."""
    from watchdog import events as e

    return [e.FileCreatedEvent, e.FileModifiedEvent, e.FileClosedEvent, e.FileMovedEvent, e.FileDeletedEvent,
            e.DirCreatedEvent, e.DirMovedEvent, e.DirDeletedEvent, e.EventsLostEvent]


def _handler(changes: Changes, root: Path) -> Any:
    from watchdog.events import FileSystemEventHandler

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: Any) -> None:
            kind = event.event_type
            if kind in ("opened", "closed_no_write"):
                return
            if kind == "events_lost":  # the system's queue overflowed: a run's scan finds what they said
                changes.changed(None, root)
                return
            if event.is_directory:
                if kind in ("created", "deleted", "moved"):  # a folder copied, moved in or out
                    changes.changed(None, root)
                return
            for raw, wait in _paths(event):
                path = Path(raw)
                if DIR_NAME in path.parts or path.suffix.lower() not in PHOTO_SUFFIXES:
                    continue  # imgrag's own files, sidecars, a copy's temporary name
                changes.changed(path if wait else None, root)

    return Handler()


def _paths(event: Any) -> list[tuple[str, bool]]:
    """The paths an event names, with whether to wait for that file to settle."""
    src = event.src_path if isinstance(event.src_path, str) else event.src_path.decode()
    if event.event_type == "moved":
        dest = event.dest_path if isinstance(event.dest_path, str) else event.dest_path.decode()
        return [(src, False), (dest, True)]
    if event.event_type == "deleted":
        return [(src, False)]
    return [(src, True)]
