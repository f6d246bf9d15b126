"""Rough edges a new user hit (issue 12, section 4), each through the real `imgrag` command:
an unreachable vision server, photos deleted since the last index, one-line flag errors,
help text, thumbnails, hints that name the real folder, embed and why-line wording."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from conftest import SCENES, draw_scene, run_imgrag


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def closed_port_url() -> str:
    """A URL on this machine where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- a vision server that cannot be reached ---------------------------------------------


@pytest.mark.parametrize("new_photos", [1, 11])
def test_unreachable_server_is_try_again_later_and_blames_no_photo(tmp_path, new_photos):
    photos = tmp_path / "photos"
    names = list(SCENES)
    for i in range(new_photos):  # distinct bytes: as many photos as files
        draw_scene(photos / f"p{i}.jpg", names[i % len(names)], size=(320 + 8 * i, 240))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))}
    env.update(GROQ_API_KEY="test-key-123", IMGRAG_BASE_URL=closed_port_url(), IMGRAG_MAX_RETRIES="1")
    r = run_imgrag("describe", photos, cwd=tmp_path, env=env)
    assert r.code == 75, r.stderr
    line = one_line(r.stderr)  # the reason, once; no "failed: ..." lines
    assert line.count("cannot connect to") == 1 and "IMGRAG_BASE_URL" in line
    assert "failed 0" in line and f"{new_photos} left" in line and "run again later" in line
    failures = tmp_path / ".imgrag" / "failures.jsonl"
    assert not failures.exists() or failures.read_text() == "", "no photo blamed"
