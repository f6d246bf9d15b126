"""imgrag.web.sessions: what the real-server tests (tests/e2e/test_serve_hardening.py) cannot
wait for: a session's expiry, the cap on sessions, a throttled client's allowance coming back.
Time is a clock the test moves (the classes take one), not a sleep."""

from __future__ import annotations

from imgrag.web.sessions import Sessions, SignedSessions, Throttle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_session_expires_and_is_revoked():
    clock = Clock()
    sessions = Sessions(lifetime=60, clock=clock)
    kept, revoked = sessions.new(), sessions.new()
    assert kept != revoked and sessions.valid(kept) and sessions.valid(revoked)
    sessions.revoke(revoked)
    assert not sessions.valid(revoked)
    clock.now += 59
    assert sessions.valid(kept)
    clock.now += 1
    assert not sessions.valid(kept)
    assert not sessions.valid("made-up")


def test_a_signed_session_passes_on_another_server_with_the_token_until_it_expires():
    """`serve --store`: servers behind a load balancer hold no sessions; the same token is the key."""
    clock = Clock()
    one, two = SignedSessions("tok-1", lifetime=60, clock=clock), SignedSessions("tok-1", lifetime=60, clock=clock)
    session = one.new()
    assert session != one.new() and two.valid(session)
    expires, nonce, signature = session.split(".")
    assert not two.valid(f"{int(expires) + 3600}.{nonce}.{signature}")  # a later expiry is not signed
    assert not SignedSessions("tok-2", clock=clock).valid(session)  # a new token ends every session
    for junk in ("", "made-up", "1.2", "x.y.z", session + "0"):
        assert not two.valid(junk)
    clock.now += 59
    assert two.valid(session)
    clock.now += 1
    assert not two.valid(session)


def test_past_the_cap_the_oldest_session_goes():
    sessions = Sessions(limit=3, clock=Clock())
    made = [sessions.new() for _ in range(4)]
    assert [sessions.valid(s) for s in made] == [False, True, True, True]


def test_a_throttled_client_gets_one_try_back_per_refill_and_others_are_untouched():
    clock = Clock()
    throttle = Throttle(burst=3, refill=6.0, clock=clock)
    for _ in range(3):
        assert throttle.wait("10.0.0.5") == 0
        throttle.failed("10.0.0.5")
    assert throttle.wait("10.0.0.5") == 6.0
    assert throttle.wait("10.0.0.6") == 0
    clock.now += 3
    assert throttle.wait("10.0.0.5") == 3.0
    clock.now += 3
    assert throttle.wait("10.0.0.5") == 0  # one more try
    throttle.failed("10.0.0.5")
    assert throttle.wait("10.0.0.5") == 6.0
    clock.now += 60
    assert throttle.wait("10.0.0.5") == 0  # and the allowance is whole again, not more
    for _ in range(3):
        throttle.failed("10.0.0.5")
    assert throttle.wait("10.0.0.5") > 0
