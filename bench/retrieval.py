"""Caption retrieval benchmark through imgrag's own search path.

Each photo's description is turned into index text by `schema.embedding_text` /
`schema.lexical_text`, written with `index.write_generation`, read back with `open_generation`,
and every query is ranked by `search.candidates` + `search.order` (what `search.rank`,
and so `imgrag search`, ranks with). Prints one JSON line: the shipped ranking's figures
as the headline keys, dense-only and fused side by side, and how the default
--min-score cut-off treats right answers and off-topic queries.

    bench/retrieval.py                                   # Flickr8k dev split
    bench/retrieval.py --coco                            # the 239 COCO photos
    bench/retrieval.py --split train --tune              # grid over the fusion weights
    bench/retrieval.py --model all-MiniLM-L6-v2 --model ~/models/all-mpnet-base-v2   # compare models

With several --model values (hub names or model folders) the models run in one process
and their speed figures are measured in alternating rounds, so a busy shared CPU slows
each alike: one JSON line per model, with the load average beside the figures. Speed:
`embed_texts_per_s` (document texts through sentence-transformers, as `imgrag embed`
encodes a collection), `query_ms` (one query through the model's verified ONNX export,
as `imgrag search` embeds it, plus ranking), and the index's size on disk.

Formats (auto-detected): caption lines {"id","description","queries":[...],"split"} and
COCO lines {"file","captions":[5],"objects":[...]} (caption 1 + objects describe the
photo, captions 2-5 are the queries). Vectors are cached in bench/.cache/."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from imgrag.index import default_model
from imgrag.index.embedding import DEFAULT_MODEL, VectorCache, cache_dir_name, load_model, text_key
from imgrag.index.generations import Doc, open_generation, write_generation
from imgrag.index.query_encoder import QueryEncoder
from imgrag.search.ranking import (
    DEFAULT_FUSION,
    DEFAULT_MIN_SCORE,
    DENSE_ONLY,
    Candidates,
    Fusion,
    SearchOptions,
    candidates,
    order,
    shown_set,
)
from imgrag.store.workspace import Workspace

DATA = REPO.parent / "shared" / "data"
CAPTIONS = DATA / "captions" / "flickr8k_traindev.jsonl"
COCO = DATA / "photos" / "coco.jsonl"
CACHE = REPO / "bench" / ".cache"

# Queries no photo in a caption dataset answers: what --min-score should hide.
OFF_TOPIC = [
    "quarterly tax spreadsheet", "invoice number 4471", "python stack trace", "screenshot of a login form",
    "scanned passport page", "wiring diagram of a fuse box", "electron microscope image of a virus",
    "bar chart of revenue by region", "handwritten grocery list", "pdf of a lease agreement",
    "x-ray of a broken wrist", "map of the london underground", "sheet music for piano",
    "periodic table poster", "terminal window with error messages", "blurry photo of a whiteboard equation",
    "asdf qwerty zxcv", "hexadecimal memory dump", "corporate org chart", "calendar for march 2019",
]


@dataclass
class Item:
    id: str
    description: dict
    queries: list[str]


def load_items(path: Path, split: str | None, coco: bool | None) -> tuple[list[Item], str]:
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if coco is None:
        coco = bool(lines) and "captions" in lines[0] and "file" in lines[0]
    if coco:
        items = [Item(r["file"], {"caption": r["captions"][0], "objects": r.get("objects") or []}, r["captions"][1:])
                 for r in lines]
        return items, "coco"
    items = [Item(r["id"], {"caption": r["description"]}, r["queries"])
             for r in lines if split is None or r.get("split") == split]
    return items, str(lines[0].get("dataset", "captions")) if lines else "captions"


def cached_vectors(texts: list[str], cache: VectorCache, encode) -> np.ndarray:
    todo = list(dict.fromkeys(t for t in texts if text_key(t) not in cache))
    for start in range(0, len(todo), 2048):
        part = todo[start:start + 2048]
        print(f"retrieval: embedding {start + len(part)}/{len(todo)} texts", file=sys.stderr)
        cache.add([text_key(t) for t in part], encode(part))
    return cache.get([text_key(t) for t in texts])


def embed_all(items: list[Item], docs: list[Doc], model_name: str, folder: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Document vectors as `imgrag embed` makes them, query vectors as `imgrag search` does, cached in `folder`."""
    model = load_model(model_name)  # the default: ONNX Runtime, as embed and search run it; others: sentence-transformers
    queries = [q for it in items for q in it.queries]
    name = cache_dir_name(model_name, model.fingerprint)
    doc_vecs = cached_vectors([d.text for d in docs], VectorCache(folder / "docs" / name, model.dim), model.encode)
    query_vecs = cached_vectors(queries, VectorCache(folder / "queries" / name, model.dim), model.encode)
    return doc_vecs, queries, query_vecs


