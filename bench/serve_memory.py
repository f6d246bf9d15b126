"""Memory of `imgrag serve` making thumbnails of one huge photo, asked for in many sizes at once.

A 13000x13000 PNG (169 MP, under the 180 MP cap; PNG has no reduced decode) is indexed
(the stand-in vision server describes it), then a real `imgrag serve` gets --clients
concurrent requests: thumbnails of as many sizes (32..1024, each a new cache entry for a
server that makes any size) and the preview, twice over. Reported: the server's RSS before,
its peak (VmHWM) and the growth, the time the burst took, the statuses, and how many
thumbnails were written to .imgrag/thumbs/.

Goal: peak growth <= 1.5 GB whatever the number of clients (issue 21 measured 0.5 -> 6.9 GB
for six sizes: ~1.07 GB per size decoded at once).

    python bench/serve_memory.py                    # 13000 px, 8 clients
    python bench/serve_memory.py --side 6000 --clients 4

To measure another version's code, put its src/ first on the path: the server is started with
this environment (PYTHONPATH=/tmp/old/src python bench/serve_memory.py)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from reliability_support import clean_env, seed_query_encoder
from standin_vlm import StandinVLM

SIZES = [32, 64, 100, 128, 200, 256, 300, 400, 512, 640, 800, 1024]


def log(message: str) -> None:
    print(f"serve_memory: {message}", file=sys.stderr, flush=True)


def draw(path: Path, side: int) -> None:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (side, side), (30, 80, 150))
    d = ImageDraw.Draw(img)
    for i in range(0, side, max(1, side // 40)):  # stripes and a disc, so it compresses but is not flat
        d.rectangle([i, 0, i + side // 80, side], fill=(200, (i * 7) % 255, 60))
    d.ellipse([side // 4, side // 4, 3 * side // 4, 3 * side // 4], fill=(240, 220, 40))
    img.save(path, compress_level=1)


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return round(int(fields["VmRSS"].split()[0]) / 1024, 1), round(int(fields["VmHWM"].split()[0]) / 1024, 1)


def start_server(base: Path, env: dict, log_path: Path) -> tuple[subprocess.Popen, str]:
    with log_path.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "imgrag", "serve", str(base / "photos"), "--port", "0"],
                                cwd=base, env=env, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"at (http://\S+/)", log_path.read_text(errors="replace"))
        if found:
            return proc, found.group(1)
        if proc.poll() is not None:
            sys.exit(f"serve_memory: imgrag serve exited: {log_path.read_text()[-2000:]}")
        time.sleep(0.1)
    proc.kill()
    sys.exit("serve_memory: imgrag serve printed no URL")


def burst(url: str, sha: str, clients: int) -> tuple[list[int], float]:
    import httpx

    paths = [f"api/photos/{sha}/thumbnail?size={SIZES[i % len(SIZES)]}" for i in range(clients - 1)]
    paths.append(f"api/photos/{sha}/preview")
    statuses: list[int] = []
    lock = threading.Lock()

    def fetch(path: str) -> None:
        with httpx.Client(base_url=url, timeout=600) as c:
            status = c.get(path).status_code
        with lock:
            statuses.append(status)

    started = time.perf_counter()
    threads = [threading.Thread(target=fetch, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(statuses), round(time.perf_counter() - started, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=13000, help="pixels on each side of the PNG (default 13000)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent requests, each another size (default 8)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="serve_memory-") as tmp, StandinVLM() as standin:
        base = Path(tmp)
        (base / "photos").mkdir()
        photo = base / "photos" / "huge.png"
        log(f"drawing a {args.side}x{args.side} PNG")
        draw(photo, args.side)
        env = clean_env(standin.url)
        if os.environ.get("PYTHONPATH"):
            env["PYTHONPATH"] = os.environ["PYTHONPATH"]
        seed_query_encoder(base / ".imgrag")
        log("indexing it")
        done = subprocess.run([sys.executable, "-m", "imgrag", "index", str(base / "photos")], cwd=base, env=env,
                              capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
        if done.returncode != 0:
            sys.exit(f"serve_memory: imgrag index failed: {done.stderr[-2000:]}")
        import hashlib

        sha = hashlib.sha256(photo.read_bytes()).hexdigest()
        proc, url = start_server(base, env, base / "serve.log")
        try:
            import httpx

            deadline = time.monotonic() + 120  # the index loads in the background
            while httpx.get(url + f"api/photos/{sha}", timeout=60).status_code != 200:
                if time.monotonic() > deadline:
                    sys.exit("serve_memory: the server never found the photo")
                time.sleep(0.2)
            rss_before, _ = rss_mb(proc.pid)
            log(f"{args.clients} concurrent requests (RSS {rss_before} MB)")
            statuses, seconds = burst(url, sha, args.clients)
            _, peak = rss_mb(proc.pid)
            again, seconds_again = burst(url, sha, args.clients)
            rss_after, peak_after = rss_mb(proc.pid)
        finally:
            proc.terminate()
            proc.wait(60)
        thumbs = len(list((base / ".imgrag" / "thumbs").rglob("*.jpg")))
    print(json.dumps({
        "bench": "serve_memory", "megapixels": round(args.side * args.side / 1e6, 1), "clients": args.clients,
        "rss_before_mb": rss_before, "peak_rss_mb": peak, "peak_growth_mb": round(peak - rss_before, 1),
        "burst_s": seconds, "statuses": statuses, "second_burst_s": seconds_again,
        "second_burst_statuses": again, "peak_after_second_burst_mb": peak_after, "rss_after_mb": rss_after,
        "thumbnails_written": thumbs, "goal_peak_growth_mb": 1500,
    }))


if __name__ == "__main__":
    main()
