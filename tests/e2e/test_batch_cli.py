"""`imgrag describe --batch` (in process) through the real groq (and openai) SDK against the stand-in's
files and batches endpoints: submit, collect, expire, cancel, failures, free plan, the
crash windows of a submission and of a collection, status, dry run, cron. (Split files and
the openai SDK's path, in process: tests/unit/test_batch.py.)

The stand-in's batch clock runs on real seconds (validation, per request) and its completion
window on `time_scale` (24h lasts 24 h * scale), so a whole batch life takes a second or two."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from conftest import draw_scene, invoke, run_imgrag, scene_catalog
from imgrag.store.batch_log import BatchLog
from imgrag.store.files import read_jsonl
from imgrag.store.workspace import Workspace
from reliability_support import seed_query_encoder
from standin_vlm import StandinVLM

KEY = "gsk_batch_test_key_0123456789"
FAST_WINDOW = 2e-5  # 24 h of completion window = 1.7 s


@pytest.fixture
def server(tmp_path_factory):
    refs = tmp_path_factory.mktemp("refs")
    with StandinVLM(catalog=scene_catalog(refs), api_key=KEY) as s:
        yield s


def env_for(server: StandinVLM, **extra) -> dict:
    from reliability_support import clean_env

    return clean_env(server.url, key=KEY, **extra)


def cli(photos: Path, server: StandinVLM, *args: str, **env):
    return invoke(*args, cwd=photos.parent, env=env_for(server, **env))


def ws_of(photos: Path) -> Workspace:
    return Workspace(photos.parent / ".imgrag")


def records(photos: Path) -> list[dict]:
    return list(read_jsonl(photos.parent / ".imgrag" / "descriptions.jsonl"))


def failures(photos: Path) -> list[dict]:
    return list(read_jsonl(photos.parent / ".imgrag" / "failures.jsonl"))


def steps(photos: Path) -> list[dict]:
    return list(read_jsonl(photos.parent / ".imgrag" / "batches.jsonl"))


def paid_twice(server: StandinVLM) -> dict[str, int]:
    """Images (by the hash of the bytes sent) the server answered more than once, live and batch together."""
    return {sha: n for sha, n in server.stats()["images"].items() if n > 1}


def wait_until_done(server: StandinVLM, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(s not in ("completed", "failed", "expired", "cancelled") for s in server.batch.stats()["batches"].values()):
        assert time.monotonic() < deadline, server.batch.stats()
        time.sleep(0.05)


# -- the workflow through the CLI -------------------------------------------------------------


def test_submit_then_collect_gives_the_live_records(photos, server, tmp_path):
    server.batch.set(validate_s=0.3)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0, r.stderr
    assert "submitted 4 photo(s) in 1 batch(es)" in r.stderr and "completion window 24h" in r.stderr
    assert r.stdout == ""
    assert [s["event"] for s in steps(photos)] == ["intent", "uploaded", "submitted"]
    assert records(photos) == []

    # The uploaded file: one line per photo, custom_id = content hash, the body live describe sends.
    (batch,) = server.batch.batches.values()
    assert batch.metadata == {"imgrag_token": steps(photos)[0]["token"]}
    lines = [json.loads(raw) for raw in server.batch.files[batch.input_file_id].data.splitlines()]
    hashes = {line["custom_id"] for line in lines}
    assert hashes == set(steps(photos)[0]["photos"]) and len(hashes) == 4
    assert {(line["method"], line["url"]) for line in lines} == {("POST", "/v1/chat/completions")}
    live_home = tmp_path / "live"
    draw_scene(live_home / "photos" / "beach_dog.jpg", "beach_dog", quality=92)
    assert invoke("describe", "photos", cwd=live_home, env=env_for(server)).code == 0
    live_body = server.requests[-1]["body"]
    live_sha = json.loads((live_home / ".imgrag" / "descriptions.jsonl").read_text())["sha256"]
    assert next(line["body"] for line in lines if line["custom_id"] == live_sha) == live_body

    status = json.loads(cli(photos, server, "status", "--json").stdout)
    assert [(b["id"], b["photos"]) for b in status["batches"]] == [(batch.id, 4)]
    assert status["in_open_batches"] == 4 and status["next_describe"] == 0
    assert "collect 1 open batch" in status["next"]
    text = cli(photos, server, "status").stdout
    assert f"batch:        {batch.id}: 4 photos, validating" in text

    wait_until_done(server)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0, r.stderr
    assert f"collected batch {batch.id} (completed): 4 described, 0 failed" in r.stderr
    assert "nothing new to submit" in r.stderr
    got = {rec["sha256"]: rec for rec in records(photos)}
    assert set(got) == hashes
    live = json.loads((live_home / ".imgrag" / "descriptions.jsonl").read_text())
    batch_record = got[live_sha]
    assert batch_record["batch"] == batch.id
    assert set(batch_record) - {"batch"} == set(live), "the same record as a live description"
    assert batch_record["description"] == live["description"]
    assert batch_record["usage"] == live["usage"] and batch_record["width"] == 640
    assert json.loads(cli(photos, server, "status", "--json").stdout)["batches"] == []
    assert server.batch.files == {}, "the photos and descriptions are deleted from the server once collected"
    assert sorted(server.stats()["images"].values()) == [1, 1, 1, 2], "twice only the one described live on purpose"
    assert KEY not in "".join(p.read_text(errors="replace") for p in (photos.parent / ".imgrag").glob("*.jsonl"))


def test_live_describe_leaves_photos_in_an_open_batch_to_it(photos, server):
    server.batch.enqueue_batches("stall")
    assert cli(photos, server, "describe", "photos", "--batch", "--limit", "3").code == 0
    r = cli(photos, server, "describe", "photos")
    assert r.code == 0, r.stderr
    assert "3 photo(s) are in an open batch and are left to it" in r.stderr
    assert "described 1" in r.stderr and len(server.requests) == 1
    r = cli(photos, server, "describe", "photos", "--batch")
    assert "nothing new to submit" in r.stderr and "3 photo(s) wait in open batches" in r.stderr
    assert len(server.batch.batches) == 1, "no photo is submitted twice"


def test_expired_batch_is_collected_and_its_unfinished_photos_go_into_the_next(photos, server):
    server.time_scale = FAST_WINDOW  # read when a batch is made: its 24 h window lasts 1.7 s
    server.batch.enqueue_batches("expire")  # half the requests done, then the window runs out
    assert cli(photos, server, "describe", "photos", "--batch").code == 0
    time.sleep(24 * 3600 * FAST_WINDOW + 0.2)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0, r.stderr
    assert "(expired): 2 described, 0 failed, 2 left for the next batch" in r.stderr
    assert "submitted 2 photo(s) in 1 batch(es)" in r.stderr
    wait_until_done(server)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert "(completed): 2 described" in r.stderr
    assert len({rec["sha256"] for rec in records(photos)}) == 4 == len(records(photos))
    assert paid_twice(server) == {} and failures(photos) == []


def test_cancel_then_collect_and_resubmit(photos, server):
    server.batch.enqueue_batches("stall")
    assert cli(photos, server, "describe", "photos", "--batch").code == 0
    r = cli(photos, server, "describe", "photos", "--batch", "--cancel")
    assert r.code == 0, r.stderr
    assert "cancelled 1 batch(es)" in r.stderr and "submitted 4 photo(s) in" not in r.stderr
    assert list(server.batch.stats()["batches"].values()) == ["cancelled"]
    r = cli(photos, server, "describe", "photos", "--batch")
    assert "(cancelled): 0 described, 0 failed, 4 left for the next batch" in r.stderr
    assert "submitted 4 photo(s)" in r.stderr
    assert cli(photos, server, "describe", "photos", "--cancel").code == 2


def test_bad_replies_and_rejected_photos_are_failures_tried_again_next_batch(photos, server):
    server.batch.enqueue_lines("schema", "400")
    assert cli(photos, server, "describe", "photos", "--batch").code == 0
    wait_until_done(server)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 1, r.stderr
    assert "(completed): 2 described, 2 failed" in r.stderr
    kinds = sorted(f["kind"] for f in failures(photos))
    assert kinds == ["rejected", "reply"]
    assert any("did not validate" in f["reason"] for f in failures(photos))
    assert "submitted 2 photo(s)" in r.stderr, "failed photos go into the next batch"
    wait_until_done(server)
    assert cli(photos, server, "describe", "photos", "--batch").code == 0
    assert len(records(photos)) == 4


def test_free_plan_key_gets_one_line(photos, server):
    server.batch.set(free_plan=True)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 2
    assert r.stderr.strip().splitlines() == [
        ("imgrag: error: the groq Batch API needs a paid plan, and this key's organization is on the free plan: "
         "upgrade at https://console.groq.com/settings/billing, or describe without --batch")
    ]
    assert server.batch.stats()["calls"] == {"list": 1}, "refused before any photo was prepared"
    assert BatchLog(ws_of(photos)).held_photos() == set()


def test_bad_window_and_unreachable_server(photos, server):
    r = cli(photos, server, "describe", "photos", "--batch", "--window", "2h")
    assert r.code == 2 and r.stderr.startswith("imgrag: error: --window '2h': give a completion window from 24h to 7d")
    r = invoke("describe", "photos", "--batch", cwd=photos.parent,  # its reads retried once (see below)
               env={**env_for(server), "IMGRAG_BASE_URL": "http://127.0.0.1:9", "IMGRAG_MAX_RETRIES": "1"})
    assert r.code == 75 and "run again later" in r.stderr and "Traceback" not in r.stderr
    assert "stopped: no answer from http://127.0.0.1:9" in r.stderr, r.stderr


def test_window_is_sent_and_dry_run_shows_the_batch_price(photos, server):
    prices = {"IMGRAG_PRICE_INPUT": "0.80", "IMGRAG_PRICE_OUTPUT": "4.00"}
    live = cli(photos, server, "describe", "photos", "--dry-run", **prices)
    batch = cli(photos, server, "describe", "photos", "--dry-run", "--batch", "--window", "48h", **prices)
    assert batch.code == 0, batch.stderr
    live_cost = float(re.search(r"~\$([\d.]+)", live.stderr)[1])
    batch_cost, full = map(float, re.search(r"~\$([\d.]+) at the batch price \(half of ~\$([\d.]+)\)", batch.stderr).groups())
    assert full == live_cost and abs(batch_cost - live_cost / 2) <= 0.006, batch.stderr
    assert "would submit 4" in batch.stderr and "within 48h" in batch.stderr
    assert server.batch.stats()["calls"] == {} and not (photos.parent / ".imgrag" / "batches.jsonl").exists()
    assert cli(photos, server, "describe", "photos", "--batch", "--window", "48h").code == 0
    assert [b.completion_window for b in server.batch.batches.values()] == ["48h"]


# -- crash windows ------------------------------------------------------------------------------


def test_batch_created_but_its_reply_lost_is_adopted_not_paid_twice(photos, server):
    server.batch.drop_reply("create")  # the batch exists; the client never hears of it (= kill after create)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 75, r.stderr
    assert [s["event"] for s in steps(photos)] == ["intent", "uploaded"]
    assert cli(photos, server, "describe", "photos").stderr.count("in an open batch") == 1
    assert server.requests == [], "live describe waits for the unsettled submission"
    wait_until_done(server)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0, r.stderr
    (batch_id,) = server.batch.batches
    assert f"batch {batch_id} of 4 photo(s), submitted by an interrupted run, is recorded now" in r.stderr
    assert f"collected batch {batch_id} (completed): 4 described" in r.stderr
    assert len(server.batch.batches) == 1 and paid_twice(server) == {} and len(records(photos)) == 4


def test_reads_whose_reply_is_lost_are_retried_as_live_requests_are(photos, server):
    """Listing, polling and downloading change nothing on the server: retried with backoff."""
    server.batch.drop_reply("list", times=2)
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0 and "submitted 4 photo(s)" in r.stderr, r.stderr
    wait_until_done(server)
    server.batch.drop_reply("retrieve")
    server.batch.drop_reply("content")
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0 and "(completed): 4 described" in r.stderr, r.stderr
    assert server.batch.stats()["calls"]["list"] == 2 + 1 + 1 and len(server.batch.batches) == 1
    server.batch.drop_reply("list", times=2)  # more than IMGRAG_MAX_RETRIES allows: try again later
    r = cli(photos, server, "describe", "photos", "--batch", IMGRAG_MAX_RETRIES="1")
    assert r.code == 75 and "stopped: no answer from" in r.stderr, r.stderr


def test_upload_lost_before_the_batch_is_abandoned_and_resubmitted(photos, server):
    server.batch.drop_reply("upload")
    assert cli(photos, server, "describe", "photos", "--batch").code == 75
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0 and "submitted 4 photo(s)" in r.stderr
    assert [s["event"] for s in steps(photos)] == ["intent", "abandoned", "intent", "uploaded", "submitted"]


def test_kill_during_collect_writes_the_rest_once(photos, server):
    assert cli(photos, server, "describe", "photos", "--batch").code == 0
    wait_until_done(server)
    server.batch.stats()
    on_server = dict(server.batch.files)
    assert cli(photos, server, "describe", "photos", "--batch").code == 0
    # What a kill half-way through the collection leaves: two records written, no "closed" step,
    # a torn last line, and the batch's files still on the server (they are deleted after "closed").
    server.batch.files.update(on_server)
    ws = ws_of(photos)
    lines = ws.paths.descriptions.read_bytes().splitlines(keepends=True)
    ws.paths.descriptions.write_bytes(b"".join(lines[:2]) + lines[2][:40])
    log = ws.paths.batches
    log.write_bytes(b"".join(log.read_bytes().splitlines(keepends=True)[:-1]))
    before = server.stats()["images"]
    r = cli(photos, server, "describe", "photos", "--batch")
    assert r.code == 0, r.stderr
    assert "(completed): 2 described" in r.stderr
    shas = [rec["sha256"] for rec in records(photos)]
    assert len(shas) == len(set(shas)) == 4
    assert server.stats()["images"] == before, "collecting again downloads; it asks for nothing"


# -- cron ---------------------------------------------------------------------------------------------


def test_index_batch_for_cron(photos, server):
    """The crontab line: each night collects what finished, embeds it, submits what is new
    (the installed `imgrag` in a real process with no terminal, as cron runs it)."""
    assert cli(photos, server, "describe", "photos", "--batch").code == 0
    wait_until_done(server)
    draw_scene(photos / "new" / "kitchen.png", "kitchen", size=(500, 400))  # arrived since
    seed_query_encoder(photos.parent / ".imgrag")  # the query-encoder export is not what this is about
    r = run_imgrag("index", "photos", "--batch", cwd=photos.parent, env=env_for(server), timeout=180)
    assert r.code == 0, r.stderr
    assert "(completed): 4 described" in r.stderr and "submitted 1 photo(s)" in r.stderr
    status = json.loads(cli(photos, server, "status", "--json").stdout)
    assert status["index_size"] == 4 and status["in_open_batches"] == 1
