"""The library in PostgreSQL + pgvector (`--store`), against a real PostgreSQL 18 with
pgvector (tests/pg_store.py): push, the same answers as the local index, migrations, two
workers with one killed by -9, two stateless servers under a read-only role, and no
password in any output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import IMGRAG, copy_tree, invoke, user_env
from pg_store import new_database, with_database
from serving import start_server
from standin_vlm import StandinVLM

PASSWORD = "s3cret-Pa55word-42"
QUERIES = ["dog on beach", "stop sign", "birthday cake", "kettle on stove", "street corner", "children", "zebra"]


def _psql(url: str, sql: str, params=()):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


@pytest.fixture(scope="module")
def pushed(library, tmp_path_factory):
    """A private copy of the search library, pushed into a new database."""
    base = copy_tree(library.base, tmp_path_factory.mktemp("store") / "lib")
    url = new_database(tmp_path_factory, "pushed")
    with StandinVLM() as vlm:  # push must send nothing to a vision server
        r = invoke("push", base / "photos", "--store", url, cwd=base, env={**library.env, "IMGRAG_BASE_URL": vlm.url})
        assert vlm.stats()["requests"] == 0
    assert r.code == 0, r.stderr
    assert "4 new description(s), 4 vector(s), 8 thumbnail(s); 4 photo(s) searchable" in r.stderr
    return base, url, library.env


def test_push_reembeds_nothing_and_again_uploads_nothing(pushed):
    base, url, env = pushed
    r = invoke("embed", "--store", url, cwd=base, env=env)
    assert r.code == 0, r.stderr
    assert "embedded 0 photo(s) (0 texts encoded); 4 photo(s) searchable" in r.stderr
    again = invoke("push", base / "photos", "--store", url, cwd=base, env=env)
    assert "0 new description(s), 0 vector(s), 0 thumbnail(s)" in again.stderr
    assert _psql(url, "SELECT count(*), count(DISTINCT sha256) FROM photos")[0] == (4, 4)
    assert _psql(url, "SELECT count(*) FROM copies")[0][0] == 5  # birthday and its copy: one photo, two paths


@pytest.mark.parametrize("args", [
    *[[q] for q in QUERIES],
    ["dog", "--all"], ["photo", "--min-score", "0"],
    ["cake", "--in", "photos/trips"], ["sign", "--all", "--after", "2022-01-01", "--before", "2023-01-01"],
    ["kitchen", "--all", "--after", "2024"],
    ["--like", "photos/trips/beach_dog.jpg", "--all"],
    # in other languages: the multilingual model, its map and their default set (search.cutoff)
    ["Hund am Strand"], ["海辺を走る犬"], ["кухня с красным чайником", "--all"],
])
def test_search_answers_as_the_local_index(pushed, args):
    base, url, env = pushed
    local = invoke("search", *args, "--json", cwd=base, env=env)
    store = invoke("search", *args, "--json", "--store", url, cwd=base, env=env)
    assert (store.code, store.stdout) == (local.code, local.stdout), store.stderr
    assert json.loads(local.stdout)["results"] or args[0] == "zebra"


@pytest.mark.parametrize("args", [["sign", "--all", "--after", "2999"], ["cake", "--in", "photos/trips", "--before", "1990"],
                                  ["dog", "--before", "1990-01-01"]])
def test_a_filter_that_passes_nothing_says_so_as_the_local_index(pushed, args):
    """Not "none stands out ... --all shows the nearest anyway": no photo passes the filter."""
    base, url, env = pushed
    local = invoke("search", *args, cwd=base, env=env)
    store = invoke("search", *args, "--store", url, cwd=base, env=env)
    assert store.code == local.code == 1
    assert store.stderr == local.stderr == "imgrag: no matching photos (no indexed photo passes --in/--after/--before)\n"


def test_ask_reads_the_records_from_the_store(pushed):
    base, url, env = pushed
    local = invoke("ask", "what is on the stove?", "--dry-run", "--json", cwd=base, env=env)
    store = invoke("ask", "what is on the stove?", "--dry-run", "--json", "--store", url, cwd=base, env=env)
    assert store.code == local.code == 0, store.stderr
    local_doc, store_doc = json.loads(local.stdout), json.loads(store.stdout)
    assert "kettle" in json.dumps(store_doc)
    assert len(store_doc["photos"]) == len(local_doc["photos"])


def test_a_newer_schema_is_refused_in_one_line(tmp_path_factory, pushed):
    base, _, env = pushed
    empty = new_database(tmp_path_factory, "empty")
    r = invoke("search", "dog", "--store", empty, cwd=base, env=env)
    assert r.code == 2 and "holds no imgrag library yet" in r.stderr
    newer = new_database(tmp_path_factory, "newer")
    assert invoke("push", base / "photos", "--store", newer, cwd=base, env=env).code == 0
    versions = [v for (v,) in _psql(newer, "SELECT version FROM imgrag_migrations ORDER BY version")]
    assert versions == list(range(1, len(versions) + 1))
    from imgrag.library import schema

    shipped = [number for number, _, _ in schema.migrations()]
    assert versions == shipped, "two migrations share a number (the second would never be applied)"
    _psql(newer, "INSERT INTO imgrag_migrations (version, name) VALUES (9999, '9999_future.sql')")
    for args in (["search", "dog"], ["push", base / "photos"]):
        r = invoke(*args, "--store", newer, cwd=base, env=env)
        assert r.code == 2, r.stderr
        assert "schema version 9999, newer than this imgrag knows" in r.stderr
        assert "Traceback" not in r.stderr


# -- two workers on overlapping folders, one killed with -9 ------------------------------------


def _noise_photos(folder: Path, numbers: range) -> None:
    for n in numbers:
        pixels = np.random.default_rng(n).integers(0, 256, (48, 64, 3), dtype=np.uint8)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"p{n:02d}.jpg", quality=90)


def _worker(folder: Path, cwd: Path, env: dict, log: Path) -> subprocess.Popen:
    with log.open("w") as err:
        return subprocess.Popen([str(IMGRAG), "describe", str(folder), "--jobs", "2"], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)


def test_two_workers_one_killed_describe_each_photo_once(tmp_path, tmp_path_factory):
    url = new_database(tmp_path_factory, "workers")
    a, b = tmp_path / "machine-a", tmp_path / "machine-b"
    _noise_photos(a, range(12))
    _noise_photos(b, range(4, 16))  # 4..11 on both machines: the same photos, two copies
    with StandinVLM(latency=0.4) as vlm:
        env = user_env(GROQ_API_KEY="test-key-123", IMGRAG_BASE_URL=vlm.url, IMGRAG_STORE=url, NO_COLOR="1",
                       IMGRAG_STORE_LEASE="3")
        first = _worker(a, tmp_path, {**env, "IMGRAG_STORE_LIBRARY": "machine-a"}, tmp_path / "a.log")
        second = _worker(b, tmp_path, {**env, "IMGRAG_STORE_LIBRARY": "machine-b"}, tmp_path / "b.log")
        deadline = time.monotonic() + 60
        while vlm.stats()["requests"] < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)  # mid-run: its requests in flight are lost, its claims expire
        first.wait(10)
        assert second.wait(120) == 0, (tmp_path / "b.log").read_text()
        again = _worker(a, tmp_path, {**env, "IMGRAG_STORE_LIBRARY": "machine-a"}, tmp_path / "a2.log")
        assert again.wait(120) == 0, (tmp_path / "a2.log").read_text()
        sent = vlm.stats()
    # one row per photo, one description each, both machines' copies recorded
    assert _psql(url, "SELECT count(*), count(record), count(DISTINCT sha256) FROM photos")[0] == (16, 16, 16)
    assert dict(_psql(url, "SELECT library, count(*) FROM copies GROUP BY library")) == {"machine-a": 12, "machine-b": 12}
    # Every photo was paid for once, but for the killed worker's requests in flight (--jobs 2).
    assert 16 <= sent["requests"] <= 16 + 2, sent
    assert sum(sent["images"].values()) == sent["requests"]
    assert sum(n - 1 for n in sent["images"].values()) <= 2, sent["images"]
    r = invoke("embed", cwd=tmp_path, env=env)
    assert r.code == 0, r.stderr
    found = invoke("search", "colours", "--all", "--json", cwd=tmp_path, env=env)
    assert found.code == 0, found.stderr
    assert len(json.loads(found.stdout)["results"]) == 16


# -- two servers, a read-only role, no password anywhere ---------------------------------------


def test_two_servers_under_a_read_only_role_answer_alike(pushed, tmp_path):
    base, url, env = pushed
    db = url.split("/")[3].split("?")[0]
    _psql(url, "DROP ROLE IF EXISTS imgrag_reader_t")  # a rerun on the session's server
    _psql(url, f"CREATE ROLE imgrag_reader_t LOGIN PASSWORD '{PASSWORD}'")
    _psql(url, f'GRANT CONNECT ON DATABASE "{db}" TO imgrag_reader_t')
    _psql(url, "GRANT USAGE ON SCHEMA public TO imgrag_reader_t")
    _psql(url, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO imgrag_reader_t")
    reader = with_database(url, db, "imgrag_reader_t", PASSWORD)
    servers = [start_server("--store", reader, cwd=base, env=env, log=tmp_path / f"serve{i}.log") for i in (1, 2)]
    outputs: list[str] = []
    try:
        with servers[0].client() as one, servers[1].client() as two:
            for q in QUERIES:
                a, b = (c.get("/api/search", params={"q": q}).json() for c in (one, two))
                assert a == b
                cli = json.loads(invoke("search", q, "--json", "--store", reader, cwd=base, env=env).stdout)
                assert [(h["id"], h["score"], h["why"]) for h in a["results"]] == \
                    [(h["sha256"], h["score"], h["why"]) for h in cli["results"]]
            hit = one.get("/api/search", params={"q": "dog on beach"}).json()["results"][0]
            like = two.get("/api/search", params={"like": hit["id"], "all": 1}).json()
            assert like["results"] and hit["id"] not in [h["id"] for h in like["results"]]
            dated = one.get("/api/search", params={"q": "kitchen", "all": 1, "after": "2024"}).json()
            assert dated == two.get("/api/search", params={"q": "kitchen", "all": 1, "after": "2024"}).json()
            thumb = two.get(hit["thumbnail_url"])
            assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
            assert one.get(hit["preview_url"]).content[:2] == b"\xff\xd8"
            assert one.get(hit["file_url"]).status_code == 200  # this machine can read the file
            os.remove(hit["path"])
            gone = two.get(hit["file_url"])
            assert gone.status_code == 404 and "not readable from this server" in gone.json()["error"]
            assert one.get(hit["thumbnail_url"]).status_code == 200  # thumbnails come from the database
            status = one.get("/api/status").json()
            assert status["searchable"] == 4 and PASSWORD not in json.dumps(status)
            assert one.get("/api/search", params={"q": "x", "limit": 1000}).status_code == 400
    finally:
        for s in servers:
            s.stop()
            outputs.append(s.stderr)
    # the read-only role cannot write, and says so in one line
    r = invoke("push", base / "photos", "--store", reader, cwd=base, env=env)
    assert r.code == 2 and "read-only role" in r.stderr, r.stderr
    status = invoke("status", "--store", reader, "--json", cwd=base, env=env)
    assert status.code == 0, status.stderr
    unreachable = invoke("search", "dog", "--store", f"postgresql://someone:{PASSWORD}@127.0.0.1:9/nowhere", cwd=base,
                         env=env)
    assert unreachable.code == 2 and "cannot connect to the store postgresql://someone@127.0.0.1:9/nowhere" in unreachable.stderr
    for text in (*outputs, r.stdout, r.stderr, status.stdout, status.stderr, unreachable.stderr, unreachable.stdout):
        assert PASSWORD not in text
