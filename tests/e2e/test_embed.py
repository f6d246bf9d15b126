"""Incremental embedding through the command: add, change, move, delete, model change, status.

In process (the model loads once per test process); what needs no model (status,
nothing-new embeds, format checks) is also checked through the library functions. Which
modules a fresh process imports to encode a few new texts is checked in a real process."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from conftest import SCENES, built_once, copy_tree, draw_scene, invoke, scene_catalog, user_env
from imgrag.cli.render import status_text
from imgrag.errors import UsageError
from imgrag.index.build import run_embed
from imgrag.index.embedding import DEFAULT_MODEL, load_model, load_sentence_transformer
from imgrag.index.generations import open_generation
from imgrag.status import Status, collect_status, next_step
from imgrag.store.workspace import Workspace
from reliability_support import seed_query_encoder
from standin_vlm import StandinVLM


def index_rows(ws: Path) -> dict[str, list[str]]:
    """sha256 -> paths of the rows in the current index generation."""
    gen = (ws / "index" / "CURRENT").read_text().strip()
    db = sqlite3.connect(ws / "index" / gen / "docs.sqlite")
    try:
        return {sha: json.loads(paths) for sha, paths in db.execute("SELECT sha256, paths FROM docs ORDER BY row")}
    finally:
        db.close()


def index_paths(ws: Path) -> list[str]:
    return sorted(p for paths in index_rows(ws).values() for p in paths)


def index_captions(ws: Path) -> dict[str, str]:
    gen = (ws / "index" / "CURRENT").read_text().strip()
    db = sqlite3.connect(ws / "index" / gen / "docs.sqlite")
    try:
        return {json.loads(paths)[0]: caption for paths, caption in db.execute("SELECT paths, caption FROM docs")}
    finally:
        db.close()


def dense_file(ws: Path) -> Path:
    return ws / "index" / (ws / "index" / "CURRENT").read_text().strip() / "dense.faiss"


def cached_rows(ws: Path) -> int:
    [folder] = (ws / "vectors").iterdir()
    return len((folder / "keys.txt").read_text().splitlines())


def status(cwd: Path, env: dict, *args: str) -> dict:
    r = invoke("status", *args, "--json", cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    return json.loads(r.stdout)


def state(ws: Path, photos: Path | None = None) -> Status:
    """`imgrag status`, in process (cheap: no model, no subprocess)."""
    return collect_status(Workspace(ws), photos)


def embed(cwd: Path, env: dict, *args: str) -> str:
    r = invoke("embed", *args, cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    return r.stderr


def build_indexed(base: Path) -> None:
    """4 photos described (stand-in) and indexed by `imgrag index`."""
    for name in SCENES:
        draw_scene(base / "photos" / f"{name}.jpg", name, quality=92)
    seed_query_encoder(base / ".imgrag")  # the query-encoder export is not what these tests are about
    with StandinVLM(catalog=scene_catalog(base.parent / f"{base.name}-refs")) as server:
        r = invoke("index", base / "photos", cwd=base, env={**user_env(GROQ_API_KEY="test-key-123", NO_COLOR="1"),
                                                             "IMGRAG_BASE_URL": server.url})
    assert r.code == 0 and "indexed 4 of 4 photos (4 embedded now, 0 from cache)" in r.stderr, r.stderr


@pytest.fixture
def indexed(tmp_path_factory, tmp_path, standin):
    """A private copy of a folder indexed once per session (the whole tree moves: paths
    inside are relative), pointed at this test's stand-in."""
    base = copy_tree(built_once(tmp_path_factory, "embed-indexed", build_indexed), tmp_path / "home")
    return base, base / "photos", user_env(GROQ_API_KEY="test-key-123", NO_COLOR="1", IMGRAG_BASE_URL=standin.url)


