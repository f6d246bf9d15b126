"""How long a whole `imgrag search` process takes over an index of 100,000 photos.

Builds (once; cached under bench/.cache/, which git ignores) a workspace of 100k realistic
photo descriptions made from the human captions in ../shared/data (Flickr8k train+dev and
COCO: each photo's five captions recombined into caption + description, so every text is
distinct and reads like one photo), embedded with the packaged all-MiniLM-L6-v2 and written
through the real vector cache, `write_generation` and encoder export. Then times
`imgrag search QUERY --json` as a user runs it, a fresh process each time, with the fast
query encoder (ONNX Runtime) and with the encoder forced to sentence-transformers
(IMGRAG_QUERY_ENCODER=torch), alternating, after one warm-up run of each (warm page
cache). Wall and CPU seconds are both reported: on a shared, busy machine the CPU time is
what the process itself costs. Prints one JSON line: medians, their ratio, whether both paths ranked every query
identically, peak RSS of each, and the median time of `imgrag --help`.

    python bench/search_latency.py                 # build or reuse, then time (5 runs each)
    python bench/search_latency.py --docs 20000 --runs 3

The 100k texts are embedded with the model's verified ONNX export (the same vectors as
sentence-transformers, cosine >= 0.9999, for about half the CPU): 20-40 minutes on a busy
2-core machine, once; progress goes to stderr. Timed processes run without
PYTHONDONTWRITEBYTECODE, so Python caches bytecode as it does on a user's machine.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy is imported where it is used: the timed child processes stay light
    import numpy as np

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / "bench" / ".cache"
QUERIES = [  # Flickr8k/COCO-style queries a person might type
    "dog running on the beach",
    "a man riding a bike down a dirt road",
    "children playing in the snow",
    "birthday cake with candles on a table",
    "a red stop sign at a street corner",
]


def log(msg: str) -> None:
    print(f"[search_latency] {msg}", file=sys.stderr, flush=True)


# -- the 100k workspace ---------------------------------------------------------------------


def photo_captions(data: Path) -> list[tuple[list[str], list[str]]]:
    """(five captions, objects) per photo from Flickr8k and COCO."""
    flickr = data / "captions" / "flickr8k_traindev.jsonl"
    coco = data / "photos" / "coco.jsonl"
    for f in (flickr, coco):
        if not f.exists():
            sys.exit(f"search_latency: missing {f}: pass --data pointing at the shared data folder")
    photos = []
    for line in flickr.open():
        r = json.loads(line)
        photos.append(([_sentence(r["description"]), *map(_sentence, r["queries"])], []))
    for line in coco.open():
        r = json.loads(line)
        photos.append(([_sentence(c) for c in r["captions"]], r.get("objects") or []))
    return photos


def _sentence(text: str) -> str:
    text = " ".join(text.replace(" .", ".").replace(" ,", ",").split()).strip()
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def descriptions(data: Path, count: int) -> list[dict]:
    """`count` distinct descriptions: rounds over every photo, each round another pick of
    caption + one or two other captions of the same photo (like a burst of similar shots)."""
    photos = photo_captions(data)
    rng = random.Random(4)
    combos = []
    for _ in photos:
        picks = [(c, rest) for c in range(5) for k in (1, 2) for rest in itertools.combinations([i for i in range(5) if i != c], k)]
        rng.shuffle(picks)
        combos.append(picks)
    out, seen = [], set()
    for round_ in range(len(combos[0])):
        for (caps, objects), picks in zip(photos, combos, strict=False):
            c, rest = picks[round_]
            desc = {"caption": caps[c], "description": " ".join(caps[i] for i in rest), "objects": objects}
            key = json.dumps(desc, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(desc)
            if len(out) == count:
                return out
    sys.exit(f"search_latency: the data yields only {len(out)} distinct descriptions, fewer than --docs {count}")


def build_workspace(data: Path, count: int) -> Path:
    """A real `.imgrag/` for `count` photos. The embedded texts and their vectors are cached;
    the index itself is rewritten whenever the code that writes it has changed."""
    from imgrag.describe.schema import lexical_text
    from imgrag.index.embedding import VectorCache, cache_dir_name, load_model, text_key
    from imgrag.index.generations import Doc, read_meta, write_generation
    from imgrag.store.workspace import Workspace

    base = CACHE / f"library-{count}"
    ws = Workspace(base / ".imgrag")
    meta = read_meta(ws)
    code = _index_code_hash()
    if meta is not None and meta.get("count") == count and meta.get("bench_code") == code:
        log(f"reusing {ws.root}")
        _ensure_export(ws)
        _ensure_photo_files(base, count)
        return base
    docs = [
        Doc(
            sha256=hashlib.sha256(f"bench-photo-{i}".encode()).hexdigest(),
            paths=[_photo_path(i)],
            caption=desc["caption"],
            text=text,
            lexical=lexical_text(desc),
            taken=None,
            mtime=None,
        )
        for i, (desc, text) in enumerate(cached_texts(data, count))
    ]
    model = load_model("all-MiniLM-L6-v2")
    embedding = {"model": model.name, "fingerprint": model.fingerprint, "dim": model.dim}
    ws.update_manifest(embedding=embedding, roots=["photos"])
    encoder = _bulk_encoder(ws, model)
    cache = VectorCache(ws.paths.vectors / cache_dir_name(model.name, model.fingerprint), model.dim)
    keys = [text_key(d.text) for d in docs]
    todo = list({k: d.text for k, d in zip(keys, docs, strict=False) if k not in cache}.items())
    log(f"embedding {len(todo)} texts ({len(docs) - len(todo)} cached) with {type(encoder).__name__}")
    start = time.perf_counter()
    for n in range(0, len(todo), 2048):
        part = todo[n : n + 2048]
        cache.add([k for k, _ in part], encode_sorted(encoder, [t for _, t in part]))
        done = n + len(part)
        rate = done / (time.perf_counter() - start)
        log(f"  {done}/{len(todo)} ({rate:.0f}/s, {(len(todo) - done) / rate / 60:.1f} min left)")
    log("writing the index")
    write_generation(ws, docs, cache.get(keys), {"embedding": embedding, "signature": "bench", "bench_code": code})
    _ensure_export(ws)
    _ensure_photo_files(base, count)
    return base


def _photo_path(i: int) -> str:
    return f"photos/{i // 1000:03d}/{i:06d}.jpg"


def _ensure_photo_files(base: Path, count: int) -> None:
    """An empty file for every indexed photo: search leaves out hits whose file is gone, as
    it would for a user, so the library's photos must be there (their bytes are never read)."""
    for i in range(count):
        path = base / _photo_path(i)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()


