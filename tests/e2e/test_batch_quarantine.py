"""`imgrag describe --batch` quarantines exactly as a live run does: a photo that fails
QUARANTINE_AFTER times in a row for a reason no retry cures is set aside and never sent again.

Through the real CLI against the stand-in's batch endpoints: a corrupt file (it fails before
it is sent, every run) and a photo the server refuses as an invalid image in every batch."""

from __future__ import annotations

import hashlib
import json
import time

from conftest import run_imgrag
from imgrag.describe.quarantine import QUARANTINE_AFTER
from imgrag.store.files import read_jsonl


def describe_batch(home):
    root, photos, env = home
    return run_imgrag("describe", photos, "--batch", cwd=root, env=env, timeout=60)


def wait_until_done(standin, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(s not in ("completed", "failed", "expired", "cancelled") for s in standin.batch.stats()["batches"].values()):
        assert time.monotonic() < deadline, standin.batch.stats()
        time.sleep(0.05)


def log(home, name: str) -> list[dict]:
    return list(read_jsonl(home[0] / ".imgrag" / name))


def submitted(home) -> list[list[str]]:
    """The photos of each batch submitted so far, oldest first."""
    return [step["photos"] for step in log(home, "batches.jsonl") if step["event"] == "intent"]


def test_batch_quarantines_a_photo_that_can_never_be_described(home, standin):
    root, photos, env = home
    full = (photos / "kitchen.jpg").read_bytes()
    (photos / "corrupt.jpg").write_bytes(full[: len(full) // 2])
    refused = hashlib.sha256((photos / "stop_sign.jpg").read_bytes()).hexdigest()
    standin.reject_images([photos / "stop_sign.jpg"])

    # Run 1 submits; each run after it collects the last batch (the stop sign refused again)
    # and submits the stop sign anew. The corrupt file fails before it is sent, every run.
    runs = []
    for _ in range(QUARANTINE_AFTER + 1):
        runs.append(describe_batch(home))
        wait_until_done(standin)
    assert all(r.code == 1 for r in runs), [r.stderr for r in runs]
    assert "failed: photos/corrupt.jpg: unreadable photo: truncated or corrupt image" in runs[0].stderr
    assert ("imgrag: quarantined: photos/corrupt.jpg: unreadable photo: truncated or corrupt image "
            f"({QUARANTINE_AFTER} times in a row; skipped from now on") in runs[QUARANTINE_AFTER - 1].stderr
    assert ("imgrag: quarantined: photos/stop_sign.jpg: rejected by the model (400: Invalid image data"
            in runs[QUARANTINE_AFTER].stderr), runs[QUARANTINE_AFTER].stderr
    strikes = {}
    for failure in log(home, "failures.jsonl"):
        strikes.setdefault(failure["paths"][0], []).append(failure["strikes"])
    assert strikes == {"photos/corrupt.jpg": [1, 2, 3], "photos/stop_sign.jpg": [1, 2, 3]}
    assert {r["paths"][0] for r in log(home, "quarantine.jsonl")} == {"photos/corrupt.jpg", "photos/stop_sign.jpg"}
    assert [refused in batch for batch in submitted(home)] == [True] * QUARANTINE_AFTER, \
        "the stop sign went into each batch until its last strike, not after it"

    # From now on: nothing is sent, nothing fails, cron exits 0 with one short line.
    batches, failures = len(submitted(home)), len(log(home, "failures.jsonl"))
    for _ in range(2):
        r = describe_batch(home)
        assert r.code == 0, r.stderr
        assert "2 quarantined photos skipped" in r.stderr and "failed:" not in r.stderr, r.stderr
        assert "nothing new to submit" in r.stderr
    assert len(submitted(home)) == batches and len(log(home, "failures.jsonl")) == failures
    status = json.loads(run_imgrag("status", photos, "--json", cwd=root, env=env).stdout)
    assert (status["quarantined"], status["failed"], status["next_describe"]) == (2, 0, 0)
