"""kill -9 torture: `imgrag describe` and `imgrag embed` killed at random moments, then
run to completion; prints one JSON line of what survived.

    python bench/torture.py [--kills 50] [--photos 60] [--jobs 4] [--latency 0.5] [--seed 1]
    python bench/torture.py --kills 0 --batch-kills 40     # only the Batch API part

Against the stand-in vision server (tests/standin_vlm.py) with photos drawn into a temp
folder; a few new photos arrive before each cycle, as between cron runs. Each cycle starts a describe and kills it (SIGKILL) at a moment drawn uniformly
from the length of a calibration run, then does the same to an embed, so both always
have work and the kills land in every phase (start-up, scan, requests, appends, vector
cache, index generation, query-encoder export). After every kill each file in `.imgrag/`
must still load. At the end both commands run to completion and the index is compared
with one built from scratch out of the same descriptions.

The Batch API part (`--batch-kills`, default 40) kills `imgrag describe --batch`, with 5
new photos a cycle, a few milliseconds after one of its calls to the stand-in (list,
retrieve, download of results, upload, create: inside the collection and around the
submission steps), or at a random moment of the run. The stand-in's batches (24 h = 6 s)
finish within a cycle, and some expire half done. Every few cycles a plain live
`describe` runs to completion beside it (it must leave photos in open batches alone). At
the end batch runs repeat until no batch is open and every photo is described. The
stand-in counts answered requests per image across live and batch: `paid_twice` must be
0, as must `batch_records_lost`, `batch_duplicate_records` and `batch_unreadable_files`;
`kills_in_submit_window` (killed between an intent and its batch being recorded) and
`kills_in_collect` (killed while writing a batch's results) say the dangerous moments
were hit.

Figures (all but `kills`, `*_s`, `in_flight_allowance` and `asked_twice` must be 0 / true):
  records_lost                 described photos that disappeared from descriptions.jsonl
  lost_beyond_in_flight        requests that left no record beyond the --jobs in flight at a kill
  duplicate_records            photos with more than one record
  asked_twice_beyond_in_flight photos sent twice beyond the requests in flight at kills
  unreadable_files             problems found by the post-kill checks (tests/reliability_support.py)
  index_equals_fresh_build     same rows (sha256, paths) and vectors (to 1e-5) as a fresh build
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from reliability_support import check_readable, clean_env, draw_photos, index_rows, jsonl_lines
from standin_vlm import StandinVLM


def log(message: str) -> None:
    print(f"torture: {message}", file=sys.stderr, flush=True)


def run(args: list[str], cwd: Path, env: dict, kill_after: float | None = None) -> tuple[int | None, float]:
    """The real CLI; killed with SIGKILL after `kill_after` seconds if still running.
    Returns (exit code or None if killed, seconds it ran)."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "imgrag", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return None, time.monotonic() - start
    stderr = proc.stderr.read()
    if proc.returncode not in (0, 1):
        log(f"{args[0]} exited {proc.returncode}: {stderr.strip()[-300:]}")
    return proc.returncode, time.monotonic() - start


def described(ws: Path) -> list[dict]:
    return jsonl_lines(ws / "descriptions.jsonl")[0]


def export_problems(ws: Path) -> list[str]:
    """A query-encoder export that claims to be complete must have every file intact."""
    try:
        from imgrag.index.query_encoder import files_intact, read_record
    except ImportError:  # an imgrag without query-encoder exports
        return []
    problems = []
    for folder in (ws / "models").glob("*/") if (ws / "models").is_dir() else []:
        record = read_record(folder)
        if record and record.get("files") and not files_intact(folder, record, deep=True):
            problems.append(f"export {folder.name}: files do not match encoder.json")
    return problems


