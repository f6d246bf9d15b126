"""`imgrag mcp`: an MCP client (the `mcp` SDK's own `Client`) finds the same photos as the CLI,
reads a photo's record and thumbnail, asks, and indexes new photos only when allowed and
only after an estimate; bad arguments get an MCP error while the server keeps serving;
over HTTP the Host header and the token are checked as `imgrag serve` checks them.

One library is described by the stand-in vision server and indexed once for this module.
Every server is the installed `imgrag mcp` in a real process: over stdio (the client spawns
it, as an assistant does) or over Streamable HTTP (uvicorn on 127.0.0.1)."""

from __future__ import annotations

import base64
import io
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from anyio.from_thread import start_blocking_portal
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.shared.exceptions import MCPError
from PIL import Image

from conftest import IMGRAG, KEY, copy_tree, draw_scene, images_sent, invoke, run_imgrag
from libraries import Described as Library
from libraries import described
from mcp_client import Session, session, stdio_params

URL_LINE = re.compile(r"at (http://\S+/mcp)")
TOKEN = "mcp-token-for-tests-5150"


@pytest.fixture(scope="module")
def lib(tmp_path_factory) -> Iterator[Library]:
    def draw(photos: Path) -> None:
        draw_scene(photos / "beach_dog.jpg", "beach_dog", quality=92)
        draw_scene(photos / "kitchen.png", "kitchen")
        draw_scene(photos / "trips" / "stop_sign.jpg", "stop_sign", quality=92)

    with described(tmp_path_factory, "mcp", draw, GROQ_API_KEY=KEY, HF_HUB_OFFLINE="1") as library:
        yield library


@pytest.fixture(scope="module")
def stdio(lib) -> Iterator[Session]:
    """`imgrag mcp PHOTOS`, spawned by the client as an assistant spawns it."""
    with session(stdio_params(str(lib.photos), env=lib.env, cwd=lib.base)) as s:
        yield s


@dataclass
class HttpServer:
    proc: subprocess.Popen
    url: str
    log: Path

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(60)


@contextmanager
def http_server(lib: Library, *args: str, log: Path) -> Iterator[HttpServer]:
    """`imgrag mcp PHOTOS --http --port 0 ARGS` in the background; its URL read from its stderr."""
    with log.open("w") as err:
        proc = subprocess.Popen([str(IMGRAG), "mcp", str(lib.photos), "--http", "--port", "0", *args],
                                cwd=lib.base, env=lib.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err)
    server = HttpServer(proc, "", log)
    try:
        deadline = time.monotonic() + 90
        while not (found := URL_LINE.search(log.read_text(errors="replace"))):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "imgrag mcp --http never said where it listens"
            time.sleep(0.1)
        server.url = found.group(1)
        yield server
    finally:
        assert server.stop() == 130, log.read_text()  # Ctrl-C, as `imgrag serve` exits on it


def ids(results: list[dict]) -> list[str]:
    return [r.get("id") or r["sha256"] for r in results]


# -- what an assistant sees ----------------------------------------------------------------------


def test_tools_say_how_to_use_them(stdio):
    tools = stdio.tools()
    assert set(tools) == {"search", "ask", "get_photo", "status"}  # no index without --allow-index
    search = tools["search"]
    props = search.input_schema["properties"]
    assert {"query", "like", "limit", "min_score", "all", "folder", "after", "before"} <= set(props)
    assert "library" not in props and "library" not in tools["ask"].input_schema["properties"]  # a store's filter only
    assert all(p.get("description") for p in props.values()), props
    assert "YYYY-MM-DD" in props["after"]["description"]
    for words in ("why", "min_score=0", "like", "id", "imgrag search --json"):
        assert words in search.description
    assert search.annotations.read_only_hint is True
    assert "[1]" in tools["ask"].description and "dry_run" in tools["ask"].description
    templates = stdio.portal.call(stdio.client.list_resource_templates).resource_templates
    assert [t.uri_template for t in templates] == ["photo://{id}"]


# -- search: the same photos in the same order as the CLI ----------------------------------------


