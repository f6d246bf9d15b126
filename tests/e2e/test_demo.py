"""`imgrag demo` on a fresh machine: no API key, no network, a per-user data folder made
once and reused, a search that finds the right sample, and the next step spelled out.
In process; `imgrag serve` with nothing to serve shows the demo from a real server."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import IMGRAG, invoke, user_env
from imgrag import demo as demo_module

SAMPLES = Path(demo_module.__file__).parent / "sample_photos"


@pytest.fixture(scope="module")
def fresh_user(tmp_path_factory):
    """A user with an empty home and data folder, no keys, and no network for the hub."""
    home = tmp_path_factory.mktemp("user")
    env = {k: v for k, v in user_env().items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / ".local" / "share"), HF_HUB_OFFLINE="1", NO_COLOR="1",
               IMGRAG_BASE_URL="http://127.0.0.1:9/v1")  # a vision server that is never there
    return home, env


@pytest.fixture(scope="module")
def first_run(fresh_user):
    home, env = fresh_user
    return invoke("demo", cwd=home, env=env), home / ".local" / "share" / "imgrag" / "demo"


def description_lines(demo_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (demo_dir / ".imgrag" / "descriptions.jsonl").read_text().splitlines()]


def test_first_run_indexes_the_samples_and_finds_the_coffee(first_run):
    r, demo_dir = first_run
    assert r.code == 0, r.stderr
    first = r.stdout.splitlines()[0].split("\t")
    assert first[0] == "1" and first[2] == str(demo_dir / "photos" / "espresso.jpg"), r.stdout
    assert "6 sample photos (public domain / CC0)" in r.stderr and "6 embedded now" in r.stderr
    # The next step: a key and `imgrag index`, or a local server; and how to search the demo again.
    assert "GROQ_API_KEY" in r.stderr and "imgrag index ~/Pictures" in r.stderr and "--base-url" in r.stderr
    assert f'imgrag search --index "{demo_dir}"' in r.stderr
    assert "error" not in r.stderr.lower()
    records = description_lines(demo_dir)
    assert len(records) == 6 and {rec["provider"] for rec in records} == {"sample"}
    assert all("sample description" in rec["note"] for rec in records)
    assert sorted(p.name for p in (demo_dir / "photos").iterdir()) == sorted(p.name for p in SAMPLES.glob("*.jpg"))


def test_rerun_reuses_and_repairs_the_demo(first_run, fresh_user):
    r, demo_dir = first_run
    assert r.code == 0, r.stderr
    home, env = fresh_user
    (demo_dir / "photos" / "cat.jpg").unlink()
    (demo_dir / "photos" / "espresso.jpg").write_bytes(b"not a photo any more")
    # Another embedding model configured for the user's own photos does not touch the demo.
    r = invoke("demo", "rocket at night", cwd=home, env={**env, "IMGRAG_EMBED_MODEL": "no-such/model"})
    assert r.code == 0, r.stderr
    assert r.stdout.splitlines()[0].split("\t")[2].endswith("rocket-launch.jpg"), r.stdout
    assert "0 embedded now, 6 from cache" in r.stderr  # nothing paid twice
    for name in ("cat.jpg", "espresso.jpg"):
        assert (demo_dir / "photos" / name).read_bytes() == (SAMPLES / name).read_bytes()
    assert len(description_lines(demo_dir)) == 6  # the same photos: no second record

    r = invoke("search", "galaxies", "--json", "--index", demo_dir, cwd=home, env=env)
    assert r.code == 0 and json.loads(r.stdout)["results"][0]["path"].endswith("deep-field.jpg"), r.stdout
    r = invoke("demo", "invoice number 4471", cwd=home, env=env)
    assert r.code == 1 and "no matching photos" in r.stderr and r.stdout == ""


def test_library_function_returns_the_indexed_folder(first_run, fresh_user, monkeypatch):
    """What `imgrag serve` calls to show the demo when nothing is indexed: no model load when built."""
    _, demo_dir = first_run
    _home, env = fresh_user
    monkeypatch.setenv("XDG_DATA_HOME", env["XDG_DATA_HOME"])
    assert demo_module.demo_photos() == demo_dir / "photos"
    assert (demo_dir / ".imgrag" / "index" / "CURRENT").is_file()


def test_serve_with_nothing_indexed_shows_the_demo(first_run, fresh_user):
    """`imgrag serve` where no index is found: the demo photos, searchable over HTTP."""
    import subprocess
    import time

    import httpx

    r, demo_dir = first_run
    assert r.code == 0, r.stderr
    home, env = fresh_user
    empty = home / "nothing-here"
    empty.mkdir()
    log = home / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(IMGRAG), "serve", "--port", "0"], cwd=empty, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline, url = time.monotonic() + 90, None
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"at (http://\S+/)", log.read_text())
            url = found.group(1) if found else time.sleep(0.1)
        assert url, log.read_text()
        text = log.read_text()
        assert "serving the demo photos" in text and "imgrag serve ~/Pictures" in text
        with httpx.Client(base_url=url, timeout=60) as http:
            for _ in range(300):  # the index loads in the background
                found = http.get("/api/search", params={"q": "a cup of coffee"}).json()
                if found.get("index") == "ready":
                    break
                time.sleep(0.1)
        assert found["results"][0]["abs_path"] == str(demo_dir / "photos" / "espresso.jpg"), found
    finally:
        proc.terminate()
        proc.wait(30)
