"""Errors that end a command with one clear line on stderr and a known exit code."""

from __future__ import annotations

# Exit codes, shared by every command (see README "Exit codes").
EXIT_OK = 0
EXIT_NOTHING_FOUND = 1  # search, ask, demo: no photo matched
EXIT_SOME_FAILED = 1  # describe, index: some photos could not be described
EXIT_USAGE = 2  # usage, configuration or fatal provider error
EXIT_TEMPFAIL = 75  # daily quota spent or server down: try again later (EX_TEMPFAIL)
EXIT_INTERRUPTED = 130


class ImgragError(Exception):
    """An error a user can act on; `str()` is the one line we print."""

    exit_code = EXIT_USAGE


class UsageError(ImgragError):
    """Bad flag, missing key, no index, unknown model: exit 2."""


class StorageError(ImgragError):
    """`.imgrag/` cannot be written (disk full, read-only, no permission): exit 2.
    Raised before anything already written is touched, so the user frees space and reruns."""


class TryLater(ImgragError):
    """Nothing is wrong but the moment: the provider's quota is spent, it keeps failing or asks
    for a long wait, or another run is building the first index right now. Exit 75."""

    exit_code = EXIT_TEMPFAIL


class Interrupted(ImgragError):
    """Stopped on request (a cancelled job of `imgrag serve`); what was done is kept: exit 130."""

    exit_code = EXIT_INTERRUPTED
