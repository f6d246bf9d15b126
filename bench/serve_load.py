"""`imgrag serve` under load, over the 100,000-photo library of bench/search_latency.py.

1. Starts `imgrag serve --index LIBRARY --port 0` and times start -> first /api/search answer.
2. 8 concurrent clients send `GET /api/search` with varied queries (and now and then a
   filter, an offset or sort=date) for --duration seconds: p50, p95, requests/s, errors;
   once as fast as answers come (the most the server does: 8 clients waiting on each
   other measure queueing, p50 ~ 8 / throughput), once paced at --rate requests/s (100),
   which is the latency a user sees at that load.
3. The paced load while another process writes a new index generation with 1% more photos and
   swaps it in (`write_generation`, the step `imgrag embed` ends with: the library has no photo
   files or description log for a real `imgrag embed` to read), with no terminal and so at
   the lower CPU priority a cron `imgrag embed` takes (imgrag.priority). Every response names its
   generation; a response from the old one must hold only old photos, and none may fail.
4. Server RSS (now and peak), and a grid of 48 thumbnails fetched by 8 clients, cold (no
   cache in .imgrag/thumbs/) and warm, from real 2000x1500 JPEGs written for those photos.

Prints one JSON line. Goals: p50 <= 15 ms, p95 <= 50 ms, >= 100 req/s on 2 cores, RSS <= 400 MB.

    python bench/serve_load.py                        # 100k photos, 60 s per phase
    python bench/serve_load.py --docs 2000 --duration 10   # a short run on a busy machine
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_latency

CLIENTS = 8
SETTLE = 3.0  # seconds of load after the new generation is written
FOLDERS = 10  # photos/000 .. photos/009: what the `in` filter of some queries names
GRID = 48
WORDS = ["dog", "beach", "man", "bike", "children", "snow", "cake", "table", "street", "sign", "woman", "red",
         "water", "grass", "ball", "car", "city", "boat", "horse", "kitchen", "two", "playing", "running", "sitting"]


def log(msg: str) -> None:
    print(f"[serve_load] {msg}", file=sys.stderr, flush=True)


def queries(n: int, seed: int = 7) -> list[dict]:
    """Varied requests: typed queries of 1-4 words; some filtered, paged or sorted by date."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        params = {"q": " ".join(rng.sample(WORDS, rng.randint(1, 4))), "limit": 24}
        roll = rng.random()
        if roll < 0.1:
            params["in"] = f"photos/{rng.randrange(FOLDERS):03d}"
        elif roll < 0.15:
            params["sort"] = "date"
        elif roll < 0.25:
            params["offset"] = 24
        out.append(params)
    return out


def start_server(base: Path) -> tuple[subprocess.Popen, str, float]:
    env = search_latency.user_env()
    exe = Path(sys.executable).with_name("imgrag")
    log_path = base / "serve.log"
    err = log_path.open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(exe), "serve", "--index", str(base), "--port", "0", "--read-only"], cwd=base, env=env,
                            stdout=subprocess.DEVNULL, stderr=err)
    url = None
    import httpx

    while time.perf_counter() - t0 < 120:
        if url is None:
            found = re.search(r"at (http://\S+/)", log_path.read_text())
            url = found.group(1) if found else None
        if url is not None:
            try:
                r = httpx.get(url + "api/search", params={"q": "dog on the beach"}, timeout=30)
                if r.status_code == 200 and r.json()["results"]:
                    return proc, url, time.perf_counter() - t0
            except httpx.HTTPError:
                pass
        if proc.poll() is not None:
            sys.exit(f"serve_load: imgrag serve exited: {log_path.read_text()[-800:]}")
        time.sleep(0.02)
    proc.kill()
    sys.exit("serve_load: no answer from imgrag serve in 120 s")


SEEN: set[str] = set()  # every query sent so far this run (the server remembers query vectors)


