"""Bad input, end to end through the command (in process; permissions in a real process run
without root's powers): every odd file, name, link and state file gets one clear line and
the right exit code, and nothing already written is lost."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import IMGRAG, invoke, require
from reliability_support import (
    TRACEBACK,
    check_readable,
    draw_broken,
    draw_photo,
    draw_photos,
    seed_query_encoder,
)
from reliability_support import jsonl_lines as _jsonl

# Valid UTF-8 oddities and a Latin-1 byte (what old drives and zip files hold).
ODD_NAMES = ["with space.jpg", "new\nline.jpg", "emoji \U0001F436 dog.jpg", os.fsdecode(b"latin1 caf\xe9.jpg")]


def _odd_but_valid(folder: Path) -> list[Path]:
    """Photos that look unusual but are fine: each must be described."""
    made = [draw_photo(folder / name, 100 + i) for i, name in enumerate(ODD_NAMES)]
    deep = Image.linear_gradient("L").resize((200, 120)).convert("I")
    deep.point(lambda v: v * 257).convert("I;16").save(folder / "deep16.png")
    Image.open(draw_photo(folder / "src_cmyk.jpg", 110)).convert("CMYK").save(folder / "cmyk.jpg")
    (folder / "src_cmyk.jpg").unlink()
    frames = [Image.new("RGB", (80, 60), c) for c in ("red", "green", "blue")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    made += [folder / "deep16.png", folder / "cmyk.jpg", folder / "anim.gif"]
    import pillow_heif  # a dependency: HEIC photos are read and written with it

    pillow_heif.from_pillow(Image.open(draw_photo(folder / "heic_src.png", 111, fmt="PNG"))).save(folder / "phone.heic")
    (folder / "heic_src.png").unlink()
    made.append(folder / "phone.heic")
    return made


def _links(folder: Path, outside: Path) -> dict[str, str]:
    (folder / "loop").symlink_to("loop")  # a link to itself
    (folder / "sub").mkdir()
    (folder / "sub" / "up").symlink_to("..", target_is_directory=True)  # a cycle back to the root
    draw_photo(outside / "secret.jpg", 130)
    (folder / "escape.jpg").symlink_to(outside / "secret.jpg")
    (folder / "escape_dir").symlink_to(outside, target_is_directory=True)
    return {"loop": "symlink loop", "sub/up": "symlink loop", "escape.jpg": "outside", "escape_dir": "outside"}


def test_a_folder_of_bad_and_odd_files(home, standin, tmp_path):
    cwd, photos, env = home
    good = draw_photos(photos, 2) + _odd_but_valid(photos)
    broken = draw_broken(photos)
    outside = tmp_path / "outside"
    links = _links(photos, outside)

    r = invoke("describe", photos, "--jobs", "2", cwd=cwd, env=env)
    assert r.code == 1, r.stderr  # some photos failed: exit 1, not a crash
    assert TRACEBACK not in r.stderr and r.stdout == "", r.stderr
    for name, reason in {**broken, **links}.items():
        line = next((ln for ln in r.stderr.splitlines() if name in ln), None)
        assert line is not None and reason in line, f"no clear line for {name}: {r.stderr}"
    ws = cwd / ".imgrag"
    records, torn = _jsonl(ws / "descriptions.jsonl")
    described = {p for rec in records for p in rec["paths"]}
    expected = {os.path.relpath(p, cwd) for p in good} | {"photos/" + n for n in ("beach_dog.jpg", "kitchen.jpg", "stop_sign.jpg", "birthday.jpg")}
    assert described == expected and not torn
    failures, _ = _jsonl(ws / "failures.jsonl")
    assert {rec["paths"][0].removeprefix("photos/") for rec in failures} == set(broken)
    assert not any("secret" in json.dumps(q["body"]) for q in standin.requests)
    assert len(standin.requests) == len(expected), "only good photos cost a request"

    # A second run asks for nothing new and damages nothing.
    before = (ws / "descriptions.jsonl").read_bytes()
    again = invoke("describe", photos, cwd=cwd, env=env)
    assert again.code == 1 and TRACEBACK not in again.stderr
    assert (ws / "descriptions.jsonl").read_bytes() == before
    assert len(standin.requests) == len(expected)
    assert check_readable(ws) == []



def _embed_and_search(cwd: Path, query: str, capsys) -> tuple[list, str, str]:
    """embed cwd/photos + search in this process (the model loads once per test worker), then
    both output formats as the CLI prints them: (hits, --json text, table text)."""
    from imgrag.cli import render
    from imgrag.search.ranking import SearchOptions
    from imgrag.search.searcher import run_search

    _in_process_embed(cwd)
    hits = run_search(query, index=cwd / ".imgrag", embed_model=None, options=SearchOptions(limit=50))
    capsys.readouterr()
    print(render.hits_json(query, hits))
    as_json = capsys.readouterr().out
    render.hits_table(hits)
    return hits, as_json, capsys.readouterr().out


def _rename_scenes(photos: Path, names: dict[str, str]) -> None:
    """Give the stand-in's known scenes odd file names, so a search can find each by content."""
    for scene, name in names.items():
        (photos / f"{scene}.jpg").rename(photos / name)


