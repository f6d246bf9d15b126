"""Peak memory (RSS) of `imgrag embed` and `imgrag serve` at 100,000 photos.

The library: 100,000 stand-in photo files (distinct bytes; embed reads only their hash)
with description records made from bench/.cache/texts-100000.jsonl (search_latency.py
writes it), their vectors already in the cache (copied from bench/.cache/library-100000,
whose texts are the same), and 2,500 of them with a text not embedded yet — more than the
2,000 an older imgrag encoded without loading sentence-transformers, as a day's new photos
in a big collection. Then, in fresh processes of the given `imgrag` command:

1. `imgrag embed photos`: encodes the 2,500 new texts, writes the 100,000-row index;
2. `imgrag serve --read-only`: started, 50 searches through GET /api/search, stopped.

Peak RSS is the process's own maximum resident set (getrusage of the child). Compare two
versions by running each with its own command:

    python bench/memory.py                                   # this checkout's .venv/bin/imgrag
    python bench/memory.py --imgrag "env PYTHONPATH=/other/src /other/.venv/bin/imgrag" --label before
    python bench/memory.py --serve-only            # serve the library the last run embedded

Prints one JSON line."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
PHOTOS = 100_000
NEW = 2_500
QUERIES = ["dog on the beach", "children playing in the snow", "a man riding a bicycle", "red car", "sunset"] * 10


def log(msg: str) -> None:
    print(f"[memory] {msg}", file=sys.stderr, flush=True)


def build(base: Path) -> None:
    """The library in `base` (made once, then copied for each run)."""
    texts = CACHE / "texts-100000.jsonl"
    library = CACHE / "library-100000" / ".imgrag" / "vectors"
    if not texts.exists() or not library.exists():
        sys.exit("bench/memory.py: run bench/search_latency.py first (it makes bench/.cache/library-100000)")
    records = []
    for i, line in enumerate(texts.read_text().splitlines()[:PHOTOS]):
        desc, _text = json.loads(line)
        if i >= PHOTOS - NEW:
            desc = {**desc, "caption": desc["caption"] + f" (new photo {i})"}
        rel = f"photos/{i // 1000:03d}/p{i:06d}.jpg"
        data = f"stand-in photo {i}\n".encode() * 8
        path = base / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        records.append({"sha256": hashlib.sha256(data).hexdigest(), "paths": [rel], "model": "bench",
                        "prompt_version": 1, "description": desc})
    (base / ".imgrag").mkdir(parents=True, exist_ok=True)
    (base / ".imgrag" / "descriptions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    shutil.copytree(library, base / ".imgrag" / "vectors")
    manifest = json.loads((CACHE / "library-100000" / ".imgrag" / "manifest.json").read_text())
    (base / ".imgrag" / "manifest.json").write_text(json.dumps({**manifest, "roots": ["photos"]}))


def peak_of(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float, str]:
    """Run to the end; (seconds, peak RSS in MB, stderr)."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        took = time.perf_counter() - t0
        err.seek(0)
        said = err.read()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"bench/memory.py: {' '.join(cmd)} failed:\n{said[-2000:]}")
    return took, usage.ru_maxrss / 1024, said


def serve_peak(cmd: list[str], cwd: Path, env: dict) -> tuple[float, float]:
    """Start the server, search QUERIES through the API, stop it; (first search seconds, peak RSS MB)."""
    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([*cmd, "serve", "--read-only", "--port", str(port), str(cwd / "photos")], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:  # /healthcheck: /api/status scans the photo folders, seconds at 100,000 photos
                httpx.get(url + "/healthcheck", timeout=5)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("bench/memory.py: the server did not start")
                time.sleep(0.2)
        t0 = time.perf_counter()
        first = None
        for q in QUERIES:
            r = httpx.get(url + "/api/search", params={"q": q}, timeout=120)
            r.raise_for_status()
            first = first if first is not None else time.perf_counter() - t0
    finally:
        proc.terminate()
        _, _status, usage = os.wait4(proc.pid, 0)
    return round(first or 0.0, 2), usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--imgrag", default=str(REPO / ".venv" / "bin" / "imgrag"), help="the command to measure")
    parser.add_argument("--label", default="this-checkout", help="names the run's library in bench/.cache")
    parser.add_argument("--serve-only", action="store_true", help="serve the library this label's last run embedded")
    args = parser.parse_args()
    cmd = shlex.split(args.imgrag)
    template = CACHE / f"memory-{PHOTOS}"
    if not (template / ".imgrag" / "manifest.json").exists():
        log(f"building {template} (once)")
        shutil.rmtree(template, ignore_errors=True)
        build(template)
    env = {k: v for k, v in os.environ.items() if not k.startswith("IMGRAG_")}
    env["NO_COLOR"] = "1"
    base = CACHE / f"memory-run-{args.label}" / "library"
    embed_s = embed_mb = None
    if not args.serve_only or not (base / ".imgrag" / "index").exists():
        shutil.rmtree(base.parent, ignore_errors=True)
        shutil.copytree(template, base, copy_function=os.link, ignore=shutil.ignore_patterns("vectors"))
        shutil.copytree(template / ".imgrag" / "vectors", base / ".imgrag" / "vectors")  # appended to: a real copy
        log(f"{args.label}: imgrag embed ({PHOTOS} photos, {NEW} new texts)")
        embed_s, embed_mb, said = peak_of([*cmd, "embed", str(base / "photos")], base, env)
        log(f"  {embed_s:.1f}s, peak {embed_mb:.0f} MB: {said.strip().splitlines()[-1:]}")
    log(f"{args.label}: imgrag serve, {len(QUERIES)} searches")
    first_search_s, serve_mb = serve_peak(cmd, base, env)
    log(f"  peak {serve_mb:.0f} MB")
    print(json.dumps({"bench": "memory", "label": args.label, "photos": PHOTOS, "new_texts": NEW,
                      "embed_s": embed_s and round(embed_s, 1), "embed_peak_rss_mb": embed_mb and round(embed_mb),
                      "serve_searches": len(QUERIES), "serve_first_search_s": first_search_s,
                      "serve_peak_rss_mb": round(serve_mb), "loadavg": [round(x, 2) for x in os.getloadavg()]}),
          flush=True)


if __name__ == "__main__":
    main()
