"""One paced request to the chat model with describe's rules for faults: 429s wait for the
pause the server asks (describe's Pacer), transient faults are retried with describe's
backoff up to IMGRAG_MAX_RETRIES, a spent quota ends with exit 75, a bad key or unknown
model with exit 2. A long-lived `Caller` (one per web server) paces every request it sends."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from imgrag.config import Settings
from imgrag.describe.live import MAX_RATE_LIMITED, backoff_delay
from imgrag.errors import TryLater, UsageError
from imgrag.providers import (
    FatalProviderError,
    InvalidReply,
    PhotoRejected,
    QuotaExhausted,
    RateLimited,
    TransientError,
)
from imgrag.providers.pacing import Pacer

# A question with 8 photos' descriptions is ~2,000 tokens: the pacer's guess until replies say.
EST_TOKENS = 2500


class _HasHeaders(Protocol):
    headers: dict[str, str]


Reply = TypeVar("Reply", bound=_HasHeaders)


class Caller:
    def __init__(self, settings: Settings, pacer: Pacer | None = None) -> None:
        self.settings = settings
        self.pacer = pacer or Pacer(est_tokens=EST_TOKENS)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.requests = 0
        self.rate_limited = 0

    def call(self, send: Callable[[], Reply], sent: list[int] | None = None) -> Reply:
        """`send()` until it returns; InvalidReply (the server found the JSON invalid) is
        left to the caller, which knows whether to ask again. `sent[0]` counts this call's
        requests (a shared Caller's own counts mix every thread's)."""
        faults = limited = 0
        while True:
            if not self.pacer.acquire(self.stop):
                if self.pacer.quota_spent:
                    raise TryLater("the daily request quota is spent (x-ratelimit-remaining-requests: 0): try again later")
                raise KeyboardInterrupt
            self._count()
            if sent is not None:
                sent[0] += 1
            try:
                reply = send()
            except RateLimited as e:
                self._count(rate_limited=True)
                self.pacer.rate_limited(str(e), e.retry_after, e.headers)
                limited += 1
                if limited > MAX_RATE_LIMITED:
                    raise TryLater(self.redact(f"still rate limited after {limited} tries: {e}")) from None
                continue
            except QuotaExhausted as e:
                raise TryLater(self.redact(f"{e}: try again later")) from None
            except FatalProviderError as e:
                raise UsageError(self.redact(str(e))) from None
            except PhotoRejected as e:
                raise UsageError(self.redact(f"the model refused the request: {e}")) from None
            except InvalidReply:
                raise
            except TransientError as e:
                if e.headers:
                    self.pacer.observe(e.headers)
                faults += 1
                if faults > self.settings.max_retries:
                    raise TryLater(self.redact(f"gave up after {faults} attempts: {e}")) from None
                if self.stop.wait(backoff_delay(faults, e.retry_after)):
                    raise KeyboardInterrupt from None
                continue
            finally:
                self.pacer.release()
            self.pacer.observe(reply.headers)
            return reply

    def learn(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.pacer.learn_tokens(prompt_tokens + completion_tokens)

    def _count(self, rate_limited: bool = False) -> None:
        with self._lock:
            if rate_limited:
                self.rate_limited += 1
            else:
                self.requests += 1

    def redact(self, text: str) -> str:
        key = self.settings.api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text
