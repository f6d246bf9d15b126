"""Context recall for `imgrag ask`: how often the right photo is among the K photos sent to
the answer model, and how many prompt tokens an ask costs, on Flickr8k dev.

Each photo's caption is its description (as in bench/retrieval.py, whose data loading and
cached vectors this reuses); each query is ranked by `search.rank` with ask's default
cut-off, as `imgrag ask` retrieves a caption-like query before it tops the set up
(imgrag.ask.context; bench/ask_questions.py measures natural questions), and the prompt is built by the same `context.answer_item` + `prompts.answer_messages`.
Tokens are estimated as --dry-run estimates them (characters / 4). Prints one JSON line.

    bench/ask_context.py                # Flickr8k dev: 1,000 photos, 4,000 questions
    bench/ask_context.py --coco         # the 239 COCO photos (caption 1 + objects as description)"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from imgrag.ask.answer import CHARS_PER_TOKEN, DEFAULT_LIMIT
from imgrag.ask.photo_briefs import answer_item
from imgrag.ask.prompts import answer_messages, text_chars
from imgrag.index.embedding import DEFAULT_MODEL
from imgrag.index.generations import Doc, open_generation, write_generation
from imgrag.search.ranking import DEFAULT_MIN_SCORE, SearchOptions, rank
from imgrag.store.workspace import Workspace
from retrieval import CACHE, CAPTIONS, COCO, embed_all, load_items

KS = (5, 8, 16)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--coco", action="store_true", default=None)
    ap.add_argument("--split", default="dev")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    args = ap.parse_args()
    started = time.perf_counter()
    path = args.data or (COCO if args.coco else CAPTIONS)
    if not path.is_file():
        print(f"ask_context: {path} is missing: the benchmark reads ../shared/data (see --data)", file=sys.stderr)
        return 2
    items, dataset = load_items(path, None if args.split == "all" else args.split, args.coco)
    docs = [Doc.described(it.id, [it.id], it.description) for it in items]
    doc_vecs, queries, query_vecs = embed_all(items, docs, args.model, CACHE)
    targets = [it.id for it in items for _ in it.queries]
    records = {it.id: {"description": it.description} for it in items}

    found_at = {k: 0 for k in KS}
    sent = {k: [] for k in KS}
    tokens = {k: [] for k in KS}
    nothing = 0
    with tempfile.TemporaryDirectory() as tmp:
        ws = Workspace(Path(tmp) / ".imgrag")
        write_generation(ws, docs, doc_vecs, {"embedding": {"model": args.model}})
        generation = open_generation(ws)
        for query, vec, target in zip(queries, query_vecs, targets, strict=False):
            hits = rank(generation, vec, query, SearchOptions(limit=max(KS), min_score=DEFAULT_MIN_SCORE))
            nothing += not hits
            for k in KS:
                top = hits[:k]  # rank sorts before it cuts: the top K of 16 are the top K
                found_at[k] += any(h.sha256 == target for h in top)
                sent[k].append(len(top))
                if top:
                    messages = answer_messages(query, [answer_item(ws, h, records[h.sha256]) for h in top])
                    tokens[k].append(text_chars(messages) // CHARS_PER_TOKEN)
        generation.close()

    n = len(queries)
    result = {
        "bench": "ask_context", "dataset": dataset, "split": "all" if dataset == "coco" else args.split,
        "docs": len(docs), "questions": n, "min_score": DEFAULT_MIN_SCORE, "default_k": DEFAULT_LIMIT,
        "context_recall": {f"K={k}": round(found_at[k] / n, 4) for k in KS},
        "photos_sent_mean": {f"K={k}": round(float(np.mean(sent[k])), 2) for k in KS},
        "prompt_tokens_per_ask": {f"K={k}": {"mean": round(float(np.mean(tokens[k])), 1),
                                             "p95": int(np.quantile(tokens[k], 0.95))} for k in KS if tokens[k]},
        "no_photo_sent_share": round(nothing / n, 4),
        "tokens": "estimated as --dry-run does: characters / 4; caption-only descriptions",
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
