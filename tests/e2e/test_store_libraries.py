"""One store written by two libraries (machines), against a real PostgreSQL 18 with pgvector
(tests/pg_store.py) and the stand-in vision server: each copy recorded under its library's
name (--library, IMGRAG_STORE_LIBRARY), the library filter (search/ask --library, the HTTP
API's library=, the MCP tools' library), copies gone from a re-indexed folder forgotten, a
photo with no copy left unsearchable, `imgrag mcp --store` answering as `imgrag search
--store --json` (the `mcp` SDK's own client, over stdio), and every flag that cannot work
with --store refused in one line."""

from __future__ import annotations

import base64
import io
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from conftest import KEY, draw_scene, invoke, scene_catalog, user_env
from mcp_client import Session, session, stdio_params
from pg_store import new_database
from reliability_support import seed_query_encoder
from serving import start_server
from standin_vlm import StandinVLM


@dataclass
class Store:
    url: str
    base: Path
    env: dict
    standin: StandinVLM

    def run(self, *args: object, **env: str):
        return invoke(*args, cwd=self.base, env={**self.env, **env})

    def search(self, *args: str) -> dict:
        r = self.run("search", *args, "--json", "--store", self.url)
        assert r.code in (0, 1), r.stderr
        return json.loads(r.stdout)

    def index(self, folder: Path, *args: str, **env: str):
        r = self.run("index", folder, "--store", self.url, *args, **env)
        assert r.code == 0, r.stderr
        return r


def _psql(url: str, sql: str, params=()):
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else None


@pytest.fixture(scope="module")
def standin(tmp_path_factory) -> Iterator[StandinVLM]:
    with StandinVLM(catalog=scene_catalog(tmp_path_factory.mktemp("libraries-refs"))) as vlm:
        yield vlm


def _store(tmp_path_factory, standin: StandinVLM, name: str) -> Store:
    base = tmp_path_factory.mktemp(name)
    env = user_env(GROQ_API_KEY=KEY, IMGRAG_BASE_URL=standin.url, NO_COLOR="1", HF_HUB_OFFLINE="1")
    seed_query_encoder(base / ".imgrag")
    return Store(new_database(tmp_path_factory, name), base, env, standin)


@pytest.fixture(scope="module")
def two(tmp_path_factory, standin) -> Store:
    """A laptop (beach_dog, kitchen, birthday) and a NAS (the same beach_dog, stop_sign):
    the laptop named by --library, the NAS by IMGRAG_STORE_LIBRARY."""
    store = _store(tmp_path_factory, standin, "two")
    laptop, nas = store.base / "laptop", store.base / "nas"
    draw_scene(laptop / "beach_dog.jpg", "beach_dog", quality=92)
    draw_scene(laptop / "kitchen.png", "kitchen")
    draw_scene(laptop / "birthday.jpg", "birthday", quality=92)
    nas.mkdir()
    shutil.copy(laptop / "beach_dog.jpg", nas / "dog.jpg")
    draw_scene(nas / "stop_sign.jpg", "stop_sign", quality=92)
    store.index(laptop, "--library", "laptop")
    store.index(nas, IMGRAG_STORE_LIBRARY="nas")
    return store


def test_each_copy_is_recorded_under_its_library(two):
    copies = _psql(two.url, "SELECT library, path FROM copies ORDER BY library, path")
    base = str(two.base)
    assert copies == [("laptop", f"{base}/laptop/beach_dog.jpg"), ("laptop", f"{base}/laptop/birthday.jpg"),
                      ("laptop", f"{base}/laptop/kitchen.png"), ("nas", f"{base}/nas/dog.jpg"),
                      ("nas", f"{base}/nas/stop_sign.jpg")]
    assert _psql(two.url, "SELECT count(*) FROM photos")[0][0] == 4  # the dog is one photo with two copies
    status = json.loads(two.run("status", "--store", two.url, "--json").stdout)
    assert status["libraries"] == {"laptop": 3, "nas": 2} and status["without_copy"] == 0


