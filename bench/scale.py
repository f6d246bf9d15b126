"""How the dense index scales: build time, query latency, recall@10 and memory at 10k, 100k, 1M.

The vectors are real sentence embeddings: every caption in ../shared/data (Flickr8k
descriptions and queries, COCO captions: ~36k distinct sentences) embedded with the
packaged all-MiniLM-L6-v2 through `imgrag.index.embedding`. A collection of N photos is made by
mixing each sentence with a second random one (weight 0.2-0.5) plus small Gaussian
noise, then normalising, so near neighbours look like those of real descriptions (same
topic, different details) rather than random points. Queries are 500 held-out sentences
(never mixed into the collection).

Per size, the index is built with `imgrag.index.generations`'s own choice of kind (`plan_for`) and
written to disk; then a SEPARATE process opens it the way `imgrag search` does
(`index.open_dense`: IVF memory-mapped) and runs the queries one at a time, asking for
200 candidates as search does. That process reports its latency and its peak RSS (it
imports numpy + faiss, as a search does before its query encoder; the ONNX query encoder
adds ~100 MB and is measured by bench/search_latency.py). Recall@10 is against exact
inner-product search over the unquantised vectors.

    python bench/scale.py                      # 10k, 100k, 1M (~3 min on 2 cores, ~4 GB while building 1M)
    python bench/scale.py --sizes 10000,100000

Prints one JSON line per size."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data"
CACHE = REPO / "bench" / ".cache"
QUERIES = 500
CANDIDATES = 200  # what search.rank asks the dense index for


def log(msg: str) -> None:
    print(f"[scale] {msg}", file=sys.stderr, flush=True)


def real_sentences(data: Path) -> list[str]:
    flickr = data / "captions" / "flickr8k_traindev.jsonl"
    coco = data / "photos" / "coco.jsonl"
    if not flickr.exists():
        sys.exit(f"bench/scale.py: {flickr} is missing: pass --data DIR (the shared data folder)")
    texts: dict[str, None] = {}
    for line in flickr.read_text().splitlines():
        rec = json.loads(line)
        for t in [rec["description"], *rec["queries"]]:
            texts[" ".join(t.split())] = None
    if coco.exists():
        for line in coco.read_text().splitlines():
            for t in json.loads(line)["captions"]:
                texts[" ".join(t.split())] = None
    return list(texts)


def sentence_vectors(data: Path) -> np.ndarray:
    """Embeddings of every sentence, cached in bench/.cache (they take a few minutes)."""
    texts = real_sentences(data)
    path = CACHE / f"scale-sentences-{len(texts)}.npy"
    if path.exists():
        return np.load(path)
    from imgrag.index.embedding import DEFAULT_MODEL, load_model

    log(f"embedding {len(texts)} sentences once (cached in {path})")
    vecs = load_model(DEFAULT_MODEL).encode(texts, show_progress=sys.stderr.isatty())
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, vecs)
    return vecs


def collection(base: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """n vectors: each a real sentence mixed with another one and a little noise."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, base.shape[1]), np.float32)
    step = 100_000
    for start in range(0, n, step):
        m = min(step, n - start)
        first = base[np.arange(start, start + m) % len(base)]
        second = base[rng.integers(0, len(base), m)]
        weight = rng.uniform(0.2, 0.5, (m, 1)).astype(np.float32)
        noise = rng.normal(0, 0.01, (m, base.shape[1])).astype(np.float32)  # norm ~0.2
        v = first + weight * second + noise
        out[start : start + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    return out


def exact_top10(vectors: np.ndarray, queries: np.ndarray) -> np.ndarray:
    import faiss

    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors)
    return flat.search(queries, 10)[1]


def measure_size(n: int, base: np.ndarray, queries: np.ndarray, work: Path) -> dict:
    from imgrag.index.crowding import crowding
    from imgrag.index.generations import write_dense
    from imgrag.store.paths import DENSE_FILE

    vectors = collection(base, n)
    truth = exact_top10(vectors, queries)
    folder = work / f"n{n}"
    folder.mkdir()
    rows = [(str(i), str(i)) for i in range(n)]
    log(f"{n}: building")
    t0 = time.perf_counter()
    plan = write_dense(vectors, rows, None, folder / DENSE_FILE)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    crowding(vectors, [f"{i:08x}" for i in range(n)])  # the other per-row file a generation gets
    crowding_s = time.perf_counter() - t0
    del vectors
    np.save(folder / "queries.npy", queries)
    np.save(folder / "truth.npy", truth)
    (folder / "plan.json").write_text(json.dumps(plan))
    log(f"{n}: built {plan} in {build_s:.1f}s; searching in a fresh process")
    child = subprocess.run([sys.executable, __file__, "--search-child", str(folder)],
                           capture_output=True, text=True, check=True)
    searched = json.loads(child.stdout)
    return {"bench": "scale", "photos": n, "index": plan["type"], "plan": plan, "build_s": round(build_s, 1),
            "crowding_s": round(crowding_s, 1), **searched, "index_bytes": (folder / DENSE_FILE).stat().st_size}


def search_child(folder: Path) -> None:
    """The search side alone: open the index as `imgrag search` does, query, report."""
    from imgrag.index.generations import open_dense
    from imgrag.store.paths import DENSE_FILE

    plan = json.loads((folder / "plan.json").read_text())
    queries, truth = np.load(folder / "queries.npy"), np.load(folder / "truth.npy")
    t0 = time.perf_counter()
    index = open_dense(folder / DENSE_FILE, plan)
    load_ms = (time.perf_counter() - t0) * 1000
    index.search(queries[:5], CANDIDATES)  # first touch of the mapped pages is not a query's cost
    times, hits = [], 0
    for q, want in zip(queries, truth, strict=False):
        t = time.perf_counter()
        _, found = index.search(q.reshape(1, -1), CANDIDATES)
        times.append((time.perf_counter() - t) * 1000)
        hits += len(set(found[0][:10].tolist()) & set(want.tolist()))
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork+exec,
    # so a child of the (big) building process would report the parent's peak.
    status = Path("/proc/self/status").read_text()
    peak_kb = int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:")))
    print(json.dumps({
        "load_ms": round(load_ms, 1),
        "query_p50_ms": round(float(np.percentile(times, 50)), 2),
        "query_p95_ms": round(float(np.percentile(times, 95)), 2),
        "recall_at_10": round(hits / (10 * len(queries)), 4),
        "search_peak_rss_mb": round(peak_kb / 1024),
    }))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--search-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.search_child:
        return search_child(args.search_child)
    sys.path.insert(0, str(REPO / "src"))
    import faiss

    faiss.omp_set_num_threads(faiss.omp_get_max_threads())
    all_vecs = sentence_vectors(args.data)
    rng = np.random.default_rng(0)
    held_out = rng.choice(len(all_vecs), QUERIES, replace=False)
    queries = np.ascontiguousarray(all_vecs[held_out])
    base = np.delete(all_vecs, held_out, axis=0)
    with tempfile.TemporaryDirectory(prefix="imgrag-scale-") as tmp:
        for n in [int(s) for s in args.sizes.split(",")]:
            print(json.dumps(measure_size(n, base, queries, Path(tmp))), flush=True)
            for f in (Path(tmp) / f"n{n}").iterdir():
                f.unlink()  # a 1M index is ~400 MB: free the disk before the next size


if __name__ == "__main__":
    main()
