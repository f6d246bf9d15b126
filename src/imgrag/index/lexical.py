"""Exact-word evidence: BM25 indexes (bm25s, English stemming and stopwords) written into
the index generation folder beside the FAISS index: `lexical/` over every word of each
photo's description, `visible-text/` over only the words seen written in the photo.

A photo's lexical text is a few labelled fields, one per line (`label<TAB>words`, see
`schema.lexical_text`); the labels are not indexed, they only pick out the visible text and
let a hit say which field matched. Loading memory-maps the score arrays and imports neither
bm25s nor scipy, so opening even a 100k-photo index costs a few tens of milliseconds
(mostly its vocabulary)."""

from __future__ import annotations

import functools
import io
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from imgrag.store.paths import LEXICAL_DIR, VISIBLE_TEXT_DIR

VISIBLE_TEXT_LABEL = "visible text"
FORMAT = 1
_K1, _B = 1.5, 0.75  # the usual BM25 constants; the fusion weight, not these, was tuned
_TOKEN = re.compile(r"(?u)\b\w\w+\b")  # bm25s' default pattern: words of two or more characters
_FIELD_SEP = "\t"
# A query word counts as exact evidence only when at most this share of the photos (or this
# many) have it: tuned with the fusion weight on Flickr8k train (bench/retrieval.py --tune).
RARE_SHARE = 0.01
RARE_MIN_DOCS = 3


@dataclass(frozen=True)
class QueryTerm:
    word: str  # as the user typed it (lower case)
    stem: str


@dataclass
class LexicalScores:
    """One query's BM25 evidence against every document."""

    terms: list[QueryTerm]  # the query's content words, in query order, stems unique
    raw: np.ndarray  # BM25 score per row (zeros when nothing matched)
    ideal: float  # what a description naming every query word once would score
    matched: np.ndarray | None = None  # the rows scoring above 0, ascending, when known (top() need not look at every row)

    def normalised(self, rows: np.ndarray) -> np.ndarray:
        """0..1: roughly the share of the query's (idf-weighted) words found in each row."""
        if self.ideal <= 0:
            return np.zeros(len(rows), dtype=np.float32)
        return np.minimum(1.0, self.raw[rows] / self.ideal).astype(np.float32)

    def matched_rows(self) -> np.ndarray:
        """The rows with any match, ascending."""
        return np.flatnonzero(self.raw > 0) if self.matched is None else self.matched

    def top(self, k: int) -> np.ndarray:
        """Rows with any match, best first, at most k."""
        matched = self.matched_rows()
        if len(matched) > k:
            matched = matched[np.argpartition(-self.raw[matched], k - 1)[:k]]
        return matched[np.argsort(-self.raw[matched], kind="stable")]


def unique_rows(rows: np.ndarray) -> np.ndarray:
    """np.unique of row numbers, by one sort: numpy 2.4's np.unique hashes first, and took
    1 ms for 10,000 rows (a search does this for a folder's photos and a query's matches)."""
    rows = np.sort(rows)
    return rows[np.concatenate(([True], rows[1:] != rows[:-1]))] if len(rows) else rows


@functools.cache
def _stemmer() -> Any:
    import Stemmer

    return Stemmer.Stemmer("english")


@functools.cache
def default_stopwords() -> frozenset[str]:
    """bm25s' English list; an index stores the list it was built with, for its queries."""
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN)


def words(text: str) -> list[str]:
    """Lower-cased words of two or more characters."""
    return _TOKEN.findall(text.lower())


def content_words(text: str, stopwords: frozenset[str] | None = None) -> list[str]:
    """Words that carry meaning (stopwords dropped)."""
    stop = default_stopwords() if stopwords is None else stopwords
    return [w for w in words(text) if w not in stop]


def stems(words: list[str]) -> list[str]:
    return _stemmer().stemWords(words) if words else []


def query_terms(query: str, stopwords: frozenset[str] | None = None) -> list[QueryTerm]:
    found = content_words(query, stopwords)
    seen: set[str] = set()
    terms = []
    for word, stem in zip(found, stems(found), strict=True):
        if stem not in seen:
            seen.add(stem)
            terms.append(QueryTerm(word, stem))
    return terms


