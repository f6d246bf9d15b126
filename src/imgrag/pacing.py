"""Pacing requests by what the server says: x-ratelimit-* headers and retry-after.

Workers call `acquire()` before each request and `observe()` after it. Request starts
are spaced so the run stays just under the advertised per-minute limits instead of
bouncing off 429s; a 429 pauses every worker until its retry-after has passed."""

from __future__ import annotations

import re
import threading
import time

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")

# Aim a little under the advertised limits: clocks and windows never line up exactly.
SAFETY = 0.95


def parse_duration(value: str | None) -> float | None:
    """Seconds in a Groq reset header: '2m59.56s', '7.66s', '120ms', '1h2m3s' or a bare number."""
    if not value:
        return None
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    m = _DURATION.match(value)
    if not m or not any(m.groups()):
        return None
    h, mi, s, ms = (float(g) if g else 0.0 for g in m.groups())
    return h * 3600 + mi * 60 + s + ms / 1000


def _int(headers: dict[str, str], name: str) -> int | None:
    try:
        return int(float(headers[name]))
    except (KeyError, ValueError):
        return None


class Pacer:
    def __init__(self, est_tokens: int = 2000, clock=time.monotonic, sleep=time.sleep) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._sleep = sleep
        self.est_tokens = est_tokens
        self._next_start = 0.0  # earliest time the next request may start
        self._paused_until = 0.0
        self._interval = 0.0  # seconds between request starts, from the limits
        self._blocked_until = 0.0  # a spent window (remaining 0) until its reset
        self.rate_limits: dict[str, float] = {}

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for this request's slot; False if `stop` was set meanwhile."""
        while True:
            with self._lock:
                now = self._clock()
                start = max(now, self._next_start, self._paused_until, self._blocked_until)
                if start <= now:
                    self._next_start = now + self._interval
                    return True
                delay = start - now
            if stop is not None:
                if stop.wait(min(delay, 0.5)):
                    return False
            else:
                self._sleep(min(delay, 0.5))

    def observe(self, headers: dict[str, str]) -> None:
        """Learn the limits and what is left of them from a response's headers."""
        with self._lock:
            now = self._clock()
            limit_req = _int(headers, "x-ratelimit-limit-requests")
            limit_tok = _int(headers, "x-ratelimit-limit-tokens")
            reset_req = parse_duration(headers.get("x-ratelimit-reset-requests"))
            intervals = []
            # Groq reports requests per day here on some tiers: only a window that refills
            # within a minute describes a per-minute pace.
            if limit_req and (reset_req is None or reset_req <= 60):
                intervals.append(60.0 / (limit_req * SAFETY))
            if limit_tok:
                intervals.append(60.0 * self.est_tokens / (limit_tok * SAFETY))
            if intervals:
                self._interval = max(intervals)
                self.rate_limits = {"requests_per_min": limit_req or 0, "tokens_per_min": limit_tok or 0}
            for remaining, reset in (
                (_int(headers, "x-ratelimit-remaining-requests"), reset_req),
                (_int(headers, "x-ratelimit-remaining-tokens"), parse_duration(headers.get("x-ratelimit-reset-tokens"))),
            ):
                if remaining is not None and remaining <= 0 and reset:
                    self._blocked_until = max(self._blocked_until, now + reset)

    def learn_tokens(self, tokens: int) -> None:
        """Use what requests really cost (a running average) to pace by tokens."""
        with self._lock:
            self.est_tokens = int(0.8 * self.est_tokens + 0.2 * tokens) if tokens > 0 else self.est_tokens

    def pause(self, seconds: float) -> None:
        """A 429 (or overload) told us to wait: every worker waits."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)
