"""Helpers shared by the reliability tests (tests/test_reliability_*.py) and bench/torture.py:
drawing many distinct photos, checking that every file in `.imgrag/` is readable, and
running the real CLI as a background process that can be killed."""

from __future__ import annotations

import json
import os
import sqlite3
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from PIL import Image, ImageDraw

TRACEBACK = "Traceback (most recent call last)"


def draw_photo(path: Path, n: int, size=(320, 240), fmt: str = "JPEG", **save_kwargs) -> Path:
    """Photo number n: a colour field with shapes placed by n, so every n differs in bytes and look."""
    rng = (n * 2654435761) & 0xFFFFFFFF
    def next_int(mod: int) -> int:
        nonlocal rng
        rng = (rng * 1103515245 + 12345) & 0x7FFFFFFF
        return rng % mod

    w, h = size
    img = Image.new("RGB", size, (next_int(256), next_int(256), next_int(256)))
    d = ImageDraw.Draw(img)
    for _ in range(8):
        x, y = next_int(w), next_int(h)
        d.rectangle([x, y, x + next_int(w // 2) + 4, y + next_int(h // 2) + 4],
                    fill=(next_int(256), next_int(256), next_int(256)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "JPEG":
        save_kwargs.setdefault("quality", 90)
    img.save(path, fmt, **save_kwargs)
    return path


def draw_photos(folder: Path, count: int, start: int = 0) -> list[Path]:
    return [draw_photo(folder / f"photo_{i:04d}.jpg", i) for i in range(start, start + count)]


def clean_env(base_url: str, key: str = "test-key-123", **extra: str) -> dict[str, str]:
    """The caller's environment without any imgrag/provider settings, pointed at the stand-in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))}
    env.update(GROQ_API_KEY=key, IMGRAG_BASE_URL=base_url, NO_COLOR="1", HF_HUB_OFFLINE="1", **extra)
    return env


def spawn_imgrag(*args: str, cwd: Path, env: dict, **popen) -> subprocess.Popen:
    """The installed `imgrag` as a child process (for kill -9 and concurrent runs)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "imgrag"), *map(str, args)], cwd=cwd, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen,
    )


def wait_for_requests(standin, count: int, timeout: float = 60) -> None:
    """Until the stand-in has seen `count` chat requests in all (fails after `timeout` s)."""
    deadline = time.monotonic() + timeout
    while len(standin.requests) < count:
        assert time.monotonic() < deadline, "the run never reached the server"
        time.sleep(0.02)


def jsonl_lines(path: Path) -> tuple[list[dict], bool]:
    """(every complete record, whether the file ends in a torn line). A complete line
    that does not parse is damage: it raises."""
    if not path.exists():
        return [], False
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    torn = lines[-1] != b""
    records = [json.loads(line) for line in lines[:-1]]
    return records, torn


def check_readable(root: Path, *, allow_torn_tail: bool = True) -> list[str]:
    """What is unreadable in `.imgrag/` (empty list: everything parses and loads).

    descriptions.jsonl / failures.jsonl: every complete line is JSON (a torn last line is
    what a crash mid-append leaves, and the next writer cuts it off); manifest.json and
    scan.json parse; the generation CURRENT names loads with faiss and sqlite and agrees
    with meta.json; the vector cache has whole rows for every key."""
    problems: list[str] = []
    for name in ("descriptions.jsonl", "failures.jsonl", "batches.jsonl"):
        try:
            _, torn = jsonl_lines(root / name)
            if torn and not allow_torn_tail:
                problems.append(f"{name}: torn last line")
        except ValueError as e:
            problems.append(f"{name}: {e}")
    parsed: dict = {}
    for name in ("manifest.json", "scan.json"):
        path = root / name
        if path.exists():
            try:
                parsed[name] = json.loads(path.read_bytes())
            except ValueError as e:
                problems.append(f"{name}: {e}")
    current = root / "index" / "CURRENT"
    if current.exists():
        problems += _check_generation(root / "index" / current.read_text().strip())
    dim = (parsed.get("manifest.json", {}).get("embedding") or {}).get("dim")
    for cache in (root / "vectors").glob("*/"):
        problems += _check_vector_cache(cache, dim)
    return problems


def _check_generation(folder: Path) -> list[str]:
    import faiss

    try:
        meta = json.loads((folder / "meta.json").read_text())
        index = faiss.read_index(str(folder / "dense.faiss"))
        db = sqlite3.connect(f"file:{folder / 'docs.sqlite'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT count(*) FROM docs").fetchone()[0]
        finally:
            db.close()
    except Exception as e:  # noqa: BLE001 - any failure to load is what we are looking for
        return [f"index generation {folder.name}: {type(e).__name__}: {e}"]
    if not (index.ntotal == rows == meta.get("count")):
        return [f"index generation {folder.name}: faiss {index.ntotal} rows, sqlite {rows}, meta {meta.get('count')}"]
    return []


def _check_vector_cache(cache: Path, dim: int | None) -> list[str]:
    keys_path, vec_path = cache / "keys.txt", cache / "vectors.f32"
    if not dim or not keys_path.exists():
        return []
    keys = keys_path.read_bytes().split(b"\n")[:-1]
    rows = vec_path.stat().st_size // (4 * dim) if vec_path.exists() else 0
    # Keys are written after their rows: a crash may leave rows without keys, never the reverse.
    return [] if len(keys) <= rows else [f"{cache.name}: {len(keys)} keys but {rows} vector rows"]


def index_rows(root: Path) -> list[tuple[str, list[str], bytes]]:
    """(sha256, paths, vector bytes) of every row of the current index, sorted by sha256."""
    import faiss
    import numpy as np

    folder = root / "index" / (root / "index" / "CURRENT").read_text().strip()
    index = faiss.read_index(str(folder / "dense.faiss"))
    vectors = index.reconstruct_n(0, index.ntotal) if index.ntotal else np.zeros((0, index.d), np.float32)
    db = sqlite3.connect(f"file:{folder / 'docs.sqlite'}?mode=ro", uri=True)
    try:
        docs = db.execute("SELECT row, sha256, paths FROM docs ORDER BY row").fetchall()
    finally:
        db.close()
    rows = [(sha, json.loads(paths), np.round(vectors[row], 5).tobytes()) for row, sha, paths in docs]
    return sorted(rows)


def seed_query_encoder(ws_root: Path) -> None:
    """Make sure the default model's encoder is ready before a test that is about something else.

    The default model needs no export in `ws_root` (once, the first `imgrag embed` of a
    workspace exported it): its ONNX graph is built once per user
    (imgrag.index.default_model), safely from several processes at once."""
    from imgrag.index import default_model

    default_model.encoder_folder()


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def draw_png_bomb(path: Path, side: int = 40_000) -> None:
    """A valid PNG header claiming side x side pixels (1.6 gigapixels) over a few bytes of data."""
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def draw_broken(folder: Path) -> dict[str, str]:
    """Files that cannot be described -> the reason the user must read."""
    (folder / "zero.jpg").write_bytes(b"")
    full = draw_photo(folder / "full.jpg", 120).read_bytes()
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    (folder / "full.jpg").unlink()
    (folder / "notes.jpg").write_text("shopping list: eggs, milk\n")
    draw_png_bomb(folder / "bomb.png")
    return {"zero.jpg": "empty file", "truncated.jpg": "truncated", "notes.jpg": "not an image", "bomb.png": "decompression bomb"}
