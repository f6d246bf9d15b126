"""The pacer against a token bucket (as Groq's limits refill), in simulated time.

The server side is the stand-in's own `Bucket` (and `Window`, to check the pacer tells
them apart); headers are computed as the stand-in sends them. Photos vary in cost, as
real descriptions do."""

from __future__ import annotations

import pytest
from test_pacing import Clock, headers, simulate

from imgrag.providers.pacing import Pacer
from standin_vlm import Bucket, Window, groq_duration

FREE_TPM = 8000
DAILY = {"limit_req": 1000, "reset_req": "2h0m0s"}  # Groq's requests headers count a day


class TokensOnly:
    """A server counting tokens in `counter` (the stand-in's Bucket, or its Window) and
    requests by the day, as Groq's free tier does."""

    refusal = "Rate limit reached on tokens per minute (TPM): Limit 8000"

    def __init__(self, counter, tpm: int = FREE_TPM) -> None:
        self.counter, self.tpm = counter, tpm

    def wait_for(self, now: float, cost: int) -> float:
        return self.counter.wait_for(now, self.tpm, cost)

    def charge(self, now: float, cost: int) -> None:
        self.counter.charge(now, cost)

    def headers(self, now: float, sent: int) -> dict[str, str]:
        return headers(remaining_req=1000 - sent, limit_tok=self.tpm, remaining_tok=max(0, self.tpm - self.counter.used(now)),
                       reset_tok=groq_duration(self.counter.reset_in(now)), **DAILY)


def run(counter, *, n: int, tokens, jobs: int, latency: float, est: int):
    """n photos from `jobs` workers; (photos per minute, 429s, the pacer, tokens sent)."""
    clock = Clock()
    pacer = Pacer(est_tokens=est, clock=clock)
    rate, refused, spent = simulate(pacer, clock, TokensOnly(counter), n=n, costs=tokens, jobs=jobs, latency=latency)
    return rate, refused, pacer, spent


@pytest.mark.parametrize("jobs, latency", [(4, 1.5), (1, 1.5), (8, 30.0)])  # 30 s: several in flight
def test_free_tier_bucket_gets_the_nominal_rate_without_a_429(jobs, latency):
    tokens = [2300, 2450, 2600, 2350, 2500]  # ~2,440 a photo: 3.28 photos a minute nominally
    n = 60
    rate, refused, pacer, spent = run(Bucket(60.0, lambda: FREE_TPM), n=n, tokens=tokens, jobs=jobs,
                                      latency=latency, est=2598)
    nominal = FREE_TPM / (spent / n)  # photos a minute the refill allows at these costs
    assert refused == 0
    assert pacer.bucket, "the headers were recognised as a token bucket"
    assert rate / nominal >= 0.9, (rate, nominal)


def test_a_sliding_window_is_not_mistaken_for_a_bucket():
    rate, refused, pacer, _ = run(Window(60.0), n=30, tokens=[2250], jobs=4, latency=1.5, est=2598)
    assert refused == 0 and not pacer.bucket
    assert rate >= 0.9 * 3, "3 whole photos of 2,250 tokens fit in a sliding minute of 8,000"


def test_bucket_headers_need_two_agreeing_responses_and_one_disagreeing_ends_it():
    clock = Clock()
    pacer = Pacer(est_tokens=2400, clock=clock)
    bucket = {"limit_tok": 8000, "remaining_tok": 5600, "reset_tok": "18s"}  # 2,400 missing at 8,000/min
    pacer.observe(headers(**bucket))
    assert not pacer.bucket
    pacer.observe(headers(**bucket))
    assert pacer.bucket
    pacer.observe(headers(limit_tok=8000, remaining_tok=5600, reset_tok="59s"))  # a window's oldest charge
    assert not pacer.bucket


# -- the same through real HTTP and the groq SDK ------------------------------------------


