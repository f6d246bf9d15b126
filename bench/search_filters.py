"""What `imgrag search --in/--after/--before` add to a search over a large collection.

Builds (in a temporary folder, a few seconds) an index generation of N synthetic photos
through the real `write_generation`: paths spread over year/month folders with every tenth
photo also in a backup folder, two photos in three with an EXIF date, random unit vectors
as embeddings. Then times, over R runs each, the two costs a filter adds: working out
which rows pass (`search.allowed_rows`, one SQLite query) and ranking only those rows
(`search.rank` with `allowed_rows`: a FAISS ID selector), against the same ranking with no
filter. Prints one JSON line of medians (ms).

    python bench/search_filters.py              # 100,000 photos, 7 runs
    python bench/search_filters.py --photos 20000 --runs 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imgrag.index.generations import Doc, open_generation, write_generation
from imgrag.search.filters import Filters, allowed_rows, parse_date
from imgrag.search.ranking import SearchOptions, rank
from imgrag.store.workspace import Workspace

DIM = 384


def log(msg: str) -> None:
    print(f"[search_filters] {msg}", file=sys.stderr, flush=True)


def synthetic_docs(n: int, rng: random.Random) -> list[Doc]:
    docs = []
    for i in range(n):
        year, month = rng.randint(2010, 2024), rng.randint(1, 12)
        paths = [f"photos/{year}/{month:02d}/IMG_{i:06d}.jpg"]
        if i % 10 == 0:
            paths.append(f"photos/backup/IMG_{i:06d}.jpg")
        taken = f"{year}-{month:02d}-{rng.randint(1, 28):02d}T12:00:00" if i % 3 else None
        mtime = int(time.mktime((year, month, 15, 12, 0, 0, 0, 0, -1)))
        caption = f"photo {i} of a {rng.choice(['dog', 'cat', 'beach', 'street', 'cake', 'kitchen'])}"
        docs.append(Doc(f"{i:064x}", paths, caption, caption, f"caption\t{caption}", taken, mtime))
    return docs


def median_ms(fn, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(statistics.median(times) * 1000, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--photos", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()

    rng = random.Random(0)
    with tempfile.TemporaryDirectory(prefix="imgrag-filters-") as tmp:
        base = Path(tmp)
        (base / "photos" / "2019").mkdir(parents=True)
        ws = Workspace(base / ".imgrag")
        log(f"building an index of {args.photos:,} synthetic photos")
        vectors = np.random.default_rng(0).standard_normal((args.photos, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        embedding = {"model": "synthetic", "fingerprint": "0", "dim": DIM}
        write_generation(ws, synthetic_docs(args.photos, rng), vectors, {"embedding": embedding})
        generation = open_generation(ws)
        query = vectors[0] + 0.1 * vectors[1]
        query /= np.linalg.norm(query)

        filters = {
            "in_folder": Filters(under=base / "photos" / "2019"),
            "after": Filters(after=parse_date("2020-01-01", "--after")),
            "in_and_range": Filters(under=base / "photos" / "2019", after=parse_date("2019-03", "--after"),
                                    before=parse_date("2019-06", "--before")),
        }
        figures: dict[str, object] = {"photos": args.photos, "runs": args.runs}
        figures["rank_unfiltered_ms"] = median_ms(
            lambda: rank(generation, query, "dog", SearchOptions(limit=10)), args.runs)
        for name, f in filters.items():
            allowed = allowed_rows(generation, ws, f)
            log(f"{name}: {len(allowed):,} photos pass")
            figures[f"{name}_passing"] = len(allowed)
            figures[f"{name}_select_ms"] = median_ms(lambda f=f: allowed_rows(generation, ws, f), args.runs)
            figures[f"{name}_rank_ms"] = median_ms(
                lambda a=allowed: rank(generation, query, "dog", SearchOptions(limit=10, allowed_rows=a)), args.runs)
        generation.close()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
