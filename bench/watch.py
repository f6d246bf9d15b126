"""How soon photos copied into a watched folder become searchable, against describing them alone.

500 distinct photos (the COCO photos from --data, and mirrored and cropped copies of them
to make up the count, written to a temporary folder: nothing is copied into the repository)
are described twice, each time by a stand-in vision server process of its own answering
in 0.3 s a photo, at 4 jobs:

- pure describe: `run_describe` of a folder holding them (scan and hashing included), in
  this process, at the CPU priority the unattended watcher gives itself (imgrag.priority):
  how long describing alone takes;
- watched: an `imgrag watch` process on a folder already indexed (10 photos); the 500 are
  copied in (as `cp` does, one after the other), and the time runs from the first copy
  until the index on disk (the generation CURRENT names) holds all 510.

Reported: both times and their difference (target: watched <= pure + 10 s), duplicate
vision requests (target 0), index generations the watcher wrote for the burst (its
"index updated" lines), the watcher's CPU while idle over --idle seconds afterwards
(target < 1%, from /proc: Linux), and the load average (the machine may be shared).

Prints one JSON line; progress goes to stderr.

    python bench/watch.py [--data ../shared/data/photos] [--photos 500] [--idle 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from imgrag.config import Settings
from imgrag.describe.live import run_describe
from imgrag.describe.plan import DescribeOptions
from imgrag.describe.progress import NoProgress
from imgrag.index.generations import read_meta
from imgrag.priority import BACKGROUND_NICENESS
from imgrag.store.workspace import Workspace

LATENCY = 0.3  # seconds the stand-in takes per photo
JOBS = 4
SEED = 10  # photos the watched folder holds (indexed) before the burst


def say(line: str) -> None:
    print(f"[watch] {line}", file=sys.stderr, flush=True)


def make_photos(data: Path, count: int, folder: Path) -> list[Path]:
    """`count` distinct photos: the COCO photos, then mirrored and cropped copies of them."""
    from PIL import Image, ImageOps

    sources = sorted((data / "coco").glob("*.jpg"))
    if not sources:
        raise SystemExit(f"no benchmark photos under {data / 'coco'} (pass --data)")
    folder.mkdir(parents=True)
    made: list[Path] = []
    variant = 0
    while len(made) < count:
        for src in sources:
            if len(made) == count:
                break
            out = folder / f"{src.stem}_{variant}.jpg"
            if variant == 0:
                shutil.copyfile(src, out)
            else:
                with Image.open(src) as img:
                    img = img.convert("RGB")
                    if variant % 2:
                        img = ImageOps.mirror(img)
                    w, h = img.size
                    cut = 4 * (variant // 2)
                    img.crop((cut, cut, w - cut, h - cut)).save(out, quality=90)
            made.append(out)
        variant += 1
    return made


def start_standin() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "standin_vlm.py"), "--port", "0",
                             "--latency", str(LATENCY)], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the stand-in did not start: {line!r}")
    return proc, line.split()[-1]


def duplicates(url: str) -> tuple[int, int]:
    """(requests, requests for an image sent before) the stand-in received."""
    with urllib.request.urlopen(url + "/_standin/stats") as r:
        stats = json.load(r)
    return stats["requests"], sum(n - 1 for n in stats["images"].values())


def pure_describe(photos: list[Path], tmp: Path) -> tuple[float, int]:
    folder = tmp / "pure" / "photos"
    folder.mkdir(parents=True)
    for p in photos:
        shutil.copyfile(p, folder / p.name)
    server, url = start_standin()
    done: list = []

    def describe() -> None:
        # At the priority `imgrag watch` (like cron's `imgrag index`) gives itself when no
        # terminal is attached: on Linux per thread, inherited by the threads describe starts.
        os.setpriority(os.PRIO_PROCESS, 0, BACKGROUND_NICENESS)
        settings = Settings(api_key="bench-key", base_url=url, timeout=30.0)
        began = time.monotonic()
        summary = run_describe(folder, settings, DescribeOptions(jobs=JOBS), NoProgress())
        done.append((time.monotonic() - began, summary))

    try:
        thread = threading.Thread(target=describe)
        thread.start()
        thread.join()
        elapsed, summary = done[0]
    finally:
        server.terminate()
        server.wait()
    return elapsed, summary.described


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def watched(photos: list[Path], seed: list[Path], tmp: Path, idle: float) -> dict:
    base = tmp / "watched"
    folder = base / "photos"
    folder.mkdir(parents=True)
    for p in seed:
        shutil.copyfile(p, folder / p.name)
    server, url = start_standin()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))}
    env.update(GROQ_API_KEY="bench-key", IMGRAG_BASE_URL=url, IMGRAG_JOBS=str(JOBS), HF_HUB_OFFLINE="1")
    imgrag = Path(sys.executable).parent / "imgrag"
    log = base / "watch.log"
    ws = Workspace(base / ".imgrag")
    with log.open("w") as err:
        proc = subprocess.Popen([str(imgrag), "watch", str(folder)], cwd=base, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        # The catch-up run has ended (its model export included) when it says so.
        wait_for(lambda: "index updated" in log.read_text(), proc, 600)
        assert (read_meta(ws) or {}).get("count") == len(seed)
        updates_before = log.read_text().count("index updated")
        say(f"watching; copying {len(photos)} photos in")
        began = time.monotonic()
        for p in photos:
            shutil.copy2(p, folder / p.name)
        copied = time.monotonic() - began
        total = len(seed) + len(photos)
        wait_for(lambda: (read_meta(ws) or {}).get("count") == total, proc, 600, step=0.05)
        searchable = time.monotonic() - began
        time.sleep(1)
        generations = log.read_text().count("index updated") - updates_before
        requests, dup = duplicates(url)
        say(f"all {total} searchable after {searchable:.1f} s; idle for {idle:.0f} s")
        time.sleep(2)
        cpu_before = cpu_seconds(proc.pid)
        time.sleep(idle)
        idle_cpu = (cpu_seconds(proc.pid) - cpu_before) / idle * 100
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        for line in log.read_text().splitlines():
            say(f"log: {line}")
    finally:
        if proc.poll() is None:
            proc.kill()
        server.terminate()
        server.wait()
    return {"searchable_s": round(searchable, 1), "copy_s": round(copied, 2), "generations": generations,
            "requests": requests, "duplicate_requests": dup, "idle_cpu_percent": round(idle_cpu, 3),
            "exit_code_on_sigterm": code}


def wait_for(ready, proc: subprocess.Popen, timeout: float, step: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise SystemExit(f"imgrag watch exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"not ready after {timeout:.0f} s")
        time.sleep(step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "photos",
                        help="folder holding coco/")
    parser.add_argument("--photos", type=int, default=500)
    parser.add_argument("--idle", type=float, default=60.0, help="seconds of idle CPU measured")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imgrag-bench-watch-") as tmp_name:
        tmp = Path(tmp_name)
        made = make_photos(args.data, args.photos + SEED, tmp / "made")
        seed, photos = made[-SEED:], made[:-SEED]
        say(f"pure describe of {len(photos)} photos")
        pure, described = pure_describe(photos, tmp)
        say(f"pure describe: {pure:.1f} s ({described} described)")
        result = watched(photos, seed, tmp, args.idle)
    print(json.dumps({
        "photos": len(photos), "latency_s": LATENCY, "jobs": JOBS,
        "pure_describe_s": round(pure, 1), **result,
        "searchable_minus_pure_s": round(result["searchable_s"] - pure, 1),
        "targets": {"searchable_minus_pure_s": 10, "duplicate_requests": 0, "idle_cpu_percent": 1},
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