@pytest.mark.parametrize("args, env, says", [
    (["index", "{laptop}", "--store", "{url}", "--library", "my laptop"], {}, "--library (IMGRAG_STORE_LIBRARY) 'my laptop' is not a library name"),
    (["describe", "{laptop}", "--store", "{url}"], {"IMGRAG_STORE_LIBRARY": "a/b"},
     "--library (IMGRAG_STORE_LIBRARY) 'a/b' is not a library name"),
    (["push", "{laptop}", "--store", "{url}", "--library", "-x"], {}, "'-x' is not a library name"),
    (["search", "dog", "--store", "{url}", "--library", "no such/name"], {}, "--library 'no such/name' is not a library name"),
    (["ask", "dog?", "--dry-run", "--store", "{url}", "--library", ""], {}, "--library '' is not a library name"),
    (["search", "dog", "--library", "nas"], {}, "--library names a library in a store: give --store URL"),
    (["index", "{laptop}", "--library", "nas"], {}, "--library names a library in a store: give --store URL"),
])
def test_a_bad_library_name_is_one_line_and_writes_nothing(two, args, env, says):
    before = _psql(two.url, "SELECT count(*) FROM copies")
    r = two.run(*[a.format(laptop=two.base / "laptop", url=two.url) for a in args], **env)
    assert r.code == 2, r.stderr
    assert r.stderr.count("\n") == 1 and says in r.stderr, r.stderr
    assert _psql(two.url, "SELECT count(*) FROM copies") == before


def test_search_and_ask_filter_by_library(two):
    everything = two.search("colours", "--all")
    assert len(everything["results"]) == 4
    dog = next(h for h in everything["results"] if h["path"].endswith(("beach_dog.jpg", "dog.jpg")))
    assert sorted(dog["paths"]) == [str(two.base / "laptop/beach_dog.jpg"), str(two.base / "nas/dog.jpg")]
    for name, expected in (("nas", {"dog.jpg", "stop_sign.jpg"}),
                           ("laptop", {"beach_dog.jpg", "kitchen.png", "birthday.jpg"})):
        found = two.search("colours", "--all", "--library", name)
        assert {Path(h["path"]).name for h in found["results"]} == expected
        assert all(p.startswith(str(two.base / name) + "/") for h in found["results"] for p in h["paths"])
        # the same photos, in the order of the unfiltered ranking
        order = [h["sha256"] for h in everything["results"]]
        assert [h["sha256"] for h in found["results"]] == [s for s in order if s in {h["sha256"] for h in found["results"]}]
    both = two.search("dog on beach", "--library", "nas", "--in", str(two.base / "laptop"), "--min-score", "0")
    assert both["results"] == []  # one copy must be in that library and inside that folder
    assert two.search("colours", "--all", "--library", "nobody")["results"] == []
    asked = two.run("ask", "where is the dog?", "--dry-run", "--json", "--store", two.url, "--library", "nas")
    assert asked.code == 0, asked.stderr
    assert {Path(p["path"]).parent.name for p in json.loads(asked.stdout)["photos"]} == {"nas"}


# -- imgrag mcp --store: the mcp SDK's own client over stdio -----------------------------------


@contextmanager
def mcp_session(two: Store, *args: str) -> Iterator[Session]:
    # Started from another folder than the one holding the photos, as an assistant starts it
    with session(stdio_params(*args, env=two.env, cwd=two.base / "..")) as s:
        yield s


@pytest.fixture(scope="module")
def mcp_store(two) -> Iterator:
    with mcp_session(two, "--store", two.url) as session:
        yield session