def test_odd_file_names_through_embed_and_search(home, capsys):
    cwd, photos, env = home
    names = {"beach_dog": "with space.jpg", "kitchen": "emoji \U0001F436 dog.jpg", "stop_sign": "tab\there.jpg"}
    _rename_scenes(photos, names)
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    hits, as_json, table = _embed_and_search(cwd, "dog on the beach", capsys)
    assert json.loads(as_json)["results"][0]["path"] == str(photos / "with space.jpg")
    assert table.splitlines()[0].split("\t")[2] == str(photos / "with space.jpg")
    assert len(table.splitlines()) == len(hits)
    from imgrag.search.ranking import SearchOptions
    from imgrag.search.searcher import run_search

    top = run_search("kettle on the stove", index=cwd / ".imgrag", embed_model=None, options=SearchOptions(limit=1))
    assert top[0].path == str(photos / "emoji \U0001F436 dog.jpg") and Path(top[0].path).exists()


def test_newline_in_a_file_name_keeps_one_line_per_hit(home, capsys):
    cwd, photos, env = home
    _rename_scenes(photos, {"beach_dog": "new\nline.jpg"})
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    hits, as_json, table = _embed_and_search(cwd, "dog on the beach", capsys)
    assert json.loads(as_json)["results"][0]["path"] == str(photos / "new\nline.jpg")
    assert len(table.splitlines()) == len(hits)


def test_non_utf8_file_name_through_embed_and_search(home, capsys):
    cwd, photos, env = home
    name = os.fsdecode(b"latin1 caf\xe9.jpg")
    _rename_scenes(photos, {"beach_dog": name})
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    hits, as_json, table = _embed_and_search(cwd, "dog on the beach", capsys)
    assert hits[0].path == str(photos / name)
    assert "latin1 caf" in as_json and "latin1 caf" in table


def test_permission_denied_files_and_folders(home, standin):
    """Unreadable files and folders are skipped with a line each, the rest is described.
    Root reads everything, so as root the CLI runs without the capabilities that bypass
    file permissions (setpriv), as an ordinary cron job would."""
    import subprocess

    cwd, photos, env = home
    draw_photo(photos / "private.jpg", 50).chmod(0)
    draw_photo(photos / "locked" / "inside.jpg", 51)
    (photos / "locked").chmod(0)
    prefix: list[str] = []
    if os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        prefix = [require("setpriv"), f"--inh-caps={caps}", f"--bounding-set={caps}", "--"]
    try:
        proc = subprocess.run([*prefix, str(IMGRAG), "describe", str(photos)], cwd=cwd, env=env,
                              capture_output=True, text=True, timeout=120, check=False)
    finally:
        (photos / "locked").chmod(0o755)
    assert TRACEBACK not in proc.stderr and proc.returncode == 0, proc.stderr
    for name in ("private.jpg", "locked"):
        assert any(name in ln and "permission denied" in ln for ln in proc.stderr.splitlines()), proc.stderr
    records, _ = _jsonl(cwd / ".imgrag" / "descriptions.jsonl")
    assert len(records) == 4 and len(standin.requests) == 4


def test_file_vanishing_between_scan_and_read(home, standin):
    cwd, photos, env = home
    draw_photos(photos, 8)  # sorted between the scenes: stop_sign.jpg is read last
    standin.set_default(latency=0.4)
    doomed = photos / "stop_sign.jpg"

    def delete_after_first_request():
        deadline = time.monotonic() + 60
        while not standin.requests and time.monotonic() < deadline:
            time.sleep(0.01)
        doomed.unlink()

    t = threading.Thread(target=delete_after_first_request)
    t.start()
    r = invoke("describe", photos, "--jobs", "1", cwd=cwd, env=env)
    t.join()
    assert TRACEBACK not in r.stderr
    assert r.code == 1 and any("stop_sign.jpg" in ln and ("not found" in ln or "vanished" in ln)
                               for ln in r.stderr.splitlines()), r.stderr
    records, _ = _jsonl(cwd / ".imgrag" / "descriptions.jsonl")
    assert len(records) == 11


def test_photo_folder_inside_state_folder_is_refused(home):
    cwd, photos, env = home
    assert invoke("describe", photos, "--limit", "1", cwd=cwd, env=env).code == 0
    nested = cwd / ".imgrag" / "photos"
    draw_photos(nested, 1)
    before = {p: p.read_bytes() for p in (cwd / ".imgrag").rglob("*") if p.is_file()}
    r = invoke("describe", nested, cwd=cwd, env=env)
    assert r.code == 2 and ".imgrag" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (cwd / ".imgrag" / ".imgrag").exists()
    assert {p: p.read_bytes() for p in (cwd / ".imgrag").rglob("*") if p.is_file()} == before


