"""`imgrag watch` and `imgrag serve --watch` as real processes (signals, the system's file
events, a second process holding the writer lock), against the stand-in vision server, with
photos copied, renamed and deleted in the watched folder as a user would."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from filelock import FileLock

from conftest import IMGRAG, KEY, SCENES, draw_scene, images_sent, invoke, run_imgrag, scene_catalog, user_env
from serving import start_server
from standin_vlm import StandinVLM

WAIT = 120.0  # seconds a change may take to become searchable on a loaded CI machine


class Watch:
    """`imgrag watch ARGS` in the background, its stderr in a file."""

    def __init__(self, *args: object, cwd: Path, env: dict, log: Path) -> None:
        self.log = log
        with log.open("w") as err:
            self.proc = subprocess.Popen([str(IMGRAG), "watch", *map(str, args)], cwd=cwd, env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    @property
    def stderr(self) -> str:
        return self.log.read_text(errors="replace")

    def updates(self) -> int:
        """How many index generations it has written so far."""
        return self.stderr.count("index updated")

    def wait_for_line(self, text: str, timeout: float = WAIT) -> None:
        until(lambda: text in self.stderr or self.proc.poll() is not None, timeout)
        assert text in self.stderr, self.stderr

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise


def until(ready: Callable[[], object], timeout: float = WAIT, step: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"not ready after {timeout:.0f} s")
        time.sleep(step)


def indexed_paths(base: Path, env: dict) -> set[str]:
    """Every photo path `imgrag search --all` finds now (the current index generation), relative to `base`."""
    result = invoke("search", "photo", "--all", "--json", "--limit", "500", cwd=base, env=env)
    if result.code not in (0, 1):
        return set()  # no index yet
    return {Path(p).relative_to(base).as_posix() for hit in json.loads(result.stdout)["results"] for p in hit["paths"]}


def copy_in(src: Path, dst: Path) -> None:
    """As a file manager copies: the file appears, grows, is closed."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    server = StandinVLM(catalog=scene_catalog(tmp_path_factory.mktemp("refs")))
    with server:
        yield server


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> Path:
    """Photos outside any watched folder, to copy in: each scene, and 24 distinct variants."""
    folder = tmp_path_factory.mktemp("drawn")
    for name in SCENES:
        draw_scene(folder / f"{name}.jpg", name, quality=92)
    for i in range(24):
        name = list(SCENES)[i % len(SCENES)]
        draw_scene(folder / "burst" / f"{name}_{i:02}.jpg", name, size=(600 + 4 * i, 450), quality=90)
    return folder


@pytest.fixture(scope="module")
def watched(tmp_path_factory, standin, drawn):
    """One `imgrag watch` of a folder that starts with one photo, for the tests below in order."""
    base = tmp_path_factory.mktemp("home")
    photos = base / "photos"
    copy_in(drawn / "kitchen.jpg", photos / "kitchen.jpg")
    env = user_env(GROQ_API_KEY=KEY, IMGRAG_BASE_URL=standin.url, NO_COLOR="1", HF_HUB_OFFLINE="1")
    watch = Watch(photos, cwd=base, env=env, log=base / "watch.log")
    try:
        watch.wait_for_line("index updated")  # caught up with the photo there before it started
        yield base, photos, env, watch
    finally:
        watch.stop(signal.SIGKILL)


def test_copied_photos_become_searchable_in_a_few_runs(watched, standin, drawn):
    base, photos, env, watch = watched
    assert indexed_paths(base, env) == {"photos/kitchen.jpg"}
    before = watch.updates()
    shutil.copytree(drawn / "burst", photos / "burst")  # 24 photos at once
    copy_in(drawn / "beach_dog.jpg", photos / "beach_dog.jpg")
    copy_in(drawn / "stop_sign.jpg", photos / "stop_sign.jpg")
    until(lambda: len(indexed_paths(base, env)) == 27)
    hit = json.loads(invoke("search", "dog on the beach", "--json", cwd=base, env=env).stdout)["results"][0]
    assert hit["path"] == str(photos / "beach_dog.jpg")
    assert set(images_sent(standin).values()) == {1}, "each photo is sent once"
    assert watch.updates() - before <= 2, f"26 photos copied at once took {watch.updates() - before} runs"


