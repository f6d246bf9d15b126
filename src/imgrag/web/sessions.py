"""Login sessions and the throttle on wrong tokens, both held in the server's memory.

- A session is a random value the server hands out at login and remembers: logging out
  forgets it (the cookie is then worth nothing), it expires after SESSION_SECONDS, and a
  restart forgets them all (the page asks for the token again).
- Wrong tokens (at login or as `Authorization: Bearer`) are counted per client address: a
  burst of FAILURE_BURST, then one more every FAILURE_REFILL seconds. Past that, every token
  that address sends is answered 429 at once, right or wrong, until it may try again. Refusing
  at once (not sleeping) means parallel guesses gain nothing and hold no connection open, and
  other clients never wait."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable

SESSION_SECONDS = 7 * 24 * 3600
MAX_SESSIONS = 1000  # past this, the oldest session is forgotten
FAILURE_BURST = 10
FAILURE_REFILL = 6.0  # seconds per further wrong token: 10 a minute
MAX_CLIENTS = 10_000  # addresses remembered; past this, those back to a full allowance are forgotten


class Sessions:
    def __init__(self, lifetime: float = SESSION_SECONDS, limit: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.lifetime = lifetime
        self.limit = limit
        self.clock = clock
        self._expires: dict[str, float] = {}  # session -> when it expires (insertion order: oldest first)
        self._lock = threading.Lock()

    def new(self) -> str:
        session = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            for old in [s for s, end in self._expires.items() if end <= now]:
                del self._expires[old]
            while len(self._expires) >= self.limit:
                del self._expires[next(iter(self._expires))]
            self._expires[session] = now + self.lifetime
        return session

    def valid(self, session: str) -> bool:
        with self._lock:
            end = self._expires.get(session)
            if end is None:
                return False
            if end <= self.clock():
                del self._expires[session]
                return False
            return True

    def revoke(self, session: str) -> None:
        with self._lock:
            self._expires.pop(session, None)


class SignedSessions:
    """Sessions any server holding the same token accepts, and none remembers (`imgrag serve
    --store`: servers behind a load balancer keep no state, so a session made by one must pass
    on another). A session is its expiry and a random nonce, signed with a key derived from the
    token: a new token ends every session. Logging out removes the cookie from the browser but
    cannot revoke a copy of it before it expires; `Sessions` (one server) can."""

    def __init__(self, token: str, lifetime: float = SESSION_SECONDS, clock: Callable[[], float] = time.time) -> None:
        self.lifetime = lifetime
        self.clock = clock  # wall-clock time: another server must read the same expiry
        self._key = hmac.new(token.encode(), b"imgrag session v1", hashlib.sha256).digest()

    def _sign(self, body: str) -> str:
        return hmac.new(self._key, body.encode(), hashlib.sha256).hexdigest()

    def new(self) -> str:
        body = f"{int(self.clock() + self.lifetime)}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._sign(body)}"

    def valid(self, session: str) -> bool:
        body, _, signature = session.rpartition(".")
        expires = body.split(".", 1)[0]
        if not (expires.isdigit() and hmac.compare_digest(signature.encode(), self._sign(body).encode())):
            return False
        return int(expires) > self.clock()

    def revoke(self, session: str) -> None:
        """Nothing is held to forget: the cookie's removal (logout) is the end of it here."""


class Throttle:
    """Wrong tokens per client address, as a token bucket of allowed failures."""

    def __init__(self, burst: int = FAILURE_BURST, refill: float = FAILURE_REFILL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.refill = refill
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (failures still allowed, when counted)
        self._lock = threading.Lock()

    def _level(self, client: str, now: float) -> float:
        level, at = self._buckets.get(client, (self.burst, now))
        return min(self.burst, level + (now - at) / self.refill)

    def wait(self, client: str) -> float:
        """Seconds before `client` may try a token again (0: now)."""
        with self._lock:
            level = self._level(client, self.clock())
        return 0.0 if level >= 1 else (1 - level) * self.refill

    def failed(self, client: str) -> None:
        now = self.clock()
        with self._lock:
            self._buckets[client] = (max(0.0, self._level(client, now) - 1), now)
            if len(self._buckets) > MAX_CLIENTS:
                for c in [c for c in self._buckets if self._level(c, now) >= self.burst]:
                    del self._buckets[c]
