"""How close `imgrag describe` runs to a server's rate limits, without 429s or waste.

Real photos (COCO, from --data) are described through the real describe job (in-process
`run_describe`, the real groq SDK, real HTTP) against the stand-in vision server started
as a separate process with rate limits and a reply latency. Images count 2,048 tokens,
as Qwen 3.8 on Groq counts them. Three settings:

- paid: 300 requests/min, 1.5 s latency, --jobs 8 (real time).
- free: Groq's free tier for vision: 30 requests/min, 8,000 tokens/min, 1,000 requests/day,
  --jobs 4, limits counted over sliding 60-second windows. At ~2,400 tokens a photo that
  is ~3 photos a minute, so the stand-in runs time-scaled (--time-scale 0.1: its "minute"
  lasts 6 s, its day 8,640 s, reset headers and retry-after follow) and the client is told
  the window length; latency is scaled too. Figures are reported per scaled minute.
- free_bucket: the same limits as continuously refilling token buckets, as Groq's are
  (capacity = the limit, refilled at limit/60 a second; x-ratelimit-reset-tokens is the
  time until full).

"limit" is the most photos a minute the server admits: min(rpm, photos that fit in tpm).
A sliding window admits whole photos only: 8,000 tokens hold 3 photos of 2,400 tokens
(not 3.33), as a 4th inside any minute is refused wherever it falls. A bucket admits the
nominal tpm/tokens. The ratio to the nominal figure is reported for every setting, and
"summary" compares the two free-tier modes.

Prints one JSON line: {"paid": {...}, "free": {...}, "free_bucket": {...}, "summary": {...}};
progress goes to stderr.

    python bench/describe_throughput.py [--data ../shared/data/photos] [--tier paid|free|free_bucket|all]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from imgrag.config import Settings
from imgrag.describe.live import run_describe
from imgrag.describe.plan import DescribeOptions
from imgrag.describe.progress import NoProgress

TIERS = {
    "paid": {"rpm": 300, "tpm": None, "rpd": None, "latency": 1.5, "jobs": 8, "photos": 239, "time_scale": 1.0},
    "free": {"rpm": 30, "tpm": 8000, "rpd": 1000, "latency": 1.5, "jobs": 4, "photos": 60, "time_scale": 0.1},
    "free_bucket": {"rpm": 30, "tpm": 8000, "rpd": 1000, "latency": 1.5, "jobs": 4, "photos": 60, "time_scale": 0.1,
                    "limit_mode": "bucket"},
}
IMAGE_TOKENS = 2048


class StderrProgress(NoProgress):
    def __init__(self, label: str) -> None:
        self.label, self.done, self.total = label, 0, 0

    def start(self, total: int) -> None:
        self.total = total

    def advance(self, ok: bool) -> None:
        self.done += 1
        if self.done % 20 == 0 or self.done == self.total:
            print(f"[{self.label}] {self.done}/{self.total}", file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"[{self.label}] warning: {message}", file=sys.stderr, flush=True)


def load_photos(data: Path, count: int, folder: Path) -> Path:
    """Copy `count` COCO photos into `folder` and write the stand-in's catalog for them."""
    rows = [json.loads(line) for line in (data / "coco.jsonl").read_text().splitlines() if line.strip()]
    rows = [r for r in rows if (data / r["file"]).is_file()][:count]
    if len(rows) < count:
        print(f"only {len(rows)} photos found under {data}", file=sys.stderr)
    photos = folder / "photos"
    photos.mkdir(parents=True)
    catalog = folder / "catalog.jsonl"
    with catalog.open("w") as out:
        for r in rows:
            shutil.copy2(data / r["file"], photos / Path(r["file"]).name)
            description = {"caption": r["captions"][0], "objects": r.get("objects", [])}
            out.write(json.dumps({"file": str(data / r["file"]), "description": description}) + "\n")
    return photos