@pytest.mark.parametrize("cli_args, arguments, found", [
    (["dog on the beach"], {"query": "dog on the beach"}, 1),
    (["kettle", "--min-score", "0", "--limit", "2"], {"query": "kettle", "min_score": 0, "limit": 2}, 2),
    (["sign", "--min-score", "0", "--in", "photos/trips"], {"query": "sign", "min_score": 0, "folder": "photos/trips"}, 1),
    (["kettle", "--all", "--limit", "3"], {"query": "kettle", "all": True, "limit": 3}, 3),
    (["zebra in the snow"], {"query": "zebra in the snow"}, 0),
    (["kettle", "--min-score", "0", "--after", "2999-01-01"], {"query": "kettle", "min_score": 0, "after": "2999"}, 0),
])
def test_search_gives_the_cli_results(lib, stdio, cli_args, arguments, found):
    cli = lib.cli_json(*cli_args)
    doc = stdio.ok("search", arguments)
    assert len(cli["results"]) == found and doc["count"] == found
    assert ids(doc["results"]) == ids(cli["results"])
    for hit, cli_hit in zip(doc["results"], cli["results"], strict=True):
        assert (hit["rank"], hit["score"], hit["path"], hit["caption"], hit["why"], hit["taken"]) == \
               (cli_hit["rank"], cli_hit["score"], cli_hit["path"], cli_hit["caption"], cli_hit["why"], cli_hit["taken"])
        assert hit["date"]  # the file time stands in for a date taken
    if not found:
        assert "min_score" in doc["hint"] or "filters" in doc["hint"]


def test_like_gives_the_cli_results_by_id_or_path(lib, stdio):
    """In a real `imgrag search` process, as a script runs it."""
    real = run_imgrag("search", "--like", lib.photos / "beach_dog.jpg", "--min-score", "0", "--json",
                      cwd=lib.base, env=lib.env)
    assert real.code == 0, real.stderr
    cli = json.loads(real.stdout)
    dog = stdio.ok("search", {"query": "dog on the beach"})["results"][0]
    by_id = stdio.ok("search", {"like": dog["id"], "min_score": 0})
    by_path = stdio.ok("search", {"like": str(lib.photos / "beach_dog.jpg"), "min_score": 0})
    assert ids(by_id["results"]) == ids(by_path["results"]) == ids(cli["results"])
    assert len(cli["results"]) == 2 and dog["id"] not in ids(by_id["results"])


# -- bad arguments: an MCP error, never a crash -------------------------------------------------


@pytest.mark.parametrize("tool, arguments, says", [
    ("search", {}, "give query"),
    ("search", {"query": "dog", "like": "x"}, "not both"),
    ("search", {"query": "   "}, "empty"),
    ("search", {"query": "dog", "limit": 0}, "limit"),
    ("search", {"query": "dog", "limit": "many"}, "limit"),
    ("search", {"query": "dog", "after": "last tuesday"}, "not a date"),
    ("search", {"query": "dog", "all": True, "min_score": 0.2}, "cannot be combined"),
    ("search", {"query": "dog", "folder": "no/such/folder"}, "no such folder"),
    ("search", {"query": "dog", "folder": "/"}, "no such folder inside"),
    ("search", {"like": "0" * 64}, "no such photo"),
    ("get_photo", {"photo": "../../etc/passwd"}, "no such photo"),
    ("get_photo", {}, "photo"),
    ("ask", {"question": "x", "limit": 99}, "limit"),
])
def test_bad_arguments_get_an_mcp_error_and_the_server_keeps_serving(stdio, tool, arguments, says):
    message = stdio.error(tool, arguments)
    assert says in message, message
    assert "Traceback" not in message
    assert stdio.ok("search", {"query": "dog on the beach"})["count"] == 1


def test_an_unknown_tool_or_photo_resource_is_an_error(stdio):
    assert "delete_everything" in stdio.error("delete_everything", {})
    with pytest.raises(MCPError, match="no such photo"):
        stdio.read(f"photo://{'0' * 64}")
    assert stdio.ok("status")["described"] == 3


# -- one photo, status, ask ------------------------------------------------------------------------