class Torture:
    def __init__(self, args: argparse.Namespace, base: Path, server: StandinVLM) -> None:
        self.args = args
        self.base = base
        self.photos = base / "photos"
        self.ws = base / ".imgrag"
        self.server = server
        self.env = clean_env(server.url, IMGRAG_JOBS=str(args.jobs))
        self.rng = random.Random(args.seed)
        self.kills = {"describe": 0, "embed": 0}
        self.records_lost = 0
        self.lost_beyond_in_flight = 0
        self.in_flight_allowance = 0
        self.unreadable: list[str] = []
        self.seen: set[str] = set()
        self.window: dict[str, float] = {}
        self.next_photo = args.photos

    def calibrate(self) -> tuple[float, float]:
        """How long an uninterrupted describe and embed take here (the kill windows)."""
        scratch = Path(tempfile.mkdtemp(prefix="torture-cal-"))
        try:
            photos = scratch / "photos"
            draw_photos(photos, min(self.args.photos, 20), start=100_000)
            _, t_describe = run(["describe", str(photos)], scratch, self.env)
            _, t_embed = run(["embed", str(photos)], scratch, self.env)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
            self.server.reset()
        return t_describe, t_embed

    def after_kill(self, command: str, requests_before: int, records_before: int) -> None:
        self.kills[command] += 1
        problems = check_readable(self.ws) + export_problems(self.ws)
        if problems:
            log(f"after kill {sum(self.kills.values())} ({command}): {problems}")
        self.unreadable += problems
        records = described(self.ws)
        shas = {r["sha256"] for r in records}
        self.records_lost += len(self.seen - shas)
        self.seen |= shas
        if command == "describe":
            asked = len(self.server.requests) - requests_before
            written = len(records) - records_before
            in_flight = asked - written  # no faults are served: a request without a record was in flight
            self.in_flight_allowance += max(0, in_flight)
            self.lost_beyond_in_flight += max(0, in_flight - self.args.jobs)

    def cycle(self) -> None:
        # New photos arrive between cron runs, so both commands always have work to be killed in.
        draw_photos(self.photos, self.args.new_per_cycle, start=self.next_photo)
        self.next_photo += self.args.new_per_cycle
        for command in ("describe", "embed"):
            if self.kills[command] >= self.args.kills:
                continue
            requests_before, records_before = len(self.server.requests), len(described(self.ws))
            moment = self.rng.uniform(0, self.window[command])
            code, seconds = run([command, str(self.photos)], self.base, self.env, kill_after=moment)
            if code is None:
                self.after_kill(command, requests_before, records_before)
            else:
                # It finished first: aim the next kills within what a run takes now.
                self.window[command] = seconds

    def finish(self) -> dict:
        code_d, _ = run(["describe", str(self.photos)], self.base, self.env)
        code_e, _ = run(["embed", str(self.photos)], self.base, self.env)
        records = described(self.ws)
        by_sha = Counter(r["sha256"] for r in records)
        per_image = Counter(self.server.stats()["images"])
        asked_twice = sum(n - 1 for n in per_image.values() if n > 1)
        photos = len(list(self.photos.glob("*.jpg")))
        return {
            "final_describe_exit": code_d,
            "final_embed_exit": code_e,
            "photos": photos,
            "described": len(by_sha),
            "duplicate_records": sum(n - 1 for n in by_sha.values() if n > 1),
            "requests": len(self.server.requests),
            "asked_twice": asked_twice,
            "asked_twice_beyond_in_flight": max(0, asked_twice - self.in_flight_allowance),
            **self.compare_with_fresh_build(),
        }

    def compare_with_fresh_build(self) -> dict:
        """Build an index from scratch out of the same descriptions and compare row by row."""
        import numpy as np

        fresh = self.base / "fresh"
        fresh_ws = fresh / ".imgrag"
        fresh_ws.mkdir(parents=True)
        shutil.copy(self.ws / "descriptions.jsonl", fresh_ws / "descriptions.jsonl")
        shutil.copytree(self.photos, fresh / "photos")  # same bytes and relative paths
        code, _ = run(["embed", str(fresh / "photos")], fresh, self.env)
        tortured, rebuilt = index_rows(self.ws), index_rows(fresh_ws)
        same_rows = [(s, p) for s, p, _ in tortured] == [(s, p) for s, p, _ in rebuilt]
        diff = 0.0
        if same_rows and tortured:
            a = np.stack([np.frombuffer(v, np.float32) for _, _, v in tortured])
            b = np.stack([np.frombuffer(v, np.float32) for _, _, v in rebuilt])
            diff = float(np.abs(a - b).max())
        return {
            "index_rows": len(tortured),
            "fresh_build_exit": code,
            "index_equals_fresh_build": bool(same_rows and diff <= 1e-5),
            "max_vector_diff": diff,
        }


# Kill shortly after one of these calls; "content" twice as often: the results are written just after it.
KILL_AFTER_CALLS = ("list", "retrieve", "content", "content", "upload", "create")


