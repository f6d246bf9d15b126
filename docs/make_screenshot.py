"""Make docs/images/search.png, the picture in the README and on the docs' home page.

It starts `imgrag serve` with no index in reach, so the server builds and serves the demo
photos that ship with imgrag (no API key, no network), searches them in the page, and
takes a screenshot with Playwright driving Debian's Chromium (no browser download).

    apt-get install chromium             # once
    .venv/bin/python docs/make_screenshot.py [--query "..."] [--out docs/images/search.png]

The demo is built in a temporary data folder, so the user's own demo is left alone.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(base: str, server: subprocess.Popen, timeout: float = 300.0) -> None:
    """Until the server answers and its index is loaded (the first run builds the demo)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"imgrag serve exited with {server.returncode}")
        try:
            with urllib.request.urlopen(base + "api/status", timeout=5) as answer:
                if json.load(answer).get("index_loaded"):
                    return
        except OSError:
            pass
        time.sleep(0.5)
    sys.exit("imgrag serve did not become ready in time")


def shoot(base: str, query: str, out: Path, width: int, height: int) -> None:
    from urllib.parse import urlencode

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        # bypass_csp: the page's Content-Security-Policy forbids the evaluated snippet that
        # wait_for_function polls with; the page itself runs as it always does.
        page = browser.new_page(viewport={"width": width, "height": height}, color_scheme="light", bypass_csp=True)
        page.goto(base + "?" + urlencode({"q": query}))  # the query is in the URL: the page runs it
        # Every thumbnail decoded, and the page idle, before the picture is taken.
        page.wait_for_function("() => { const imgs = [...document.querySelectorAll('#grid img')];"
                               " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }")
        page.wait_for_load_state("networkidle")
        page.screenshot(path=str(out))
        browser.close()


def shrink(path: Path) -> None:
    """A palette PNG: a fraction of the size, and photos at thumbnail size still look right."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG)
    small.save(path, optimize=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--query", default="space", help="what to search the demo photos for")
    parser.add_argument("--out", type=Path, default=HERE / "images" / "search.png")
    parser.add_argument("--width", type=int, default=860)
    parser.add_argument("--height", type=int, default=520)
    args = parser.parse_args()

    port = free_port()
    base = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryDirectory(prefix="imgrag-screenshot-") as tmp:
        # No .imgrag/ in the temporary folder or its parents, so `imgrag serve` serves the demo,
        # built under this data folder.
        env = {**os.environ, "XDG_DATA_HOME": tmp, "NO_COLOR": "1"}
        for name in ("IMGRAG_INDEX", "IMGRAG_SERVE_TOKEN", "IMGRAG_EMBED_MODEL"):
            env.pop(name, None)
        server = subprocess.Popen([sys.executable, "-m", "imgrag", "serve", "--port", str(port), "--read-only"],
                                  cwd=tmp, env=env)
        try:
            wait_ready(base, server)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            shoot(base, args.query, args.out, args.width, args.height)
        finally:
            server.terminate()
            server.wait(timeout=30)
    shrink(args.out)
    print(f"{args.out}: {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
