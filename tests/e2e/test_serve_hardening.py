"""`imgrag serve` against hostile clients, each rule tried on a real uvicorn (`imgrag serve` in
its own process): bad filter values get 400 (never 500) with one message whatever exists;
slow clients are cut off and cannot take every connection; sessions are random, held by the
server, revoked by logout; wrong tokens are throttled per client address; and the smaller
rules (414, 413 for chunked bodies, JSON for bad request lines, strict Host names, verify=1
checks Origin, the schema's 400, dry runs beside a CLI writer).

Clients bind their own loopback address (127.0.0.N) where a rule counts per client, so the
tests do not share a throttle or a connection allowance."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from conftest import copy_tree
from imgrag.web.protocol import BODY_SECONDS, HEADER_SECONDS, MAX_PER_CLIENT
from imgrag.web.sessions import FAILURE_BURST, SESSION_SECONDS
from serving import Served, start_server, wait_job
from standin_vlm import StandinVLM

TOKEN = "hardening-token-5c1e0a9d"


@pytest.fixture(scope="module")
def site(library, tmp_path_factory):
    """A private copy of the search library, a stand-in model, and two real servers of it:
    `open` (no token, as on loopback) and `guarded` (with a token)."""
    root = tmp_path_factory.mktemp("hardening")
    base = copy_tree(library.base, root / "lib")
    (base / "loop").symlink_to(base / "loop")  # a symlink loop inside the served folder
    standin = StandinVLM().start()
    env = {**library.env, "IMGRAG_BASE_URL": standin.url}
    token_file = root / "token"
    token_file.write_text(TOKEN + "\n")
    open_server = start_server(str(base / "photos"), cwd=base, env=env, log=root / "open.log")
    guarded = start_server(str(base / "photos"), "--token-file", str(token_file), cwd=base, env=env,
                           log=root / "guarded.log")
    try:
        yield {"base": base, "open": open_server, "guarded": guarded}
    finally:
        open_server.stop()
        guarded.stop()
        standin.stop()


def client(server: Served, address: str = "127.0.0.1", **kw) -> httpx.Client:
    """A client of `server` whose connections come from `address`."""
    return httpx.Client(base_url=server.url, timeout=60, transport=httpx.HTTPTransport(local_address=address), **kw)


def where(server: Served) -> tuple[str, int]:
    url = urlsplit(server.url)
    assert url.hostname and url.port
    return url.hostname, url.port


def assert_json_error(r: httpx.Response, *codes: int) -> dict:
    assert r.status_code in codes, (r.status_code, r.text)
    doc = r.json()
    assert isinstance(doc.get("error"), str) and "Traceback" not in r.text
    return doc


# -- 3. bad input is a 400, never a 500 --------------------------------------------------------


BAD_FILTERS = [
    {"after": "0001-01-01T00:00+14:00"}, {"before": "9999-12-31T23:59:59-14:00"}, {"in": "\x00"},
    {"in": "x" * 300}, {"in": "loop"}, {"in": "loop/inside"}, {"in": "/etc/passwd"}, {"in": "/nonexistent"},
]


@pytest.mark.parametrize("bad", BAD_FILTERS)
def test_bad_filters_are_400_in_search_and_ask(site, bad):
    with client(site["open"]) as c:
        assert_json_error(c.get("/api/search", params={"q": "dog", **bad}), 400)
        assert_json_error(c.post("/api/ask", json={"question": "where is the dog?", **bad}), 400)
    assert "Traceback" not in site["open"].stderr


def test_in_says_the_same_whether_a_path_exists_or_not(site):
    with client(site["open"]) as c:
        messages = {given: c.get("/api/search", params={"q": "dog", "in": given}).json()["error"]
                    for given in ("/etc/passwd", "/etc", "/nonexistent", "../../../etc", "photos/nope")}
    # "in PATH: the reason": the reason is the same for each
    assert len({m.split(": ", 1)[1] for m in messages.values()}) == 1, messages
    assert "no such folder inside" in messages["/etc/passwd"]


# -- 5. slow clients ---------------------------------------------------------------------------


def _slow_socket(host: str, port: int, first: bytes, address: str) -> socket.socket:
    sock = socket.socket()
    sock.bind((address, 0))
    sock.connect((host, port))
    sock.sendall(first)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket) -> bool:
    try:
        return sock.recv(65536) == b""  # the server's FIN (any answer before it is read and dropped)
    except BlockingIOError:
        return False
    except OSError:  # reset: closed at once
        return True


def _trickle(socks: dict[str, socket.socket], byte: bytes, until: float) -> dict[str, float]:
    """Send `byte` on each open socket every 0.5 s until each is closed or `until`; when each closed."""
    start = time.monotonic()
    closed: dict[str, float] = {}
    while len(closed) < len(socks) and time.monotonic() < until:
        for name, sock in socks.items():
            if name in closed:
                continue
            if _closed(sock):
                closed[name] = time.monotonic() - start
                continue
            try:
                sock.send(byte)
            except OSError:
                closed[name] = time.monotonic() - start
        time.sleep(0.5)
    return closed


def test_slowloris_is_cut_off_and_cannot_take_every_connection(site):
    host, port = where(site["open"])
    head = f"GET /healthcheck HTTP/1.1\r\nHost: {host}\r\n".encode()
    socks = {f"h{i}": _slow_socket(host, port, head, "127.0.0.9") for i in range(200)}
    body_head = (f"POST /api/login HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                 "Content-Length: 100000\r\n\r\n").encode()
    socks["body"] = _slow_socket(host, port, body_head, "127.0.0.10")
    kept = _slow_socket(host, port, head + b"\r\n", "127.0.0.11")  # a whole request, then a kept-alive trickle
    kept.setblocking(True)
    assert b"200 OK" in kept.recv(65536)
    kept.setblocking(False)
    socks["kept"] = kept
    try:
        with client(site["open"]) as c:  # another client is served while they hang on
            assert c.get("/healthcheck").json() == {"is_alive": True}
        closed = _trickle(socks, b"x", until=time.monotonic() + BODY_SECONDS + 15)
    finally:
        for sock in socks.values():
            sock.close()
    assert set(closed) == set(socks), f"never closed: {sorted(set(socks) - set(closed))[:5]}"
    at_once = [n for n, t in closed.items() if n.startswith("h") and t < 2]
    assert len(at_once) >= 200 - MAX_PER_CLIENT, "the connections past the per-client cap are closed at once"
    late = [t for n, t in closed.items() if n.startswith("h") and n not in at_once]
    assert late and all(HEADER_SECONDS - 2 < t < HEADER_SECONDS + 5 for t in late), late
    assert HEADER_SECONDS - 2 < closed["kept"] < HEADER_SECONDS + 5
    assert BODY_SECONDS - 2 < closed["body"] < BODY_SECONDS + 5
    with client(site["open"]) as c:
        assert c.get("/healthcheck").json() == {"is_alive": True}


# -- 6. sessions and wrong tokens --------------------------------------------------------------


def test_sessions_are_random_revocable_and_strict(site):
    with client(site["guarded"], "127.0.0.30") as c:
        first = c.post("/api/login", json={"token": TOKEN})
        one = first.cookies["imgrag_session"]
        c.cookies.clear()
        two = c.post("/api/login", json={"token": TOKEN}).cookies["imgrag_session"]
        c.cookies.clear()
    assert one != two and TOKEN not in one and len(one) >= 40
    set_cookie = first.headers["set-cookie"].lower()
    assert "samesite=strict" in set_cookie and "httponly" in set_cookie and f"max-age={SESSION_SECONDS}" in set_cookie
    with client(site["guarded"], "127.0.0.30", cookies={"imgrag_session": one}) as c:
        assert c.get("/api/status").status_code == 200
        out = c.post("/api/logout")
        assert out.status_code == 200
        cleared = out.headers["set-cookie"].lower()
        assert "samesite=strict" in cleared and "httponly" in cleared and "max-age=0" in cleared
    with client(site["guarded"], "127.0.0.30", cookies={"imgrag_session": one}) as c:  # the old cookie, replayed
        assert "log in again" in assert_json_error(c.get("/api/status"), 401)["error"]
    with client(site["guarded"], "127.0.0.30", cookies={"imgrag_session": two}) as c:  # the other login holds
        assert c.get("/api/status").status_code == 200


def _login(address: str, token: str, server: Served) -> httpx.Response:
    with client(server, address) as c:
        return c.post("/api/login", json={"token": token})


def test_parallel_wrong_logins_are_throttled_for_that_client_only(site):
    server = site["guarded"]
    with ThreadPoolExecutor(100) as pool:
        answers = list(pool.map(lambda n: _login("127.0.0.31", f"guess-{n}", server), range(100)))
    codes = [r.status_code for r in answers]
    assert FAILURE_BURST <= codes.count(401) <= FAILURE_BURST + 1 and codes.count(429) + codes.count(401) == 100
    refused = next(r for r in answers if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1 and refused.json()["error"].startswith("too many wrong tokens")
    assert _login("127.0.0.31", TOKEN, server).status_code == 429  # even the right token, while throttled
    assert _login("127.0.0.32", TOKEN, server).status_code == 200  # another client is not held up


def test_wrong_bearer_tokens_are_throttled_too(site):
    def status(address: str, token: str) -> httpx.Response:
        with client(site["guarded"], address, headers={"Authorization": f"Bearer {token}"}) as c:
            return c.get("/api/status")

    for n in range(FAILURE_BURST):
        assert_json_error(status("127.0.0.33", f"guess-{n}"), 401)
    refused = status("127.0.0.33", "one-more")
    assert_json_error(refused, 429)
    assert "retry-after" in refused.headers
    assert status("127.0.0.33", TOKEN).status_code == 429
    assert status("127.0.0.34", TOKEN).status_code == 200


# -- 7. the smaller rules ----------------------------------------------------------------------


def _raw(server: Served, data: bytes) -> bytes:
    host, port = where(server)
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_long_urls_long_chunked_bodies_and_bad_requests_get_json(site):
    host, port = where(site["open"])
    conn = HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/images/" + "x" * (1 << 20))
    answer = conn.getresponse()
    assert answer.status == 414 and "path is too long" in json.loads(answer.read())["error"]
    conn.close()
    conn = HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/get_image", body=iter([b'{"query": "' + b"x" * 65536] * 20), encode_chunked=True,
                 headers={"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 413 and "too large" in json.loads(answer.read())["error"]
    conn.close()
    for bad in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"):
        head, _, body = _raw(site["open"], bad).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400") and b"content-type: application/json" in head.lower()
        assert "not valid HTTP" in json.loads(body)["error"]


@pytest.mark.parametrize("host, status", [
    ("[::1]evil.example", 403), ("localhost:evil", 403), ("127.0.0.1:80:80", 403), ("[::1", 403),
    ("evil.example", 403), ("localhost:8000", 200), ("[::1]:8000", 200), ("127.0.0.1", 200),
])
def test_host_names_are_parsed_strictly(site, host, status):
    with client(site["open"]) as c:
        assert c.get("/healthcheck", headers={"Host": host}).status_code == status


def test_verify_refuses_a_foreign_origin(site):
    with client(site["open"]) as c:
        for headers in ({"Origin": "https://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            r = c.get("/api/search", params={"q": "dog", "verify": "true"}, headers=headers)
            assert "cross-site" in assert_json_error(r, 403)["error"]
        # the same search without verify spends nothing and is answered
        assert c.get("/api/search", params={"q": "dog"}, headers={"Origin": "https://evil.example"}).status_code == 200


def test_schema_says_400_for_bad_input_and_405_names_every_method(site):
    with client(site["open"]) as c:
        schema = c.get("/openapi.json").json()
        responses = schema["paths"]["/api/search"]["get"]["responses"]
        assert "422" not in responses and responses["400"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/Error"}
        assert "HTTPValidationError" not in json.dumps(schema)
        assert_json_error(c.get("/api/search", params={"q": "dog", "limit": "many"}), 400)
        r = c.request("OPTIONS", "/api/jobs")
        assert_json_error(r, 405)
        assert {"GET", "POST"} <= {m.strip() for m in r.headers["allow"].split(",")}


def test_a_dry_run_job_runs_beside_a_cli_writer(site):
    from filelock import FileLock

    lock = FileLock(str(site["base"] / ".imgrag" / "lock"))  # what a cron `imgrag index` holds while it writes
    lock.acquire()
    try:
        with client(site["open"]) as c:
            r = c.post("/api/jobs", json={"kind": "describe", "dry_run": True})
            assert r.status_code == 202, r.text
            job = wait_job(c, r.json()["id"], timeout=120)
            assert job["state"] == "done", job
            assert "nothing was sent" in job["estimate"]["text"]
            assert_json_error(c.post("/api/jobs", json={"kind": "describe"}), 409)  # a real run still waits its turn
    finally:
        lock.release()


def test_errors_reached_no_log_as_a_bug(site):
    """Nothing above was an internal error (the server logs every one)."""
    for server in (site["open"], site["guarded"]):
        assert "internal error" not in server.stderr and "Traceback" not in server.stderr


def test_docs_name_the_loopback_rule_as_the_code_has_it():
    from imgrag.web.security import is_loopback

    assert is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("0.0.0.0")
    lan = (Path(__file__).parents[2] / "docs" / "how-to" / "lan.md").read_text()
    assert "127.0.0.0/8" in lan