@pytest.mark.parametrize("cli_args, arguments", [
    (["dog on beach"], {"query": "dog on beach"}),
    (["kettle", "--min-score", "0", "--limit", "2"], {"query": "kettle", "min_score": 0, "limit": 2}),
    (["colours", "--all"], {"query": "colours", "all": True}),
    (["colours", "--all", "--library", "nas"], {"query": "colours", "all": True, "library": "nas"}),
    (["cake", "--min-score", "0", "--in", "{base}/laptop"], {"query": "cake", "min_score": 0, "folder": "{base}/laptop"}),
    (["sign", "--all", "--after", "2999"], {"query": "sign", "all": True, "after": "2999"}),
    (["zebra in the snow"], {"query": "zebra in the snow"}),
])
def test_mcp_search_is_the_cli_search(two, mcp_store, cli_args, arguments):
    cli = two.search(*[a.format(base=two.base) for a in cli_args])
    doc = mcp_store.ok("search", {k: v.format(base=two.base) if isinstance(v, str) else v for k, v in arguments.items()})
    assert doc["count"] == len(cli["results"])
    assert [(h["id"], h["rank"], h["score"], h["path"], h.get("copies", [h["path"]]), h["caption"], h["why"], h["taken"])
            for h in doc["results"]] == \
        [(h["sha256"], h["rank"], h["score"], h["path"], h["paths"], h["caption"], h["why"], h["taken"])
         for h in cli["results"]]
    assert all(h["date"] for h in doc["results"])
    if not cli["results"]:
        assert "hint" in doc


def test_mcp_like_is_the_cli_like(two, mcp_store):
    cli = two.search("--like", str(two.base / "nas/dog.jpg"), "--all")
    dog = mcp_store.ok("search", {"query": "dog on beach"})["results"][0]
    by_id = mcp_store.ok("search", {"like": dog["id"], "all": True})
    by_path = mcp_store.ok("search", {"like": str(two.base / "laptop/beach_dog.jpg"), "all": True})
    assert [h["id"] for h in by_id["results"]] == [h["id"] for h in by_path["results"]] == \
        [h["sha256"] for h in cli["results"]]
    assert len(cli["results"]) == 3 and dog["id"] not in [h["id"] for h in by_id["results"]]


def test_mcp_tools_over_a_store(two, mcp_store):
    tools = mcp_store.tools()
    assert set(tools) == {"search", "ask", "get_photo", "status"}
    assert "pass `library`" in mcp_store.instructions
    assert "library" in tools["search"].input_schema["properties"]
    assert "library" in tools["ask"].input_schema["properties"]
    status = mcp_store.ok("status")
    assert status["libraries"] == {"laptop": 3, "nas": 2} and status["searchable"] == 4
    assert status["index_tool"] is False and status["store"].startswith("postgresql://")
    assert "cannot be" not in json.dumps(status)
    for arguments, says in (({"query": "dog", "library": "a b"}, "library 'a b' is not a library name"),
                            ({"query": "dog", "folder": "laptop"}, "give an absolute path"),
                            ({"like": "/nowhere/x.jpg"}, "no such photo in the store")):
        message = mcp_store.error("search", arguments)
        assert says in message and "\n" not in message, message
    assert "look cannot be used with a store" in mcp_store.error("ask", {"question": "what?", "look": 1})
    asked = mcp_store.ok("ask", {"question": "where is the dog?", "dry_run": True, "library": "nas"})
    assert {Path(p["path"]).parent.name for p in asked["photos"]} == {"nas"}


