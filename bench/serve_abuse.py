"""`imgrag serve` with a token, under the abuse of issue 21: token guessing and slow clients.

1. 100 wrong logins sent in parallel from one address (127.0.0.50): how long they all take,
   how many were refused with 429 (not slept on), and how long a right login from another
   address (127.0.0.51) takes meanwhile.
2. 200 slowloris connections from 127.0.0.52 (headers never finished, a byte a second):
   how many were closed at once (the per-address cap), when the last was closed (the header
   deadline), and how long a request from another address takes meanwhile.

Prints one JSON line. Goals: the 100 wrong logins within 1 s (the old 0.5 s sleep per login
took 5.6 s), the right login of another client under 200 ms, every slowloris socket closed
within HEADER_SECONDS + 2.

    python bench/serve_abuse.py
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from http.client import HTTPConnection
from pathlib import Path

import httpx

TOKEN = "bench-token-0123456789abcdef"


def start(folder: Path) -> tuple[subprocess.Popen, str]:
    (folder / "photos").mkdir()
    (folder / "token").write_text(TOKEN)
    log = folder / "serve.log"
    with log.open("w") as err:
        proc = subprocess.Popen([str(Path(sys.executable).with_name("imgrag")), "serve", str(folder / "photos"),
                                 "--token-file", str(folder / "token"), "--port", "0"],
                                cwd=folder, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"at (http://\S+/)", log.read_text())
        if found:
            return proc, found.group(1)
        time.sleep(0.05)
    proc.kill()
    sys.exit(f"serve_abuse: no URL from imgrag serve: {log.read_text()[-800:]}")


def login(url: str, address: str, token: str) -> tuple[int, float]:
    """One login on its own connection from `address` (http.client: an httpx.Client per
    request costs the client more than the server's answer)."""
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    t0 = time.perf_counter()
    conn = HTTPConnection(host, int(port), timeout=60, source_address=(address, 0))
    conn.request("POST", "/api/login", body=json.dumps({"token": token}), headers={"Content-Type": "application/json"})
    status = conn.getresponse().status
    conn.close()
    return status, time.perf_counter() - t0


def guessing(url: str) -> dict:
    with ThreadPoolExecutor(101) as pool:
        t0 = time.perf_counter()
        wrong = [pool.submit(login, url, "127.0.0.50", f"guess-{n}") for n in range(100)]
        right = pool.submit(login, url, "127.0.0.51", TOKEN)
        codes = [f.result()[0] for f in wrong]
        seconds = time.perf_counter() - t0
        right_status, right_seconds = right.result()
    return {"wrong_logins": 100, "wrong_logins_s": round(seconds, 3), "wrong_401": codes.count(401),
            "wrong_429": codes.count(429), "right_login_other_client_status": right_status,
            "right_login_other_client_ms": round(right_seconds * 1000, 1)}


def slowloris(url: str) -> dict:
    from imgrag.web.protocol import HEADER_SECONDS

    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    socks = []
    t0 = time.monotonic()
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.52", 0))
        s.connect((host, int(port)))
        s.sendall(f"GET /healthcheck HTTP/1.1\r\nHost: {host}\r\n".encode())
        s.setblocking(False)
        socks.append(s)
    with httpx.Client(base_url=url, timeout=60) as c:
        t1 = time.perf_counter()
        c.get("/healthcheck")
        other_ms = (time.perf_counter() - t1) * 1000
    closed: dict[int, float] = {}
    while len(closed) < len(socks) and time.monotonic() - t0 < HEADER_SECONDS + 20:
        for i, s in enumerate(socks):
            if i in closed:
                continue
            try:
                gone = s.recv(1024) == b""
            except BlockingIOError:
                gone = False
            except OSError:
                gone = True
            if not gone:
                try:
                    s.send(b"x")
                except OSError:
                    gone = True
            if gone:
                closed[i] = time.monotonic() - t0
        time.sleep(0.25)
    for s in socks:
        s.close()
    times = sorted(closed.values())
    return {"slowloris": 200, "slowloris_closed": len(closed), "slowloris_closed_at_once": sum(t < 1 for t in times),
            "slowloris_last_closed_s": round(times[-1], 1) if times else None, "header_seconds": HEADER_SECONDS,
            "other_client_during_slowloris_ms": round(other_ms, 1)}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start(Path(tmp))
        try:
            httpx.get(url + "healthcheck", timeout=60)  # the server is up and warm
            print(json.dumps({"bench": "serve_abuse", **guessing(url), **slowloris(url)}))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
