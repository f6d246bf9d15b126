"""How well `imgrag ask` picks the photos a question is about, on natural questions
(bench/questions.json: our own questions, each with the photos that answer it, over
Flickr8k dev and the COCO photos in ../shared/data).

The index is made as bench/ask_context.py makes it (each photo's caption, with COCO's
objects, is its description), with an empty file for each photo so that the real
`Searcher` and `ask.context.context_hits` pick the photos, exactly as `imgrag ask` does.
For each way of picking (`STRATEGIES`, the shipped one first) it prints:

- context_recall: the answering photos among those sent, out of min(8, how many answer);
- false_no_match: questions that sent nothing ("no photo matches") while photos answer them;
- kinds: for "what kinds of …" questions, the different kinds among the photos sent;
- offtopic_nothing_sent: the share of questions about things no photo shows that send
  nothing (the cost side of relaxing the cut-off: those asks would cost a request).

Prints one JSON line.

    bench/ask_questions.py              # both collections"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))

from imgrag.ask.answer import DEFAULT_LIMIT
from imgrag.ask.context import AS_SEARCH, DEFAULT_STRATEGY, Strategy, context_hits
from imgrag.index.embedding import DEFAULT_MODEL
from imgrag.index.generations import Doc, write_generation
from imgrag.search.searcher import Searcher
from imgrag.store.workspace import Workspace
from retrieval import CACHE, CAPTIONS, COCO, OFF_TOPIC, cached_vectors, load_items

QUESTIONS = REPO / "bench" / "questions.json"
STRATEGIES = {
    "shipped": DEFAULT_STRATEGY,
    "as_search": AS_SEARCH,
    "strip_form": Strategy(strip_form=True, relax=False, diversify=False),
    "relax_keep_form": Strategy(strip_form=False, relax=True),
    "strip_relax_diversify": Strategy(diversify=True),
    "strip_relax_diversify_more": Strategy(diversify=True, relevance=0.5),
}
NEAREST_ANYWAY = "strip_nearest_8"  # the form off, and the nearest 8 sent whatever they score (min_score 0)


def description_text(item) -> str:
    d = item.description
    return " ".join([d.get("caption", ""), *d.get("objects", [])]).lower()


def run_collection(name: str, path: Path, questions: list[dict], tmp: Path) -> dict:
    from imgrag.index.embedding import VectorCache, cache_dir_name, load_model

    items, _ = load_items(path, "dev" if name == "flickr8k" else None, name == "coco")
    docs = [Doc.described(it.id, [it.id], it.description) for it in items]
    model = load_model(DEFAULT_MODEL)
    vecs = cached_vectors([d.text for d in docs],
                          VectorCache(CACHE / "docs" / cache_dir_name(DEFAULT_MODEL, model.fingerprint), model.dim),
                          model.encode)
    base = tmp / name
    for it in items:  # the Searcher shows only photos still on disk
        (base / it.id).parent.mkdir(parents=True, exist_ok=True)
        (base / it.id).touch()
    ws = Workspace(base / ".imgrag")
    write_generation(ws, docs, vecs, {"embedding": {"model": DEFAULT_MODEL}})
    searcher = Searcher(index=ws.root, embed_model=None)
    texts = {it.id: description_text(it) for it in items}

    def matching(pattern: str) -> set[str]:
        rx = re.compile(pattern, re.IGNORECASE)
        return {i for i, t in texts.items() if rx.search(t)}

    offtopic = [f"which photos show a {q}?" for q in OFF_TOPIC]
    out: dict = {"docs": len(docs), "questions": len(questions)}
    variants = {**{k: (s, None) for k, s in STRATEGIES.items()}, NEAREST_ANYWAY: (Strategy(True, False, False), 0.0)}
    for label, (strategy, min_score) in variants.items():
        recall, sent, kinds, none, per = [], [], [], 0, []
        for q in questions:
            kind_sets = {k: matching(p) for k, p in q["kinds"].items()} if "kinds" in q else {}
            answers = set().union(*kind_sets.values()) if kind_sets else matching(q["answers"])
            assert answers, f"no photo answers {q['q']!r} in {name}: fix bench/questions.json"
            hits = context_hits(searcher, q["q"], DEFAULT_LIMIT, min_score, strategy)
            ids = [h.paths[0][len(str(base)) + 1:] for h in hits]
            got = len(answers & set(ids)) / min(DEFAULT_LIMIT, len(answers))
            recall.append(got)
            sent.append(len(ids))
            none += not ids
            entry = {"q": q["q"], "recall": round(got, 3), "answering": len(answers)}
            if kind_sets:
                kinds.append(sum(bool(s & set(ids)) for s in kind_sets.values()))
                entry["kinds"] = kinds[-1]
            per.append(entry)
        off_none = [not context_hits(searcher, q, DEFAULT_LIMIT, min_score, strategy) for q in offtopic]
        out[label] = {
            "context_recall": round(float(np.mean(recall)), 4),
            "context_recall_min": round(float(np.min(recall)), 3),
            "false_no_match": none,
            "kinds": kinds,
            "photos_sent_mean": round(float(np.mean(sent)), 2),
            "offtopic_nothing_sent": round(float(np.mean(off_none)), 3),
        }
        if label == "shipped":
            out[label]["per_question"] = per
    searcher.generation.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=Path, default=QUESTIONS)
    args = ap.parse_args()
    started = time.perf_counter()
    for path in (CAPTIONS, COCO):
        if not path.is_file():
            print(f"ask_questions: {path} is missing: the benchmark reads ../shared/data", file=sys.stderr)
            return 2
    sets = json.loads(args.questions.read_text())
    result: dict = {"bench": "ask_questions", "limit": DEFAULT_LIMIT}
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in (("coco", COCO), ("flickr8k", CAPTIONS)):
            result[name] = run_collection(name, path, sets[name], Path(tmp))
    for label in (*STRATEGIES, NEAREST_ANYWAY):
        both = [result[n][label] for n in ("coco", "flickr8k")]
        sizes = [result[n]["questions"] for n in ("coco", "flickr8k")]
        result.setdefault("summary", {})[label] = {
            "context_recall": round(sum(b["context_recall"] * s for b, s in zip(both, sizes, strict=True)) / sum(sizes), 4),
            "false_no_match": sum(b["false_no_match"] for b in both),
            "kinds_min": min(k for b in both for k in b["kinds"]),
            "offtopic_nothing_sent": round(float(np.mean([b["offtopic_nothing_sent"] for b in both])), 3),
        }
    result["loadavg"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
