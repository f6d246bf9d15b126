"""A generation's photos in date order, each with its vector cut to one bit a dimension: what
a date filter (--after/--before), a folder (--in), or both, are searched with at a million
photos.

pgvector's HNSW scan with a date filter in its SQL must step over every photo the filter
rejects: for a range holding a fifth of the photos it visits five times the tuples of an
unfiltered search (17 ms of PostgreSQL's CPU a search at 1M photos, bench/store_scale.py).
Here the photos in range are one slice of the date order, found by a binary search; their
1-bit codes are ranked by Hamming distance (faiss, about 1 ms for 200,000), and PostgreSQL
scores the nearest few hundred exactly on their stored vectors, with the date filter in the
same SQL (StoreGeneration._exact), so a photo whose date changed since publishing is never
shown outside the range. A folder's photos (their ids read from the path index) are ranked
the same way: their codes are gathered by row, with no visit to their rows in PostgreSQL
(with a date range too, those of them in the range).
The codes are the sign of each dimension, as pgvector's binary_quantize makes them: at 1M
photos the top 10 of the 600 nearest codes re-scored equals exact search's for 99.95% of
held-out queries (bench/store_scale.py).

Dates are the `photos.photo_time` text (YYYY-MM-DDTHH:MM:SS, or NULL), compared as text as
the SQL filter compares them; a photo with no date passes no date filter.

Files in the generation's zip (the rows are the generation's, sorted by photo id):
    dated/order.npy   every row: those with a date by date (ties by row), then the others
    dated/times.npy   the dates, in that order (bytes, fixed width): one per dated row
    dated/codes.npy   every row's code, in that order (uint8, dim/8 a row)
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

FOLDER = "dated"
_FILES = ("order", "times", "codes")


def dated_files(times: Sequence[str | None], vectors: np.ndarray) -> dict[str, bytes]:
    """The files of a generation whose row i has date times[i] and vector vectors[i]."""
    dated = np.array([i for i, t in enumerate(times) if t], dtype=np.int64)
    stamps = np.array([str(times[i]).encode("utf-8", "surrogatepass") for i in dated.tolist()]) if len(dated) \
        else np.zeros(0, "S19")
    by_date = np.argsort(stamps, kind="stable")
    undated = np.setdiff1d(np.arange(len(times)), dated)
    order = np.concatenate([dated[by_date], undated])
    arrays = {"order": order, "times": stamps[by_date], "codes": codes_of(vectors[order])}
    out = {}
    for name, array in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, array)
        out[f"{FOLDER}/{name}.npy"] = buffer.getvalue()
    return out


def codes_of(vectors: np.ndarray) -> np.ndarray:
    """One bit a dimension, set where the value is above 0 (pgvector's binary_quantize)."""
    return np.packbits(np.asarray(vectors) > 0, axis=1)


class DatedCodes:
    """A generation's date order and codes (the module docstring), read from its files."""

    def __init__(self, files: dict[str, bytes], size: int) -> None:
        self.order, self.times, self.codes = (np.load(io.BytesIO(files[f"{FOLDER}/{n}.npy"])) for n in _FILES)
        self.position = np.empty(size, dtype=np.int64)  # each row's place in the order (past the dated: no date)
        self.position[self.order] = np.arange(len(self.order))

    @classmethod
    def from_files(cls, files: dict[str, bytes], size: int) -> DatedCodes | None:
        """None for a generation published before these files existed (searched as before)."""
        if not all(f"{FOLDER}/{n}.npy" in files for n in _FILES):
            return None
        return cls(files, size)

    def span(self, after: str | None, before: str | None) -> tuple[int, int]:
        """[lo, hi) in the date order: the photos dated at or after `after` and before `before`."""
        lo = 0 if after is None else self._first_not_below(after)
        hi = len(self.times) if before is None else self._first_not_below(before)
        return lo, max(lo, hi)

    def _first_not_below(self, bound: str) -> int:
        """The first place whose date is not below `bound` (as text compares). A bound longer
        than the stored dates is cut to their width for numpy, and a date equal to the cut
        bound is below the whole one (a prefix sorts first)."""
        key = bound.encode("utf-8", "surrogatepass")
        width = self.times.dtype.itemsize
        return int(np.searchsorted(self.times, np.bytes_(key[:width]), side="right" if len(key) > width else "left"))

    def in_span(self, span: tuple[int, int]) -> np.ndarray:
        """The rows of the span, by date."""
        return self.order[span[0] : span[1]]

    def passes(self, rows: np.ndarray, span: tuple[int, int]) -> np.ndarray:
        """Which of these rows are in the span (a mask)."""
        at = self.position[np.asarray(rows, dtype=np.int64)]
        return (at >= span[0]) & (at < span[1])

    def nearest(self, query: np.ndarray, k: int, *, span: tuple[int, int] | None = None,
                rows: np.ndarray | None = None) -> np.ndarray:
        """The rows of the span, or of `rows`, or of both, whose codes are nearest the query's
        by Hamming distance, at most k, in no particular order."""
        import faiss

        if rows is None:
            assert span is not None
            codes, rows = self.codes[span[0] : span[1]], self.in_span(span)  # a slice: nothing copied
        else:
            rows = np.asarray(rows, dtype=np.int64)
            if span is not None:
                rows = rows[self.passes(rows, span)]
            codes = np.take(self.codes, self.position[rows], axis=0)  # (a gather by row index is 3x slower)
        if len(rows) <= k:
            return rows
        # One thread: the work is a millisecond, and OpenMP's idle workers would spin for
        # more after it, taking the CPU a busy server's other requests and PostgreSQL need.
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            _, found = faiss.knn_hamming(codes_of(query.reshape(1, -1)), np.ascontiguousarray(codes), k)
        finally:
            faiss.omp_set_num_threads(threads)
        return rows[found[0][found[0] >= 0]]
