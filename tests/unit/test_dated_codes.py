"""A store generation's photos in date order with their 1-bit codes (imgrag.library.dated):
a date range is the slice the SQL filter would pass, and the nearest codes are the nearest
by Hamming distance, over a range, given rows, or both."""

from __future__ import annotations

import numpy as np
import pytest

from imgrag.library.dated import DatedCodes, codes_of, dated_files

TIMES = ["2021-05-01T10:00:00", None, "2019-12-31T23:59:59", "2023-01-01T00:00:00", "2023-01-01T00:00:00",
         None, "2024-07-04T12:00:00", "2020-02-29T08:30:00"]


@pytest.fixture
def dated():
    vectors = np.random.default_rng(0).standard_normal((len(TIMES), 64)).astype(np.float32)
    return DatedCodes(dated_files(TIMES, vectors), len(TIMES)), vectors


def _sql_passes(after: str | None, before: str | None) -> set[int]:
    """What `photo_time >= after AND photo_time < before` passes (NULL passes nothing)."""
    return {i for i, t in enumerate(TIMES) if t is not None and (after is None or t >= after)
            and (before is None or t < before)}


@pytest.mark.parametrize(("after", "before"), [
    ("2023-01-01T00:00:00", None),  # a bound equal to two photos' time: both pass `>=`
    (None, "2023-01-01T00:00:00"),  # ... and neither passes `<`
    ("2020-01-01T00:00:00", "2023-06-01T00:00:00"),
    ("2025-01-01T00:00:00", None),  # after every photo
    (None, "2000-01-01T00:00:00"),  # before every photo
    ("2023-01-01T00:00:00+00:00", None),  # longer than the stored times: the equal ones sort first, as text
    (None, "2023-01-01T00:00:00+00:00"),
    ("2024-01-01T00:00:00", "2021-01-01T00:00:00"),  # an empty range
])
def test_a_span_is_what_the_sql_filter_passes(dated, after, before):
    codes, _ = dated
    span = codes.span(after, before)
    assert set(codes.in_span(span).tolist()) == _sql_passes(after, before)
    assert codes.passes(np.arange(len(TIMES)), span).tolist() == [i in _sql_passes(after, before)
                                                                  for i in range(len(TIMES))]
    times = [TIMES[r] for r in codes.in_span(span)]
    assert times == sorted(times)  # by date


def test_undated_photos_pass_no_range_but_have_codes(dated):
    codes, vectors = dated
    everything = codes.span("0000", None)
    assert not codes.passes(np.array([1, 5]), everything).any()
    assert np.array_equal(codes.codes[codes.position[[1, 5]]], codes_of(vectors[[1, 5]]))


def _hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.unpackbits(a ^ b, axis=-1).sum(axis=-1)


@pytest.mark.parametrize("where", ["span", "rows", "both"])
def test_the_nearest_codes_are_the_nearest_by_hamming_distance(where):
    rng = np.random.default_rng(1)
    n = 2000
    times = [f"20{10 + i % 10}-01-01T00:00:00" for i in range(n)]
    vectors = rng.standard_normal((n, 128)).astype(np.float32)
    codes = DatedCodes(dated_files(times, vectors), n)
    query = rng.standard_normal(128).astype(np.float32)
    span = codes.span("2013-01-01T00:00:00", "2017-01-01T00:00:00") if where != "rows" else None
    rows = rng.choice(n, 700, replace=False) if where != "span" else None
    pool = set(range(n)) if span is None else set(codes.in_span(span).tolist())
    if rows is not None:
        pool &= set(rows.tolist())
    pool_rows = np.array(sorted(pool))
    found = codes.nearest(query, 50, span=span, rows=rows)
    assert len(found) == 50 and set(found.tolist()) <= pool
    distance = dict(zip(pool_rows.tolist(), _hamming(codes_of(vectors[pool_rows]), codes_of(query[None])[0]).tolist(),
                        strict=True))
    outside = [distance[r] for r in pool - set(found.tolist())]
    assert max(distance[r] for r in found.tolist()) <= min(outside)
    assert set(codes.nearest(query, len(pool) + 5, span=span, rows=rows).tolist()) == pool  # all, when no more


def test_a_generation_without_the_files_has_none():
    assert DatedCodes.from_files({}, 3) is None
    vectors = np.ones((3, 16), np.float32)
    assert DatedCodes.from_files(dated_files([None, "2020-01-01T00:00:00", None], vectors), 3) is not None
