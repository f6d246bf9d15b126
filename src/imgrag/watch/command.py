"""`imgrag watch` in the foreground: the watcher in a thread, this (main) thread waiting for
it and for signals. Ctrl-C or SIGTERM stops it cleanly (exit 130 or 0); a second one
abandons the requests in flight at once (every record already written is safe)."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from imgrag.config import Settings
from imgrag.errors import EXIT_INTERRUPTED, EXIT_OK
from imgrag.priority import step_back_when_unattended
from imgrag.watch.watcher import Watcher, WatchOptions


def run_watch(folders: list[Path], settings: Settings, options: WatchOptions, *, index: Path | None = None) -> int:
    watcher = Watcher(folders, settings, options, index=index, say=_say)
    step_back_when_unattended()  # a service nobody watches; before any thread starts: threads inherit it
    failure: list[BaseException] = []
    stopped_by: list[int] = []

    def run() -> None:
        try:
            watcher.run()
        except Exception as e:  # noqa: BLE001 - raised again in the main thread, which reports it
            failure.append(e)
            watcher.stop()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stopped_by:
            _say("imgrag: watch: stopped at once")
            os._exit(EXIT_INTERRUPTED)
        stopped_by.append(signum)
        _say("imgrag: watch: stopping: requests in flight finish first (Ctrl-C again to abandon them)")
        watcher.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=run, name="imgrag-watch")
    try:
        thread.start()
        while thread.is_alive():  # short joins: the signal handler runs in this thread between them
            thread.join(1.0)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if failure:
        raise failure[0]
    _say("imgrag: watch: stopped")
    return EXIT_INTERRUPTED if stopped_by and stopped_by[0] == signal.SIGINT else EXIT_OK


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
