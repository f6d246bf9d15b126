"""`StoreSearcher`: `imgrag.search.searcher.Searcher` over a library in PostgreSQL. The
ranking, the cut-off, why-it-matched and `--like` are the Searcher's own, run on the
store's published generation (imgrag.library.generation); only what reads the photos
differs: the dense candidates come from pgvector with the filters in the SQL, and the
copies are on other machines, so they are not looked for on this one's disk."""

from __future__ import annotations

import copy
import os
import threading
from pathlib import Path

from imgrag.errors import UsageError
from imgrag.index.embedding import resolve_model_name
from imgrag.index.query_encoder import QueryEncoder
from imgrag.library.generation import StoreFilters, date_conditions
from imgrag.library.library import Library
from imgrag.search.filters import Filters
from imgrag.search.ranking import Hit, SearchOptions
from imgrag.search.searcher import Searcher, like_photo_sha


def store_filters(filters: Filters | None) -> StoreFilters:
    """--in/--after/--before/--library as SQL over `photos p`: --in matches any copy's path, on
    any machine; with --library, a copy in that library (inside --in, when both are given)."""
    if filters is None or not filters.active():
        return StoreFilters()
    clauses: list[str] = []
    params: list[object] = []
    one_copy: list[str] = []  # what one copy of the photo must be
    one_copy_params: list[object] = []
    copies: tuple[tuple[str, tuple], ...] | None = None
    if filters.library is not None:
        one_copy.append("c.library = %s")
        one_copy_params.append(filters.library)
    if filters.under is not None:
        folder = str(filters.under.expanduser().resolve()) if filters.under.expanduser().exists() \
            else os.path.abspath(filters.under.expanduser())
        prefix = folder.rstrip(os.sep) + os.sep
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        # --in as either of two conditions on one copy, each one index-only scan of the path
        # index when a folder's photos are read to be searched exactly (StoreGeneration._few_photos)
        copies = tuple((" AND ".join([*one_copy, condition]), (*one_copy_params, value))
                       for condition, value in (("c.path = %s", folder), ("c.path LIKE %s", escaped + "%")))
        one_copy.append("(c.path = %s OR c.path LIKE %s)")
        one_copy_params += [folder, escaped + "%"]
    if one_copy:
        clauses.append(f"EXISTS (SELECT 1 FROM copies c WHERE c.photo = p.id AND {' AND '.join(one_copy)})")
        params += one_copy_params
    after = None if filters.after is None else filters.after.isoformat(timespec="seconds")
    before = None if filters.before is None else filters.before.isoformat(timespec="seconds")
    dates, date_params = date_conditions(after, before)
    if dates:
        clauses.append(dates)
        params += date_params
    return StoreFilters(" AND ".join(clauses), tuple(params), library=filters.library, copies=copies,
                        only_copies=len(clauses) == 1 and copies is not None, after=after, before=before,
                        dates_in_memory=filters.library is None and (after, before) != (None, None))


class StoreSearcher(Searcher):
    """A Searcher whose generation is a store's (see the module docstring)."""

    def __init__(self, library: Library, *, embed_model: str | None, filters: Filters | None = None,
                 query_encoder: str = "auto") -> None:  # not super().__init__: it opens a .imgrag/ folder
        self.library = library
        self.ws = None  # type: ignore[assignment]
        self.query_encoder = query_encoder
        generation = library.open_generation()
        built_with = generation.meta["embedding"]["model"]
        if embed_model and embed_model != built_with and resolve_model_name(embed_model) != built_with:
            raise UsageError(f"the store {library.safe_name} is embedded with {built_with!r}, "
                             f"but IMGRAG_EMBED_MODEL is {embed_model!r}: unset it")
        self.generation = generation.with_filters(store_filters(filters))  # type: ignore[assignment]
        self.allowed = None
        self.missing: set[str] = set()
        self._allowed_by_filters = {}
        self._allowed_lock = threading.Lock()
        self._vectors = None
        self.inside = _inside(filters)  # --in: the copies inside it are the ones shown

    def _open_encoder(self, model: str, fingerprint: str | None) -> QueryEncoder:
        # No .imgrag/ here to hold another model's ONNX export: the default model's own graph
        # (built once per user), else sentence-transformers.
        from imgrag.index import default_model
        from imgrag.index.query_encoder import SentenceTransformersEncoder

        if default_model.serves(model, fingerprint):
            return default_model.open_encoder()
        return SentenceTransformersEncoder(model)

    def _on_disk(self, paths: list[str]) -> list[str]:
        return paths  # copies on other machines cannot be looked for here

    def stale_warning(self) -> str | None:
        return None

    def _indexed_row(self, photo: Path) -> tuple[int, str, str]:
        # a copy's path as another machine recorded it need not exist here
        recorded = self.generation.query("SELECT p.sha256 FROM copies c JOIN photos p ON p.id = c.photo "  # type: ignore[attr-defined]
                                         "WHERE c.path = %s LIMIT 1", (os.path.abspath(photo.expanduser()),))
        sha = recorded[0][0] if recorded and not photo.expanduser().is_file() else like_photo_sha(photo)
        found = self.generation.row_of_sha(sha)  # type: ignore[attr-defined]
        if found is None:
            raise UsageError(f"--like {photo}: this photo is not in the store {self.library.safe_name} "
                             "(run `imgrag index` on its folder with --store first)")
        return found[0], sha, found[1]

    def records(self, shas: list[str]) -> dict[str, dict]:
        """Photos' description records (what `imgrag ask` tells the model), by content hash."""
        found = self.generation.query("SELECT sha256, record FROM photos WHERE sha256 = ANY(%s) "  # type: ignore[attr-defined]
                                      "AND record IS NOT NULL", (list(shas),))
        return {sha: record for sha, record in found}

    def like_sha(self, sha: str):
        """(row, caption) of an indexed photo by its content hash, or None (the web page's like=)."""
        return self.generation.row_of_sha(sha)  # type: ignore[attr-defined]

    def stored_thumbnail(self, sha: str) -> bytes | None:
        """The photo's 256 px thumbnail from the store (its files may be on other machines)."""
        from imgrag.library.records import stored_jpeg

        return stored_jpeg(self.generation, sha, 256)

    def like_id(self, sha: str, options: SearchOptions) -> list[Hit]:
        """`--like` by a photo's id (its file need not be on this machine), itself left out."""
        found = self.like_sha(sha)
        if found is None:
            raise UsageError(f"like {sha}: this photo is not searchable in the store {self.library.safe_name}")
        row, caption = found
        if self._nothing_to_find():
            return []
        return self._rank(self._stored_vector(row), caption, options, exclude_rows=[row])

    def filters_pass_nothing(self) -> bool:
        return self.generation.passes_nothing()  # type: ignore[attr-defined]

    def with_filters(self, filters: Filters) -> StoreSearcher:
        other = copy.copy(self)
        other.generation = self.generation.with_filters(store_filters(filters))  # type: ignore[attr-defined]
        other.inside = _inside(filters)
        return other


def _inside(filters: Filters | None) -> str | None:
    """The `--in` folder as this machine's recorded paths spell it (absolute)."""
    if filters is None or filters.under is None:
        return None
    return os.path.normpath(filters.under.expanduser().resolve())
