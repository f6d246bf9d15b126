"""A search as a person asks for it (flags on the command line, parameters in a URL) turned
into what the ranking takes, and the answer cut into pages. `imgrag search` and
`imgrag serve` both call these, so the CLI and the HTTP API find the same photos in the
same order."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from imgrag.errors import UsageError
from imgrag.search.filters import Filters, library_name, parse_date
from imgrag.search.ranking import DENSE_CANDIDATES, Hit, SearchOptions, search_options
from imgrag.search.searcher import Searcher, Window, clean_query

SORTS = ("relevance", "date")


def make_filters(in_folder: Path | None, after: str | None, before: str | None, *,
                 names: tuple[str, str, str] = ("--after", "--before", "--in"), library: str | None = None,
                 library_flag: str = "--library") -> Filters:
    """`--in/--after/--before/--library` (or the `in/after/before/library` URL parameters) as Filters."""
    return Filters(
        under=in_folder, in_name=names[2],
        after=parse_date(after, names[0]) if after is not None else None,
        before=parse_date(before, names[1]) if before is not None else None,
        library=library_name(library, library_flag) if library is not None else None,
    )


def make_options(limit: int | None, min_score: float | None, show_all: bool = False) -> SearchOptions:
    """`--limit/--min-score/--all` (or the URL's limit/min_score/all) as SearchOptions. No
    min_score means the default result set, fitted to each query (see cutoff.py)."""
    return search_options(limit=limit, min_score=min_score, show_all=show_all)


def cut_off(options: SearchOptions) -> float | None:
    """The fixed cut-off a search applied, for messages; None: the default set fitted to the query."""
    return None if options.show_all else options.min_score


def why_nothing(searcher: Searcher, options: SearchOptions, *, flag: str = "--min-score",
                all_flag: str | None = "--all", filter_flags: str = "--in/--after/--before") -> str:
    """Why a search found nothing and what to try: the CLI's hint, also the page's
    (`all_flag` None: the command has no such flag, as `ask` has not)."""
    if searcher.generation.size == 0:
        return " (the index is empty)"
    if searcher.filters_pass_nothing():
        return f" (no indexed photo passes {filter_flags})"
    anyway = f"{flag} 0 or {all_flag}" if all_flag else f"{flag} 0"
    if options.min_score is not None:
        return f" (none scored {options.min_score:g} or more; {anyway} shows the nearest anyway)"
    anyway = f"{all_flag} or {flag} 0" if all_flag else f"{flag} 0"
    return f" (none stands out as a match for this query; {anyway} shows the nearest anyway)"


@dataclass
class Page:
    hits: list[Hit]
    next_offset: int | None  # where the next page starts; None: this is the last


def search_page(searcher: Searcher, options: SearchOptions, *, query: str | None = None, like: Path | None = None,
                offset: int = 0, sort: str = "relevance") -> Page:
    """One page of results: hits[offset:offset+limit] of the search `--limit offset+limit`
    would make (so page after page is the CLI's list, cut up). sort="date" orders the
    relevant photos (every one above the cut-off among the nearest candidates) newest first."""
    if sort not in SORTS:
        raise UsageError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    stop = offset + options.limit + 1  # one more says whether a next page exists
    asked = replace(options, limit=max(stop, DENSE_CANDIDATES) if sort == "date" else stop)
    # Only the page (and the one after it) is read and explained, not the rows before it.
    window = Window(offset, stop, by_date=sort == "date")
    hits = searcher.like(like, asked, window) if like is not None else searcher.search(query or "", asked, window)
    shown = hits[: options.limit]
    return Page(shown, offset + len(shown) if len(hits) > options.limit else None)


def queries_from(source: str) -> Iterator[str]:
    """`--queries-from FILE|-`: one query per line, blank lines skipped, each read as it
    arrives (a script may write a query and read its answer before writing the next)."""
    if source == "-":
        yield from _queries(sys.stdin, source)
        return
    try:  # only opening it is a usage error; the `with` below closes it
        f = open(source, encoding="utf-8")  # noqa: SIM115
    except OSError as e:
        raise UsageError(f"--queries-from {source}: {e.strerror or e}") from None
    with f:
        yield from _queries(f, source)


def _queries(lines: Iterable[str], source: str) -> Iterator[str]:
    try:
        for line in lines:
            if line.strip():
                yield clean_query(line)
    except UnicodeDecodeError:
        raise UsageError(f"--queries-from {source}: not UTF-8 text") from None
