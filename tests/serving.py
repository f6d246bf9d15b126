"""`imgrag serve` for the e2e tests, two ways:

- `in_process(...)`: the app `imgrag serve` makes, served in this process by Starlette's
  TestClient (an httpx client; the app's lifespan runs, so the index loads in the background
  as under uvicorn). For what the routes answer.
- `start_server(...)`: the installed `imgrag serve` in a real process (uvicorn on 127.0.0.1),
  for what only the real server shows: URLs as sent on the wire, h11's limits, Ctrl-C,
  event streams read while a job runs, a browser."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from conftest import IMGRAG, as_a_new_run

URL_LINE = re.compile(r"at (http://\S+/)")


@contextmanager
def in_process(photos: Path | None = None, *, cwd: Path, env: dict, index: Path | None = None,
               token_file: Path | None = None, read_only: bool = False, allow_hosts: tuple[str, ...] = (),
               cors: str | None = None, port: int = 8000) -> Iterator[httpx.Client]:
    """A client of `imgrag serve [PHOTOS] [--index ...] [--token-file ...] [--read-only]
    [--allow-host ...] [--cors ...]` on 127.0.0.1:port, made as imgrag.web.serve.run_serve makes
    it (the same checks), without binding the port. The run's environment and working
    directory hold while the client is open: jobs read their settings from them."""
    from fastapi.testclient import TestClient

    from imgrag.config import load_dotenv_once
    from imgrag.web import serve
    from imgrag.web.app import create_app
    from imgrag.web.server import Server

    host = "127.0.0.1"
    with as_a_new_run(env, cwd):
        load_dotenv_once()
        config = serve.serve_config(photos, index=index, host=host, port=port, allow_hosts=list(allow_hosts),
                                    read_only=read_only, token_file=token_file, cors=cors)
        with TestClient(create_app(Server(config)), base_url=serve.url_for(host, port)) as client:
            yield client


@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    stderr_path: Path

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def start_server(*args: str, cwd: Path, env: dict, log: Path) -> Served:
    """`imgrag serve ... --port 0` in the background; its URL read from its stderr."""
    with log.open("w") as err:
        proc = subprocess.Popen([str(IMGRAG), "serve", *args, "--port", "0"], cwd=cwd, env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = URL_LINE.search(log.read_text(errors="replace"))
        if found:
            return Served(proc, found.group(1), log)
        if proc.poll() is not None:
            raise AssertionError(f"imgrag serve exited {proc.returncode}: {log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("imgrag serve printed no URL")


def wait_job(http: httpx.Client, job_id: str, timeout: float = 240) -> dict:
    """The job (GET /api/jobs/ID) once it is no longer running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = http.get(f"/api/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still running")
