"""Benchmark of the default result set: does `imgrag search CONCEPT` show the photos of that
concept and little else, and nothing for an off-topic query?

Cuts `--samples` collections of `--size` photos from a caption file, indexes each photo's
description the way bench/retrieval.py does (through imgrag's own code: `embedding_text`,
`lexical_text`, `write_generation`, `open_generation`), and runs through `search.rank` (what
`imgrag search` shows):

- one-concept queries: each CONCEPTS entry (the 80 COCO object categories, "person" left
  out as it names no one in a caption, plus 40 things Flickr8k captions often name) that
  the indexed description of at least one photo of the collection names;
- the OFF_TOPIC queries of bench/retrieval.py plus OFF_TOPIC_MORE (no photo shows them).

A photo is relevant to a concept when one of its human captions (any of the 5) or COCO
objects names it: the word or a listed synonym, compared as English stems ("dogs" names
"dog"; "stop sign" needs both words in a row). Prints one JSON line, with the same figures
for the shipped default set (`default`) and today's fixed cut-off (`fixed_0.25`):
  precision      shown photos that are relevant / shown photos (over all concept queries)
  recall         of the relevant photos whose indexed description names the concept and
                 that the ranking puts in the top 10, the share shown
  shown, junk    photos shown, and shown but not relevant, per concept query
  offtopic_empty share of off-topic queries that show nothing
  caption_kept   for caption queries (another human caption of one photo of the collection,
                 40 a collection) whose photo the ranking puts in the top 10, the share
                 where it is shown: the price a stricter set makes longer queries pay

    bench/cutoff.py --data ../shared/data/captions/flickr8k_traindev.jsonl --split dev
    bench/cutoff.py --data ../shared/data/photos/coco.jsonl
    bench/cutoff.py --split train --tune       # grid over search.cutoff's settings

`--languages de,fr,es,ja,zh,ru`: the same for queries in other languages (our translations in
bench/crosslingual_concepts.json of 60 concepts, and of the off-topic queries in de, es, ja,
ru; no caption queries), embedded as `imgrag search` embeds them (imgrag.index.crosslingual),
with the default set search gives them (`default`: search.cutoff.MULTILINGUAL_CUTOFF) beside
the English one (`english_cutoff`); `--tune` then grids over MULTILINGUAL_CUTOFF.

Vectors are cached in bench/.cache/ (as bench/retrieval.py)."""

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
sys.path.insert(0, str(REPO / "bench"))

from imgrag.index import crosslingual
from imgrag.index.embedding import DEFAULT_MODEL, VectorCache, cache_dir_name, load_model
from imgrag.index.generations import Doc, open_generation, write_generation
from imgrag.index.lexical import stems, words
from imgrag.search.cutoff import DEFAULT_CUTOFF, MULTILINGUAL_CUTOFF, Cutoff
from imgrag.search.ranking import DEFAULT_LIMIT, SearchOptions, rank
from imgrag.store.workspace import Workspace
from retrieval import CACHE, CAPTIONS, OFF_TOPIC, cached_vectors, load_items

CONCEPTS_FILE = REPO / "bench" / "crosslingual_concepts.json"  # our translations of 60 concepts and the off-topic queries
FIXED = 0.25  # the cut-off imgrag shipped before the default set fitted the query
CAPTION_QUERIES = 40  # per collection: photos whose other caption is run as a query

