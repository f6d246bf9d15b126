"""Quarantine: a photo that fails 3 times in a row for a reason no retry cures is set
aside, so that a nightly cron job stops failing (and mailing) because of it.

Through the command (in process) against the stand-in; the broken files are the ones the
input reliability tests use (empty, truncated, not an image, decompression bomb)."""

from __future__ import annotations

import json

from conftest import SCENES, draw_scene, invoke, scene_catalog
from imgrag.describe.quarantine import QUARANTINE_AFTER
from reliability_support import draw_broken


def describe(home, *extra):
    root, photos, env = home
    return invoke("describe", photos, *extra, cwd=root, env=env)


def status_json(home) -> dict:
    root, photos, env = home
    result = invoke("status", photos, "--json", cwd=root, env=env)
    assert result.code == 0, result.stderr
    return json.loads(result.stdout)


def quarantine_log(home) -> list[dict]:
    path = home[0] / ".imgrag" / "quarantine.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_broken_photos_are_quarantined_after_three_runs_then_cron_exits_0(home, standin):
    root, photos, env = home
    broken = draw_broken(photos)
    for run in range(1, QUARANTINE_AFTER + 1):
        result = describe(home)
        assert result.code == 1, (run, result.stderr)  # these runs did fail: the owner hears of it
        assert f"failed {len(broken)}" in result.stderr
    assert "quarantined: photos/bomb.png: unreadable photo: too large (decompression bomb" in result.stderr
    assert result.stderr.count("imgrag: quarantined: ") == len(broken)
    assert {r["paths"][0] for r in quarantine_log(home)} == {f"photos/{name}" for name in broken}
    assert {r["permanent"] for r in quarantine_log(home)} == {"unreadable", "decompression bomb"}

    # From now on the run has nothing left to fail at: exit 0, one short line, no request.
    requests = standin.stats()["requests"]
    result = describe(home)
    assert result.code == 0, result.stderr
    assert "failed 0" in result.stderr and f"{len(broken)} quarantined photos skipped" in result.stderr
    assert standin.stats()["requests"] == requests == len(SCENES)
    dry = describe(home, "--dry-run")
    assert "would describe 0" in dry.stderr and f"{len(broken)} quarantined photos skipped" in dry.stderr

    state = status_json(home)
    assert (state["quarantined"], state["failed"], state["next_describe"]) == (len(broken), 0, 0)
    listed = {p["path"]: p for p in state["quarantined_photos"]}
    assert set(listed) == {f"photos/{name}" for name in broken}
    assert "truncated" in listed["photos/truncated.jpg"]["reason"] and listed["photos/zero.jpg"]["strikes"] == 3
    text = invoke("status", photos, cwd=root, env=env).stdout
    assert f"quarantined:  {len(broken)}" in text and "  photos/notes.jpg: unreadable photo: not an image" in text

    # --retry-failed tries them again; still broken, they stay quarantined.
    result = describe(home, "--retry-failed")
    assert result.code == 1 and f"failed {len(broken)}" in result.stderr, result.stderr
    assert "quarantined: photos/zero.jpg: unreadable photo: empty file (4 times in a row" in result.stderr

    # An edited photo is new content: tried afresh, and described.
    draw_scene(photos / "truncated.jpg", "kitchen", size=(320, 240))
    result = describe(home)
    assert result.code == 0 and "described 1" in result.stderr, result.stderr
    assert status_json(home)["quarantined"] == len(broken) - 1


def test_a_photo_the_server_refuses_as_an_invalid_image_is_quarantined(home, standin, tmp_path):
    refs = scene_catalog(tmp_path / "refs")
    standin.reject_images([path for path, desc in refs if "STOP" in desc["caption"]])
    for _ in range(QUARANTINE_AFTER):
        result = describe(home)
        assert result.code == 1 and "Invalid image data" in result.stderr, result.stderr
    assert "imgrag: quarantined: photos/stop_sign.jpg: rejected by the model (400: Invalid image data" in result.stderr
    sent = standin.stats()["requests"]
    assert sent == len(SCENES) + QUARANTINE_AFTER - 1, "the other photos were described once"

    result = describe(home)
    assert result.code == 0 and "1 quarantined photo skipped" in result.stderr, result.stderr
    assert standin.stats()["requests"] == sent, "a quarantined photo is not sent again"
    result = describe(home, "--retry-failed")
    assert result.code == 1 and standin.stats()["requests"] == sent + 1


def test_replies_that_do_not_validate_and_server_faults_never_quarantine(home, standin):
    standin.set_default(fault="schema")  # every reply misses the schema, again and again
    for _ in range(QUARANTINE_AFTER):
        result = describe(home)
        assert result.code == 1 and f"failed {len(SCENES)}" in result.stderr, result.stderr
    assert quarantine_log(home) == [] and status_json(home)["quarantined"] == 0
    standin.set_default(fault=None)
    result = describe(home)
    assert result.code == 0 and f"described {len(SCENES)}" in result.stderr, result.stderr


