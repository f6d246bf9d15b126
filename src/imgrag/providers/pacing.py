"""Pacing requests by what the server says: x-ratelimit-* headers, 429 messages, retry-after.

Workers call `acquire()` before each request, `release()` after it, and report what came
back with `observe()` (a response's headers) or `rate_limited()` (a 429). The pacer:

- spaces request starts evenly, so a run stays just under the limits instead of
  bursting into them and bouncing off 429s;
- sends one request alone until the first response has said what the limits are;
- reads Groq's headers the way Groq means them: `x-ratelimit-*-requests` is a per-DAY
  budget there (its reset runs to minutes or hours) and `*-tokens` is per minute. A
  request header whose reset ever exceeds the window is taken as daily from then on
  and never used as a per-minute pace; when its remaining count reaches 0 the quota is
  spent (`quota_spent`);
- learns a per-minute limit the headers do not advertise from the 429 that enforces it
  ("... on requests per minute (RPM): Limit 30 ..."), or, when a 429 says nothing
  usable, halves the pace and creeps back up as requests succeed;
- pauses every worker for a 429's retry-after;
- tells a token bucket from a sliding window by the token headers: Groq's limits refill
  continuously (`x-ratelimit-reset-tokens` is the time until the bucket is full again,
  i.e. what is missing / (limit per minute)). Against a bucket it keeps its own reckoning
  of the bucket's level (set from each response's `remaining`, refilled at limit/minute)
  and starts a request whenever the level holds one photo's tokens with a margin: a
  full bucket's burst first, then the nominal rate, with no whole-photos-per-minute
  rounding (a 429 saying a request asks more of the bucket than a reply costs, "Requested
  3424", raises that threshold). Against a sliding window it spaces starts evenly, whole
  photos per window.

Everything is computed from an injectable clock, so it is unit-tested without sleeping.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable

_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$")
# "... on requests per minute (RPM): Limit 30, Used 30, Requested 1 ..." (Groq, and OpenAI alike)
_LIMIT_MESSAGE = re.compile(r"(requests|tokens) per (minute|day)\b[^:]*:\s*limit\s*(\d+)", re.IGNORECASE)
# "... tokens per minute (TPM): Limit 8000, Used 5200, Requested 3374 ...": what admission
# asks of the bucket, which may exceed what a reply costs (a server counting max_tokens).
_REQUESTED_TOKENS = re.compile(r"tokens per minute\b[^:]*:.*?\brequested\s*(\d+)", re.IGNORECASE)

# Requests are counted exactly, but tokens are an estimate until the reply says: aim a
# little under a token limit.
TOKEN_SAFETY = 0.97
# Leave a little room at the window's edge, where a start and the request a window
# earlier would otherwise both be counted (1% of a window: 0.6 s a minute).
EDGE_MARGIN = 1.01
# Without a retry-after, a 429 pauses everyone this long.
DEFAULT_PAUSE = 2.0
# Unexplained 429s: slow down by this factor; each success then speeds up a little.
BACKOFF = 2.0
RECOVERY = 0.98
# Against a token bucket: start only when the bucket holds a photo's estimated tokens and
# this much more, as photos vary (a longer description) and estimates lag.
BUCKET_MARGIN = 0.25
# Headers that agree with a bucket this many times in a row (and never disagree) mean one.
BUCKET_VOTES = 2


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
    def __init__(
        self,
        est_tokens: int = 2300,
        *,
        window: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self.window = window  # seconds in a rate-limit "minute" (shorter against a time-scaled stand-in)
        self.est_tokens = est_tokens
        self.rpm: int | None = None  # per-minute request limit (advertised or learned from a 429)
        self.tpm: int | None = None  # per-minute token limit
        self.rpd: int | None = None  # daily request limit
        self.rpd_remaining: int | None = None
        self._requests_daily = False  # the requests headers describe a day (Groq), not a minute
        self._adaptive = 0.0  # seconds between starts learned from unexplained 429s
        self._last_start: float | None = None
        self._starts: deque[float] = deque(maxlen=20)
        self._paused_until = 0.0
        self._blocked_until = 0.0
        self._in_flight = 0
        self._calibrated = False  # a response has told us the limits (or that there are none)
        self._tokens_learned = False
        self.quota_spent = False
        self.bucket = False  # the token limit is a refilling bucket, not a sliding window
        self._bucket_votes = 0
        self._level = 0.0  # tokens in the server's bucket as of _level_at, as we reckon
        self._admission = 0  # tokens a 429 said one request asks of the bucket (0: unknown)
        self._level_at = 0.0

    @property
    def calibrated(self) -> bool:
        return self._calibrated

    @property
    def in_flight(self) -> int:
        return self._in_flight

    # -- asking for a slot ----------------------------------------------------------

    def reserve(self) -> float:
        """0 and the slot is taken, or the seconds to wait before asking again."""
        with self._lock:
            now = self._clock()
            if not self._calibrated and self._in_flight > 0:
                return 0.05  # one request alone until the first response tells us the limits
            if self.rpd_remaining is not None and self._in_flight >= self.rpd_remaining:
                return 0.05  # the last of the day's requests: no more in flight than are left
            start = max(now, self._paused_until, self._blocked_until)
            if self._last_start is not None:
                start = max(start, self._last_start + self.interval())
            if self.bucket:
                start = max(start, now + self._bucket_wait(now))
            if start > now:
                return start - now
            self._last_start = now
            self._starts.append(now)
            self._in_flight += 1
            if self.bucket:
                self._level, self._level_at = self._level_now(now) - self.est_tokens, now
            return 0.0

    def acquire(self, stop: threading.Event) -> bool:
        """Wait for this request's slot; False if `stop` was set or the day's quota spent meanwhile."""
        while True:
            if stop.is_set() or self.quota_spent:
                return False
            delay = self.reserve()
            if delay <= 0:
                return True
            if stop.wait(min(delay, 0.5)):
                return False

    def release(self) -> None:
        """The request is over (answered, failed or abandoned)."""
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def interval(self) -> float:
        """Seconds between request starts that keep every known limit."""
        gaps = [self._adaptive]
        if self.rpm:
            gaps.append(self._gap(self.rpm))
        if self.tpm and not self.bucket:  # a bucket is paced by its level (see reserve)
            gaps.append(self._gap(self.tpm * TOKEN_SAFETY / max(1, self.est_tokens)))
        return max(gaps)

    # -- a token bucket ---------------------------------------------------------------

    def _level_now(self, now: float) -> float:
        refill = (now - self._level_at) * (self.tpm or 0) / self.window
        return min(float(self.tpm or 0), self._level + refill)

    def _bucket_wait(self, now: float) -> float:
        """Seconds until the bucket holds the next photo's tokens and the margin."""
        need = max(self.est_tokens * (1 + BUCKET_MARGIN), self._admission * EDGE_MARGIN)
        missing = need - self._level_now(now)
        return missing * self.window / self.tpm if missing > 0 and self.tpm else 0.0

    def _judge_bucket(self, limit: int, remaining: int | None, reset: float | None) -> None:
        """Does the time to full match what is missing at limit per window? A sliding
        window's reset is when its oldest charge expires, which does not match."""
        if remaining is None or reset is None or remaining >= limit:
            return  # a full bucket and an empty window look alike
        expected = (limit - remaining) * self.window / limit
        if abs(reset - expected) <= 0.02 * self.window + 0.02:
            self._bucket_votes += 1
        else:
            self._bucket_votes = 0
        self.bucket = self._bucket_votes >= BUCKET_VOTES

    def _sync_level(self, remaining: int, now: float, pending: int) -> None:
        """With nothing else in flight the server's count is the whole truth. Otherwise a
        request still uploading may not be in it yet: believe it only where it says less."""
        level = float(remaining)
        if pending:
            level = min(level, self._level_now(now))
        self._level, self._level_at = level, now

    def _gap(self, per_window: float) -> float:
        # Whole requests per window: 3.4 photos' worth of tokens a minute is 3 photos, since a
        # server counting a sliding window refuses the 4th wherever it falls.
        return self.window / max(1, math.floor(per_window)) * EDGE_MARGIN

    # -- what came back -------------------------------------------------------------

    def observe(self, headers: dict[str, str]) -> None:
        """Learn the limits and what is left of them from a response's headers."""
        with self._lock:
            self._adaptive *= RECOVERY
            self._observe(headers, pending=self._in_flight)  # called once this request is released

    def _observe(self, headers: dict[str, str], pending: int) -> None:
        """`pending`: other requests in flight, which the server may not have counted yet."""
        now = self._clock()
        self._calibrated = True
        self._observe_requests(headers, now)
        self._observe_tokens(headers, now, pending)

    def _observe_requests(self, headers: dict[str, str], now: float) -> None:
        limit = _int(headers, "x-ratelimit-limit-requests")
        remaining = _int(headers, "x-ratelimit-remaining-requests")
        reset = parse_duration(headers.get("x-ratelimit-reset-requests"))
        if limit is None:
            return
        if reset is not None and reset > self.window * 1.05:
            self._requests_daily = True  # a minute never takes longer than a minute to refill
        if self._requests_daily:
            if self.rpm == limit:
                self.rpm = None  # it was taken for a per-minute limit before its reset gave it away
            self.rpd, self.rpd_remaining = limit, remaining
            if remaining is not None and remaining <= 0:
                self.quota_spent = True
            return
        self.rpm = limit
        if remaining is not None and remaining <= 0 and reset:
            self._blocked_until = max(self._blocked_until, now + reset)

    def _observe_tokens(self, headers: dict[str, str], now: float, pending: int) -> None:
        limit = _int(headers, "x-ratelimit-limit-tokens")
        if limit is None:
            return
        self.tpm = limit
        remaining = _int(headers, "x-ratelimit-remaining-tokens")
        reset = parse_duration(headers.get("x-ratelimit-reset-tokens"))
        self._judge_bucket(limit, remaining, reset)
        if self.bucket and remaining is not None:
            self._sync_level(remaining, now, pending)
            return
        if remaining is not None and reset and remaining < self.est_tokens:
            self._blocked_until = max(self._blocked_until, now + reset)

    def learn_tokens(self, tokens: int) -> None:
        """What requests really cost (a running average), to pace by tokens."""
        if tokens <= 0:
            return
        with self._lock:
            # One absurd figure (a broken server's usage) must not stall the run for hours.
            tokens = min(tokens, 4 * self.est_tokens)
            # The first real figure replaces the guess; later ones are averaged in.
            self.est_tokens = int(0.7 * self.est_tokens + 0.3 * tokens) if self._tokens_learned else tokens
            self._tokens_learned = True

    def rate_limited(self, message: str, retry_after: float | None, headers: dict[str, str]) -> None:
        """A 429: pause everyone, and learn the limit that was hit if the message names it."""
        with self._lock:
            now = self._clock()
            self._calibrated = True
            self._paused_until = max(self._paused_until, now + (retry_after if retry_after is not None else DEFAULT_PAUSE))
            learned = False
            requested = _REQUESTED_TOKENS.search(message or "")
            if requested:
                self._admission = max(self._admission, int(requested.group(1)))
            for kind, per, number in _LIMIT_MESSAGE.findall(message or ""):
                if per.lower() != "minute":
                    continue
                if kind.lower() == "requests":
                    self.rpm = min(self.rpm or int(number), int(number))
                else:
                    self.tpm = min(self.tpm or int(number), int(number))
                learned = True
            if not learned:
                # Nothing said which limit: halve the pace we were going at (at least 2/s).
                floor = self.window / 120
                self._adaptive = max(self._adaptive, self.interval(), self._recent_gap(), floor) * BACKOFF
            # Before its release: the refused request is still counted in flight, but was not charged.
            self._observe(headers, pending=max(0, self._in_flight - 1))

    def _recent_gap(self) -> float:
        if len(self._starts) < 2:
            return 0.0
        return (self._starts[-1] - self._starts[0]) / (len(self._starts) - 1)

    # -- for the manifest and --dry-run ---------------------------------------------

    def limits(self) -> dict[str, int | float]:
        """What was learned, per real minute, for the next run's --dry-run estimate."""
        per_minute = 60.0 / self.window
        found: dict[str, int | float] = {"tokens_per_photo": self.est_tokens}
        if self.rpm:
            found["requests_per_minute"] = round(self.rpm * per_minute)
        elif self._adaptive:
            found["requests_per_minute"] = round(self.window / self._adaptive * per_minute)
        if self.tpm:
            found["tokens_per_minute"] = round(self.tpm * per_minute)
        if self.rpd:
            found["requests_per_day"] = self.rpd
        return found