def metrics(positions: np.ndarray) -> dict[str, float]:
    """positions: 0-based rank of each query's right answer, -1 when not ranked."""
    found = positions >= 0
    rr = np.where(found, 1.0 / np.maximum(positions + 1, 1), 0.0)
    out = {f"R@{k}": round(float(np.mean(found & (positions < k))), 4) for k in (1, 5, 10)}
    out["MRR"] = round(float(rr.mean()), 4)
    return out


def position(found: Candidates, fusion: Fusion, target: int) -> tuple[int, float]:
    rows, scores = order(found, fusion)
    hit = np.flatnonzero(rows == target)
    return (int(hit[0]), float(scores[hit[0]])) if len(hit) else (-1, float("nan"))


def evaluate(all_found: list[Candidates], targets: list[int], fusion: Fusion) -> tuple[dict, np.ndarray, np.ndarray]:
    pos_scores = [position(f, fusion, t) for f, t in zip(all_found, targets, strict=False)]
    positions = np.array([p for p, _ in pos_scores])
    return metrics(positions), positions, np.array([s for _, s in pos_scores])


def tune(all_found: list[Candidates], targets: list[int]) -> dict:
    """Grid over the rare-word weight and the crowding weight (words written on the photo
    are absent from caption data, so their weight cannot be tuned here); the best by MRR
    among settings that cost nothing against dense on R@1 or R@10."""
    dense, _, _ = evaluate(all_found, targets, DENSE_ONLY)
    grid = []
    for rare_words in (0.0, 0.02, 0.03, 0.04, 0.05, 0.06, 0.08, 0.1, 0.16):
        for crowding in (0.0, 0.03, 0.04, 0.05, 0.06, 0.07, 0.1, 0.15, 0.2):
            fig, _, _ = evaluate(all_found, targets, replace(DEFAULT_FUSION, rare_words=rare_words, crowding=crowding))
            grid.append({"rare_words": rare_words, "crowding": crowding, **fig})
            print(f"retrieval: tune {grid[-1]}", file=sys.stderr)
    safe = [g for g in grid if g["R@10"] >= dense["R@10"] and g["R@1"] >= dense["R@1"]] or grid
    return {"dense": dense, "best": max(safe, key=lambda g: g["MRR"]), "grid": grid}


def cutoff_figures(generation, encoder: QueryEncoder, right_scores: np.ndarray, positions: np.ndarray) -> dict:
    """How a fixed cut-off (DEFAULT_MIN_SCORE, the default before imgrag.search.cutoff) treats right answers found in the top 10, and off-topic queries."""
    in_top10 = (positions >= 0) & (positions < 10)
    right = right_scores[in_top10]
    kept = float(np.mean(right >= DEFAULT_MIN_SCORE)) if len(right) else float("nan")
    off_vecs = encoder.encode(OFF_TOPIC)
    shown, tops, off_scores = [], [], []
    for query, vec in zip(OFF_TOPIC, off_vecs, strict=False):
        _, scores = order(candidates(generation, vec, query), DEFAULT_FUSION)
        off_scores.append(scores)
        tops.append(float(scores[0]))
        shown.append(int(np.sum(scores[:10] >= DEFAULT_MIN_SCORE)))
    q = lambda a, p: round(float(np.quantile(a, p)), 3)
    sweep = {}
    for cut in (0.15, 0.2, 0.25, 0.3, 0.35):
        sweep[str(cut)] = [round(float(np.mean(right >= cut)), 4),
                           round(float(np.mean([np.sum(sc[:10] >= cut) for sc in off_scores])), 2)]
    return {
        "sweep_kept_offtopic_shown": sweep,
        "min_score": DEFAULT_MIN_SCORE,
        "right_in_top10_kept": round(kept, 4),
        "right_score_p05_p50": [q(right, 0.05), q(right, 0.5)],
        "offtopic_top1_p50_max": [q(tops, 0.5), round(max(tops), 3)],
        "offtopic_hits_shown_per_query": round(float(np.mean(shown)), 2),
    }