def test_mcp_get_photo_comes_from_the_store(two, mcp_store):
    """The record and the thumbnail from the database: the serving machine need not hold the file."""
    kitchen = two.base / "laptop/kitchen.png"
    hit = mcp_store.ok("search", {"query": "kettle on stove"})["results"][0]
    away = kitchen.rename(kitchen.with_suffix(".away"))
    try:
        result = mcp_store.call("get_photo", {"photo": hit["id"], "size": 256})
        assert not result.is_error, result.content
        record = result.structured_content
        assert record["copies"] == [{"library": "laptop", "path": str(kitchen)}] and record["file_exists"] is False
        assert "kettle" in record["caption"] and record["date"]
        image = Image.open(io.BytesIO(base64.b64decode(result.content[1].data)))
        assert image.format == "JPEG" and max(image.size) == 256
        big = mcp_store.call("get_photo", {"photo": str(kitchen)})  # a recorded path works too, file or not
        assert max(Image.open(io.BytesIO(base64.b64decode(big.content[1].data))).size) == 512
        drawn = two.run("search", "kettle on stove", "--thumbnails", "--store", two.url, IMGRAG_THUMBNAILS="halfblock",
                        COLORTERM="truecolor", COLUMNS="160")  # the terminal's thumbnail, from the store too
        assert drawn.code == 0 and str(kitchen) in drawn.stdout, drawn.stderr
        assert "(missing)" not in drawn.stdout and "\u2580" in drawn.stdout
        like = two.search("--like", str(kitchen), "--all")  # a recorded path, its file not on this machine
        assert len(like["results"]) == 3 and hit["id"] not in [h["sha256"] for h in like["results"]]
        resource = mcp_store.read(f"photo://{hit['id']}")
        assert json.loads(resource.contents[0].text)["id"] == hit["id"]
    finally:
        away.rename(kitchen)


def test_mcp_with_a_store_refuses_what_cannot_work(two):
    for args, says in ((["--store", two.url, "--allow-index"], "--allow-index cannot be combined with --store"),
                       ([str(two.base / "laptop"), "--store", two.url], "PHOTOS cannot be combined with --store")):
        r = two.run("mcp", *args)
        assert r.code == 2 and says in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = two.run("mcp", "--store", two.url.replace("/two_", "/nothere_"))  # one line at once, not at the first call
    assert r.code == 2 and "does not exist" in r.stderr and r.stderr.count("\n") == 1, r.stderr


# -- serve --store: the library filter over HTTP -----------------------------------------------


def test_serve_filters_by_library(two, tmp_path):
    served = start_server("--store", two.url, cwd=two.base, env=two.env, log=tmp_path / "serve.log")
    try:
        with served.client() as http:
            doc = http.get("/api/search", params={"q": "colours", "all": 1, "library": "nas"}).json()
            cli = two.search("colours", "--all", "--library", "nas")
            assert [(h["id"], h["score"], h["path"]) for h in doc["results"]] == \
                [(h["sha256"], h["score"], h["path"]) for h in cli["results"]]
            bad = http.get("/api/search", params={"q": "dog", "library": "x y"})
            assert bad.status_code == 400 and "library 'x y' is not a library name" in bad.json()["error"]
            too_long = http.get("/api/search", params={"q": "dog", "library": "x" * 65})
            assert too_long.status_code == 400 and "library" in too_long.json()["error"]
            asked = http.post("/api/ask", json={"question": "where is the dog?", "library": "nas"})
            assert asked.status_code == 200, asked.text
            assert {Path(p["path"]).parent.name for p in asked.json()["photos"]} == {"nas"}
            looked = http.post("/api/ask", json={"question": "where is the dog?", "look": 1})
            assert looked.status_code == 400 and "look cannot be used with a store" in looked.json()["error"]
            record = http.get(f"/api/photos/{doc['results'][0]['id']}").json()
            assert {c["library"] for c in record["copies"]} <= {"laptop", "nas"} and record["thumbnail_url"]
    finally:
        served.stop()


TOKEN = "store-page-token-77a1"


