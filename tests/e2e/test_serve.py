"""`imgrag serve`: the API gives the CLI's ranking, photos are served by id only, the original
service's endpoints keep their contract, jobs share the CLI's writer lock, a new index
generation is picked up without a restart, and every safety rule answers 4xx JSON while the
server stays up.

One library is described (by the stand-in vision server) and indexed once for this module
(in process), and one real `imgrag serve` (uvicorn on 127.0.0.1) serves it: URLs arrive as
sent on the wire, and jobs run beside the CLI as they would. Tests of other settings use the
app in process (tests/serving.py); Ctrl-C and SIGTERM stop a real server of their own."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from PIL import Image

from conftest import draw_scene, invoke
from libraries import Described, described
from reliability_support import seed_query_encoder
from serving import Served, in_process, start_server, wait_job


@dataclass
class Library(Described):
    outside: Path  # beside the photo tree, reached by a symlink inside it
    server: Served


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    def draw(photos: Path) -> None:
        draw_scene(photos / "beach_dog.jpg", "beach_dog", quality=92)
        draw_scene(photos / "kitchen.png", "kitchen")
        draw_scene(photos / "trips" / "stop_sign.jpg", "stop_sign", quality=92)
        draw_scene(photos / "trips" / "birthday.tiff", "birthday")
        outside = photos.parents[1] / "secret"
        outside.mkdir()
        (outside / "private.txt").write_text("not a photo of yours")
        (photos / "link_out").symlink_to(outside)  # a symlink leading out of the photo tree

    with described(tmp_path_factory, "serve", draw, GROQ_API_KEY="test-key-serve-9f3e") as drawn:
        root = drawn.base.parent
        server = start_server(str(drawn.photos), cwd=drawn.base, env=drawn.env, log=root / "serve.log")
        try:
            yield Library(**vars(drawn), outside=root / "secret", server=server)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def http(lib):
    with lib.server.client() as c:
        yield c


def reindex(lib: Library, http: httpx.Client) -> None:
    """`imgrag index` as cron runs it, then wait until the server answers from the new generation."""
    result = invoke("index", lib.photos, cwd=lib.base, env=lib.env)
    assert result.code == 0, result.stderr
    gen = (lib.base / ".imgrag" / "index" / "CURRENT").read_text().strip()
    deadline = time.monotonic() + 20
    while http.get("/api/search", params={"q": "x"}).json()["generation"] != gen:
        assert time.monotonic() < deadline, "the server never loaded the new generation"
        time.sleep(0.1)


def ids(doc: dict) -> list[str]:
    return [r.get("id") or r.get("sha256") for r in doc["results"]]


# -- search: the same photos in the same order as the CLI ---------------------------------------


@pytest.mark.parametrize("cli_args, params, found", [
    (["dog on the beach"], {"q": "dog on the beach"}, 1),
    (["kettle", "--min-score", "0", "--limit", "3"], {"q": "kettle", "min_score": 0, "limit": 3}, 3),
    (["sign", "--min-score", "0", "--in", "photos/trips"], {"q": "sign", "min_score": 0, "in": "photos/trips"}, 2),
    (["zebra in the snow"], {"q": "zebra in the snow"}, 0),
    (["--like", "photos/beach_dog.jpg", "--min-score", "0"], {"like": "photos/beach_dog.jpg", "min_score": 0}, 3),
    (["kettle", "--all", "--limit", "4"], {"q": "kettle", "all": 1, "limit": 4}, 4),
    (["--like", "photos/beach_dog.jpg"], {"like": "photos/beach_dog.jpg"}, 0),
])
def test_search_gives_the_cli_ranking(lib, http, cli_args, params, found):
    cli = lib.cli_json(*cli_args)
    r = http.get("/api/search", params=params)
    assert r.status_code == 200, r.text
    api = r.json()
    assert len(cli["results"]) == found
    assert ids(api) == ids(cli)
    assert [x["score"] for x in api["results"]] == [x["score"] for x in cli["results"]]
    for hit, cli_hit in zip(api["results"], cli["results"], strict=True):
        assert hit["abs_path"] == cli_hit["path"] and hit["caption"] == cli_hit["caption"] and hit["why"] == cli_hit["why"]
        assert hit["thumbnail_url"] == f"/api/photos/{hit['id']}/thumbnail" and hit["file_url"].endswith("/file")
    # Nothing shown: the hint says how to see the nearest anyway.
    assert found or "all=1 shows the nearest" in api["hint"] or "min_score 0 shows the nearest" in api["hint"]


def test_a_filter_asked_again_selects_the_same_photos(http):
    # The server remembers which rows pass a filter (per index generation): no filter may leak into another.
    def found(folder):
        return ids(http.get("/api/search", params={"q": "sign", "min_score": 0, "in": folder}).json())

    trips, everything = found("photos/trips"), found("photos")
    assert found("photos/trips") == trips and found("photos") == everything
    assert trips and set(trips) < set(everything)


def test_like_by_id_is_like_by_path(http):
    by_path = http.get("/api/search", params={"like": "photos/kitchen.png", "min_score": 0}).json()
    sha = http.get("/api/search", params={"q": "kettle on a stove"}).json()["results"][0]["id"]
    by_id = http.get("/api/search", params={"like": sha, "min_score": 0}).json()
    assert ids(by_id) == ids(by_path) and sha not in ids(by_id)


def test_pages_join_up_to_the_full_list(http):
    full = http.get("/api/search", params={"q": "photo", "min_score": 0, "limit": 4}).json()
    first = http.get("/api/search", params={"q": "photo", "min_score": 0, "limit": 2}).json()
    second = http.get("/api/search", params={"q": "photo", "min_score": 0, "limit": 2, "offset": first["next_offset"]}).json()
    assert first["next_offset"] == 2 and second["next_offset"] is None
    assert ids(first) + ids(second) == ids(full) and len(ids(full)) == 4
    assert [r["rank"] for r in second["results"]] == [3, 4]


def test_sort_by_date_keeps_the_photos_and_orders_them_newest_first(http):
    rel = http.get("/api/search", params={"q": "photo", "min_score": 0}).json()
    by_date = http.get("/api/search", params={"q": "photo", "min_score": 0, "sort": "date"}).json()
    assert sorted(ids(rel)) == sorted(ids(by_date))
    dates = [r["date"] for r in by_date["results"]]
    assert dates == sorted(dates, reverse=True)


# -- photos ------------------------------------------------------------------------------------


def test_photo_record_thumbnail_preview_and_file(lib, http):
    hit = http.get("/api/search", params={"q": "birthday cake with candles"}).json()["results"][0]
    assert hit["path"] == "photos/trips/birthday.tiff"
    record = http.get(f"/api/photos/{hit['id']}").json()
    assert record["description"]["caption"] == hit["caption"] and record["paths"] == ["photos/trips/birthday.tiff"]
    assert record["width"] == 640 and "camera" in record and "gps" in record
    thumb = http.get(hit["thumbnail_url"], params={"size": 128})  # 96, 256, 512 are made: 128 gets 96
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"  # a TIFF shown as JPEG
    assert thumb.headers["etag"] == f'"{hit["id"]}-96"' and "max-age=31536000" in thumb.headers["cache-control"]
    img = Image.open(io.BytesIO(thumb.content))
    assert img.format == "JPEG" and max(img.size) == 96 and not img.getexif()
    assert list((lib.base / ".imgrag" / "thumbs").rglob(f"{hit['id']}-96.jpg"))
    assert not list((lib.base / ".imgrag" / "thumbs").rglob(f"{hit['id']}-128.jpg"))
    again = http.get(hit["thumbnail_url"], params={"size": 128}, headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status_code == 304 and not again.content
    preview = http.get(hit["preview_url"])
    assert preview.status_code == 200 and Image.open(io.BytesIO(preview.content)).size == (640, 480)
    original = http.get(hit["file_url"])
    assert original.content == (lib.photos / "trips" / "birthday.tiff").read_bytes()


def test_thumbnail_applies_exif_orientation_and_strips_metadata(lib, http):
    photo = lib.photos / "rotated.jpg"
    draw_scene(photo, "beach_dog", size=(400, 200))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    exif[0x010F] = "TestCam"
    with Image.open(photo) as img:
        img.save(photo, exif=exif.tobytes(), quality=90)
    reindex(lib, http)
    sha = hashlib.sha256(photo.read_bytes()).hexdigest()
    thumb = Image.open(io.BytesIO(http.get(f"/api/photos/{sha}/thumbnail", params={"size": 96}).content))
    assert thumb.size == (48, 96) and not thumb.getexif()  # portrait now, no camera left
    photo.unlink()
    reindex(lib, http)


# -- a new generation, picked up without a restart --------------------------------------------


def test_new_generation_is_served_without_restart(lib, http):
    before = http.get("/api/search", params={"q": "dog"}).json()["generation"]
    extra = lib.photos / "later" / "dog2.jpg"
    draw_scene(extra, "beach_dog", quality=70)  # new bytes, same scene
    try:
        assert invoke("index", lib.photos, cwd=lib.base, env=lib.env).code == 0
        deadline = time.monotonic() + 20
        doc = http.get("/api/search", params={"q": "dog on the beach", "min_score": 0}).json()
        while "photos/later/dog2.jpg" not in [r["path"] for r in doc["results"]] and time.monotonic() < deadline:
            time.sleep(0.2)
            doc = http.get("/api/search", params={"q": "dog on the beach", "min_score": 0}).json()
        assert doc["generation"] != before
        assert "photos/later/dog2.jpg" in [r["path"] for r in doc["results"]]
    finally:
        shutil.rmtree(extra.parent)
        reindex(lib, http)


# -- the original service's endpoints, by a client written from their contract ----------------


def test_original_service_contract(lib, http):
    assert http.get("/healthcheck").json() == {"is_alive": True}
    before = len(lib.standin.requests)
    described = http.post("/generate_description")
    assert described.status_code == 200, described.text
    items = described.json()
    assert len(lib.standin.requests) == before  # all described already: no vision request
    paths = {i["metadata"]["image_path"] for i in items}
    assert str(lib.photos / "beach_dog.jpg") in paths and all(os.path.isabs(p) for p in paths)
    assert all(isinstance(i["page_content"], str) and i["page_content"] for i in items)
    embedded = http.post("/generate_description_embeddings", json={"descriptions": items})
    assert embedded.status_code == 200 and embedded.json()["embedded"] >= 4
    answer = http.post("/get_image", json={"query": "dog on the beach"})
    assert answer.status_code == 200
    names = json.loads(answer.json())["image_name"]  # a JSON string holding a JSON object
    assert names[0] == "photos/beach_dog.jpg" and len(names) <= 5
    image = http.get(f"/images/{names[0]}")
    assert image.status_code == 200 and image.content == (lib.photos / "beach_dog.jpg").read_bytes()
    assert json.loads(http.post("/get_image", json={"query": "zebra in the snow"}).json()) == {"image_name": []}


# -- safety ------------------------------------------------------------------------------------


def assert_json_error(r: httpx.Response, *codes: int) -> None:
    assert r.status_code in codes, (r.status_code, r.text)
    assert isinstance(r.json().get("error"), str) and "Traceback" not in r.text


@pytest.mark.parametrize("path", [
    "/images/../../secret/private.txt", "/images/..%2f..%2fsecret%2fprivate.txt", "/images/%2e%2e/%2e%2e/etc/passwd",
    "/images//etc/passwd", "/images/%2Fetc%2Fpasswd", "/images/photos/link_out/private.txt",
    "/images/photos/%2e%2e/photos/beach_dog.jpg", "/images/photos/not_indexed.jpg", "/images/photos%00.jpg",
    "/images/.imgrag/manifest.json", "/api/photos/..%2f..%2fetc%2fpasswd/file", "/api/photos/../../etc/passwd",
    "/api/photos/" + "0" * 64 + "/file", "/api/photos/" + "0" * 64, "/api/photos/nothex/thumbnail",
    "/static/../../../../etc/passwd", "/static/%2e%2e/%2e%2e/cli.py", "/api/jobs/nope", "/nowhere",
])
def test_paths_outside_the_index_are_404(lib, http, path):
    r = http.send(http.build_request("GET", path))  # sent as written, not normalised by the client
    assert_json_error(r, 404)
    assert b"not a photo of yours" not in r.content


def test_parameters_that_escape_are_refused(lib, http):
    for params in ({"q": "x", "in": "../secret"}, {"q": "x", "in": "/etc"}, {"q": "x", "in": "photos/link_out/.."},
                   {"like": "../secret/private.txt"}, {"like": "/etc/passwd"}, {"like": "photos/link_out/private.txt"},
                   {"q": "x", "after": "../../etc"}, {"q": "x", "sort": "../x"}):
        r = http.get("/api/search", params=params)
        assert_json_error(r, 400, 404)
        assert b"not a photo of yours" not in r.content


@pytest.mark.parametrize("params", [
    {"q": "dog", "limit": -1}, {"q": "dog", "limit": 10**9}, {"q": "dog", "offset": -5}, {"q": "dog", "limit": "many"},
    {"q": "dog", "min_score": "nan"}, {"q": "dog", "after": "yesterday"}, {}, {"q": "dog", "like": "photos/kitchen.png"},
    {"q": "   "}, {"q": "x" * 5000},
])
def test_bad_search_parameters_are_400(http, params):
    assert_json_error(http.get("/api/search", params=params), 400)


def test_abuse_gets_4xx_json_and_the_server_stays_up(lib, http):
    where = urlsplit(lib.server.url)
    conn = HTTPConnection(where.hostname, where.port, timeout=30)  # httpx refuses URLs this long
    conn.request("GET", "/api/search?q=" + "x" * (1 << 20))
    answer = conn.getresponse()
    assert answer.status == 414 and "error" in json.loads(answer.read())
    conn.close()
    assert_json_error(http.post("/get_image", content=b'{"query": "' + b"x" * (1 << 20) + b'"}',
                                headers={"content-type": "application/json"}), 413)
    assert_json_error(http.post("/get_image", content=b"{not json", headers={"content-type": "application/json"}), 400)
    assert_json_error(http.post("/get_image", json={"nope": 1}), 400)
    assert_json_error(http.post("/api/jobs", json={"kind": "format-disk"}), 400)
    assert_json_error(http.post("/api/jobs", json={"kind": "describe", "limit": -1}), 400)
    assert_json_error(http.put("/api/search"), 405)
    assert_json_error(http.get("/api/search", params={"q": "dog"}, headers={"Host": "evil.example"}), 403)
    assert_json_error(http.get("/healthcheck", headers={"Host": "127.0.0.1.evil.example:80"}), 403)
    cross = {"Origin": "https://evil.example"}
    assert_json_error(http.post("/generate_description", headers=cross), 403)
    assert_json_error(http.post("/api/jobs", json={"kind": "describe"}, headers=cross), 403)
    assert_json_error(http.post("/api/jobs", json={"kind": "describe"}, headers={"Sec-Fetch-Site": "cross-site"}), 403)
    assert_json_error(http.delete("/api/jobs/x", headers={"Origin": "null"}), 403)
    same = http.post("/get_image", json={"query": "dog"}, headers={"Origin": lib.server.url.rstrip("/"),
                                                                  "Sec-Fetch-Site": "same-origin"})
    assert same.status_code == 200
    assert "access-control-allow-origin" not in http.get("/api/search", params={"q": "dog"}, headers=cross).headers
    assert http.get("/healthcheck").json() == {"is_alive": True}
    assert "test-key-serve-9f3e" not in lib.server.stderr


def test_status_has_the_cli_fields(lib, http):
    cli = invoke("status", lib.photos, "--json", cwd=lib.base, env=lib.env)
    expected = json.loads(cli.stdout)
    got = http.get("/api/status").json()
    assert {k: got[k] for k in expected} == expected
    assert got["read_only"] is False and got["auth"] is False and got["index_loaded"] is True
    for r in (got, http.get("/api/jobs").json(), http.get("/openapi.json").json()):
        assert "test-key-serve-9f3e" not in json.dumps(r)


def test_page_and_docs_are_served(http):
    page = http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert http.get("/openapi.json").json()["paths"]["/api/search"]
    docs = http.get("/docs")
    assert docs.status_code == 200 and "cdn" not in docs.text.lower()  # offline: Swagger UI's files come from here
    scripts = re.findall(r'src="([^"]+\.js)"', docs.text)
    assert scripts and all(http.get(src).status_code == 200 for src in scripts)


JS_TYPES = {"text/javascript", "application/javascript", "application/x-javascript"}  # as mimetypes may say


def test_page_modules_are_served_as_javascript_and_packaged(http):
    """The page is ES modules: a browser refuses one served with another type (and nosniff).
    Every module main.js imports, directly or not, is served; package-data ships them all."""
    entry = re.findall(r'<script type="module" src="([^"]+)"', http.get("/").text)
    assert entry == ["static/js/main.js"]
    seen, todo = set(), ["/static/js/main.js"]
    while todo:
        path = todo.pop()
        seen.add(path)
        r = http.get(path)
        assert r.status_code == 200 and r.headers["content-type"].split(";")[0] in JS_TYPES, (path, r.headers)
        imported = re.findall(r'^import .* from "\./([\w-]+\.js)";$', r.text, re.MULTILINE)
        todo += [f"/static/js/{name}" for name in imported if f"/static/js/{name}" not in seen]
    web = Path(__file__).parents[2] / "src" / "imgrag" / "web"
    assert seen == {f"/static/js/{p.name}" for p in (web / "static" / "js").glob("*.js")}  # none left unused
    # A non-editable install ships what [tool.setuptools.package-data] names ("static/*" is not recursive).
    line = re.search(r'^"imgrag\.web" = \[(.*)\]$', (web.parents[2] / "pyproject.toml").read_text(), re.MULTILINE)
    patterns = re.findall(r'"([^"]+)"', line.group(1))
    for file in (f for f in (web / "static").rglob("*") if f.is_file()):
        rel = file.relative_to(web)
        assert any(len(rel.parts) == len(Path(p).parts) and rel.match(p) for p in patterns), rel


# -- jobs: one writer, shared with the CLI ---------------------------------------------------


def test_dry_run_job_gives_the_estimate_and_sends_nothing(lib, http):
    new = draw_scene(lib.photos / "new" / "kitchen2.jpg", "kitchen", quality=60)
    try:
        before = len(lib.standin.requests)
        r = http.post("/api/jobs", json={"kind": "index", "dry_run": True})
        assert r.status_code == 202, r.text
        job = wait_job(http, r.json()["id"])
        assert job["state"] == "done", job
        est = job["estimate"]
        assert est["photos"] == 1 and est["prompt_tokens"] > 0 and est["cost_usd"] >= 0 and "nothing was sent" in est["text"]
        assert est["embed"] == 0 and len(lib.standin.requests) == before
    finally:
        shutil.rmtree(new.parent)


def test_job_refused_while_a_cli_writer_holds_the_lock(lib, http):
    from filelock import FileLock

    # What `imgrag describe/embed/index` holds while it writes (workspace.writer_lock).
    lock = FileLock(str(lib.base / ".imgrag" / "lock"))
    lock.acquire()
    try:
        r = http.post("/api/jobs", json={"kind": "embed"})
        assert_json_error(r, 409)
        assert "busy" in r.json()["error"]
    finally:
        lock.release()


def test_running_job_makes_the_cli_busy_shows_progress_and_cancels(lib, http):
    folder = lib.photos / "batch"
    for i in range(24):
        draw_scene(folder / f"cake{i}.jpg", "birthday", quality=40 + i)
    lib.standin.set_default(latency=1.0)
    try:
        r = http.post("/api/jobs", json={"kind": "describe"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        assert_json_error(http.post("/api/jobs", json={"kind": "embed"}), 409)  # one job at a time
        events = []
        with http.stream("GET", f"/api/jobs/{job_id}/events") as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["done"] >= 1:
                        break
        assert events[0]["state"] == "running" and events[-1]["total"] == 24
        cli = invoke("embed", lib.photos, cwd=lib.base, env=lib.env)
        assert cli.code == 2 and "busy" in cli.stderr  # cron gets "busy" while a job runs
        assert http.delete(f"/api/jobs/{job_id}").status_code == 200
        job = wait_job(http, job_id)
        assert job["state"] == "cancelled" and 1 <= job["done"] < 24
        assert job["message"].startswith("cancelled") and "cancelling" not in job["message"]
        with http.stream("GET", f"/api/jobs/{job_id}/events") as stream:  # a finished job: its end, then close
            last = [json.loads(x[6:]) for x in stream.iter_lines() if x.startswith("data: ")]
        assert last[-1]["state"] == "cancelled"
        records = [json.loads(x) for x in (lib.base / ".imgrag" / "descriptions.jsonl").read_text().splitlines()]
        kept = {p for r in records for p in r["paths"] if p.startswith("photos/batch/")}
        assert len(kept) == job["done"]  # every finished request was written, nothing more counted
    finally:
        lib.standin.set_default(latency=0.0)
        shutil.rmtree(folder)


# -- servers with other settings ---------------------------------------------------------------


def test_token_read_only_allow_host_and_cors(lib, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="imgrag.serve")
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-tests\n")
    with in_process(lib.photos, token_file=token_file, read_only=True, allow_hosts=("photos.internal",),
                    cors="https://app.example.org", cwd=lib.base, env=lib.env) as c:
        assert c.get("/healthcheck", headers={"Host": "photos.internal:8000"}).status_code == 200
        assert_json_error(c.get("/healthcheck", headers={"Host": "other.internal"}), 403)
        assert c.get("/healthcheck").status_code == 200
        assert c.get("/").status_code == 200  # the page loads to show its login form
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"},
                        {"Cookie": "imgrag_session=s3cret-token-for-tests"}):
            r = c.get("/api/search", params={"q": "dog"}, headers=headers)
            assert_json_error(r, 401)
            assert r.json()["login"] is True
        assert_json_error(c.get("/images/photos/beach_dog.jpg"), 401)
        assert_json_error(c.get("/docs"), 401)
        ok = c.get("/api/search", params={"q": "dog"}, headers={"Authorization": "Bearer s3cret-token-for-tests"})
        assert ok.status_code == 200 and ok.json()["results"]
        assert_json_error(c.post("/api/login", json={"token": "guess"}), 401)
        login = c.post("/api/login", json={"token": "s3cret-token-for-tests"})
        assert login.status_code == 200 and "s3cret" not in login.headers["set-cookie"]
        assert "httponly" in login.headers["set-cookie"].lower()
        assert c.get("/api/search", params={"q": "dog"}).status_code == 200  # the cookie now
        status = c.get("/api/status").json()
        assert status["read_only"] is True and status["auth"] is True
        assert_json_error(c.post("/api/jobs", json={"kind": "describe"}), 403)
        assert_json_error(c.post("/generate_description"), 403)
        assert_json_error(c.post("/generate_description_embeddings", json={"descriptions": []}), 403)
        assert c.post("/get_image", json={"query": "dog"}).status_code == 200  # reading is fine
        bearer = {"Authorization": "Bearer s3cret-token-for-tests"}
        r = c.get("/api/search", params={"q": "dog"}, headers={"Origin": "https://app.example.org", **bearer})
        assert r.headers["access-control-allow-origin"] == "https://app.example.org"
        r = c.get("/api/search", params={"q": "dog"}, headers={"Origin": "https://evil.example", **bearer})
        assert "access-control-allow-origin" not in r.headers
        r = c.post("/get_image", json={"query": "dog"}, headers={"Origin": "https://app.example.org", **bearer})
        assert r.status_code == 200
        assert_json_error(c.post("/get_image", json={"query": "dog"}, headers={"Origin": "https://evil.example"}), 403)
    assert "s3cret-token-for-tests" not in caplog.text


def test_sigterm_stops_a_server_that_logged_no_token(lib, tmp_path):
    """A real server with a token (real process: the signal is the point)."""
    token_file = tmp_path / "token"
    token_file.write_text("s3cret-token-for-tests\n")
    server = start_server(str(lib.photos), "--token-file", str(token_file), cwd=lib.base, env=lib.env,
                          log=tmp_path / "serve.log")
    try:
        with server.client() as c:
            assert_json_error(c.get("/api/search", params={"q": "dog"}, headers={"Authorization": "Bearer wrong"}), 401)
            ok = c.get("/api/search", params={"q": "dog"}, headers={"Authorization": "Bearer s3cret-token-for-tests"})
            assert ok.status_code == 200 and ok.json()["results"]
    finally:
        code = server.stop(signal.SIGTERM)
    assert code in (0, -signal.SIGTERM)
    assert "s3cret-token-for-tests" not in server.stderr


def test_ctrl_c_stops_a_running_job_and_keeps_what_it_finished(lib, tmp_path):
    folder = lib.photos / "batch2"
    for i in range(24):
        draw_scene(folder / f"sign{i}.jpg", "stop_sign", quality=40 + i)
    server = start_server(str(lib.photos), cwd=lib.base, env=lib.env, log=tmp_path / "serve.log")
    lib.standin.set_default(latency=1.0)
    try:
        with server.client() as c:
            job = c.post("/api/jobs", json={"kind": "index"}).json()
            deadline = time.monotonic() + 120
            while c.get(f"/api/jobs/{job['id']}").json()["done"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert server.stop(signal.SIGINT) == 130
        assert "stopping: the index job finishes its requests in flight" in server.stderr
        assert "Traceback" not in server.stderr
        lines = (lib.base / ".imgrag" / "descriptions.jsonl").read_text().splitlines()
        kept = {p for r in map(json.loads, lines) for p in r["paths"] if p.startswith("photos/batch2/")}
        assert 1 <= len(kept) < 24  # what finished is on disk; the rest was never asked for
        assert invoke("status", "--json", cwd=lib.base, env=lib.env).code == 0  # still readable
    finally:
        lib.standin.set_default(latency=0.0)
        server.stop()
        shutil.rmtree(folder)


def test_non_loopback_host_needs_a_token(lib):
    result = invoke("serve", lib.photos, "--host", "0.0.0.0", "--port", "0", cwd=lib.base, env=lib.env)
    assert result.code == 2 and "token" in result.stderr and result.stderr.startswith("imgrag: error:")


def test_serving_a_folder_not_indexed_yet(lib, tmp_path):
    photos = tmp_path / "fresh" / "photos"
    draw_scene(photos / "stop_sign.jpg", "stop_sign", quality=92)
    with in_process(photos, cwd=tmp_path, env=lib.env) as c:
        status = c.get("/api/status").json()
        assert status["exists"] is False and status["photos"] == 1 and status["index_loaded"] is False
        doc = c.get("/api/search", params={"q": "stop sign"}).json()
        assert doc["results"] == [] and doc["index"] == "none" and doc["hint"]
        seed_query_encoder(photos.parent / ".imgrag")  # the query-encoder export is not what this is about
        job = c.post("/api/jobs", json={"kind": "index"}).json()
        assert wait_job(c, job["id"])["state"] == "done"
        hits = c.get("/api/search", params={"q": "stop sign"}).json()["results"]
        assert [h["path"] for h in hits] == ["photos/stop_sign.jpg"]


def test_an_index_that_is_not_there_is_a_clear_error(tmp_path, lib):
    # (With neither PHOTOS nor --index and no index found, serve shows the demo: test_demo.py.)
    result = invoke("serve", "--index", tmp_path / "nowhere", "--port", "0", cwd=tmp_path, env=lib.env)
    assert result.code == 2 and result.stderr.startswith("imgrag: error: ") and result.stderr.count("\n") == 1