def test_get_photo_gives_the_record_and_a_thumbnail(lib, stdio):
    hit = stdio.ok("search", {"query": "stop sign"})["results"][0]
    result = stdio.call("get_photo", {"photo": hit["id"], "size": 200})  # the nearest size made: 256
    assert not result.is_error, result.content
    record = result.structured_content
    assert record["id"] == hit["id"] and record["caption"] == hit["caption"] == "A red STOP sign at a street corner."
    assert record["paths"] == ["photos/trips/stop_sign.jpg"] and record["file_exists"] is True
    assert record["description"]["objects"] and record["model"]
    text, image = result.content
    assert json.loads(text.text) == record
    assert image.type == "image" and image.mime_type == "image/jpeg"
    thumb = Image.open(io.BytesIO(base64.b64decode(image.data)))
    assert thumb.format == "JPEG" and max(thumb.size) == 256
    by_path = stdio.ok("get_photo", {"photo": str(lib.photos / "trips" / "stop_sign.jpg")})
    assert by_path["id"] == hit["id"]
    contents = stdio.read(f"photo://{hit['id']}").contents
    assert json.loads(contents[0].text)["caption"] == record["caption"]


def test_status_is_the_cli_status(lib, stdio):
    doc = stdio.ok("status")
    cli = json.loads(invoke("status", lib.photos, "--json", cwd=lib.base, env=lib.env).stdout)
    for key in ("files", "photos", "described", "embedded", "index_size", "index_up_to_date", "next"):
        assert doc[key] == cli[key], key
    assert doc["index_loaded"] is True and doc["next"] == "nothing (up to date)"


def test_ask_answers_with_the_cli_citations(lib, stdio):
    lib.standin.reset()
    doc = stdio.ok("ask", {"question": "where is the red kettle?"})
    cli = json.loads(invoke("ask", "where is the red kettle?", "--json", cwd=lib.base, env=lib.env).stdout)
    assert doc["answer"] and doc["answer"] == cli["answer"]
    assert doc["citations"] == cli["citations"] and doc["citations"][0]["path"].endswith("kitchen.png")
    assert [p["id"] for p in doc["photos"]] == [p["id"] for p in cli["photos"]]
    sent = len(lib.standin.requests)
    dry = stdio.ok("ask", {"question": "where is the red kettle?", "dry_run": True})
    assert dry["dry_run"] is True and "kettle" in dry["prompt"] and len(lib.standin.requests) == sent
    assert KEY not in json.dumps(doc) + json.dumps(dry)


# -- index: only when allowed, an estimate first -----------------------------------------------------


def test_index_needs_allow_index_and_an_estimate_first(lib, tmp_path):
    base = copy_tree(lib.base, tmp_path / "home")
    draw_scene(base / "photos" / "party" / "birthday.jpg", "birthday", quality=92)
    lib.standin.reset()
    with session(stdio_params(str(base / "photos"), "--allow-index", env=lib.env, cwd=base)) as s:
        assert "index" in s.tools()
        assert "confirm" in s.tools()["index"].input_schema["properties"]
        assert "call index without confirm first" in s.error("index", {"confirm": True})
        estimate = s.ok("index")
        assert estimate["dry_run"] is True and estimate["estimate"]["photos"] == 1
        assert estimate["estimate"]["prompt_tokens"] > 0 and "cost_usd" in estimate["estimate"]
        assert images_sent(lib.standin) == {}  # the estimate sends nothing
        started = s.ok("index", {"confirm": True})
        assert started["started"] is True and started["job"]["state"] == "running"
        deadline = time.monotonic() + 120
        while (job := s.ok("status")["job"])["state"] == "running":
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["state"] == "done", job
        assert list(images_sent(lib.standin).values()) == [1], (job, lib.standin.stats())  # the new photo only, once
        hits = s.ok("search", {"query": "birthday cake with candles"})["results"]
        assert hits and hits[0]["path"].endswith("party/birthday.jpg")
        assert "without confirm" in s.error("index", {"confirm": True})  # each run is priced again
        # A cron `imgrag index` beside it (a new copy of a photo): the server answers from the new
        # generation without a restart.
        draw_scene(base / "photos" / "street" / "stop_sign.jpg", "stop_sign", quality=92)
        assert invoke("index", base / "photos", cwd=base, env=lib.env).code == 0
        deadline = time.monotonic() + 30
        while s.ok("status")["generation"] != (base / ".imgrag" / "index" / "CURRENT").read_text().strip():
            assert time.monotonic() < deadline, "the server never loaded the new generation"
            s.ok("search", {"query": "stop sign"})  # a call notices the new generation
            time.sleep(0.2)
        hits = s.ok("search", {"query": "stop sign", "min_score": 0})["results"]
        assert any(p.endswith("street/stop_sign.jpg") for h in hits for p in h.get("copies", [h["path"]]))
        # A photo replaced in place is no longer its id's content: the record, but no thumbnail of it.
        kitchen = s.ok("search", {"query": "kettle on the stove"})["results"][0]
        draw_scene(base / "photos" / "kitchen.png", "birthday")
        result = s.call("get_photo", {"photo": kitchen["id"], "size": 96})
        assert not result.is_error and [c.type for c in result.content] == ["text"]
        assert result.structured_content["caption"] == kitchen["caption"]
        assert "changed" in result.structured_content["thumbnail_error"]


