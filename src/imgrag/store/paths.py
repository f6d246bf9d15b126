"""Every path inside an `.imgrag/` folder, in one place.

```
.imgrag/
  manifest.json        format version, embedding model + fingerprint, photo roots
  descriptions.jsonl   one record per described photo (append-only)
  failures.jsonl       photos that could not be described, with the reason (append-only)
  quarantine.jsonl     photos set aside after repeated permanent failures (append-only)
  batches.jsonl        every step of every Batch API submission (append-only)
  verdicts.jsonl       cached `search --verify` verdicts (append-only), guarded by verdicts.lock
  scan.json            content hashes by (path, size, mtime)
  lock                 held by any writer (describe, embed, index, the page's jobs)
  vectors/             the embedding cache, one folder per model
  models/              the query encoder's ONNX export, one folder per model
  thumbs/              thumbnails and previews made by `imgrag serve` (<ab>/<sha256>-<size>.jpg)
  index/CURRENT        names the generation searches read
  index/<generation>/  one complete search index (the files named below)
```
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DIR_NAME = ".imgrag"

# Files inside one index generation folder, `.imgrag/index/<generation>/`.
GENERATION_META = "meta.json"
GENERATION_DOCS = "docs.sqlite"
DENSE_FILE = "dense.faiss"
LEXICAL_DIR = "lexical"
VISIBLE_TEXT_DIR = "visible-text"
CROWDING_FILE = "crowding.npy"
BACKGROUND_FILE = "background.npy"


@dataclass(frozen=True)
class StorePaths:
    """The paths of one `.imgrag/` folder (`root`)."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def descriptions(self) -> Path:
        return self.root / "descriptions.jsonl"

    @property
    def failures(self) -> Path:
        return self.root / "failures.jsonl"

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine.jsonl"

    @property
    def batches(self) -> Path:
        return self.root / "batches.jsonl"

    @property
    def verdicts(self) -> Path:
        return self.root / "verdicts.jsonl"

    @property
    def verdicts_lock(self) -> Path:
        return self.root / "verdicts.lock"

    @property
    def scan_cache(self) -> Path:
        return self.root / "scan.json"

    @property
    def writer_lock(self) -> Path:
        return self.root / "lock"

    @property
    def vectors(self) -> Path:
        return self.root / "vectors"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def thumbnails(self) -> Path:
        return self.root / "thumbs"

    def thumbnail(self, sha256: str, size: int) -> Path:
        """A photo's JPEG at `size` pixels on its long side (thumbnail or preview)."""
        return self.thumbnails / sha256[:2] / f"{sha256}-{size}.jpg"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def current_generation(self) -> Path:
        return self.index / "CURRENT"

    def generation(self, name: str) -> Path:
        return self.index / name