COCO_OBJECTS = [
    "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]
FLICKR_THINGS = [
    "beach", "snow", "water", "grass", "ball", "street", "mountain", "pool", "field", "rock", "sand",
    "crowd", "stage", "guitar", "wave", "ocean", "lake", "river", "fountain", "building", "park",
    "football", "soccer", "basketball", "swing", "slide", "trampoline", "tent", "hat", "helmet",
    "jacket", "flag", "bridge", "kitchen", "city", "tree", "wall", "fence", "puppy", "baby",
]
CONCEPTS = COCO_OBJECTS + FLICKR_THINGS
# Other words that name the same thing (a caption says "bike" of a bicycle).
SYNONYMS = {
    "bicycle": ["bike"], "motorcycle": ["motorbike"], "airplane": ["plane", "jet", "aeroplane"],
    "tv": ["television"], "couch": ["sofa"], "cell phone": ["phone", "cellphone"], "donut": ["doughnut"],
    "sports ball": ["ball"], "dining table": ["table"], "potted plant": ["plant"], "hot dog": ["hotdog"],
    "refrigerator": ["fridge"], "hair drier": ["hair dryer", "blow dryer"], "teddy bear": ["stuffed bear"],
    "ocean": ["sea"],
}
# More queries no photo answers, beside retrieval.OFF_TOPIC (which the old cut-off was tuned on).
OFF_TOPIC_MORE = [
    "tax return form 1040", "excel pivot table", "source code in an editor", "invoice from the plumber",
    "scanned utility bill", "powerpoint slide with bullet points", "database schema diagram",
    "screenshot of an error dialog", "bank statement march", "boarding pass barcode",
]


def concept_stems(concept: str) -> list[tuple[str, ...]]:
    return [tuple(stems(words(name))) for name in [concept, *SYNONYMS.get(concept, [])]]


def names(text_stems: list[str], wanted: list[tuple[str, ...]]) -> bool:
    for seq in wanted:
        n = len(seq)
        if any(tuple(text_stems[i:i + n]) == seq for i in range(len(text_stems) - n + 1)):
            return True
    return False


@dataclass
class Photo:
    id: str
    described: dict  # what is indexed
    human: list[list[str]]  # stems of each human caption and COCO object name
    query: str  # another human caption: a caption query whose right answer is this photo


def load_photos(path: Path, split: str | None) -> list[Photo]:
    items, _ = load_items(path, split, None)
    photos = []
    for it in items:
        texts = [it.description["caption"], *it.queries, *it.description.get("objects", [])]
        photos.append(Photo(it.id, it.description, [stems(words(t)) for t in texts], it.queries[0]))
    return photos


def indexed_stems(photo: Photo) -> list[list[str]]:
    return [stems(words(t)) for t in [photo.described["caption"], *photo.described.get("objects", [])]]


@dataclass
class Tally:
    concept_queries: int = 0
    shown: int = 0
    relevant_shown: int = 0
    targets: int = 0
    targets_shown: int = 0
    offtopic_queries: int = 0
    offtopic_empty: int = 0
    caption_queries: int = 0  # caption queries whose right answer the ranking puts in the top 10
    caption_kept: int = 0  # ... and that answer is shown

    def figures(self) -> dict:
        q = max(self.concept_queries, 1)
        return {
            "precision": round(self.relevant_shown / max(self.shown, 1), 4),
            "recall": round(self.targets_shown / max(self.targets, 1), 4),
            "shown": round(self.shown / q, 2),
            "junk": round((self.shown - self.relevant_shown) / q, 2),
            "offtopic_empty": round(self.offtopic_empty / self.offtopic_queries, 4) if self.offtopic_queries else None,
            "caption_kept": round(self.caption_kept / max(self.caption_queries, 1), 4),
        }


def shown_ids(generation, vec, query: str, options: SearchOptions, cutoff: Cutoff) -> list[str]:
    return [h.sha256 for h in rank(generation, vec, query, options, cutoff=cutoff)]


@dataclass
class QuerySet:
    """The concept and off-topic queries a run asks: English (CONCEPTS, OFF_TOPIC...) or one
    of the languages of CONCEPTS_FILE, embedded as `imgrag search` embeds them."""

    language: str
    concepts: list[tuple[str, str]]  # (query, the English concept whose photos are relevant)
    offtopic: list[str]


def english_queries() -> QuerySet:
    return QuerySet("en", [(c, c) for c in CONCEPTS], OFF_TOPIC + OFF_TOPIC_MORE)


def translated_queries(language: str) -> QuerySet:
    """Our translations (CONCEPTS_FILE) of 60 concepts, and of the off-topic queries where written."""
    data = json.loads(CONCEPTS_FILE.read_text())
    return QuerySet(language, [(names[language], c) for c, names in data["concepts"].items()],
                    data["offtopic"].get(language, []))


def run(photos: list[Photo], size: int, samples: int, model_name: str, cutoffs: dict[str, Cutoff | float],
        seed: int = 0, queries: QuerySet | None = None) -> tuple[dict[str, Tally], int]:
    model = load_model(model_name)
    encoder = model  # queries as imgrag search embeds them with this model
    name = cache_dir_name(model_name, model.fingerprint)
    doc_cache = VectorCache(CACHE / "docs" / name, model.dim)
    query_cache = VectorCache(CACHE / "queries" / name, model.dim)
    queries = queries or english_queries()
    offtopic = queries.offtopic
    concept_wanted = {c: concept_stems(c) for _, c in queries.concepts}
    all_queries = [q for q, _ in queries.concepts] + offtopic
    if queries.language == "en":
        query_vecs = dict(zip(all_queries, cached_vectors(all_queries, query_cache, encoder.encode), strict=False))
    else:  # through the multilingual model and its map, as `imgrag search` sends them (imgrag.index.crosslingual)
        routed = [q for q in all_queries if not crosslingual.is_english(q)]
        print(f"cutoff: {queries.language}: {len(routed)} of {len(all_queries)} queries go to the multilingual model",
              file=sys.stderr)
        query_vecs = dict(zip(all_queries, crosslingual.CrossLingualEncoder(model.onnx or model).encode(all_queries),
                              strict=True))
    tallies = {label: Tally() for label in cutoffs}
    size = min(size, len(photos))
    samples = 1 if size == len(photos) else samples
    rng = np.random.default_rng(seed)
    for sample in range(samples):
        chosen = [photos[i] for i in np.sort(rng.choice(len(photos), size, replace=False))]
        docs = [Doc.described(p.id, [p.id], p.described) for p in chosen]
        vecs = cached_vectors([d.text for d in docs], doc_cache, model.encode)
        with tempfile.TemporaryDirectory() as tmp:
            ws = Workspace(Path(tmp) / ".imgrag")
            write_generation(ws, docs, vecs, {"embedding": {"model": model_name}})
            generation = open_generation(ws)
            relevant = {c: {p.id for p in chosen if any(names(h, w) for h in p.human)} for c, w in concept_wanted.items()}
            described = {c: {p.id for p in chosen if any(names(h, w) for h in indexed_stems(p))}
                         for c, w in concept_wanted.items()}
            for query, concept in queries.concepts:
                if not described[concept]:
                    continue
                ranked = shown_ids(generation, query_vecs[query], query, SearchOptions(show_all=True), DEFAULT_CUTOFF)
                targets = described[concept] & set(ranked[:DEFAULT_LIMIT])
                for label, cut in cutoffs.items():
                    shown = _shown(generation, query_vecs[query], query, cut)
                    t = tallies[label]
                    t.concept_queries += 1
                    t.shown += len(shown)
                    t.relevant_shown += len(set(shown) & relevant[concept])
                    t.targets += len(targets)
                    t.targets_shown += len(targets & set(shown))
            caption_photos = chosen[:CAPTION_QUERIES] if queries.language == "en" else []  # (English captions)
            caption_vecs = cached_vectors([p.query for p in caption_photos], query_cache, encoder.encode)
            for photo, vec in zip(caption_photos, caption_vecs, strict=False):
                if photo.id not in shown_ids(generation, vec, photo.query, SearchOptions(show_all=True), DEFAULT_CUTOFF):
                    continue  # not in the top 10: no cut-off could show it
                for label, cut in cutoffs.items():
                    tallies[label].caption_queries += 1
                    tallies[label].caption_kept += photo.id in _shown(generation, vec, photo.query, cut)
            for query in offtopic:
                for label, cut in cutoffs.items():
                    t = tallies[label]
                    t.offtopic_queries += 1
                    t.offtopic_empty += not _shown(generation, query_vecs[query], query, cut)
            generation.close()
        print(f"cutoff: sample {sample + 1}/{samples}: " + json.dumps({k: t.figures() for k, t in tallies.items()}),
              file=sys.stderr)
    return tallies, samples


def _shown(generation, vec, query: str, cut: Cutoff | float) -> list[str]:
    if isinstance(cut, float):
        return shown_ids(generation, vec, query, SearchOptions(min_score=cut), DEFAULT_CUTOFF)
    return shown_ids(generation, vec, query, SearchOptions(), cut)


def tune_grid() -> dict[str, Cutoff]:
    grid = {}
    for standing in (6.0, 7.0, 8.0):
        for worded_standing in (1.5, 2.0, 2.5):
            for score in (0.4, 0.45, 0.5):
                for gap in (0.15, 0.25, 1.0):
                    c = replace(DEFAULT_CUTOFF, standing=standing, worded_standing=worded_standing, score=score, gap=gap)
                    grid[json.dumps(asdict(c))] = c
    return grid


def tune_grid_multilingual() -> dict[str, Cutoff]:
    grid = {}
    for standing in (4.0, 5.0, 6.0, 7.0):
        for worded_standing in (2.0,):
            for score in (0.25, 0.28, 0.3, 0.32, 0.35, 0.4, 0.45):
                for gap in (0.25,):
                    c = replace(MULTILINGUAL_CUTOFF, standing=standing, worded_standing=worded_standing, score=score, gap=gap,
                                alone_score=None)
                    grid[json.dumps(asdict(c))] = c
    return grid


def add(into: Tally, more: Tally) -> None:
    for name in vars(into):
        setattr(into, name, getattr(into, name) + getattr(more, name))


def main_languages(args, photos: list[Photo], started: float) -> int:
    """The default set of queries in other languages (MULTILINGUAL_CUTOFF), beside the
    English default set applied to them (as before), per language and over all of them."""
    cutoffs: dict[str, Cutoff | float] = {"default": MULTILINGUAL_CUTOFF, "english_cutoff": DEFAULT_CUTOFF}
    if args.tune:
        cutoffs.update(tune_grid_multilingual())
    pooled = {label: Tally() for label in cutoffs}
    by_language = {}
    samples = 0
    for language in args.languages.split(","):
        tallies, samples = run(photos, args.size, args.samples, args.model, cutoffs, args.seed,
                               translated_queries(language))
        by_language[language] = tallies["default"].figures()
        for label, t in tallies.items():
            add(pooled[label], t)
    coco = "objects" in photos[0].described
    result = {
        "data": args.data.name, "split": "all" if coco else args.split, "size": min(args.size, len(photos)),
        "samples": samples, "languages": args.languages, "concept_queries": pooled["default"].concept_queries,
        "offtopic_queries": pooled["default"].offtopic_queries,
        "default": pooled["default"].figures(), "english_cutoff": pooled["english_cutoff"].figures(),
        "by_language": by_language, "cutoff": asdict(MULTILINGUAL_CUTOFF), "seconds": round(time.perf_counter() - started, 1),
    }
    if args.tune:
        result["grid"] = [{**json.loads(k), **pooled[k].figures()} for k in cutoffs if k.startswith("{")]
    print(json.dumps(result))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=CAPTIONS, help=f"JSONL caption or COCO file (default {CAPTIONS})")
    ap.add_argument("--split", default="dev", help="split of a caption file: dev, train, or all (default dev)")
    ap.add_argument("--size", type=int, default=300, help="photos per collection (default 300)")
    ap.add_argument("--samples", type=int, default=10, help="collections cut (default 10; 1 when --size covers the file)")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="embedding model")
    ap.add_argument("--seed", type=int, default=0, help="which collections are cut")
    ap.add_argument("--tune", action="store_true", help="grid over the default set's settings (imgrag.search.cutoff.Cutoff)")
    ap.add_argument("--languages", help="queries in these languages of CONCEPTS_FILE instead, e.g. de,fr,es,ja,zh,ru: "
                                        "the default set for queries in other languages (MULTILINGUAL_CUTOFF)")
    args = ap.parse_args()
    started = time.perf_counter()
    if not args.data.is_file():
        print(f"cutoff: {args.data} is missing: the benchmark reads ../shared/data (see --data)", file=sys.stderr)
        return 2
    photos = load_photos(args.data, None if args.split == "all" else args.split)
    if not photos:
        print(f"cutoff: no photos in {args.data} for split {args.split!r}", file=sys.stderr)
        return 2
    if args.languages:
        return main_languages(args, photos, started)
    cutoffs: dict[str, Cutoff | float] = {"default": DEFAULT_CUTOFF, f"fixed_{FIXED}": FIXED}
    if args.tune:
        cutoffs.update(tune_grid())
    tallies, samples = run(photos, args.size, args.samples, args.model, cutoffs, args.seed)
    coco = "objects" in photos[0].described
    result = {
        "data": args.data.name, "split": "all" if coco else args.split, "size": min(args.size, len(photos)),
        "samples": samples, "concept_queries": tallies["default"].concept_queries,
        "offtopic_queries": tallies["default"].offtopic_queries,
        "default": tallies["default"].figures(), f"fixed_{FIXED}": tallies[f"fixed_{FIXED}"].figures(),
        "cutoff": asdict(DEFAULT_CUTOFF), "seconds": round(time.perf_counter() - started, 1),
    }
    if args.tune:
        result["grid"] = [{**json.loads(k), **tallies[k].figures()} for k in cutoffs if k.startswith("{")]
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