def test_without_an_index_it_says_so_at_once(lib, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_imgrag("mcp", empty, cwd=tmp_path, env=lib.env, timeout=60)
    assert result.code == 2 and "no index at" in result.stderr and "--allow-index" in result.stderr
    result = run_imgrag("mcp", cwd=tmp_path, env=lib.env, timeout=60)
    assert result.code == 2 and "no .imgrag/ folder" in result.stderr


# -- over HTTP: the rules of `imgrag serve` -------------------------------------------------------------


def test_http_gives_the_same_results_and_checks_the_host(lib, stdio, tmp_path):
    with http_server(lib, log=tmp_path / "mcp.log") as server:
        assert server.url.startswith("http://127.0.0.1:")
        with session(server.url) as s:
            doc = s.ok("search", {"query": "kettle", "min_score": 0})
            assert ids(doc["results"]) == ids(stdio.ok("search", {"query": "kettle", "min_score": 0})["results"])
            assert ids(doc["results"]) == ids(lib.cli_json("kettle", "--min-score", "0")["results"])
            assert "search" in s.tools() and "index" not in s.tools()
            assert "not a date" in s.error("search", {"query": "dog", "before": "soon"})
        # DNS rebinding: a page on another name that resolves to 127.0.0.1 gets nothing.
        initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}
        headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
        r = httpx.post(server.url, json=initialize, headers={**headers, "Host": "evil.example"}, timeout=30)
        assert r.status_code == 403 and "Host" in r.json()["error"]
        r = httpx.post(server.url, json=initialize, headers={**headers, "Origin": "http://evil.example"}, timeout=30)
        assert r.status_code == 403 and "cross-site" in r.json()["error"]
        for body in (b"x" * 2_000_000, (b"x" * 100_000 for _ in range(20))):  # with Content-Length, and chunked
            r = httpx.post(server.url, content=body, headers=headers, timeout=30)
            assert r.status_code == 413 and "too large" in r.text
        r = httpx.post(server.url, json=initialize, headers=headers, timeout=30)
        assert r.status_code == 200, r.text


def test_http_with_a_token(lib, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    with http_server(lib, "--token-file", str(token_file), "--allow-host", "photos.lan", log=tmp_path / "mcp.log") as server:
        with pytest.raises(Exception), session(server.url) as s:  # noqa: B017 - the SDK's own error for the 401
            s.ok("status")
        r = httpx.post(server.url, json={}, headers={"Authorization": "Bearer wrong"}, timeout=30)
        assert r.status_code == 401

        async def authorised():
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
            return streamable_http_client(server.url, http_client=http)

        with start_blocking_portal() as portal:
            transport = portal.call(authorised)
            with portal.wrap_async_context_manager(Client(transport)) as client:
                s = Session(portal, client)
                assert s.ok("search", {"query": "dog on the beach"})["count"] == 1
        r = httpx.post(server.url, json={}, headers={"Authorization": f"Bearer {TOKEN}", "Host": "photos.lan"},
                       timeout=30)
        assert r.status_code != 403 and r.status_code != 401
    assert TOKEN not in (tmp_path / "mcp.log").read_text()


def test_http_off_loopback_needs_a_token(lib):
    result = invoke("mcp", lib.photos, "--http", "--host", "0.0.0.0", "--port", "0", cwd=lib.base, env=lib.env)
    assert result.code == 2 and "set a token first" in result.stderr
    result = invoke("mcp", lib.photos, "--port", "9000", cwd=lib.base, env=lib.env)
    assert result.code == 2 and "--http" in result.stderr


def test_stdio_stops_when_the_assistant_closes_it(lib):
    """The process the assistant spawned ends with its stdin, nothing on stdout but protocol."""
    proc = subprocess.Popen([str(IMGRAG), "mcp", str(lib.photos)], cwd=lib.base, env=lib.env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(b"", timeout=90)
    assert proc.returncode == 0, err.decode()
    assert out == b"" and b"MCP server for" in err