def test_add_change_move_delete_through_the_cli(indexed):
    cwd, photos, env = indexed
    ws = cwd / ".imgrag"
    after = status(cwd, env)  # found from the current directory, like search
    assert (after["photos"], after["described"], after["failed"], after["embedded"], after["index_size"]) == (4, 4, 0, 4, 4)
    assert after["index_type"] == "flat" and after["embed_model"] == "all-MiniLM-L6-v2"
    assert len(after["embed_fingerprint"]) == 16 and after["dim"] == 384
    assert after["next"] == "nothing (up to date)" and after["index_up_to_date"]
    manifest = json.loads((ws / "manifest.json").read_text())
    assert manifest["embedding"] == {"model": "all-MiniLM-L6-v2", "fingerprint": after["embed_fingerprint"], "dim": 384}
    assert manifest["format"] >= 1

    # Move one photo into a subfolder and delete two: nothing is encoded; the moved photo
    # keeps its row and vector, the deleted ones leave the index.
    (photos / "2024").mkdir()
    shutil.move(photos / "kitchen.jpg", photos / "2024" / "kettle.jpg")
    (photos / "stop_sign.jpg").unlink()
    (photos / "birthday.jpg").unlink()
    assert state(ws).next_embed == 0 and not state(ws).index_up_to_date
    assert f"indexed 2 of 2 photos (0 embedded now, 2 from cache); exact index written in {ws}\n" in embed(cwd, env)
    assert index_paths(ws) == ["photos/2024/kettle.jpg", "photos/beach_dog.jpg"]

    # Change one photo (new content under an old name) and add two: a new picture of a stop
    # sign, and the deleted birthday photo back as a copy elsewhere (its description and
    # vector are reused). Two texts are new.
    Image.new("RGB", (320, 240), (20, 160, 40)).save(photos / "beach_dog.jpg", quality=92)
    draw_scene(photos / "new" / "stop.jpg", "stop_sign", size=(600, 450), quality=90)
    draw_scene(photos / "old" / "party.jpg", "birthday", quality=92)
    now = state(ws)
    assert (now.photos, now.described, now.next_describe, now.next_embed) == (4, 2, 2, 0)
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    assert state(ws).next_embed == 2
    assert "indexed 4 of 4 photos (2 embedded now, 2 from cache)" in embed(cwd, env)
    assert index_paths(ws) == ["photos/2024/kettle.jpg", "photos/beach_dog.jpg", "photos/new/stop.jpg", "photos/old/party.jpg"]
    assert cached_rows(ws) == 6
    assert "green" in index_captions(ws)["photos/beach_dog.jpg"].lower()

    text = invoke("status", cwd=cwd, env=env)
    assert text.code == 0 and "embedded:     4" in text.stdout and "next run would: nothing (up to date)" in text.stdout


def test_nothing_new_never_loads_the_model(indexed):
    cwd, photos, _env = indexed
    calls = load_model.cache_info()
    generation = (cwd / ".imgrag" / "index" / "CURRENT").read_text()
    summary = run_embed(photos, DEFAULT_MODEL, index=cwd / ".imgrag")
    assert (summary.encoded, summary.cached, summary.rebuilt_index) == (0, 4, False)
    assert load_model.cache_info() == calls, "the model was asked for"
    assert (cwd / ".imgrag" / "index" / "CURRENT").read_text() == generation

    # A moved photo: a new generation whose vectors file is the previous one's (hard link).
    old_dense = dense_file(cwd / ".imgrag")
    shutil.move(photos / "kitchen.jpg", photos / "kettle.jpg")
    summary = run_embed(photos, DEFAULT_MODEL, index=cwd / ".imgrag")
    assert summary.rebuilt_index and summary.encoded == 0 and load_model.cache_info() == calls
    assert os.stat(dense_file(cwd / ".imgrag")).st_ino == os.stat(old_dense).st_ino

    # An index of an older format is rebuilt from the cache, still without the model.
    meta_path = dense_file(cwd / ".imgrag").parent / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "format": 1}))
    summary = run_embed(photos, DEFAULT_MODEL, index=cwd / ".imgrag")
    assert summary.rebuilt_index and summary.encoded == 0 and load_model.cache_info() == calls
    assert open_generation(Workspace(cwd / ".imgrag")).size == 4

    # An index written before generations held crowding and the visible-text index (its
    # signature was made without GENERATION_CONTENTS) gains them, again without the model.
    folder = dense_file(cwd / ".imgrag").parent
    (folder / "crowding.npy").unlink()
    shutil.rmtree(folder / "visible-text", ignore_errors=True)
    meta_path = folder / "meta.json"
    meta_path.write_text(json.dumps({**json.loads(meta_path.read_text()), "signature": "from an older imgrag"}))
    summary = run_embed(photos, DEFAULT_MODEL, index=cwd / ".imgrag")
    assert summary.rebuilt_index and summary.encoded == 0 and load_model.cache_info() == calls
    assert open_generation(Workspace(cwd / ".imgrag")).crowding is not None


