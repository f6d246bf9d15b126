"""`imgrag describe` as a user or cron sees it: one-line errors and exit codes (in process),
and what Ctrl-C and kill -9 leave behind (real processes: signals are the point).
The describe loop itself is tested in process in tests/unit/test_describe.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from conftest import IMGRAG, KEY, SCENES, assert_key_never_written, draw_scene, images_sent, invoke, scene_catalog
from imgrag.store.descriptions import load_descriptions
from imgrag.store.files import read_jsonl
from imgrag.store.workspace import Workspace
from reliability_support import seed_query_encoder
from standin_vlm import StandinVLM


def records(photos: Path) -> list[dict]:
    return list(read_jsonl(photos.parent / ".imgrag" / "descriptions.jsonl"))


def env_for(home_env: dict, **extra: str) -> dict:
    return {**home_env, "GROQ_API_KEY": KEY, **extra}


def test_cli_fatal_error_is_one_line_exit_2_without_the_key(home, standin):
    cwd, photos, env = home
    standin.set_default(fault="decommissioned")
    r = invoke("describe", photos, cwd=cwd, env=env_for(env))
    assert r.code == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "IMGRAG_MODEL" in lines[0] and "retired" in lines[0]
    assert_key_never_written(cwd / ".imgrag", r.stderr)


def test_cli_index_on_spent_quota_embeds_what_it_has_then_exits_75(home, tmp_path):
    cwd, photos, env = home
    seed_query_encoder(cwd / ".imgrag")  # the query-encoder export is not what this is about
    with StandinVLM(catalog=scene_catalog(tmp_path / "refs"), rpd=2) as server:
        r = invoke("index", photos, "--jobs", "1", cwd=cwd, env=env_for(env, IMGRAG_BASE_URL=server.url))
    assert r.code == 75, r.stderr
    assert "2 left" in r.stderr and "quota" in r.stderr
    assert "indexed 2 of 4" in r.stderr, "embed still ran"


def _start(photos: Path, cwd: Path, env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(IMGRAG), "describe", str(photos), *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _wait_for(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _more_photos(photos: Path) -> None:
    for name in SCENES:
        draw_scene(photos / f"{name}_b.jpg", name, size=(600, 450), quality=90)


def test_ctrl_c_finishes_what_is_in_flight_then_resumes_without_duplicates(home, standin):
    cwd, photos, env = home
    _more_photos(photos)
    standin.set_default(latency=0.8)
    proc = _start(photos, cwd, env_for(env), "--jobs", "2")
    _wait_for(lambda: len(records(photos)) >= 2 and standin.stats()["in_flight"] >= 1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted" in err and out == ""
    done = records(photos)
    assert 2 <= len(done) < 8 and all(r["description"]["caption"] for r in done)
    sent_before = len(standin.requests)
    assert sent_before == len(done), "what was in flight was finished and written"

    standin.set_default(latency=0)
    r = invoke("describe", photos, cwd=cwd, env=env_for(env))
    assert r.code == 0 and f"already done {len(done)}" in r.stderr
    assert len(records(photos)) == 8
    assert sorted(images_sent(standin).values()) == [1] * 8, "no photo was sent twice"


def test_second_ctrl_c_abandons_at_once(home, standin):
    cwd, photos, env = home
    standin.set_default(latency=20)
    proc = _start(photos, cwd, env_for(env), "--jobs", "2")
    assert proc.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    _wait_for(lambda: standin.stats()["in_flight"] >= 1)
    proc.send_signal(signal.SIGINT)
    # The second Ctrl-C only after the first was handled: two signals sent before Python runs
    # its handler arrive as one (a loaded machine made the old fixed sleep too short).
    _wait_for(lambda: any("Ctrl-C again" in line for line in lines))
    began = time.monotonic()
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=10)
    reader.join(timeout=10)
    assert proc.returncode == 130 and time.monotonic() - began < 3
    assert "abandoned" in "".join(lines)
    assert records(photos) == []


def test_kill_9_loses_at_most_what_was_in_flight(home, standin):
    cwd, photos, env = home
    _more_photos(photos)
    standin.set_default(latency=0.3)
    proc = _start(photos, cwd, env_for(env), "--jobs", "2")
    _wait_for(lambda: len(records(photos)) >= 3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=10)
    written = len(records(photos))  # every line that is there parses
    assert written >= 3

    standin.set_default(latency=0)
    r = invoke("describe", photos, cwd=cwd, env=env_for(env))
    assert r.code == 0, r.stderr
    assert len(load_descriptions(Workspace(cwd / ".imgrag"))) == 8
    resent = sum(count - 1 for count in images_sent(standin).values())
    assert resent <= 2, "only the requests in flight (--jobs 2) were paid twice"
    raw = (cwd / ".imgrag" / "descriptions.jsonl").read_text()
    assert all(json.loads(line) for line in raw.splitlines())