def test_a_real_run_against_the_stand_ins_bucket_takes_the_burst_then_the_refill_rate(tmp_path):
    """8 photos at the free tier's 8,000 tokens a minute, on a stand-in whose minute lasts
    3 s: the full bucket admits 3 photos at once, the rest come at the refill rate."""
    import time

    from imgrag.config import Settings
    from imgrag.describe.live import run_describe
    from imgrag.describe.plan import DescribeOptions
    from imgrag.describe.progress import NoProgress
    from reliability_support import draw_photos
    from standin_vlm import StandinVLM

    scale, photos = 0.05, tmp_path / "photos"
    draw_photos(photos, 8)
    with StandinVLM(tpm=FREE_TPM, rpd=1000, image_tokens=2048, time_scale=scale, limit_mode="bucket") as server:
        settings = Settings(api_key="k", base_url=server.url)
        run_describe(photos, settings, DescribeOptions(dry_run=True), NoProgress())  # hash first
        began = time.monotonic()
        summary = run_describe(photos, settings, DescribeOptions(jobs=4, rate_window=60 * scale), NoProgress())
        elapsed = time.monotonic() - began
        stats = server.stats()
    assert (summary.described, summary.rate_limited, stats["rate_limited"]) == (8, 0, 0)
    tokens = (summary.prompt_tokens + summary.completion_tokens) / summary.requests
    refill = FREE_TPM / (60 * scale)  # tokens a second
    # The bucket's own pace: what 8 photos cost beyond the full bucket, at the refill rate
    # (measured: 5.0 s for an ideal 4.3 s; a sliding-window pace, 3 whole photos a window, takes 7.2 s).
    ideal = (8 * tokens - FREE_TPM) / refill
    assert elapsed < ideal * 1.25 + 1.0, (elapsed, ideal)


def test_a_429_naming_what_a_request_asks_of_the_bucket_raises_the_threshold():
    """A server that admits a request only when the bucket holds prompt + max_tokens
    (more than the reply then costs) says so in its 429: the pacer waits for that much."""
    clock = Clock()
    pacer = Pacer(est_tokens=2400, clock=clock)
    for _ in range(2):
        pacer.observe(headers(limit_tok=8000, remaining_tok=5600, reset_tok="18s"))
    assert pacer.bucket and pacer.reserve() == 0  # 5,600 > 2,400 x 1.25
    pacer.release()
    pacer.rate_limited("Rate limit reached for model `qwen/qwen3.8-27b` on tokens per minute (TPM): "
                       "Limit 8000, Used 4800, Requested 3424. Please try again in 1.2s.", 0.0,
                       headers(limit_tok=8000, remaining_tok=3200, reset_tok="36s"))
    wait = pacer.reserve()
    assert wait == pytest.approx((3424 * 1.01 - 3200) * 60 / 8000, rel=0.01), "3,200 < the 3,424 asked for"
    clock.advance(wait)
    assert pacer.reserve() == 0


def test_the_stand_ins_bucket_headers_say_what_is_left_and_the_time_until_full():
    import base64
    import io

    import groq
    from PIL import Image

    from imgrag.providers.pacing import parse_duration
    from standin_vlm import StandinVLM

    png = io.BytesIO()
    Image.new("RGB", (64, 48), "red").save(png, "PNG")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}}
    with StandinVLM(tpm=FREE_TPM, rpm=30, image_tokens=2048, limit_mode="bucket") as server:
        client = groq.Groq(api_key="k", base_url=server.url, max_retries=0)
        raw = client.chat.completions.with_raw_response.create(
            model="qwen/qwen3.8-27b", reasoning_effort="none",
            messages=[{"role": "user", "content": [{"type": "text", "text": "Describe."}, image]}],
        )
        charged = raw.parse().usage.total_tokens
        remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
        reset = parse_duration(raw.headers["x-ratelimit-reset-tokens"])
    assert charged > 2048
    assert FREE_TPM - charged <= remaining <= FREE_TPM - charged + 5, "refilled only for the moments since"
    assert reset == pytest.approx((FREE_TPM - remaining) * 60 / FREE_TPM, abs=0.02), "time until full"