def load(url: str, seconds: float, during=None, rate: float | None = None, seed: int = 7) -> dict:
    """CLIENTS threads, each with its own connection, until `seconds` pass (and `during`, a
    thread started with the load, has ended). Without `rate` each client sends its next
    request as soon as it has an answer (the most the server can do); with `rate`, the
    clients together start `rate` requests a second on a fixed schedule, and a request's
    time counts from when it was due (a slow answer delays the ones after it: they count it).
    Each phase draws its own queries (`seed`): popular ones come back, as from real users,
    and `repeated_queries` says what share of its requests asked a query already asked."""
    import httpx

    stop = threading.Event()
    latencies: list[float] = []
    errors: list[str] = []
    generations: list[tuple[str, list[str]]] = []
    lock = threading.Lock()
    asks = queries(5000, seed)
    sent: list[str] = []

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=30) as c:
            i = n
            due = time.perf_counter() + (n / rate if rate else 0)
            while not stop.is_set():
                params = asks[i % len(asks)]
                i += CLIENTS
                if rate:
                    wait = due - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)
                    t, due = due, due + CLIENTS / rate
                else:
                    t = time.perf_counter()
                try:
                    r = c.get("/api/search", params=params)
                    ok = r.status_code == 200
                    doc = r.json() if ok else None
                except (httpx.HTTPError, ValueError) as e:
                    ok, doc = False, None
                    r = e
                dt = time.perf_counter() - t
                with lock:
                    sent.append(params["q"])
                    if ok:
                        latencies.append(dt)
                        generations.append((doc["generation"], [h["id"] for h in doc["results"]]))
                    else:
                        errors.append(str(getattr(r, "status_code", r))[:100])

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    if during is not None:
        during.start()
    time.sleep(seconds)
    if during is not None:
        during.join()
        time.sleep(SETTLE)  # the server opens the new generation in the background meanwhile
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = sorted(x * 1000 for x in latencies)
    repeated = 0
    for q in sent:
        repeated += q in SEEN
        SEEN.add(q)
    return {
        "requests": len(ms),
        "errors": len(errors),
        "error_kinds": sorted(set(errors))[:5],
        "p50_ms": round(statistics.median(ms), 2) if ms else None,
        "p95_ms": round(ms[int(len(ms) * 0.95) - 1], 2) if ms else None,
        "req_per_s": round(len(ms) / wall, 1),
        "repeated_queries": round(repeated / len(sent), 3) if sent else None,
        "generations": generations,
    }


