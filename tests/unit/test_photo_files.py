"""imgrag.store.serving (the gate a photo's file passes before `imgrag serve` sends it) and
imgrag.web.thumbnails' cache bound, on real files in tmp_path. What the server answers over
HTTP is tested against a real uvicorn in tests/e2e/test_serve_files.py."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from PIL import Image

from imgrag.store.serving import PhotoFiles, Refused
from imgrag.store.workspace import Workspace
from imgrag.web.thumbnails import Thumbnails, thumbnail_size


def library(tmp_path: Path, count: int) -> tuple[Workspace, list[tuple[str, str]]]:
    """A workspace whose root is photos/, with `count` photos: [(name, sha256)]."""
    ws = Workspace(tmp_path / ".imgrag")
    found = []
    for i in range(count):
        path = tmp_path / "photos" / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.effect_noise((300, 200), 40 + i).save(path)  # noise: each thumbnail ~the same size
        found.append((f"photos/p{i}.png", hashlib.sha256(path.read_bytes()).hexdigest()))
    ws.add_root(tmp_path / "photos")
    return ws, found


def test_the_recorded_hash_is_trusted_while_size_and_mtime_match_and_checked_again_after(tmp_path):
    ws, [(name, sha)] = library(tmp_path, 1)
    path = ws.absolute(name)
    st = path.stat()
    claimed = "f" * 64  # what scan.json says this file hashed to, when it was hashed
    ws.paths.scan_cache.write_text(json.dumps({"version": 1, "files": {name: [st.st_size, st.st_mtime_ns, claimed]}}))
    gate = PhotoFiles(ws)
    gate.open(claimed, [name]).close()  # size and mtime as recorded: not hashed again
    with pytest.raises(Refused) as refused:
        gate.open(sha, [name])
    assert refused.value.reason == "changed"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # touched: hashed again
    gate.open(sha, [name]).close()
    with pytest.raises(Refused):
        gate.open(claimed, [name])


def test_the_first_name_that_may_be_served_is_used(tmp_path):
    ws, [(name, sha)] = library(tmp_path, 1)
    (tmp_path / "photos" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    photo = PhotoFiles(ws).open(sha, ["photos/gone.png", "../photos/p0.png", "photos/.hidden.png", name])
    assert photo.name == name and photo.media_type() == "image/png"
    photo.close()


def test_sizes_offered_are_the_pages():
    assert [thumbnail_size(s) for s in (32, 96, 128, 176, 177, 256, 384, 385, 512, 1024)] == \
        [96, 96, 96, 256, 256, 256, 512, 512, 512, 512]


def test_the_thumbnail_cache_stays_under_its_limit_oldest_out(tmp_path):
    ws, photos = library(tmp_path, 8)
    gate = PhotoFiles(ws)
    one = len(_thumbnail(Thumbnails(ws, limit=1 << 30), gate, *photos[0]))
    ws.paths.thumbnail(photos[0][1], 256).unlink()
    cache = Thumbnails(ws, limit=int(one * 4.5))  # room for four
    made = []
    for i, (name, sha) in enumerate(photos):
        _thumbnail(cache, gate, name, sha)
        made.append(ws.paths.thumbnail(sha, 256))
        os.utime(made[-1], (1e9 + i, 1e9 + i))  # a second apart: file times are coarser than this loop
        total = sum(p.stat().st_size for p in ws.paths.thumbnails.rglob("*.jpg"))
        assert total <= cache.limit
    kept = [p.exists() for p in made]
    assert kept[-1] and kept[-2] and not kept[0] and not kept[1]  # the oldest left first
    assert kept == sorted(kept)


def _thumbnail(cache: Thumbnails, gate: PhotoFiles, name: str, sha: str) -> bytes:
    photo = gate.open(sha, [name])
    try:
        made = cache.jpeg(photo, 256)
    finally:
        photo.close()
    return made if isinstance(made, bytes) else made.read_bytes()