def test_the_page_over_a_store_offers_what_works(two, tmp_path):
    """`serve --store` with a token, in Chromium: the login works (a session made by one server
    passes on another: they keep no state), search, the photo, ask answer, and the Index panel
    shows the store's counts and libraries with no index jobs to start."""
    from playwright import sync_api

    from conftest import require

    env = {**two.env, "IMGRAG_SERVE_TOKEN": TOKEN}
    servers = [start_server("--store", two.url, cwd=two.base, env=env, log=tmp_path / f"page{i}.log") for i in (1, 2)]
    try:
        with sync_api.sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=require("chromium", "/usr/bin/chromium"),
                                         args=["--no-sandbox", "--disable-gpu"])
            try:
                page = browser.new_page()
                missing: list[str] = []
                page.on("response", lambda r: missing.append(f"{r.status} {r.url}") if r.status in (404, 405, 500) else None)
                page.goto(servers[0].url + "?q=dog+on+beach")
                expect = sync_api.expect
                expect(page.locator("#login")).to_be_visible(timeout=15_000)
                page.fill("#login-token", TOKEN)
                page.press("#login-token", "Enter")
                expect(page.locator("#login")).to_be_hidden(timeout=15_000)
                tile = page.locator(".tile").first
                expect(tile).to_contain_text("dog", timeout=15_000)
                page.click("#status-toggle")
                expect(page.locator("#status-fields")).to_contain_text("laptop (3), nas (2)", timeout=15_000)
                expect(page.locator("#status-fields")).to_contain_text("4 photos, up to date", timeout=15_000)
                expect(page.locator("#job-buttons")).to_be_hidden(timeout=15_000)
                expect(page.locator("#status-next")).to_contain_text("--store", timeout=15_000)
                page.fill("#ask-q", "where is the dog?")
                page.press("#ask-q", "Enter")
                expect(page.locator("#answer-cited li")).not_to_have_count(0, timeout=30_000)
                tile.click()
                expect(page.locator("#detail")).to_contain_text("Why it matched", timeout=15_000)
                cookies = page.context.cookies()
                assert missing == [], missing
            finally:
                browser.close()
        session = next(c["value"] for c in cookies if c["name"] == "imgrag_session")
        with servers[1].client(cookies={"imgrag_session": session}) as other:  # the other server knows no session
            assert other.get("/api/status").status_code == 200
        forged_value = session[:-1] + ("1" if session[-1] == "0" else "0")  # a different last character, always
        with servers[1].client(cookies={"imgrag_session": forged_value}) as forged:
            assert forged.get("/api/status").status_code == 401
    finally:
        for served in servers:
            served.stop()


# -- copies gone from a re-indexed folder ------------------------------------------------------


def test_copies_gone_from_a_folder_are_forgotten(tmp_path_factory, standin):
    store = _store(tmp_path_factory, standin, "vanish")
    a, b = store.base / "a", store.base / "b"
    draw_scene(a / "dog.jpg", "beach_dog", quality=92)
    draw_scene(a / "kitchen.png", "kitchen")
    b.mkdir()
    shutil.copy(a / "dog.jpg", b / "dog-copy.jpg")
    draw_scene(b / "sign.jpg", "stop_sign", quality=92)
    store.index(a, "--library", "a")
    store.index(b, "--library", "b")
    dog = store.search("dog on beach")["results"][0]
    assert len(dog["paths"]) == 2
    sent = standin.stats()["requests"]

    (a / "dog.jpg").unlink()  # gone from library a: still findable at b's copy
    r = store.index(a, "--library", "a")
    assert "forgot 1 copy(ies) gone from" in r.stderr
    found = store.search("dog on beach")["results"]
    assert found[0]["sha256"] == dog["sha256"] and found[0]["paths"] == [str(b / "dog-copy.jpg")]
    assert dog["sha256"] not in [h["sha256"] for h in store.search("colours", "--all", "--library", "a")["results"]]

    (a / "kitchen.png").rename(a / "stove.png")  # renamed: the new path is a copy, the old one goes
    store.index(a, "--library", "a")
    kettle = store.search("kettle on stove")["results"][0]
    assert kettle["paths"] == [str(a / "stove.png")]
    assert _psql(store.url, "SELECT path FROM copies WHERE library = 'a'") == [(str(a / "stove.png"),)]

    (b / "dog-copy.jpg").unlink()  # the dog's last copy: not searchable any more, still described
    store.index(b, "--library", "b")
    everything = store.search("colours", "--all")["results"]
    assert dog["sha256"] not in [h["sha256"] for h in everything] and len(everything) == 2
    assert store.search("dog on beach", "--min-score", "0")["results"][0]["sha256"] != dog["sha256"]
    status = json.loads(store.run("status", "--store", store.url, "--json").stdout)
    assert (status["photos"], status["described"], status["without_copy"], status["searchable"]) == (3, 3, 1, 2)
    assert standin.stats()["requests"] == sent  # nothing was described again

    shutil.copy(b / "sign.jpg", b / "sign-again.jpg")
    draw_scene(b / "dog-back.jpg", "beach_dog", quality=92)  # the same bytes come back: found again, not paid again
    store.index(b, "--library", "b")
    assert store.search("dog on beach")["results"][0]["sha256"] == dog["sha256"]
    assert standin.stats()["requests"] == sent


