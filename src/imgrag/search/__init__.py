"""Search: a query -> ranked photos.

- `ranking`: candidates (dense + exact words), fusion, the long-lived `Searcher`, filters,
  why each photo matched;
- `cutoff`: which of the ranked hits are shown by default;
- `request`: a search as flags or URL parameters ask for it -> options, and pages of results.

Reads an index generation (`imgrag.index`); writes nothing.
"""