def _bulk_encoder(ws, model):
    """The verified ONNX export when it can be made: the same vectors (cosine >= 0.9999 with
    sentence-transformers) for about half the CPU, which matters for 100k texts on 2 cores."""
    from imgrag.index.onnx_export import ensure_export
    from imgrag.index.query_encoder import open_encoder

    status = ensure_export(ws, model.name, model.fingerprint, model)
    log(f"query encoder export: {status}")
    return open_encoder(ws, model.name, model.fingerprint) if status in ("exported", "ready") else model


def encode_sorted(encoder, texts: list[str], batch: int = 64) -> np.ndarray:
    """Batches of similar length (as sentence-transformers does), so padding costs little."""
    import numpy as np

    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    vecs = np.zeros((len(texts), 0), np.float32)
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        part = encoder.encode([texts[i] for i in idx])
        if vecs.shape[1] == 0:
            vecs = np.zeros((len(texts), part.shape[1]), np.float32)
        vecs[idx] = part
    return vecs


def cached_texts(data: Path, count: int) -> list[tuple[dict, str]]:
    """(description, embedded text) pairs, made once: later changes to how imgrag builds the
    embedded text must not cost a re-embedding of 100k texts just to time a search."""
    from imgrag.describe.schema import embedding_text

    path = CACHE / f"texts-{count}.jsonl"
    if path.exists():
        return [tuple(json.loads(line)) for line in path.open()]
    log(f"building {count} descriptions from {data}")
    pairs = [(desc, embedding_text(desc)) for desc in descriptions(data, count)]
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))
    tmp.replace(path)
    return pairs


def _index_code_hash() -> str:
    src = REPO / "src" / "imgrag"
    h = hashlib.sha256()
    for name in ("index.py", "lexical.py", "crowding.py", "schema.py"):
        if (src / name).exists():
            h.update((src / name).read_bytes())
    return h.hexdigest()[:16]