def test_push_again_forgets_copies_gone_from_the_folder(tmp_path_factory, standin):
    store = _store(tmp_path_factory, standin, "pushgone")
    photos = store.base / "photos"
    draw_scene(photos / "kitchen.png", "kitchen")
    draw_scene(photos / "sign.jpg", "stop_sign", quality=92)
    assert store.run("index", photos).code == 0  # a local .imgrag/, then pushed
    first = store.run("push", photos, "--store", store.url, "--library", "here")
    assert first.code == 0 and "forgot" not in first.stderr, first.stderr
    (photos / "kitchen.png").unlink()
    again = store.run("push", photos, "--store", store.url, "--library", "here")
    assert again.code == 0 and "forgot 1 copy(ies) gone from the folder" in again.stderr, again.stderr
    assert _psql(store.url, "SELECT library, path FROM copies") == [("here", str(photos / "sign.jpg"))]
    status = json.loads(store.run("status", "--store", store.url, "--json").stdout)
    assert (status["without_copy"], status["searchable"], status["up_to_date"]) == (1, 1, True)
    assert [h["path"] for h in store.search("colours", "--all")["results"]] == [str(photos / "sign.jpg")]


# -- flags that cannot work with --store ---------------------------------------------------------


@pytest.mark.parametrize("args, says", [
    (["describe", "{photos}", "--new-index"], "--new-index cannot be combined with --store"),
    (["describe", "{photos}", "--batch"], "--batch cannot be combined with --store"),
    (["describe", "{photos}", "--window", "48h"], "--window cannot be combined with --store"),
    (["describe", "{photos}", "--dry-run"], "--dry-run cannot be combined with --store"),
    (["index", "{photos}", "--new-index"], "--new-index cannot be combined with --store"),
    (["index", "{photos}", "--window", "48h"], "--window cannot be combined with --store"),
    (["embed", "{photos}"], "PHOTOS cannot be combined with --store"),
    (["embed", "--new-index"], "--new-index cannot be combined with --store"),
    (["status", "{photos}"], "PHOTOS cannot be combined with --store"),
    (["search", "dog", "--verify"], "--verify cannot be combined with --store"),
    (["ask", "dog?", "--look", "1"], "--look cannot be combined with --store"),
    (["serve", "--watch"], "--watch cannot be combined with --store"),
    (["serve", "{photos}"], "PHOTOS cannot be combined with --store"),
    (["watch", "{photos}"], "cannot write into a store (IMGRAG_STORE is set)"),
])
def test_flags_that_cannot_work_with_a_store_are_one_line(tmp_path, args, says):
    photos = tmp_path / "photos"
    draw_scene(photos / "a.jpg", "kitchen")
    env = user_env(GROQ_API_KEY=KEY, IMGRAG_STORE="postgresql://nobody@127.0.0.1:9/nowhere", NO_COLOR="1")
    r = invoke(*[a.format(photos=photos) for a in args], cwd=tmp_path, env=env)
    assert r.code == 2, r.stderr
    assert says in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / ".imgrag").exists()
