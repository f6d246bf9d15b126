"""The pacer, on a fake clock: spacing, slow start, Groq's daily request headers, 429s.

The last tests drive it against the stand-in's own sliding-window accounting (`Window`)
in simulated time, so "no 429 and >= 90% of the limit" is checked over hundreds of
requests in milliseconds."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable

import pytest

from imgrag.providers.pacing import EDGE_MARGIN, Pacer, parse_duration
from standin_vlm import Window, groq_duration


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def headers(limit_req=None, remaining_req=None, reset_req=None, limit_tok=None, remaining_tok=None, reset_tok=None):
    pairs = {
        "x-ratelimit-limit-requests": limit_req,
        "x-ratelimit-remaining-requests": remaining_req,
        "x-ratelimit-reset-requests": reset_req,
        "x-ratelimit-limit-tokens": limit_tok,
        "x-ratelimit-remaining-tokens": remaining_tok,
        "x-ratelimit-reset-tokens": reset_tok,
    }
    return {k: str(v) for k, v in pairs.items() if v is not None}


def take(pacer: Pacer, clock: Clock) -> float:
    """Wait (on the fake clock) for a slot; the time it was granted."""
    for _ in range(100_000):
        delay = pacer.reserve()
        if delay == 0:
            return clock.t
        clock.advance(delay)
    raise AssertionError("never granted")


@pytest.mark.parametrize("text, seconds", [
    ("2m59.56s", 179.56), ("7.66s", 7.66), ("120ms", 0.12), ("1h2m3s", 3723.0), ("3", 3.0),
    ("0.5", 0.5), ("1h0m0s", 3600.0), ("", None), (None, None), ("soon", None),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == (pytest.approx(seconds) if seconds is not None else None)


@pytest.mark.parametrize("seconds", [0.12, 7.66, 59.9, 179.56, 3723.0, 86399.0])
def test_parse_duration_reads_what_groq_writes(seconds):
    assert parse_duration(groq_duration(seconds)) == pytest.approx(seconds, abs=0.01)


def test_one_request_alone_until_the_first_response():
    clock = Clock()
    pacer = Pacer(clock=clock)
    assert pacer.reserve() == 0
    assert pacer.reserve() > 0, "a second request must not go out before the server has answered"
    pacer.release()
    pacer.observe({})  # a server without rate-limit headers (Ollama, llama.cpp)
    assert [pacer.reserve() for _ in range(5)] == [0] * 5, "no limits known: concurrency alone paces"


def test_starts_are_spaced_evenly_by_the_per_minute_request_limit():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    pacer.observe(headers(limit_req=60, remaining_req=59, reset_req="1s"))
    starts = [take(pacer, clock) for _ in range(10)]
    gaps = {round(b - a, 6) for a, b in itertools.pairwise(starts)}
    assert gaps == {round(60 / 60 * EDGE_MARGIN, 6)}
    assert pacer.rpm == 60 and pacer.rpd is None


def test_token_limit_paces_by_whole_photos_per_window():
    clock = Clock()
    pacer = Pacer(est_tokens=2300, clock=clock)
    take(pacer, clock)
    pacer.learn_tokens(2250)
    pacer.observe(headers(limit_tok=8000, remaining_tok=5750, reset_tok="16.9s"))
    # 8000 tokens hold 3 photos of 2,250 (not 3.5): one every 20 s, plus the edge margin.
    assert pacer.interval() == pytest.approx(20 * EDGE_MARGIN)


def test_groq_daily_request_headers_are_not_a_per_minute_pace():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    # Groq: requests headers are per DAY; 1,000/day refills one request every 86.4 s.
    pacer.observe(headers(limit_req=1000, remaining_req=999, reset_req="1m26.4s", limit_tok=1_000_000,
                          remaining_tok=997_700, reset_tok="138ms"))
    assert pacer.rpm is None and pacer.rpd == 1000 and pacer.rpd_remaining == 999
    assert pacer.interval() < 0.2, "only the token limit paces"
    assert not pacer.quota_spent


def test_a_daily_limit_first_mistaken_for_per_minute_is_corrected():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    # 14,400/day refills one request every 6 s: the first reset looks like a minute's.
    pacer.observe(headers(limit_req=14400, remaining_req=14399, reset_req="6s"))
    assert pacer.rpm == 14400
    pacer.observe(headers(limit_req=14400, remaining_req=14380, reset_req="2m0s"))
    assert pacer.rpm is None and pacer.rpd == 14400


def test_daily_quota_spent_from_headers():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    pacer.observe(headers(limit_req=1000, remaining_req=0, reset_req="3h0m0s"))
    assert pacer.quota_spent
    assert not pacer.acquire(threading.Event()), "workers waiting for a slot give up"


def test_spent_minute_window_blocks_until_its_reset():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    pacer.release()
    pacer.observe(headers(limit_req=1000, remaining_req=0, reset_req="12s"))
    assert pacer.reserve() == pytest.approx(12)
    clock.advance(12)
    assert pacer.reserve() == 0


def test_too_few_tokens_left_blocks_until_their_reset():
    clock = Clock()
    pacer = Pacer(est_tokens=2000, clock=clock)
    take(pacer, clock)
    pacer.observe(headers(limit_tok=1_000_000, remaining_tok=1500, reset_tok="7.5s"))
    assert pacer.reserve() == pytest.approx(7.5)


def test_429_naming_its_limit_teaches_the_unadvertised_rpm():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    pacer.release()
    message = ("rate limited: Rate limit reached for model `m` in organization `o` service tier `on_demand` on "
               "requests per minute (RPM): Limit 30, Used 30, Requested 1. Please try again in 1.5s.")
    pacer.rate_limited(message, 1.5, {})
    assert pacer.rpm == 30
    assert pacer.reserve() >= 1.5, "everyone waits out the retry-after"
    clock.advance(1.5)
    starts = [take(pacer, clock) for _ in range(3)]
    assert starts[2] - starts[1] == pytest.approx(60 / 30 * EDGE_MARGIN)


def test_429_naming_the_token_limit():
    pacer = Pacer(clock=Clock())
    pacer.rate_limited("on tokens per minute (TPM): Limit 6000, Used 5000, Requested 2100.", None, {})
    assert pacer.tpm == 6000


def test_unexplained_429s_halve_the_pace_and_success_recovers_it():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    pacer.observe({})
    for _ in range(5):
        take(pacer, clock)
        clock.advance(0.1)
    pacer.rate_limited("Too Many Requests", None, {})
    slowed = pacer.interval()
    assert slowed >= 0.2, "at least twice the gap we were going at"
    for _ in range(50):
        pacer.observe({})
    assert pacer.interval() < slowed * 0.5


def test_acquire_gives_up_when_stopped():
    pacer = Pacer()
    stop = threading.Event()
    assert pacer.acquire(stop)
    stop.set()
    assert not pacer.acquire(stop)


def test_limits_are_reported_per_real_minute_even_on_a_scaled_window():
    clock = Clock()
    pacer = Pacer(est_tokens=2000, window=6.0, clock=clock)  # a stand-in running 10x fast
    take(pacer, clock)
    pacer.learn_tokens(2200)
    pacer.observe(headers(limit_req=1000, remaining_req=999, reset_req="2h0m0s", limit_tok=8000,
                          remaining_tok=5800, reset_tok="6s"))
    assert pacer.limits() == {"tokens_per_photo": 2200, "tokens_per_minute": 80000, "requests_per_day": 1000}
    assert pacer.interval() == pytest.approx(6.0 / 3 * EDGE_MARGIN)


# -- against the stand-in's sliding windows, in simulated time ----------------------------


class SlidingWindows:
    """A server as the stand-in counts by default: sliding 60 s windows of requests and of
    tokens (a limit of None is not counted), its requests limit in the headers or not."""

    refusal = "Too Many Requests"

    def __init__(self, rpm: int | None, tpm: int | None, advertise_rpm: bool) -> None:
        self.rpm, self.tpm, self.advertise_rpm = rpm, tpm, advertise_rpm
        self.requests, self.tokens = Window(60.0), Window(60.0)

    def wait_for(self, now: float, cost: int) -> float:
        return ((self.rpm and self.requests.wait_for(now, self.rpm, 1))
                or (self.tpm and self.tokens.wait_for(now, self.tpm, cost)) or 0.0)

    def charge(self, now: float, cost: int) -> None:
        self.requests.charge(now, 1)
        self.tokens.charge(now, cost)

    def headers(self, now: float, sent: int) -> dict[str, str]:
        h = {}
        if self.tpm:
            w = self.tokens
            h.update(headers(limit_tok=self.tpm, remaining_tok=self.tpm - w.used(now),
                             reset_tok=groq_duration(w.reset_in(now))))
        if self.rpm and self.advertise_rpm:
            w = self.requests
            h.update(headers(limit_req=self.rpm, remaining_req=self.rpm - w.used(now),
                             reset_req=groq_duration(w.reset_in(now))))
        return h


def simulate(pacer: Pacer, clock: Clock, server, *, n: int, costs: Iterable[int], jobs: int,
             latency: float) -> tuple[float, int, int]:
    """n requests (costing `costs` tokens in turn) from `jobs` workers, each answered in
    `latency` s, against `server` (its wait_for, charge, headers and 429 `refusal`: this
    module's SlidingWindows, test_pacing_bucket's); (photos per minute achieved, 429s, tokens sent)."""
    next_cost = itertools.cycle(costs)
    in_flight: list[tuple[float, int]] = []  # (done at, tokens) of the requests in flight
    sent = refused = spent = 0
    start = clock.t

    def complete_next() -> None:
        in_flight.sort()
        done, cost = in_flight.pop(0)
        clock.t = max(clock.t, done)
        pacer.release()
        pacer.observe(server.headers(clock.t, sent))
        pacer.learn_tokens(cost)

    while sent < n:
        if len(in_flight) >= jobs:
            complete_next()
            continue
        delay = pacer.reserve()
        if delay > 0:
            if in_flight and min(in_flight)[0] <= clock.t + delay:
                complete_next()
            else:
                clock.advance(delay)
            continue
        cost = next(next_cost)
        wait = server.wait_for(clock.t, cost)
        if wait > 0:
            refused += 1
            pacer.release()
            pacer.rate_limited(server.refusal, wait, {})
            continue
        server.charge(clock.t, cost)
        in_flight.append((clock.t + latency, cost))
        sent += 1
        spent += cost
    end = max(done for done, _ in in_flight) if in_flight else clock.t
    return n / ((end - start) / 60), refused, spent


@pytest.mark.parametrize("name, rpm, tpm, latency, jobs, capacity", [
    ("paid tier, requests bind", 300, None, 1.5, 8, 300),
    ("free tier, tokens bind", 30, 8000, 1.5, 1, 3),  # 8,000 tokens/min hold 3 photos of 2,250
])
def test_no_429_and_near_the_limit_against_sliding_windows(name, rpm, tpm, latency, jobs, capacity):
    clock = Clock()
    pacer = Pacer(est_tokens=2300, clock=clock)
    rate, refused, _ = simulate(pacer, clock, SlidingWindows(rpm, tpm, advertise_rpm=tpm is None),
                                n=300 if jobs > 1 else 40, costs=[2250], jobs=jobs, latency=latency)
    assert refused == 0, name
    assert rate / capacity >= 0.9, (name, rate)


def test_no_more_requests_in_flight_than_the_day_has_left():
    clock = Clock()
    pacer = Pacer(clock=clock)
    take(pacer, clock)
    pacer.release()
    pacer.observe(headers(limit_req=1000, remaining_req=2, reset_req="2h0m0s"))
    assert pacer.reserve() == 0 and pacer.reserve() == 0
    assert pacer.reserve() > 0, "two left today, two in flight"
    pacer.release()
    pacer.observe(headers(limit_req=1000, remaining_req=1, reset_req="2h0m0s"))
    assert pacer.reserve() > 0, "the one left is in flight already"


def test_an_absurd_usage_figure_cannot_stall_the_run():
    clock = Clock()
    pacer = Pacer(est_tokens=2300, clock=clock)
    take(pacer, clock)
    pacer.observe(headers(limit_tok=100_000, remaining_tok=90_000, reset_tok="1s"))
    pacer.learn_tokens(2_500_000)
    assert pacer.est_tokens <= 4 * 2300
    assert pacer.interval() < 10