def test_corrupted_descriptions_line_is_skipped_and_kept(home, standin):
    cwd, photos, env = home
    assert invoke("describe", photos, "--limit", "2", cwd=cwd, env=env).code == 0
    path = cwd / ".imgrag" / "descriptions.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    damaged = b'{"sha256": "garbage\n'
    path.write_bytes(lines[0] + damaged + lines[1] + b'{"torn": ')
    r = invoke("describe", photos, cwd=cwd, env=env)
    assert r.code == 0 and TRACEBACK not in r.stderr, r.stderr
    assert len(standin.requests) == 4, "the two good records were kept: only two photos asked"
    data = path.read_bytes()
    assert data.startswith(lines[0] + damaged + lines[1]), "nothing the user had is rewritten"
    assert b'{"torn": ' not in data and data.endswith(b"\n")
    assert len(data.splitlines()) == 5


def test_future_manifest_is_refused_untouched(home, standin):
    cwd, photos, env = home
    ws = cwd / ".imgrag"
    ws.mkdir()
    manifest = json.dumps({"format": 99, "roots": ["photos"]}).encode()
    (ws / "manifest.json").write_bytes(manifest)
    for cmd in (["describe", photos], ["embed", photos]):
        r = invoke(*cmd, cwd=cwd, env=env)
        assert r.code == 2 and "newer imgrag" in r.stderr and TRACEBACK not in r.stderr, r.stderr
    assert (ws / "manifest.json").read_bytes() == manifest
    assert not standin.requests and not (ws / "descriptions.jsonl").exists()


@pytest.fixture(scope="module")
def built_index(tmp_path_factory):
    """A described and embedded folder, made once; tests copy it before damaging it."""
    from conftest import SCENES, draw_scene, scene_catalog
    from reliability_support import clean_env
    from standin_vlm import StandinVLM

    base = tmp_path_factory.mktemp("built")
    photos = base / "photos"
    for name in SCENES:
        draw_scene(photos / f"{name}.jpg", name, quality=92)
    with StandinVLM(catalog=scene_catalog(tmp_path_factory.mktemp("refs"))) as server:
        env = clean_env(server.url)
        assert invoke("describe", photos, cwd=base, env=env).code == 0
    _in_process_embed(base)
    return base, env


def _in_process_embed(base: Path, rebuild: bool = False) -> None:
    from imgrag.config import DEFAULT_EMBED_MODEL
    from imgrag.index.build import run_embed

    seed_query_encoder(base / ".imgrag")
    run_embed(base / "photos", DEFAULT_EMBED_MODEL, index=base / ".imgrag", rebuild=rebuild)


def _in_process_search(base: Path, query: str) -> list:
    from imgrag.search.ranking import SearchOptions
    from imgrag.search.searcher import run_search

    return run_search(query, index=base / ".imgrag", embed_model=None, options=SearchOptions(limit=3))


@pytest.mark.parametrize("damage", ["missing", "truncated", "current_dangling", "meta_garbage"])
def test_missing_or_truncated_index(built_index, tmp_path, damage):
    import shutil

    base = tmp_path / "copy"
    shutil.copytree(built_index[0], base, symlinks=True)
    env = built_index[1]
    index_dir = base / ".imgrag" / "index"
    gen = index_dir / (index_dir / "CURRENT").read_text().strip()
    if damage == "missing":
        (gen / "dense.faiss").unlink()
    elif damage == "truncated":
        data = (gen / "dense.faiss").read_bytes()
        (gen / "dense.faiss").write_bytes(data[: len(data) // 3])
    elif damage == "meta_garbage":
        (gen / "meta.json").write_bytes(b"\x00\x01 not json")
    else:
        (index_dir / "CURRENT").write_text("deadbeef")
    r = invoke("search", "dog", cwd=base, env=env)
    assert r.code == 2 and TRACEBACK not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "imgrag embed --rebuild" in r.stderr
    _in_process_embed(base, rebuild=True)  # what the message says to run repairs it
    assert _in_process_search(base, "dog on the beach")[0].path.endswith("beach_dog.jpg")


def test_empty_and_huge_queries(built_index):
    base, env = built_index
    for query in ("", "   \n\t "):
        r = invoke("search", query, cwd=base, env=env)
        assert r.code == 2 and "empty" in r.stderr and r.stdout == "" and TRACEBACK not in r.stderr, r.stderr
    huge = ("dog on the beach " * 6100)[:100_000]
    assert _in_process_search(base, huge)[0].path.endswith("beach_dog.jpg")


def test_env_file_with_junk_lines(home, standin):
    cwd, photos, env = home
    key_free = {k: v for k, v in env.items() if k not in ("GROQ_API_KEY", "IMGRAG_BASE_URL")}
    (cwd / ".env").write_bytes(
        b"# settings\n"
        b"this line is junk\n"
        b"=no name\n"
        b"export GROQ_API_KEY='dotenv-key-1'\n"
        b"IMGRAG_BASE_URL=" + standin.url.encode() + b"  # the stand-in\n"
        b"\xff\xfe binary junk \x00\n"
        b"UNTERMINATED=\"oops\n"
    )
    r = invoke("describe", photos, "--limit", "1", cwd=cwd, env=key_free)
    assert r.code == 0 and TRACEBACK not in r.stderr, r.stderr
    assert standin.requests[0]["headers"]["authorization"] == "Bearer dotenv-key-1"