def default_set_figures(generation, encoder: QueryEncoder, all_found: list[Candidates], queries: list[str],
                        query_vecs: np.ndarray, positions: np.ndarray) -> dict:
    """How the default result set (imgrag.search.cutoff) treats right answers found in the top 10,
    and off-topic queries (bench/cutoff.py measures it on one-concept queries)."""
    kept = []
    for found, query, vec, at in zip(all_found, queries, query_vecs, positions, strict=False):
        if 0 <= at < 10:
            rows, scores = order(found, DEFAULT_FUSION)
            kept.append(bool(shown_set(generation, vec, query, rows[:10], scores[:10], SearchOptions())[at]))
    shown = []
    for query, vec in zip(OFF_TOPIC, encoder.encode(OFF_TOPIC), strict=False):
        rows, scores = order(candidates(generation, vec, query), DEFAULT_FUSION)
        shown.append(int(np.sum(shown_set(generation, vec, query, rows[:10], scores[:10], SearchOptions()))))
    return {
        "right_in_top10_kept": round(float(np.mean(kept)), 4) if kept else float("nan"),
        "offtopic_empty": round(float(np.mean([n == 0 for n in shown])), 4),
        "offtopic_hits_shown_per_query": round(float(np.mean(shown)), 2),
    }


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def speed_figures(models: list[str], docs: list[Doc], queries: list[str], rounds: int, sample: int) -> dict[str, dict]:
    """Embedding throughput, query latency and index size per model, timed in alternating
    rounds (every model once per round) so that other work on the machine hits each alike."""
    import os
    import statistics

    from imgrag.index.onnx_export import export
    from imgrag.index.query_encoder import OnnxQueryEncoder

    texts = [d.text for d in docs[:sample]]
    probe = queries[:: max(1, len(queries) // 100)][:100]
    loaded = {m: load_model(m) for m in models}
    setup: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, model in loaded.items():
            ws = Workspace(Path(tmp) / cache_dir_name(name, model.fingerprint) / ".imgrag")
            ws.root.mkdir(parents=True)
            if model.onnx is not None:  # the default model: its graph, built once per user, serves both
                folder, record = default_model.encoder_folder()
            else:
                print(f"retrieval: exporting {name} to ONNX", file=sys.stderr)
                record = export(ws, model)  # the ONNX export `imgrag embed` makes for fast searches
                folder = next((ws.root / "models").iterdir())
            cache = VectorCache(CACHE / "docs" / cache_dir_name(name, model.fingerprint), model.dim)
            vecs = cached_vectors([d.text for d in docs], cache, model.encode)
            write_generation(ws, docs, vecs, {"embedding": {"model": name}})
            setup[name] = {"ws": ws, "generation": open_generation(ws), "record": record,
                           "encoder": model.onnx or (OnnxQueryEncoder(folder, record) if record.get("verified") else None),
                           "onnx_folder": folder}
            model.encode(texts[:32])  # warm-up
        embed_s: dict[str, list[float]] = {m: [] for m in models}
        query_ms: dict[str, list[float]] = {m: [] for m in models}
        load_before = os.getloadavg()
        for round_no in range(rounds):
            print(f"retrieval: speed round {round_no + 1}/{rounds}, load {os.getloadavg()[0]:.1f}", file=sys.stderr)
            for name, model in loaded.items():
                t0 = time.perf_counter()
                model.encode(texts)
                embed_s[name].append(time.perf_counter() - t0)
                enc, generation = setup[name]["encoder"], setup[name]["generation"]
                if enc is None:
                    continue
                t0 = time.perf_counter()
                for q in probe:
                    order(candidates(generation, enc.encode([q])[0], q), DEFAULT_FUSION)
                query_ms[name].append((time.perf_counter() - t0) * 1000 / len(probe))
        load_after = os.getloadavg()
        out = {}
        for name, model in loaded.items():
            ws = setup[name]["ws"]
            setup[name]["generation"].db.close()
            dense = next(ws.paths.index.rglob("dense.faiss"))
            out[name] = {
                "dim": model.dim,
                "max_seq_length": int(model.model.max_seq_length if model.model is not None
                                      else model.onnx.pipeline["max_seq_length"]),
                "embed_texts_per_s": round(len(texts) / statistics.median(embed_s[name]), 1),
                "embed_texts": len(texts),
                "query_ms": round(statistics.median(query_ms[name]), 2) if query_ms[name] else None,
                "query_encoder": "onnx" if setup[name]["encoder"] else f"refused: {setup[name]['record'].get('reason')}",
                "index_bytes": folder_bytes(ws.paths.index),
                "dense_bytes_per_photo": round(dense.stat().st_size / len(docs), 1),
                "onnx_export_bytes": folder_bytes(setup[name]["onnx_folder"]),
                "rounds": rounds,
                "loadavg_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            }
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, help=f"JSONL file (default {CAPTIONS}, or {COCO} with --coco)")
    ap.add_argument("--split", default="dev", help="split of a caption file: dev, train, or all (default dev)")
    ap.add_argument("--coco", action="store_true", default=None, help="COCO photo format (auto-detected from --data)")
    ap.add_argument("--model", action="append", help=f"embedding model: hub name or model folder (default {DEFAULT_MODEL}); "
                    "repeat to compare models in one run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating speed rounds (default 3; 0 skips the speed figures)")
    ap.add_argument("--speed-texts", type=int, default=512, help="document texts per embedding-speed round (default 512)")
    ap.add_argument("--tune", action="store_true", help="grid-search the rare-word and crowding weights on this data")
    ap.add_argument("--no-cache", action="store_true", help="embed afresh instead of using bench/.cache")
    args = ap.parse_args()
    started = time.perf_counter()
    path = args.data or (COCO if args.coco else CAPTIONS)
    if not path.is_file():
        print(f"retrieval: {path} is missing: the benchmark reads ../shared/data (see --data)", file=sys.stderr)
        return 2
    items, dataset = load_items(path, None if args.split == "all" else args.split, args.coco)
    if not items:
        print(f"retrieval: no items in {path} for split {args.split!r}", file=sys.stderr)
        return 2
    docs = [Doc.described(it.id, [it.id], it.description) for it in items]
    models = [str(Path(m).expanduser()) if m.startswith("~") else m for m in (args.model or [DEFAULT_MODEL])]
    if args.tune and len(models) > 1:
        print("retrieval: --tune takes one --model", file=sys.stderr)
        return 2
    lines = [quality(args, path, dataset, items, docs, m, started) for m in models]
    if args.rounds > 0 and not args.tune:
        speeds = speed_figures(models, docs, [q for it in items for q in it.queries], args.rounds, args.speed_texts)
        lines = [{**line, "speed": speeds[line["model"]]} for line in lines]
    for line in lines:
        print(json.dumps(line))
    return 0


def quality(args, path: Path, dataset: str, items: list[Item], docs: list[Doc], model: str, started: float) -> dict:
    """The ranking figures of one model (or the --tune grid)."""
    with tempfile.TemporaryDirectory() as scratch:
        doc_vecs, queries, query_vecs = embed_all(items, docs, model, Path(scratch) if args.no_cache else CACHE)
    targets = [row for row, it in enumerate(items) for _ in it.queries]

    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / ".imgrag")
        t0 = time.perf_counter()
        write_generation(ws, docs, doc_vecs, {"embedding": {"model": model}})
        build_s = time.perf_counter() - t0
        generation = open_generation(ws)
        t0 = time.perf_counter()
        all_found = [candidates(generation, v, q) for q, v in zip(queries, query_vecs, strict=False)]
        search_ms = (time.perf_counter() - t0) * 1000 / max(len(queries), 1)
        if args.tune:
            return {"data": str(path), "split": args.split, "docs": len(docs), "queries": len(queries),
                    "model": model, **tune(all_found, targets)}
        dense, _, _ = evaluate(all_found, targets, DENSE_ONLY)
        fused, positions, right_scores = evaluate(all_found, targets, DEFAULT_FUSION)
        encoder = load_model(model)
        cutoff = cutoff_figures(generation, encoder, right_scores, positions)
        default_set = default_set_figures(generation, encoder, all_found, queries, query_vecs, positions)
        generation.close()

    return {
        "dataset": dataset, "split": "all" if dataset == "coco" else args.split, "model": model, "docs": len(docs),
        "queries": len(queries), **fused,
        "dense": dense, "fused": fused,
        "fusion": asdict(DEFAULT_FUSION),
        "cutoff": cutoff,
        "default_set": default_set,
        "index_build_s": round(build_s, 2), "rank_ms_per_query": round(search_ms, 2),
        "seconds": round(time.perf_counter() - started, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
