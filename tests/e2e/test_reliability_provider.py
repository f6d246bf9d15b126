"""A hostile or broken vision provider, through the command (in process), the real groq SDK and the
stand-in server: the run goes on, failures are recorded, and nothing but valid
descriptions ever enters descriptions.jsonl."""

from __future__ import annotations

import time

import pytest

from conftest import invoke
from imgrag.describe.schema import PhotoDescription
from reliability_support import TRACEBACK, jsonl_lines
from standin_vlm import INJECTION

FAST_TIMEOUT = {"IMGRAG_TIMEOUT": "1.5"}

# Each group is served one fault per photo (4 photos, 4 jobs), then the server behaves.
FAULT_GROUPS = {
    "server_errors": ["500", "502", "503"],
    "network": ["reset", "html", {"kind": "timeout", "seconds": 4}],
    "bad_content": ["empty", "schema", "malformed"],
    "huge": [{"kind": "huge", "size": 10_000_000}],
    "injection": ["injection", "injection", "injection", "injection"],
}


def _descriptions(cwd) -> list[dict]:
    records, torn = jsonl_lines(cwd / ".imgrag" / "descriptions.jsonl")
    assert not torn
    return records


def _sent_texts(request: dict) -> str:
    """Every text part of a chat request (what the model was told)."""
    parts = []
    for message in request["body"]["messages"]:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [p.get("text", "") for p in content if p.get("type") == "text"]
    return "\n".join(parts)


@pytest.mark.parametrize("group", list(FAULT_GROUPS))
def test_faults_are_survived_and_nothing_invalid_is_stored(home, standin, group):
    cwd, photos, env = home
    faults = FAULT_GROUPS[group]
    if group == "huge":
        # The 10 MB reply is charged as ~2.5M tokens: give the token budget room for it, or
        # the run (rightly) waits out the spent minute the headers announce.
        standin.set_default(tpm=100_000_000)
    standin.enqueue(*faults)
    env = {**env, **FAST_TIMEOUT}
    r = invoke("describe", photos, "--jobs", "4", cwd=cwd, env=env)
    assert TRACEBACK not in r.stderr and r.stdout == "", r.stderr
    assert standin.stats()["faults_served"] == len(faults)
    records = _descriptions(cwd)
    failures, _ = jsonl_lines(cwd / ".imgrag" / "failures.jsonl")
    # Transient faults are retried; a photo that drew two invalid replies in a row is a
    # recorded failure (which photo does depends on timing), never a half-valid record.
    assert len(records) + len(failures) == 4 and r.code == (1 if failures else 0), r.stderr
    assert all(f["kind"] == "reply" for f in failures) and (group == "bad_content" or not failures)
    _check_stored(cwd, records)
    if group == "injection":
        # The reply is data: stored as the photo's words, never fed to another photo's prompt.
        assert all(INJECTION in rec["description"]["caption"] for rec in records)
        assert not any(INJECTION in _sent_texts(q) for q in standin.requests)
    r = invoke("describe", photos, cwd=cwd, env=env)  # the next run completes
    assert r.code == 0 and len(_descriptions(cwd)) == 4, r.stderr


def _check_stored(cwd, records: list[dict]) -> None:
    assert len({rec["sha256"] for rec in records}) == len(records)
    raw = (cwd / ".imgrag" / "descriptions.jsonl").read_bytes()
    assert not raw or max(map(len, raw.splitlines())) < 20_000, "a 10 MB reply must not reach the log"
    for rec in records:
        PhotoDescription.model_validate(rec["description"])  # every stored record is schema-valid


def test_failures_are_recorded_and_retried_next_run(home, standin):
    cwd, photos, env = home
    standin.enqueue("schema", "schema", "400")  # photo 1: invalid twice; photo 2: rejected
    r = invoke("describe", photos, "--jobs", "1", "--limit", "2", cwd=cwd, env=env)
    assert r.code == 1 and TRACEBACK not in r.stderr, r.stderr
    assert "failed 2" in r.stderr
    failures, _ = jsonl_lines(cwd / ".imgrag" / "failures.jsonl")
    assert sorted(f["kind"] for f in failures) == ["rejected", "reply"]
    assert all(f["reason"] and f["paths"] for f in failures)
    assert not (cwd / ".imgrag" / "descriptions.jsonl").read_bytes()

    r = invoke("describe", photos, cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    assert len(_descriptions(cwd)) == 4


def test_slow_drip_reply_is_cut_off(home, standin):
    cwd, photos, env = home
    standin.enqueue({"kind": "drip", "seconds": 12, "interval": 0.25})
    start = time.monotonic()
    r = invoke("describe", photos, "--jobs", "1", "--limit", "1", cwd=cwd, env={**env, "IMGRAG_TIMEOUT": "2"})
    elapsed = time.monotonic() - start
    assert r.code == 0 and len(_descriptions(cwd)) == 1, r.stderr
    assert elapsed < 9, f"a dripping reply held the run for {elapsed:.1f} s with a 2 s timeout"
