"""Embedding throughput: imgrag's embed path (the default model on ONNX Runtime) vs a bare
SentenceTransformer.encode of the same model, and what incremental runs cost. Needs
sentence-transformers (the `models` or `test` extra) for the comparison.

Descriptions are built from real captions (../shared/data/captions/flickr8k_traindev.jsonl:
a photo's first caption as `caption`, two others as `description`, as a vision model
would write them) and stored as records in `.imgrag/descriptions.jsonl` beside a folder
of small stand-in photo files (the embed job reads only their bytes' hash).

1. Throughput, in process, same weights, same texts, in alternating rounds:
   `imgrag.index.build.run_embed` on a fresh workspace (scan, hashing, records, ONNX
   Runtime encoding, cache writes, FAISS + docs + BM25 index) vs `SentenceTransformer.encode`
   alone (torch, batches of 64). And the default model's tokenizer alone (texts/s, and its
   share of imgrag's time).
2. Incremental, through the real CLI (`python -m imgrag embed`, a fresh process each, so
   model loading counts): the full run of N texts, a run with 1% new texts, a run with
   nothing new, and nothing new at 10,000 photos (photos sharing texts; rows are per photo).

    python bench/embed_throughput.py                 # N = 4000
    python bench/embed_throughput.py --texts 2000 --rounds 1

Prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "captions" / "flickr8k_traindev.jsonl"
MODEL = "all-MiniLM-L6-v2"


def log(msg: str) -> None:
    print(f"[embed_throughput] {msg}", file=sys.stderr, flush=True)


def descriptions(path: Path, n: int) -> list[dict]:
    if not path.exists():
        sys.exit(f"bench/embed_throughput.py: {path} is missing: pass --data FILE (Flickr8k captions)")
    out = []
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        out.append({"caption": rec["description"], "description": " ".join(rec["queries"][:2])})
        if len(out) == n:
            break
    if len(out) < n:
        sys.exit(f"bench/embed_throughput.py: only {len(out)} descriptions in {path}")
    return out


def add_photos(base: Path, descs: list[dict], start: int) -> None:
    """Photo files numbered from `start`, each with a description record of its content hash."""
    import hashlib

    from imgrag.store.files import JsonlAppender

    folder = base / "photos" / f"batch{start}"
    folder.mkdir(parents=True)
    with JsonlAppender(base / ".imgrag" / "descriptions.jsonl") as log_:
        for i, desc in enumerate(descs, start=start):
            data = f"stand-in photo {i}\n".encode() * 64
            (folder / f"p{i:06d}.jpg").write_bytes(data)
            log_.append({"sha256": hashlib.sha256(data).hexdigest(), "paths": [f"photos/batch{start}/p{i:06d}.jpg"],
                         "model": "bench", "prompt_version": 1, "description": desc})


def cli_embed(base: Path) -> tuple[float, str]:
    env = {**os.environ, "NO_COLOR": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "imgrag", "embed", str(base / "photos")], cwd=base, env=env,
                       capture_output=True, text=True, check=False)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"imgrag embed failed: {r.stderr}")
    return took, r.stderr.strip()


def bare_encode(reference, texts: list[str]) -> float:
    t0 = time.perf_counter()
    reference.model.encode(texts, batch_size=64, normalize_embeddings=True, convert_to_numpy=True,
                       show_progress_bar=sys.stderr.isatty())
    return time.perf_counter() - t0


def throughput(descs: list[dict], rounds: int) -> dict:
    from imgrag.describe.schema import embedding_text
    from imgrag.index.build import run_embed
    from imgrag.index.embedding import load_model, load_sentence_transformer

    model = load_model(MODEL)  # ONNX Runtime: what run_embed uses
    reference = load_sentence_transformer(MODEL)  # sentence-transformers (torch)
    texts = [embedding_text(d) for d in descs]
    model.encode(texts[:64])  # warm up both paths' first batch
    reference.encode(texts[:64])
    best_bare = best_ours = float("inf")
    for r in range(rounds):
        if r % 2 == 0:  # alternate which goes first: a busy machine's drift hits both alike
            best_bare = min(best_bare, bare_encode(reference, texts))
        with tempfile.TemporaryDirectory(prefix="imgrag-thr-") as tmp:
            base = Path(tmp)
            # A folder's first embed also exports the query encoder (once): pay it untimed.
            add_photos(base, [{"caption": "warm-up photo"}], len(descs))
            run_embed(base / "photos", MODEL, index=base / ".imgrag")
            add_photos(base, descs, 0)
            t0 = time.perf_counter()
            summary = run_embed(base / "photos", MODEL, index=base / ".imgrag", show_progress=sys.stderr.isatty())
            best_ours = min(best_ours, time.perf_counter() - t0)
            assert summary.encoded == len(set(texts)), summary
        if r % 2 == 1:
            best_bare = min(best_bare, bare_encode(reference, texts))
        log(f"round {r + 1}: bare {len(texts) / best_bare:.0f}/s, imgrag {len(texts) / best_ours:.0f}/s (best so far)")
    return {"bare_texts_per_s": round(len(texts) / best_bare, 1), "imgrag_texts_per_s": round(len(texts) / best_ours, 1),
            "ratio": round(best_bare / best_ours, 3), **tokenizer_speed(texts, best_ours)}


def tokenizer_speed(texts: list[str], embed_s: float) -> dict:
    """The default model's hand-written tokenizer (imgrag.index.wordpiece) alone, from an empty
    word cache as in a first embed, in the embed path's batches: a share of imgrag's time above."""
    from imgrag.index import default_model
    from imgrag.index.onnx_encoder import TOKENIZER_FILE
    from imgrag.index.wordpiece import WordPieceTokenizer

    folder, record = default_model.encoder_folder()
    tokenizer = WordPieceTokenizer.from_file(folder / TOKENIZER_FILE, record["pipeline"]["max_seq_length"])
    t0 = time.perf_counter()
    for start in range(0, len(texts), 32):
        tokenizer(texts[start : start + 32])
    took = time.perf_counter() - t0
    log(f"tokenizer: {len(texts) / took:.0f} texts/s, {took / embed_s:.1%} of imgrag's embed time")
    return {"tokenizer_texts_per_s": round(len(texts) / took), "tokenizer_share_of_embed": round(took / embed_s, 4)}


def incremental(descs: list[dict], extra: list[dict], photos_10k: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="imgrag-inc-") as tmp:
        base = Path(tmp)
        add_photos(base, descs[:20], 0)
        cli_embed(base)  # the first embed of a folder also exports the query encoder: not timed
        add_photos(base, descs[20:], 20)
        full, _ = cli_embed(base)
        log(f"full run ({len(descs) - 20} new texts): {full:.1f}s")
        add_photos(base, extra, len(descs))
        one_percent, said = cli_embed(base)
        log(f"1% new ({len(extra)}): {one_percent:.1f}s  [{said}]")
        nothing, _ = cli_embed(base)
        # Up to 10,000 photos: more photo files whose descriptions repeat texts already embedded.
        have = len(descs) + len(extra)
        repeats = [descs[i % len(descs)] for i in range(max(0, photos_10k - have))]
        add_photos(base, repeats, have)
        cli_embed(base)
        nothing_10k, said = cli_embed(base)
        log(f"nothing new at {photos_10k} photos: {nothing_10k:.2f}s  [{said}]")
    return {"full_run_s": round(full, 2), "full_run_texts": len(descs) - 20,
            "one_percent_new_s": round(one_percent, 2), "one_percent_share_of_full": round(one_percent / full, 3),
            "nothing_new_s": round(nothing, 2), "nothing_new_10k_photos_s": round(nothing_10k, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--texts", type=int, default=4000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--photos-10k", type=int, default=10_000)
    parser.add_argument("--skip-cli", action="store_true", help="only the in-process throughput comparison")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "src"))
    descs = descriptions(args.data, args.texts + args.texts // 100)
    base, extra = descs[: args.texts], descs[args.texts :]
    result = {"bench": "embed_throughput", "texts": args.texts, "model": MODEL}
    result.update(throughput(base, args.rounds))
    if not args.skip_cli:
        result.update(incremental(base, extra, args.photos_10k))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