def _ensure_export(ws) -> None:
    from imgrag.index.generations import read_meta
    from imgrag.index.onnx_export import ensure_export

    embedding = read_meta(ws)["embedding"]
    status = ensure_export(ws, embedding["model"], embedding["fingerprint"])
    log(f"query encoder export: {status}")


# -- timing -----------------------------------------------------------------------------------


def run_cli(args: list[str], cwd: Path, env: dict) -> dict:
    """One `imgrag` process: wall and CPU seconds, peak RSS, and what it printed."""
    import tempfile

    exe = Path(sys.executable).with_name("imgrag")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen([str(exe), *args], cwd=cwd, env=env, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, unlike RUSAGE_CHILDREN
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if proc.returncode not in (0, 1):
        sys.exit(f"search_latency: imgrag {' '.join(args)} failed ({proc.returncode}): {stderr.strip()[-500:]}")
    return {"wall": wall, "cpu": usage.ru_utime + usage.ru_stime, "rss_mb": usage.ru_maxrss / 1024, "stdout": stdout}


def user_env() -> dict[str, str]:
    """The environment of a user's shell: no IMGRAG_ settings, and Python caching bytecode
    as it does by default (PYTHONDONTWRITEBYTECODE would recompile imgrag on every run)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("IMGRAG_") and k != "PYTHONDONTWRITEBYTECODE"}


def time_searches(base: Path, queries: list[str]) -> dict[str, dict]:
    """Each query through both paths, alternating, after one warm-up run of each: the load
    of a shared machine then weighs on both alike."""
    env = user_env()
    envs = {"fast": {**env, "NO_COLOR": "1", "IMGRAG_QUERY_ENCODER": "onnx"},
            "slow": {**env, "NO_COLOR": "1", "IMGRAG_QUERY_ENCODER": "torch"}}
    runs: dict[str, list[dict]] = {"fast": [], "slow": []}
    for path_env in envs.values():
        run_cli(["search", queries[0], "--json"], base, path_env)  # page cache, .pyc files
    for q in queries:
        for path, path_env in envs.items():
            run = run_cli(["search", q, "--json", "--limit", "20"], base, path_env)
            run["ranking"] = [r["sha256"] for r in json.loads(run.pop("stdout"))["results"]]
            runs[path].append(run)
            log(f"  {path}: {run['wall']:.3f} s wall, {run['cpu']:.3f} s CPU  {q!r}")
    return runs


def time_help(base: Path, runs: int) -> list[dict]:
    env = user_env()
    run_cli(["--help"], base, env)
    return [run_cli(["--help"], base, env) for _ in range(runs)]


def median(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--build-only", action="store_true", help="build the cached workspace and stop")
    parser.add_argument("--time-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.time_only:
        data = args.data.resolve()
        if not data.is_dir():
            sys.exit(f"search_latency: no shared data at {data}: pass --data")
        build_workspace(data, args.docs)
        if not args.build_only:
            # Time from a fresh, small process: a child's peak RSS starts from its parent's
            # (fork), and this one holds the 100k texts and a model by now.
            cmd = [sys.executable, __file__, "--time-only", "--docs", str(args.docs), "--runs", str(args.runs)]
            sys.exit(subprocess.run(cmd, check=False).returncode)
        return
    base = CACHE / f"library-{args.docs}"
    queries = [QUERIES[i % len(QUERIES)] for i in range(args.runs)]
    log(f"timing {args.runs} searches per path over {args.docs} photos")
    runs = time_searches(base, queries)
    fast, slow = runs["fast"], runs["slow"]
    helped = time_help(base, args.runs)
    print(json.dumps({
        "bench": "search_latency",
        "docs": args.docs,
        "runs": args.runs,
        "fast_median_s": median(fast, "wall"),
        "slow_median_s": median(slow, "wall"),
        "ratio": round(median(fast, "wall") / median(slow, "wall"), 3),
        "identical_rankings": [r["ranking"] for r in fast] == [r["ranking"] for r in slow],
        "fast_median_cpu_s": median(fast, "cpu"),
        "slow_median_cpu_s": median(slow, "cpu"),
        "fast_peak_rss_mb": round(max(r["rss_mb"] for r in fast), 1),
        "slow_peak_rss_mb": round(max(r["rss_mb"] for r in slow), 1),
        "help_median_s": median(helped, "wall"),
        "load_average": round(os.getloadavg()[0], 2),
    }))


if __name__ == "__main__":
    main()