class BatchTorture:
    """kill -9 of `imgrag describe --batch` while it settles, collects and submits."""

    def __init__(self, args: argparse.Namespace, base: Path, server: StandinVLM) -> None:
        self.args, self.base, self.server = args, base, server
        self.photos = base / "photos"
        self.ws = base / ".imgrag"
        self.env = clean_env(server.url)
        self.rng = random.Random(args.seed + 1)
        self.next_photo = args.photos
        self.kills = 0
        self.phases: Counter = Counter()
        self.records_lost = 0
        self.unreadable: list[str] = []
        self.seen: set[str] = set()
        self.live_runs = 0
        self.live_exits: Counter = Counter()
        self.span = (0.0, 1.0)

    def steps(self) -> list[dict]:
        return jsonl_lines(self.ws / "batches.jsonl")[0]

    def calibrate(self) -> None:
        """When, after the start of a batch run, its first and last server calls come."""
        draw_photos(self.photos, self.args.new_per_cycle, start=self.next_photo)
        self.next_photo += self.args.new_per_cycle
        t0 = time.monotonic()
        run(["describe", str(self.photos), "--batch"], self.base, self.env)
        time.sleep(0.5)  # let that batch finish, so that the second run collects and submits
        draw_photos(self.photos, self.args.new_per_cycle, start=self.next_photo)
        self.next_photo += self.args.new_per_cycle
        t1 = time.monotonic()
        run(["describe", str(self.photos), "--batch"], self.base, self.env)
        calls = [t - t1 for t, _ in self.server.batch.call_log if t >= t1]
        self.span = (max(0.0, calls[0] - 0.2), calls[-1] + 0.2) if calls else (0.0, time.monotonic() - t0)

    def cycle(self, number: int) -> None:
        draw_photos(self.photos, self.args.batch_new_per_cycle, start=self.next_photo)
        self.next_photo += self.args.batch_new_per_cycle
        if number % 4 == 3:
            self.server.batch.enqueue_batches("expire")  # half done, then its window runs out
        before_steps, before_calls = len(self.steps()), len(self.server.batch.call_log)
        if self.rng.random() < 0.25:  # any moment of the run
            code, _ = run(["describe", str(self.photos), "--batch"], self.base, self.env,
                          kill_after=self.rng.uniform(0, self.span[1]))
        else:  # just after one of its server calls: mid-collect, mid-prepare, around upload and create
            target = self.rng.choice(KILL_AFTER_CALLS)
            delay = self.rng.uniform(0, 0.015 if target == "content" else 0.03)
            code = self.run_killed_after(target, delay, before_calls)
        if code is None:
            self.after_kill(before_steps, before_calls)
        if number % 5 == 4:  # a plain describe beside the batches, run to completion
            code, _ = run(["describe", str(self.photos)], self.base, self.env)
            self.live_runs += 1
            self.live_exits[str(code)] += 1
        time.sleep(self.rng.uniform(0, 0.4))  # batches move on between runs

    def run_killed_after(self, call: str, delay: float, before_calls: int) -> int | None:
        """`describe --batch`, killed `delay` s after the stand-in saw its first `call` call
        (None), unless it ends first (its exit code)."""
        proc = subprocess.Popen([sys.executable, "-m", "imgrag", "describe", str(self.photos), "--batch"],
                                cwd=self.base, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if any(name == call for _, name in self.server.batch.call_log[before_calls:]):
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return None if proc.returncode == -signal.SIGKILL else proc.returncode
            time.sleep(0.001)
        return proc.wait()

    def after_kill(self, before_steps: int, before_calls: int) -> None:
        self.kills += 1
        problems = check_readable(self.ws)
        if problems:
            log(f"after batch kill {self.kills}: {problems}")
        self.unreadable += problems
        shas = {r["sha256"] for r in described(self.ws)}
        self.records_lost += len(self.seen - shas)
        self.seen |= shas
        new = self.steps()[before_steps:]
        calls = [name for _, name in self.server.batch.call_log[before_calls:]]
        events = [s["event"] for s in new]
        open_intent = bool(events) and events[-1] in ("intent", "uploaded")
        if open_intent:
            self.phases["submit_window"] += 1
        elif "content" in calls and "closed" not in events[events.index("seen") if "seen" in events else 0:]:
            self.phases["collect"] += 1
        elif "content" in calls or "upload" in calls:
            self.phases["between"] += 1
        else:
            self.phases["other"] += 1

    def finish(self) -> dict:
        from imgrag.store.batch_log import BatchLog
        from imgrag.store.workspace import Workspace

        exits = []
        for _ in range(60):
            code, _ = run(["describe", str(self.photos), "--batch"], self.base, self.env)
            exits.append(code)
            open_batches = BatchLog(Workspace(self.ws)).open_entries()
            if not open_batches and len({r["sha256"] for r in described(self.ws)}) >= self.next_photo:
                break
            time.sleep(0.3)
        records = described(self.ws)
        by_sha = Counter(r["sha256"] for r in records)
        answered = Counter(self.server.stats()["images"])
        steps = self.steps()
        return {
            "batch_kills": self.kills,
            "kills_in_submit_window": self.phases["submit_window"],
            "kills_in_collect": self.phases["collect"],
            "kills_between": self.phases["between"],
            "kills_other": self.phases["other"],
            "batch_records_lost": self.records_lost,
            "batch_unreadable_files": len(self.unreadable),
            "batch_photos": self.next_photo,
            "batch_described": len(by_sha),
            "batch_duplicate_records": sum(n - 1 for n in by_sha.values() if n > 1),
            "paid_twice": sum(n - 1 for n in answered.values() if n > 1),
            "answered_live": sum(1 for r in records if "batch" not in r),
            "answered_in_batches": sum(self.server.batch.processed.values()),
            "batches_created": len(self.server.batch.batches),
            "batches_adopted": sum(1 for s in steps if s.get("adopted")),
            "submissions_abandoned": sum(1 for s in steps if s["event"] == "abandoned"),
            "batches_expired": sum(1 for st in self.server.batch.stats()["batches"].values() if st == "expired"),
            "open_batches_left": len(BatchLog(Workspace(self.ws)).open_entries()),
            "final_batch_runs": len(exits),
            "final_batch_exit": exits[-1],
            "live_runs_beside": self.live_runs,
            "live_exits": dict(self.live_exits),
            "kill_span_s": [round(x, 2) for x in self.span],
        }


def batch_torture(args: argparse.Namespace) -> dict:
    base = Path(tempfile.mkdtemp(prefix="torture-batch-"))
    try:
        draw_photos(base / "photos", args.photos)
        # 24 h of completion window last 6 s; batches validate in 0.2 s, then 20 ms a request.
        with StandinVLM(latency=0.05, time_scale=6 / 86_400) as server:
            server._server.handle_error = lambda request, address: None
            server.batch.set(validate_s=0.2, request_s=0.02)
            torture = BatchTorture(args, base, server)
            torture.calibrate()
            log(f"batch: kill span {torture.span[0]:.2f}-{torture.span[1]:.2f} s; {args.batch_kills} kills")
            cycles = 0
            while torture.kills < args.batch_kills and cycles < 10 * max(1, args.batch_kills):
                cycles += 1
                torture.cycle(cycles)
                if cycles % 10 == 0:
                    log(f"batch: {torture.kills} kills, phases {dict(torture.phases)}")
            return torture.finish()
    finally:
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=50, help="kills of each command (default 50)")
    parser.add_argument("--photos", type=int, default=60, help="photos at the start")
    parser.add_argument("--new-per-cycle", type=int, default=2, help="photos added before each describe+embed")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.5, help="stand-in seconds per request")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (its path goes to stderr)")
    parser.add_argument("--batch-kills", type=int, default=40, help="kills of describe --batch (default 40; 0 skips)")
    parser.add_argument("--batch-new-per-cycle", type=int, default=5, help="photos added before each describe --batch")
    args = parser.parse_args(argv)
    if args.kills == 0:
        started = time.monotonic()
        figures = batch_torture(args) if args.batch_kills else {}
        print(json.dumps({**figures, "elapsed_s": round(time.monotonic() - started, 1)}))
        return

    base = Path(tempfile.mkdtemp(prefix="torture-"))
    started = time.monotonic()
    try:
        draw_photos(base / "photos", args.photos)
        with StandinVLM(latency=args.latency) as server:
            # A killed client resets its connection; socketserver would print each one.
            server._server.handle_error = lambda request, address: None
            torture = Torture(args, base, server)
            t_describe, t_embed = torture.calibrate()
            log(f"calibration: describe {t_describe:.1f} s, embed {t_embed:.1f} s; {args.kills} kills each")
            # Kill within what a run takes; the window then follows what runs really take.
            torture.window = {"describe": t_describe, "embed": t_embed}
            cycles = 0
            while min(torture.kills.values()) < args.kills and cycles < 10 * args.kills:
                cycles += 1
                torture.cycle()
                done = sum(torture.kills.values())
                if done % 10 == 0:
                    log(f"{done} kills, {len(torture.seen)}/{torture.next_photo} photos described")
            result = torture.finish()
        figures = {
            "kills_describe": torture.kills["describe"],
            "kills_embed": torture.kills["embed"],
            "records_lost": torture.records_lost,
            "lost_beyond_in_flight": torture.lost_beyond_in_flight,
            "in_flight_allowance": torture.in_flight_allowance,
            "unreadable_files": len(torture.unreadable),
            **result,
            "jobs": args.jobs,
            "latency_s": args.latency,
            "calibration_describe_s": round(t_describe, 2),
            "calibration_embed_s": round(t_embed, 2),
        }
        if args.batch_kills:
            figures.update(batch_torture(args))
        figures["elapsed_s"] = round(time.monotonic() - started, 1)
        print(json.dumps(figures))
    finally:
        if args.keep:
            log(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