def field_lines(lexical: str) -> list[tuple[str, str]]:
    """(label, words) pairs of a lexical text; an unlabelled line is plain description."""
    pairs = []
    for line in lexical.splitlines():
        label, sep, words = line.partition(_FIELD_SEP)
        pairs.append((label, words) if sep else ("description", line))
    return pairs


def indexed_text(lexical: str) -> str:
    """The words BM25 sees: every field's words, without the labels."""
    return "\n".join(words for _, words in field_lines(lexical))


def visible_text(lexical: str) -> str:
    """Only the words seen written in the photo (signs, labels, shop names, numbers)."""
    return "\n".join(words for label, words in field_lines(lexical) if label == VISIBLE_TEXT_LABEL)


def write_lexical(folder: Path, lexical_texts: list[str]) -> None:
    """Both BM25 indexes of a generation (row i = lexical_texts[i]), each left out when it has no word."""
    LexicalIndex.build([indexed_text(t) for t in lexical_texts]).save(folder / LEXICAL_DIR)
    LexicalIndex.build([visible_text(t) for t in lexical_texts]).save(folder / VISIBLE_TEXT_DIR)


class LexicalIndex:
    """BM25 over the rows of one index generation (row i = FAISS row i).

    Built and saved by bm25s, whose saved form is the BM25 score of every (word, photo)
    pair as a sparse column-per-word matrix. Searching only sums the columns of the
    query's words, so it reads those files straight with numpy (memory-mapped) instead
    of importing bm25s, whose import (scipy) would cost every search ~0.13 s."""

    def __init__(self, vocab: dict[str, int], data: np.ndarray, indices: np.ndarray, indptr: np.ndarray,
                 size: int, stopwords: frozenset[str]) -> None:
        self.vocab = vocab  # stem -> column
        self._data, self._indices, self._indptr = data, indices, indptr
        self._sorted: bool | None = None  # _postings_sorted()
        self.size = size
        self.stopwords = stopwords

    @staticmethod
    def build(texts: list[str]) -> _Built:
        tokens = [stems(content_words(t)) for t in texts]
        if not any(tokens):  # not one word to index (bm25s cannot): the generation goes without
            return _Built(None)
        import bm25s

        retriever = bm25s.BM25(k1=_K1, b=_B, method="lucene")
        retriever.index(tokens, show_progress=False)
        return _Built(retriever)

    @classmethod
    def load(cls, folder: Path) -> LexicalIndex | None:
        """The saved index, or None when the generation has none (built by an older imgrag)."""
        return cls._read(lambda name: (folder / name).read_bytes(), lambda name: np.load(folder / name, mmap_mode="r"))

    @classmethod
    def from_files(cls, files: Mapping[str, bytes]) -> LexicalIndex | None:
        """The index from its saved files' contents (a library in PostgreSQL keeps them there)."""
        return cls._read(lambda name: files[name], lambda name: np.load(io.BytesIO(files[name])))

    @classmethod
    def _read(cls, read: Callable[[str], bytes], array: Callable[[str], np.ndarray]) -> LexicalIndex | None:
        try:
            about = json.loads(read("format.json"))
            if about.get("format") != FORMAT:
                return None
            params = json.loads(read("params.index.json"))
            vocab = json.loads(read("vocab.index.json").decode("utf-8"))
            data, indices, indptr = (array(f"{name}.csc.index.npy") for name in ("data", "indices", "indptr"))
            size, stopwords = int(params["num_docs"]), frozenset(about["stopwords"])
        except (OSError, ValueError, KeyError):
            return None
        return cls(vocab, data, indices, indptr, size=size, stopwords=stopwords)

    def _doc_freq(self, column: int | None) -> int:
        """How many descriptions have the word (its column's entries); 0 for an unknown word."""
        return 0 if column is None else int(self._indptr[column + 1] - self._indptr[column])

    def _idf(self, column: int | None) -> float:
        df = self._doc_freq(column)
        return math.log(1 + (self.size - df + 0.5) / (df + 0.5))

    def rare(self, column: int) -> bool:
        """A word few descriptions share: exact evidence the meaning alone may miss."""
        return self._doc_freq(column) <= max(RARE_SHARE * self.size, RARE_MIN_DOCS)

    def scores(self, query: str) -> LexicalScores:
        """BM25 of the query's rare words; its common words are left to the dense score
        (counting them too made Flickr8k train rankings worse), but still weigh in `ideal`."""
        terms = query_terms(query, self.stopwords)
        raw = np.zeros(self.size, dtype=np.float32)
        found = [np.zeros(0, np.int64)]
        for column in {self.vocab[t.stem] for t in terms if t.stem in self.vocab}:
            if not self.rare(column):
                continue
            start, end = int(self._indptr[column]), int(self._indptr[column + 1])
            # A word's rows are each listed once, so this adds in place; it touches only the
            # rare word's few rows, where a bincount made and summed a whole-library array.
            raw[self._indices[start:end]] += self._data[start:end]
            found.append(self._indices[start:end])
        # Words no description has count as unmatched evidence: "red xyzzy" is not fully matched by "red".
        idf_total = sum(self._idf(self.vocab.get(t.stem)) for t in terms)
        return LexicalScores(terms=terms, raw=raw, ideal=idf_total / (1 + _K1), matched=unique_rows(np.concatenate(found)))


    def written_share(self, query: str, descriptions: LexicalIndex) -> LexicalScores:
        """For the visible-text index: per row, the share of the query's words written in the
        photo, each weighted by its idf among whole descriptions (`descriptions`), so that
        words naming the scene ("car", "sign") weigh little and names and numbers much.
        Presence, not BM25: a sign says its word once, and most photos have no text at all,
        which would make BM25's length normalisation punish the ones that do."""
        terms = query_terms(query, self.stopwords)
        raw = np.zeros(self.size, dtype=np.float32)
        total = 0.0
        for term in terms:
            weight = descriptions._idf(descriptions.vocab.get(term.stem))
            total += weight
            column = self.vocab.get(term.stem)
            if column is not None:
                raw[self._indices[int(self._indptr[column]) : int(self._indptr[column + 1])]] += weight
        return LexicalScores(terms=terms, raw=raw, ideal=total)

    def words_present(self, query: str, rows: np.ndarray) -> np.ndarray:
        """Per row, the idf-weighted share (0..1) of the query's words its text has, common
        words too (for `cutoff`: "dog" written in a description says the photo shows one)."""
        terms = query_terms(query, self.stopwords)
        # in the postings' own type: a search of int64 rows in int32 postings copied every
        # posting to int64 first (a common word's 10^5 rows, for each search)
        rows = np.asarray(rows, dtype=self._indices.dtype)
        present = np.zeros(len(rows), dtype=np.float32)
        sorted_postings = self._postings_sorted()
        having = None if sorted_postings else np.zeros(self.size, dtype=bool)
        total = 0.0
        for term in terms:
            column = self.vocab.get(term.stem)
            weight = self._idf(column)
            total += weight
            if column is None:
                continue
            postings = self._indices[int(self._indptr[column]) : int(self._indptr[column + 1])]
            if having is None:  # a binary search of each row: a common word is in 10^5 rows at 1M
                at = np.minimum(np.searchsorted(postings, rows), max(len(postings) - 1, 0))
                present += weight * (postings[at] == rows) if len(postings) else 0.0
            else:  # a mask, not np.isin
                having[:] = False
                having[postings] = True
                present += weight * having[rows]
        return present / total if total > 0 else present

    def _postings_sorted(self) -> bool:
        """Whether each word's rows are in ascending order (bm25s writes them so), checked once."""
        if self._sorted is None:
            ok = self._indices[1:] > self._indices[:-1]
            starts = self._indptr[1:-1].astype(np.int64) - 1  # a column's first row may be below the last one's
            ok[starts[(starts >= 0) & (starts < len(ok))]] = True
            self._sorted = bool(ok.all())
        return self._sorted


class _Built:
    """A freshly built index, to be saved into a generation folder."""

    def __init__(self, retriever: Any | None) -> None:
        self._bm25 = retriever
        self.size = 0 if retriever is None else int(retriever.scores["num_docs"])

    def save(self, folder: Path) -> None:
        if self._bm25 is None:
            return  # nothing to save: searches of this generation rank by meaning alone
        folder.mkdir(parents=True, exist_ok=True)
        self._bm25.save(str(folder), show_progress=False)
        about = {"format": FORMAT, "docs": self.size, "stopwords": sorted(default_stopwords())}
        (folder / "format.json").write_text(json.dumps(about))
