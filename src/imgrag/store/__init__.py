"""The `.imgrag/` folder beside the photos: where everything imgrag knows is kept.

- `paths`: every path inside the folder, in one place;
- `workspace`: finding the folder, its manifest, the writer lock;
- `files`: crash-safe writes (atomic replace, fsynced append-only JSONL);
- `descriptions`: descriptions.jsonl and failures.jsonl (newest record per photo wins);
- `description_lookup`: one photo's record by byte offset, for a long-lived server;
- `scan`: the photos under the roots now, with content hashes cached by (path, size, mtime);
- `batch_log`: every step of every Batch API submission.

Nothing here knows about vision models, embeddings or search.
"""
