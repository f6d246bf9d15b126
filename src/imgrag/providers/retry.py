"""The one retry policy: for live describe, the Batch API and the chat model (`ask`, `--verify`).

What each error (errors.py) means for the request that met it:

- `TransientError` (5xx, a timeout, no connection, a garbled reply): sent again after
  `backoff_delay` (the server's retry-after if it gave one, else exponential from
  BACKOFF_BASE up to BACKOFF_CAP; jittered, so that workers do not retry in step). After
  IMGRAG_MAX_RETRIES retries it gives up: `GaveUp`, whose `fault` is the last fault.
- `RateLimited` (a 429 on a per-minute limit) is not a fault: its retry-after (the Pacer's
  DEFAULT_PAUSE without one) pauses every request of the pacer, learns the limit, and the
  request is sent again. After MAX_RATE_LIMITED 429s it gives up (`GaveUp`, no `fault`).
- A 429 that asks to wait longer than LONG_WAIT, or names a daily limit, is a spent quota:
  `QuotaExhausted`, never retried; the run ends for later (exit 75).
- `FatalProviderError` (a bad key, an unknown or retired model): never retried; exit 2.
- `PhotoRejected` (the server refuses the request) and `InvalidReply` (it finds the model's
  JSON invalid): not retried here; the caller knows whether asking again can help.
- A request the server may have acted on and that is not safe to repeat (a batch upload
  or creation) is sent once, outside this loop: the next run settles it.

Every attempt waits for its slot from the `Pacer`; a set `stop` (Ctrl-C, a cancel) or a
spent daily quota ends the wait with `Stopped`, before anything more is sent.

`Caller` is the policy for one-off chat requests (`ask`, `search --verify`): what they
cannot retry becomes the error the command ends with (TryLater: exit 75, UsageError: exit 2)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar, runtime_checkable

from imgrag.config import Settings
from imgrag.errors import TryLater, UsageError
from imgrag.providers.errors import (
    FatalProviderError,
    InvalidReply,
    PhotoRejected,
    QuotaExhausted,
    RateLimited,
    TransientError,
    redact,
)
from imgrag.providers.pacing import Pacer

BACKOFF_BASE = 0.5
BACKOFF_CAP = 30.0
MAX_RATE_LIMITED = 30  # 429s for one request (one photo's requests) before it gives up
# A 429 asking to wait longer than this is a spent quota: the run ends for later instead of sleeping.
LONG_WAIT = 600.0
QUOTA_SPENT = "the daily request quota is spent (x-ratelimit-remaining-requests: 0)"
# A question with 8 photos' descriptions is ~2,000 tokens: the chat pacer's guess until replies say.
EST_CHAT_TOKENS = 2500

R = TypeVar("R")


def backoff_delay(attempt: int, retry_after: float | None) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...) after a transient fault: what the
    server asked for, else exponential; jittered so that workers do not retry in step."""
    delay = retry_after if retry_after is not None else min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return delay * random.uniform(0.8, 1.2)


@dataclass
class Tries:
    """What a request has met so far. One photo's two chances (its reply did not validate,
    it is asked again) share one: the limits are per photo, not per request."""

    faults: int = 0
    rate_limited: int = 0


class GaveUp(Exception):
    """Retried as long as the policy allows. `fault`: the last transient fault, when it gave
    up on those (the server may be down); None when it was still rate limited."""

    def __init__(self, message: str, fault: str | None = None) -> None:
        super().__init__(message)
        self.fault = fault


class Stopped(Exception):
    """Nothing more was sent: `stop` was set, or the day's request quota is spent."""

    def __init__(self, quota_spent: bool = False) -> None:
        super().__init__(QUOTA_SPENT if quota_spent else "stopped")
        self.quota_spent = quota_spent


@runtime_checkable
class HasHeaders(Protocol):
    """A reply with its response's headers, from which the pacer learns the limits."""

    headers: dict[str, str]


def send_with_retries(request: Callable[[], R], *, pacer: Pacer, stop: threading.Event, max_retries: int,
                      tries: Tries | None = None) -> R:
    """`request()` in a pacer slot until it returns, as the policy above says."""
    tries = Tries() if tries is None else tries
    while True:
        if not pacer.acquire(stop):
            raise Stopped(pacer.quota_spent)
        outcome = _send_once(request, pacer)
        if isinstance(outcome, RateLimited):
            tries.rate_limited += 1
            if tries.rate_limited > MAX_RATE_LIMITED:
                raise GaveUp(f"still rate limited after {tries.rate_limited} tries: {outcome}")
        elif isinstance(outcome, TransientError):
            tries.faults += 1
            if tries.faults > max_retries:
                raise GaveUp(f"gave up after {tries.faults} attempts: {outcome}", fault=str(outcome))
            if stop.wait(backoff_delay(tries.faults, outcome.retry_after)):
                raise Stopped()
        else:
            if isinstance(outcome, HasHeaders):
                pacer.observe(outcome.headers)  # once released: see Pacer.observe
            return outcome


def _send_once(request: Callable[[], R], pacer: Pacer) -> R | TransientError:
    """One request in the slot just acquired; a fault worth retrying is returned, not raised."""
    try:
        return request()
    except RateLimited as e:
        pacer.rate_limited(str(e), e.retry_after, e.headers)  # before the release: see Pacer.rate_limited
        return e
    except (TransientError, PhotoRejected, InvalidReply) as e:
        if e.headers:
            pacer.observe(e.headers)
        if isinstance(e, TransientError):
            return e
        raise
    finally:
        pacer.release()


Reply = TypeVar("Reply", bound=HasHeaders)


class Caller:
    """Chat requests with the policy; one long-lived Caller (one per model in a web server)
    paces every request it sends."""

    def __init__(self, settings: Settings, pacer: Pacer | None = None) -> None:
        self.settings = settings
        self.pacer = pacer or Pacer(est_tokens=EST_CHAT_TOKENS)
        self.stop = threading.Event()

    def call(self, send: Callable[[], Reply], sent: list[int] | None = None) -> Reply:
        """`send()` until it returns; InvalidReply (the server found the JSON invalid) is
        left to the caller, which knows whether to ask again. `sent[0]` counts this call's
        requests (a shared Caller serves every thread)."""

        def attempt() -> Reply:
            if sent is not None:
                sent[0] += 1
            return send()

        key = self.settings.api_key
        try:
            return send_with_retries(attempt, pacer=self.pacer, stop=self.stop, max_retries=self.settings.max_retries)
        except Stopped as e:
            if e.quota_spent:
                raise TryLater(f"{QUOTA_SPENT}: try again later") from None
            raise KeyboardInterrupt from None
        except GaveUp as e:
            raise TryLater(redact(str(e), key)) from None
        except QuotaExhausted as e:
            raise TryLater(redact(f"{e}: try again later", key)) from None
        except FatalProviderError as e:
            raise UsageError(redact(str(e), key)) from None
        except PhotoRejected as e:
            raise UsageError(redact(f"the model refused the request: {e}", key)) from None

    def learn(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.pacer.learn_tokens(prompt_tokens + completion_tokens)
