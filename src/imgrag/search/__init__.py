"""Search: a query -> ranked photos.

- `searcher`: the long-lived `Searcher`: one open index generation, the query encoder
  loaded once, any number of searches (`--like` and `--queries-from` too);
- `ranking`: candidates (dense + exact words), their fusion into one score, the order;
- `cutoff`: which of the ranked hits are shown by default;
- `filters`: `--in`, `--after`, `--before` as the index rows that pass them;
- `why`: why each photo matched, in one line;
- `request`: a search as flags or URL parameters ask for it -> options, and pages of results;
- `live`: the index a long-lived server searches, swapped whole when a new generation appears.

Reads an index generation (`imgrag.index`); writes nothing.
"""