def start_standin(catalog: Path, tier: dict) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, str(REPO / "tests" / "standin_vlm.py"), "--port", "0", "--catalog", str(catalog),
            "--latency", str(tier["latency"] * tier["time_scale"]), "--time-scale", str(tier["time_scale"]),
            "--image-tokens", str(IMAGE_TOKENS), "--limit-mode", tier.get("limit_mode", "window")]
    for name in ("rpm", "tpm", "rpd"):
        if tier[name]:
            args += [f"--{name}", str(tier[name])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line.startswith("listening on "):
        proc.kill()
        raise SystemExit(f"the stand-in did not start: {line!r}")
    return proc, line.split()[-1]


def stats(url: str) -> dict:
    with urllib.request.urlopen(url + "/_standin/stats") as r:
        return json.load(r)


def run_tier(name: str, tier: dict, data: Path) -> dict:
    with tempfile.TemporaryDirectory(prefix=f"imgrag-bench-{name}-") as tmp:
        photos = load_photos(data, tier["photos"], Path(tmp))
        server, url = start_standin(Path(tmp) / "catalog.jsonl", tier)
        try:
            settings = Settings(api_key="bench-key", base_url=url, timeout=30.0)
            window = 60.0 * tier["time_scale"]
            options = DescribeOptions(jobs=tier["jobs"], rate_window=window)
            progress = StderrProgress(name)
            # Hash the folder first, so the timed run measures describing, not scanning.
            run_describe(photos, settings, DescribeOptions(dry_run=True), progress)
            began = time.monotonic()
            summary = run_describe(photos, settings, options, progress)
            elapsed = time.monotonic() - began
            served = stats(url)
        finally:
            server.terminate()
            server.wait()
    minutes = elapsed / window  # in the server's (possibly scaled) minutes
    tokens = (summary.prompt_tokens + summary.completion_tokens) / max(1, summary.requests)
    nominal = min(x for x in (tier["rpm"], tier["tpm"] and tier["tpm"] / tokens) if x)
    whole = math.floor if tier.get("limit_mode", "window") == "window" else (lambda x: x)
    capacity = min(x for x in (tier["rpm"], tier["tpm"] and whole(tier["tpm"] / tokens)) if x)
    achieved = summary.described / minutes
    return {
        "photos": summary.described,
        "photos_per_min": round(achieved, 2),
        "limit_mode": tier.get("limit_mode", "window"),
        "limit_photos_per_min": round(capacity, 2),
        "ratio": round(achieved / capacity, 3),
        "nominal_limit_photos_per_min": round(nominal, 2),
        "ratio_to_nominal": round(achieved / nominal, 3),
        "rate_limited_429": served["rate_limited"],
        "failures": summary.failed,
        "duplicate_requests": sum(count - 1 for count in served["images"].values()),
        "requests": served["requests"],
        "tokens_per_photo": round(tokens),
        "limits": {k: tier[k] for k in ("rpm", "tpm", "rpd") if tier[k]},
        "latency_s": tier["latency"],
        "jobs": tier["jobs"],
        "time_scale": tier["time_scale"],
        "wall_seconds": round(elapsed, 1),
        "exit_code": summary.exit_code,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "photos",
                        help="folder holding coco.jsonl and coco/")
    parser.add_argument("--tier", choices=(*TIERS, "all"), default="all")
    parser.add_argument("--photos", type=int, help="photos per tier (default: 239 paid, 60 free)")
    parser.add_argument("--time-scale", type=float, help="free tiers' time scale (default 0.1)")
    args = parser.parse_args()
    if not (args.data / "coco.jsonl").is_file():
        raise SystemExit(f"no benchmark photos: {args.data / 'coco.jsonl'} is missing (pass --data)")
    results = {}
    for name in TIERS if args.tier == "all" else (args.tier,):
        tier = dict(TIERS[name])
        if args.photos:
            tier["photos"] = args.photos
        if args.time_scale and name.startswith("free"):
            tier["time_scale"] = args.time_scale
        results[name] = run_tier(name, tier, args.data)
        print(f"[{name}] {json.dumps(results[name])}", file=sys.stderr, flush=True)
    if "free" in results and "free_bucket" in results:
        window, bucket = results["free"], results["free_bucket"]
        results["summary"] = {
            "free_bucket_ratio_to_nominal": bucket["ratio_to_nominal"],  # goal >= 0.9
            "free_bucket_429s": bucket["rate_limited_429"],  # goal 0
            "free_window_ratio_to_admitted": window["ratio"],  # goal >= 0.9
            "free_bucket_vs_window": round(bucket["photos_per_min"] / window["photos_per_min"], 3),
        }
    results["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