def test_a_renamed_photo_costs_no_request(watched, standin):
    base, photos, env, _watch = watched
    sent = len(standin.requests)
    (photos / "trips").mkdir()
    (photos / "beach_dog.jpg").rename(photos / "trips" / "dog.jpg")
    until(lambda: "photos/trips/dog.jpg" in indexed_paths(base, env))
    assert "photos/beach_dog.jpg" not in indexed_paths(base, env)
    assert len(standin.requests) == sent


def test_a_deleted_photo_leaves_the_results(watched, standin):
    base, photos, env, _watch = watched
    assert "photos/stop_sign.jpg" in indexed_paths(base, env)
    (photos / "stop_sign.jpg").unlink()
    until(lambda: "photos/stop_sign.jpg" not in indexed_paths(base, env))
    assert "photos/kitchen.jpg" in indexed_paths(base, env)


def test_a_photo_still_being_written_waits_until_it_is_whole(watched, standin, drawn):
    """Written in pieces over ~3 s: no run may send it half-written (a broken image, a wasted request)."""
    base, photos, env, _watch = watched
    data = (drawn / "birthday.jpg").read_bytes()
    target = photos / "birthday.jpg"
    with target.open("wb") as f:
        for start in range(0, len(data), len(data) // 10 + 1):
            f.write(data[start:start + len(data) // 10 + 1])
            f.flush()
            time.sleep(0.3)
    until(lambda: "photos/birthday.jpg" in indexed_paths(base, env))
    assert set(images_sent(standin).values()) == {1}
    assert not (base / ".imgrag" / "failures.jsonl").exists() or not (base / ".imgrag" / "failures.jsonl").read_text()


def test_another_writer_is_waited_for(watched, standin, tmp_path):
    """A cron `imgrag index` (here: this test) holds the writer lock: the watcher waits, then indexes."""
    base, photos, env, watch = watched
    lock = FileLock(str(base / ".imgrag" / "lock"))
    with lock:
        copy_in(draw_scene(tmp_path / "k.jpg", "kitchen", size=(320, 240)), photos / "more" / "kitchen_again.jpg")
        watch.wait_for_line("waiting for it")
        assert "photos/more/kitchen_again.jpg" not in indexed_paths(base, env)
    until(lambda: "photos/more/kitchen_again.jpg" in indexed_paths(base, env))
    assert watch.proc.poll() is None


def test_sigterm_stops_a_run_cleanly_and_the_next_start_resumes(watched, standin, drawn, tmp_path):
    base, photos, env, watch = watched
    standin.set_default(latency=0.4)
    try:
        for i in range(12):
            draw_scene(tmp_path / f"late_{i}.jpg", "stop_sign", size=(500 + 6 * i, 380), quality=88)
            copy_in(tmp_path / f"late_{i}.jpg", photos / "late" / f"late_{i}.jpg")
        until(lambda: len(standin.requests) > 32, step=0.05)  # describing has begun
        generation = (base / ".imgrag" / "index" / "CURRENT").read_text()
        assert watch.stop(signal.SIGTERM) == 0
        assert "stopped" in watch.stderr.splitlines()[-1]
        # The index is the last complete generation, and searchable.
        assert (base / ".imgrag" / "index" / "CURRENT").read_text() == generation
        assert invoke("search", "kitchen", "--json", cwd=base, env=env).code == 0
        described = len((base / ".imgrag" / "descriptions.jsonl").read_text().splitlines())
        assert described > 28, "what was in flight was written"
    finally:
        standin.set_default(latency=0.0)
    again = Watch(photos, cwd=base, env=env, log=base / "watch2.log")
    try:
        until(lambda: sum(1 for p in indexed_paths(base, env) if p.startswith("photos/late/")) == 12)
    finally:
        assert again.stop(signal.SIGINT) == 130
    assert set(images_sent(standin).values()) == {1}, "no photo was sent twice"


def test_provider_down_then_back_loses_nothing(tmp_path, drawn):
    """The provider is down (connection refused) while photos arrive: the watcher retries later, as
    cron would after exit 75; once the provider is back, every photo is indexed with no new event.
    Polled (--poll), which network filesystems get."""
    catalog = scene_catalog(tmp_path / "refs")
    server = StandinVLM(catalog=catalog).start()
    port = server.port
    photos = tmp_path / "photos"
    copy_in(drawn / "kitchen.jpg", photos / "kitchen.jpg")
    env = user_env(GROQ_API_KEY=KEY, IMGRAG_BASE_URL=server.url, NO_COLOR="1", HF_HUB_OFFLINE="1",
                   IMGRAG_MAX_RETRIES="1")
    watch = Watch(photos, "--poll", "--poll-interval", "0.5", cwd=tmp_path, env=env, log=tmp_path / "watch.log")
    try:
        watch.wait_for_line("index updated")
        assert f"polling {photos} every 0.5 s: as asked (--poll)" in watch.stderr
        server.stop()  # the provider goes down
        copy_in(drawn / "beach_dog.jpg", photos / "beach_dog.jpg")
        watch.wait_for_line("again in 5 s")
        copy_in(drawn / "birthday.jpg", photos / "birthday.jpg")  # arrives while it is down
        time.sleep(1)
        server = StandinVLM(catalog=catalog).start(port)  # back (a stopped stand-in does not start again)
        until(lambda: {"photos/beach_dog.jpg", "photos/birthday.jpg"} <= indexed_paths(tmp_path, env))
        assert watch.proc.poll() is None
        assert set(images_sent(server).values()) == {1} and len(images_sent(server)) == 2
    finally:
        watch.stop(signal.SIGKILL)
        server.stop()


def test_serve_watch_swaps_in_what_it_indexes(tmp_path, standin, drawn):
    """serve --watch: a photo copied into the served folder is found over HTTP, with no job started."""
    photos = tmp_path / "photos"
    copy_in(drawn / "kitchen.jpg", photos / "kitchen.jpg")
    env = user_env(GROQ_API_KEY=KEY, IMGRAG_BASE_URL=standin.url, NO_COLOR="1", HF_HUB_OFFLINE="1")
    server = start_server(str(photos), "--watch", cwd=tmp_path, env=env, log=tmp_path / "serve.log")

    def found(query: str) -> list[str]:
        try:
            answer = httpx.get(server.url + "api/search", params={"q": query, "all": "true"}, timeout=30)
        except httpx.HTTPError:
            return []
        return [r["path"] for r in answer.json().get("results", [])] if answer.status_code == 200 else []

    try:
        until(lambda: "photos/kitchen.jpg" in found("kettle"))
        copy_in(drawn / "birthday.jpg", photos / "party" / "cake.jpg")
        until(lambda: "photos/party/cake.jpg" in found("birthday cake"))
        assert httpx.get(server.url + "api/jobs", timeout=30).json()["jobs"] == []
    finally:
        assert server.stop(signal.SIGTERM) in (0, -signal.SIGTERM)  # uvicorn raises the signal again once stopped
    assert "Traceback" not in server.stderr


def test_bad_usage_is_one_line_and_exit_2(tmp_path):
    env = user_env(GROQ_API_KEY=KEY, NO_COLOR="1")
    result = run_imgrag("watch", tmp_path / "missing", cwd=tmp_path, env=env)
    assert result.code == 2
    assert result.stderr.strip().splitlines() == [f"imgrag: error: not a folder: {tmp_path / 'missing'}"]
    (tmp_path / "photos").mkdir()
    result = run_imgrag("serve", tmp_path / "photos", "--watch", "--read-only", cwd=tmp_path, env=env)
    assert result.code == 2 and "--watch" in result.stderr and "Traceback" not in result.stderr
    result = run_imgrag("watch", tmp_path / "photos", cwd=tmp_path, env=user_env(NO_COLOR="1"))
    assert result.code == 2 and "no API key" in result.stderr
