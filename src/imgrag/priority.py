"""Describing and embedding step back for interactive work when nobody is watching them.

A cron `imgrag index` rebuilds the search index on the machine that may also run
`imgrag serve` (or a desktop): on two cores, a full-speed rebuild of 100,000 photos took
most of the CPU from the server for ~10 s, and its answers queued (bench/serve_load.py).
With no terminal attached, describe/embed/index lower their own CPU priority, as
`updatedb` and desktop indexers do: on an idle machine that costs them nothing, on a busy
one the people waiting come first. On a terminal they run at normal priority."""

from __future__ import annotations

import os
import sys

BACKGROUND_NICENESS = 10


def step_back_when_unattended() -> bool:
    """Lower this process's CPU priority to BACKGROUND_NICENESS (never raise it) when neither
    stdin nor stderr is a terminal. Call it before starting threads: on Linux the priority
    is per thread, and threads inherit it when they are created. True when it lowered it."""
    if _attended() or not hasattr(os, "setpriority"):
        return False
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) >= BACKGROUND_NICENESS:
            return False
        os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICENESS)
    except OSError:  # a sandbox that forbids it: run as we are
        return False
    return True


def _attended() -> bool:
    for stream in (sys.stdin, sys.stderr):
        try:
            if stream is not None and stream.isatty():
                return True
        except (ValueError, OSError):  # closed
            continue
    return False