def test_a_few_new_texts_are_encoded_with_the_verified_export_not_torch(indexed):
    """1% new: the default model encodes them on ONNX Runtime without importing torch; the
    vectors are sentence-transformers' own."""
    cwd, photos, env = indexed
    draw_scene(photos / "new" / "stop.jpg", "stop_sign", size=(600, 450), quality=90)
    Image.new("RGB", (320, 240), (20, 160, 40)).save(photos / "new" / "green.jpg", quality=92)
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    probe = (
        "import sys, json; from pathlib import Path; from imgrag.index.build import run_embed; "
        f"s = run_embed(Path({str(photos)!r}), 'all-MiniLM-L6-v2'); "
        "print(json.dumps([s.encoded, 'torch' in sys.modules, 'sentence_transformers' in sys.modules]))"
    )
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[-1]) == [2, False, False]  # two new texts, no torch

    from imgrag.describe.schema import embedding_text
    from imgrag.index.embedding import VectorCache, text_key

    ws = Workspace(cwd / ".imgrag")
    manifest = ws.read_manifest()["embedding"]
    [folder] = (cwd / ".imgrag" / "vectors").iterdir()
    cache = VectorCache(folder, manifest["dim"], manifest["fingerprint"])
    records = [json.loads(line) for line in ws.paths.descriptions.read_text().splitlines()]
    green = next(r for r in records if r["paths"] == ["photos/new/green.jpg"])
    text = embedding_text(green["description"])
    reference = load_sentence_transformer(DEFAULT_MODEL).encode([text])[0]
    assert float(cache.get([text_key(text)])[0] @ reference) >= 0.9999


def test_model_change_and_index_formats_name_the_fix(indexed):
    cwd, photos, env = indexed
    ws = cwd / ".imgrag"
    other = "sentence-transformers/all-MiniLM-L6-v2"  # another name: another model to imgrag

    r = invoke("embed", photos, "--model", other, cwd=cwd, env=env)
    assert r.code == 2 and "imgrag embed --rebuild" in r.stderr and other in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = invoke("embed", photos, "--model", other, "--rebuild", cwd=cwd, env=env)
    assert r.code == 0 and "4 embedded now" in r.stderr, r.stderr
    assert json.loads((ws / "manifest.json").read_text())["embedding"]["model"] == other
    assert len(list((ws / "vectors").iterdir())) == 2  # the first model's vectors stay cached

    r = invoke("search", "dog", cwd=cwd, env={**env, "IMGRAG_EMBED_MODEL": "all-MiniLM-L6-v2"})
    assert r.code == 2 and "imgrag embed --rebuild" in r.stderr and other in r.stderr

    meta_path = dense_file(ws).parent / "meta.json"
    meta = json.loads(meta_path.read_text())
    for fmt, words in ((99, "newer imgrag"), (1, "older format")):
        meta_path.write_text(json.dumps({**meta, "format": fmt}))
        with pytest.raises(UsageError, match=f"{words}.*imgrag embed --rebuild"):
            open_generation(Workspace(ws))
    meta_path.write_text(json.dumps({**meta, "format": 99}))
    r = invoke("search", "dog", cwd=cwd, env=env)
    assert r.code == 2 and "newer imgrag" in r.stderr and "imgrag embed --rebuild" in r.stderr, r.stderr


def test_status_counts_failures_until_described(home, standin):
    cwd, photos, env = home
    ws = cwd / ".imgrag"
    before = state(ws, photos)
    assert (before.exists, before.photos, before.described, next_step(before)) == (False, 4, 0, "describe 4")
    standin.enqueue("400")  # one photo is refused
    r = invoke("describe", photos, "--jobs", "1", cwd=cwd, env=env)
    assert r.code == 1, r.stderr
    now = state(ws, photos)
    assert (now.photos, now.described, now.failed, now.next_embed) == (4, 3, 1, 3)
    assert next_step(now) == "describe 1 (1 failed before), embed 3"
    assert "failed:       1" in status_text(now) and "next run would: describe 1" in status_text(now)
