"""Errors routes raise; the app answers each with `{"error": ...}` and its status."""

from __future__ import annotations

from imgrag.errors import UsageError


class NotFound(UsageError):
    """404: no such photo, job or name (also for anything not in the index)."""


class Forbidden(UsageError):
    """403: refused by the server's settings (e.g. --read-only)."""
