"""`POST /api/ask`, `GET /api/search?verify=1` and `POST /get_image` with IMGRAG_VERIFY=1,
against the app of `imgrag serve` in process (tests/serving.py) over a copy of the ask library
(tests/libraries.py, indexed once per session), through the real groq SDK and the stand-in:
the routes give what the CLI gives."""

from __future__ import annotations

import json

import pytest

from conftest import copy_tree, invoke
from libraries import ASK_KEY as KEY
from libraries import ask_catalog, ask_env
from serving import in_process
from standin_vlm import StandinVLM


@pytest.fixture(scope="module")
def web(library_dir, tmp_path_factory):
    base = copy_tree(library_dir, tmp_path_factory.mktemp("web-ask") / "lib")  # verdicts are cached in it
    with StandinVLM(catalog=ask_catalog(tmp_path_factory.mktemp("web-ask-refs"))) as standin:
        env = {**ask_env(), "IMGRAG_BASE_URL": standin.url, "IMGRAG_VERIFY": "1"}
        with in_process(cwd=base, env=env) as http:
            yield http, standin, env, base


def chats(standin: StandinVLM) -> list[dict]:
    return [r for r in standin.requests if r["path"].endswith("/chat/completions")]


def test_api_ask_gives_the_cli_json(web):
    http, standin, env, base = web
    standin.reset()
    r = http.post("/api/ask", json={"question": "where is the red kettle?"})
    assert r.status_code == 200, r.text
    doc = r.json()
    cli = json.loads(invoke("ask", "where is the red kettle?", "--json", cwd=base, env=env).stdout)
    assert doc["answer"] == cli["answer"] and doc["citations"][0]["path"] == cli["citations"][0]["path"]
    assert doc["citations"][0]["thumbnail_url"] == f"/api/photos/{doc['citations'][0]['id']}/thumbnail"
    assert [p["id"] for p in doc["photos"]] == [p["id"] for p in cli["photos"]]
    assert KEY not in r.text


def test_api_ask_streams_events_and_filters(web):
    http, standin, _, _base = web
    standin.reset()
    standin.stream_interval = 0.01
    with http.stream("POST", "/api/ask", json={"question": "children with a birthday cake", "in": "photos/home"},
                     headers={"Accept": "text/event-stream"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = [block for block in r.read().decode().split("\n\n") if block]
    kinds = [block.split("\n")[0] for block in events]
    assert kinds[-1] == "event: result" and kinds.count("event: chunk") > 3
    text = "".join(json.loads(b.split("data: ", 1)[1])["text"] for b in events if b.startswith("event: chunk"))
    result = json.loads(events[-1].split("data: ", 1)[1])
    assert text.strip() == result["answer"] and result["citations"][0]["path"].endswith("home/birthday.jpg")
    assert all("/photos/home/" in p["path"] for p in result["photos"])


def test_api_ask_no_match_bad_input_and_quota(web):
    http, standin, _, _ = web
    standin.reset()
    r = http.post("/api/ask", json={"question": "quarterly tax spreadsheet with invoice numbers"})
    assert r.status_code == 200 and r.json()["answer"] is None and chats(standin) == []
    assert http.post("/api/ask", json={"question": ""}).status_code == 400
    assert http.post("/api/ask", json={"question": "x", "limit": 500}).status_code == 400
    standin.enqueue("daily")
    r = http.post("/api/ask", json={"question": "stop sign at a street corner"})
    assert r.status_code == 429 and "daily quota" in r.json()["error"] and KEY not in r.text
    r = http.post("/api/ask", json={"question": "stop sign"}, headers={"Origin": "https://evil.example"})
    assert r.status_code == 403 and chats(standin)[-1]["response_status"] == 429  # nothing more was sent


def test_api_search_verify_and_get_image(web):
    http, standin, _, _ = web
    standin.reset()
    r = http.get("/api/search", params={"q": "kettle on a gas stove", "verify": 1, "min_score": 0, "limit": 4})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert {res["path"]: res["verified"] for res in results} == {
        res["path"]: res["path"].endswith("home/kitchen.jpg") for res in results}
    assert all(res["reason"] for res in results)
    r = http.get("/api/search", params={"q": "kettle on a gas stove", "verify": 1},
                 headers={"Sec-Fetch-Site": "cross-site"})
    assert r.status_code == 403
    # The original service's endpoint, with IMGRAG_VERIFY=1: only the model-checked photos.
    r = http.post("/get_image", json={"query": "kettle on a gas stove"})
    assert r.status_code == 200
    assert json.loads(r.json()) == {"image_name": ["photos/home/kitchen.jpg"]}