def write_generation(base: Path, extra_share: float) -> list[str]:
    """In another process: the current index plus `extra_share` new photos, written and made
    current by write_generation (as `imgrag embed` does). Returns the new photos' ids."""
    code = f"""
import hashlib, json, sys
from pathlib import Path
import numpy as np
from imgrag.priority import step_back_when_unattended
step_back_when_unattended()  # as `imgrag embed` run by cron does (no terminal)
from imgrag.index.generations import open_generation, read_meta, write_generation, Doc
from imgrag.store.workspace import Workspace
ws = Workspace(Path({str(base / '.imgrag')!r}))
b = open_generation(ws)
n = b.size
docs = [b.docs([i])[i] for i in range(n)] if n <= 5000 else None
if docs is None:
    cur = b.db.execute("SELECT row, sha256, paths, caption, text, lexical, taken, mtime FROM docs ORDER BY row")
    docs = [Doc(r[1], json.loads(r[2]), r[3], r[4], r[5], r[6], r[7]) for r in cur]
vectors = np.vstack([b.index.reconstruct_batch(np.arange(s, min(n, s + 4096))) for s in range(0, n, 4096)])
extra = max(1, int(n * {extra_share}))
new = []
for i in range(extra):
    src = docs[i * 97 % n]
    sha = hashlib.sha256(f"bench-new-photo-{{i}}".encode()).hexdigest()
    new.append(Doc(sha, [f"photos/new/{{i:06d}}.jpg"], src.caption, src.text + " (new)", src.lexical, src.taken, src.mtime))
    path = ws.base / "photos" / "new" / f"{{i:06d}}.jpg"  # search leaves out photos whose file is gone
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
meta = read_meta(ws)
write_generation(ws, docs + new, np.vstack([vectors, vectors[[i * 97 % n for i in range(extra)]]]),
             {{"embedding": meta["embedding"], "signature": "bench-swap", "bench_code": "swapped"}})
print(json.dumps([d.sha256 for d in new]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                         check=False)
    if out.returncode != 0:
        log(f"writing a new generation failed: {out.stderr[-800:]}")
        return []
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_mb(pid: int) -> tuple[float, float]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return round(int(fields["VmRSS"].split()[0]) / 1024, 1), round(int(fields["VmHWM"].split()[0]) / 1024, 1)


def record_as_indexed(base: Path, hits: list[dict]) -> None:
    """Write these photos into .imgrag/scan.json under their ids, as `imgrag index` records
    what it hashed: the library's ids are made up, and the server sends a photo only while its
    file holds the indexed content (size and mtime as recorded, else it hashes it again)."""
    scan_path = base / ".imgrag" / "scan.json"
    try:
        data = json.loads(scan_path.read_bytes())
    except (OSError, ValueError):
        data = {"version": 1, "files": {}}
    for h in hits:
        st = (base / h["path"]).stat()
        data["files"][h["path"]] = [st.st_size, st.st_mtime_ns, h["id"]]
    scan_path.write_text(json.dumps(data))


def thumbnail_grid(url: str, base: Path) -> dict:
    """48 thumbnails by 8 clients (as a browser fills a grid): cold, then warm."""
    import httpx
    from PIL import Image, ImageDraw

    doc = httpx.get(url + "api/search", params={"q": "dog running on the beach", "limit": GRID, "min_score": 0},
                    timeout=30).json()
    hits = doc["results"][:GRID]
    for i, h in enumerate(hits):  # the library's photo files are empty: give these 48 real ones
        path = base / h["path"]
        if not path.exists() or path.stat().st_size == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
            img = Image.new("RGB", (2000, 1500), (40 + i * 4, 90, 160))
            ImageDraw.Draw(img).ellipse([300, 200, 1700, 1300], fill=(230, 200 - i * 3, 60))
            img.save(path, quality=90)
    record_as_indexed(base, hits)
    shutil.rmtree(base / ".imgrag" / "thumbs", ignore_errors=True)

    def grid() -> float:
        todo = list(hits)
        lock = threading.Lock()
        failures = []

        def client():
            with httpx.Client(base_url=url, timeout=60) as c:
                while True:
                    with lock:
                        if not todo:
                            return
                        h = todo.pop()
                    r = c.get(h["thumbnail_url"])
                    if r.status_code != 200 or r.headers.get("content-type") != "image/jpeg":
                        failures.append(r.status_code)

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if failures:
            sys.exit(f"serve_load: thumbnails failed: {failures[:5]}")
        return round(time.perf_counter() - t0, 3)

    return {"thumbnails": len(hits), "grid_cold_s": grid(), "grid_warm_s": grid()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=search_latency.REPO.parent / "shared" / "data")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load per phase (default 60)")
    parser.add_argument("--rate", type=float, default=100.0, help="requests/s of the paced phases (default 100)")
    parser.add_argument("--extra", type=float, default=0.01, help="share of new photos in the swapped generation")
    args = parser.parse_args()
    # Built once and cached; rebuilt from cached vectors when a previous run left its swapped generation.
    base = search_latency.build_workspace(args.data.resolve(), args.docs)
    shutil.rmtree(base / ".imgrag" / "thumbs", ignore_errors=True)
    for i in range(FOLDERS):  # `--in` wants the folder to exist; the library has no photo files
        (base / "photos" / f"{i:03d}").mkdir(parents=True, exist_ok=True)
    proc, url, first = start_server(base)
    try:
        log(f"serving at {url}; first answer after {first:.2f} s; steady load for {args.duration:g} s")
        load(url, 2, None, seed=1)  # warm-up
        most = load(url, args.duration, seed=2)
        log(f"{args.rate:g} requests/s for {args.duration:g} s")
        steady = load(url, args.duration, rate=args.rate, seed=3)
        rss_steady, _ = rss_mb(proc.pid)
        new_ids: list[str] = []
        writer = threading.Thread(target=lambda: new_ids.extend(write_generation(base, args.extra)))
        log(f"load for {args.duration:g} s while a new generation (+{args.extra:.0%}) is written and swapped in")
        swap = load(url, args.duration, during=writer, rate=args.rate, seed=4)
        if not new_ids:
            sys.exit("serve_load: the new generation was not written (see above)")
        new = set(new_ids)
        seen = sorted({g for g, _ in swap["generations"]}, key=lambda g: int(g, 16))
        old_gen = steady["generations"][0][0]
        mixed = sum(1 for g, found in swap["generations"] if g == old_gen and new.intersection(found))
        found_new = sum(1 for g, found in swap["generations"] if g != old_gen and new.intersection(found))
        grid = thumbnail_grid(url, base)
        rss_now, rss_peak = rss_mb(proc.pid)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
    for phase in (most, steady, swap):
        phase.pop("generations")
    print(json.dumps({
        "bench": "serve_load", "docs": args.docs, "clients": CLIENTS, "duration_s": args.duration,
        "start_to_first_answer_s": round(first, 3),
        "max_load": most, "rate": args.rate, "steady": steady,
        "during_swap": {**swap, "generations_seen": len(seen), "swapped": len(seen) > 1,
                        "old_generation_answers_with_new_photos": mixed, "new_generation_answers_with_new_photos": found_new},
        "rss_mb": rss_now, "rss_steady_mb": rss_steady, "rss_peak_mb": rss_peak,
        **grid,
        "goals": {"p50_ms": 15, "p95_ms": 50, "req_per_s": 100, "rss_mb": 400, "start_s": 2},
        "load_average": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
