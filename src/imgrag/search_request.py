"""A search as a person asks for it (flags on the command line, parameters in a URL) turned
into what the ranking takes, and the answer cut into pages. `imgrag search` and
`imgrag serve` both call these, so the CLI and the HTTP API find the same photos in the
same order."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UsageError

if TYPE_CHECKING:
    from .index import Bundle
    from .search import Filters, Hit, SearchOptions, Searcher

SORTS = ("relevance", "date")


def make_filters(in_folder: Path | None, after: str | None, before: str | None, *,
                 names: tuple[str, str] = ("--after", "--before")) -> Filters:
    """`--in/--after/--before` (or the `in/after/before` URL parameters) as Filters."""
    from .search import Filters, parse_date

    return Filters(
        under=in_folder,
        after=parse_date(after, names[0]) if after is not None else None,
        before=parse_date(before, names[1]) if before is not None else None,
    )


def make_options(limit: int, min_score: float | None) -> SearchOptions:
    """No min_score given means the default cut-off. (When SearchOptions itself reads None as
    "the default cut-off", this passes None through; until then it spells the default here,
    the one place both the CLI and the server take it from.)"""
    from .search import DEFAULT_MIN_SCORE, SearchOptions

    return SearchOptions(limit=limit, min_score=DEFAULT_MIN_SCORE if min_score is None else min_score)


def cut_off(options: SearchOptions) -> float:
    """The cut-off a search applied, for messages."""
    from .search import DEFAULT_MIN_SCORE

    return DEFAULT_MIN_SCORE if options.min_score is None else options.min_score


def why_nothing(searcher: Searcher, min_score: float, *, flag: str = "--min-score", filter_flags: str = "--in/--after/--before") -> str:
    """Why a search found nothing and what to try: the CLI's hint, also the page's."""
    if searcher.bundle.size == 0:
        return " (the index is empty)"
    if searcher.allowed is not None and not searcher.allowed:
        return f" (no indexed photo passes {filter_flags})"
    return f" (none scored {min_score:g} or more; {flag} 0 shows the nearest anyway)"


@dataclass
class Page:
    hits: list[Hit]
    next_offset: int | None  # where the next page starts; None: this is the last


def search_page(searcher: Searcher, options: SearchOptions, *, query: str | None = None, like: Path | None = None,
                offset: int = 0, sort: str = "relevance",
                dates: Callable[[list[str]], dict[str, str | None]] | None = None) -> Page:
    """One page of results: hits[offset:offset+limit] of the search `--limit offset+limit`
    would make (so page after page is the CLI's list, cut up). sort="date" orders the
    relevant photos (every one above the cut-off among the nearest candidates) newest first;
    `dates` gives photos' dates by sha256 (default: read from the index)."""
    from .search import DENSE_CANDIDATES

    if sort not in SORTS:
        raise UsageError(f"sort must be one of {', '.join(SORTS)}, not {sort!r}")
    wanted = offset + options.limit + 1  # one more says whether a next page exists
    if sort == "date":
        wanted = max(wanted, DENSE_CANDIDATES)
    asked = replace(options, limit=wanted)
    hits = searcher.like(like, asked) if like is not None else searcher.search(query or "", asked)
    if sort == "date":
        when = (dates or (lambda shas: photo_dates(searcher.bundle, shas)))([h.sha256 for h in hits])
        hits.sort(key=lambda h: when.get(h.sha256) or "", reverse=True)  # stable: ties keep relevance order
    shown = hits[offset : offset + options.limit]
    for i, h in enumerate(shown, start=offset + 1):
        h.rank = i
    more = len(hits) > offset + options.limit
    return Page(shown, offset + len(shown) if more else None)


def photo_dates(bundle: Bundle, shas: list[str]) -> dict[str, str | None]:
    """Each photo's date as the filters see it (EXIF time, else file mtime in local time)."""
    from .search import _PHOTO_TIME

    if not shas:
        return {}
    marks = ",".join("?" * len(shas))
    return dict(bundle.db.execute(f"SELECT sha256, {_PHOTO_TIME} FROM docs WHERE sha256 IN ({marks})", shas))
