"""Rough edges a new user hit (issue 12, section 4), each through the `imgrag` command:
an unreachable vision server, photos deleted since the last index, one-line flag errors,
help text, thumbnails, hints that name the real folder, embed and why-line wording.
In process, but for the thumbnails in tmux, a real terminal."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest

from conftest import IMGRAG, SCENES, copy_tree, draw_scene, invoke
from libraries import Library
from tmux_screen import UPPER_HALF_BLOCK, tmux_screen


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def closed_port_url() -> str:
    """A URL on this machine where nothing listens (connection refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- a vision server that cannot be reached ---------------------------------------------


@pytest.mark.parametrize("new_photos", [1, 11])
def test_unreachable_server_is_try_again_later_and_blames_no_photo(tmp_path, new_photos):
    photos = tmp_path / "photos"
    names = list(SCENES)
    for i in range(new_photos):  # distinct bytes: as many photos as files
        draw_scene(photos / f"p{i}.jpg", names[i % len(names)], size=(320 + 8 * i, 240))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))}
    env.update(GROQ_API_KEY="test-key-123", IMGRAG_BASE_URL=closed_port_url(), IMGRAG_MAX_RETRIES="1")
    r = invoke("describe", photos, cwd=tmp_path, env=env)
    assert r.code == 75, r.stderr
    line = one_line(r.stderr)  # the reason, once; no "failed: ..." lines
    assert line.count("cannot connect to") == 1 and "IMGRAG_BASE_URL" in line
    assert "failed 0" in line and f"{new_photos} left" in line and "run again later" in line
    failures = tmp_path / ".imgrag" / "failures.jsonl"
    assert not failures.exists() or failures.read_text() == "", "no photo blamed"


# -- bad flags: one line, naming the flag and what it allows, exit 2 ----------------------


def plain_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))}
    env.update(NO_COLOR="1", COLUMNS="160")
    return env


@pytest.mark.parametrize("args, message", [
    (["describe", "photos", "--jobs", "0"], "--jobs/-j 0: must be from 1 to 64 (see imgrag describe --help)"),
    (["describe", "photos", "--limit", "-1"], "--limit -1: must be at least 0"),
    (["describe"], "missing PHOTOS: imgrag describe [OPTIONS] PHOTOS"),
    (["index", "photos", "-j", "many"], "--jobs/-j 'many': must be a whole number from 1 to 64"),
    (["embed", "--model"], "option '--model' requires an argument (see imgrag embed --help)"),
    (["status", "--json=yes"], "option '--json' does not take a value (see imgrag status --help)"),
    (["search", "dog", "--limit", "0"], "--limit/-n 0: must be at least 1 (see imgrag search --help)"),
    (["search", "dog", "-n", "2.5"], "--limit/-n 2.5: must be a whole number at least 1"),
    (["search", "dog", "--min-score", "high"], "--min-score 'high': must be a number"),
    (["serch", "dog"], "no such command 'serch'; did you mean 'search'"),
    (["bogus"], "no such command 'bogus' (commands: describe, embed, index, status, push, search"),
])
def test_bad_flag_values_are_one_line(tmp_path, args, message):
    r = invoke(*args, cwd=tmp_path, env=plain_env())
    assert r.code == 2 and r.stdout == ""
    line = one_line(r.stderr)
    assert line.startswith("imgrag: error: ") and message in line, line


def registered_commands() -> list[str]:
    from typer.main import get_command

    from imgrag.cli import app

    group = get_command(app)
    return group.list_commands(None)


def test_every_command_answers_an_unknown_flag_in_one_line(tmp_path):
    for name in registered_commands():
        r = invoke(name, "--no-such-flag", cwd=tmp_path, env=plain_env())
        assert r.code == 2, (name, r.stderr)
        assert one_line(r.stderr) == f"imgrag: error: no such option: --no-such-flag (see imgrag {name} --help)"


# -- help: the terminal's width, whole summaries, PHOTOS, the default model and prices ---


def test_help_uses_a_wide_terminal_and_says_everything(tmp_path):
    from imgrag.cli.help_format import HELP_MAX_WIDTH
    from imgrag.config import DEFAULT_GROQ_MODEL, Settings

    r = invoke("--help", cwd=tmp_path, env=plain_env())  # COLUMNS=160
    assert r.code == 0
    lines = r.stdout.splitlines()
    assert max(map(len, lines)) > 90, "wraps at the terminal's width, not at 80"
    commands = lines[lines.index("Commands:") + 1:]
    assert len(commands) == len(registered_commands()) and not any("..." in line for line in commands)
    listed = [line.split()[0] for line in commands if not line.startswith("   ")]
    assert listed[:4] == ["demo", "index", "search", "ask"], "the first run and the everyday commands first"
    assert listed.index("push") > listed.index("status"), "the store's push among the stages, not before search"
    assert any(line.split(None, 1)[1] == "Describe new photos with the vision model into "
               ".imgrag/descriptions.jsonl (resumable)." for line in commands)

    wide = invoke("search", "--help", cwd=tmp_path, env={**plain_env(), "COLUMNS": "400"})
    assert max(map(len, wide.stdout.splitlines())) <= HELP_MAX_WIDTH, "a sensible maximum"

    r = invoke("describe", "--help", cwd=tmp_path, env=plain_env())
    text = " ".join(r.stdout.split())
    assert r.stdout.startswith("Usage: imgrag describe [OPTIONS] PHOTOS\n") and "{" not in r.stdout
    assert DEFAULT_GROQ_MODEL in text
    assert f"${Settings.price_input:.2f} input / ${Settings.price_output:.2f} output per million tokens" in text
    for name in ("embed", "status"):
        r = invoke(name, "--help", cwd=tmp_path, env=plain_env())
        assert r.stdout.startswith(f"Usage: imgrag {name} [OPTIONS] [PHOTOS]\n"), r.stdout


# -- search: photos deleted since the last index; hints that name the real folder -------

@pytest.fixture
def own_library(library, tmp_path) -> Library:
    """A copy of the shared library to change (stored paths are relative: a copy works)."""
    base = copy_tree(library.base, tmp_path / "lib")
    return Library(base, base / "photos", library.env)


def test_search_skips_deleted_photos_and_says_how_to_refresh(own_library):
    lib = own_library
    (lib.photos / "trips" / "stop_sign.jpg").unlink()
    (lib.photos / "home" / "birthday.jpg").unlink()  # its copy trips/birthday_copy.jpg is still there
    like = ["--like", lib.path("trips/beach_dog.jpg"), "--min-score", "-1"]
    r = lib.search(*like, "--json", "--limit", "2")
    assert r.code == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert [h["rank"] for h in results] == [1, 2], "the limit is filled from the next hits"
    assert all(os.path.exists(p) for h in results for p in h["paths"])
    assert {h["path"] for h in results} == {lib.path("home/kitchen.jpg"), lib.path("trips/birthday_copy.jpg")}
    warning = one_line(r.stderr)
    assert "2 indexed photo files are gone from disk" in warning and "out of date" in warning
    command = warning.split("`")[1]
    assert command == f"imgrag embed {lib.photos}", "the real folder, not a placeholder"

    r = lib.search(*like, "--paths")
    assert r.code == 0 and all(os.path.exists(p) for p in r.stdout.splitlines())

    refresh = invoke(*command.split()[1:], cwd=lib.base, env=lib.env)  # nothing to encode: no model load
    assert refresh.code == 0, refresh.stderr
    r = lib.search(*like, "--json")
    assert r.code == 0 and r.stderr == "" and json.loads(r.stdout)["count"] == 2


def test_search_during_the_first_build_says_so_and_names_the_folder(own_library):
    from filelock import FileLock

    lib = own_library
    shutil.rmtree(lib.base / ".imgrag" / "index")  # described, never embedded
    with FileLock(str(lib.base / ".imgrag" / "lock")):  # another run is embedding right now
        r = lib.search("dog")
    assert r.code == 75 and "another imgrag is building it now" in one_line(r.stderr)
    r = lib.search("dog")
    assert r.code == 2 and "PHOTOS" not in r.stderr
    assert one_line(r.stderr).endswith(f"has no search index yet: run `imgrag embed {lib.photos}`")


def test_like_a_file_that_is_not_a_photo(library, tmp_path):
    notes = tmp_path / "notaphoto.jsonl"
    notes.write_text('{"a": 1}\n')
    r = library.search("--like", str(notes))
    assert r.code == 2 and "notaphoto.jsonl: not a photo" in one_line(r.stderr)


# -- wording: copies at the first embed, the why-line of a match by meaning ---------------


def test_embed_counts_copies_of_one_description_as_copies_not_cache(own_library, standin):
    from PIL import Image

    lib = own_library
    original = Image.open(lib.photos / "trips" / "beach_dog.jpg")
    for quality in (70, 80):  # other bytes, the same picture: the vision model says the same
        original.save(lib.photos / "trips" / f"beach_dog_q{quality}.jpg", quality=quality)
    shutil.rmtree(lib.base / ".imgrag" / "vectors")  # nothing embedded yet
    r = invoke("index", lib.photos, cwd=lib.base, env={**lib.env, "IMGRAG_BASE_URL": standin.url})
    assert r.code == 0, r.stderr
    assert "described 2" in r.stderr
    assert "indexed 6 of 6 photos (4 embedded now, 2 share a description with another photo, 0 from cache)" in r.stderr


def test_why_line_of_a_match_by_meaning_adds_to_the_caption(library):
    r = library.search("a puppy playing in the surf", "--json", "--limit", "1", "--min-score", "0")
    assert r.code == 0, r.stderr
    [top] = json.loads(r.stdout)["results"]
    assert top["why"] == "near in meaning, no word in common; objects: dog, beach, sea"


# -- thumbnails in a real terminal: 24-bit colour when tmux has it, one screen by default --


def test_thumbnails_in_tmux_are_truecolor_with_rgb_big_and_fit_one_screen(library):
    import re
    import shlex

    env = {k: v for k, v in library.env.items() if k not in ("NO_COLOR", "COLUMNS", "LINES", "COLORTERM")}
    env["TERM"] = "xterm-256color"
    search = (f"cd {shlex.quote(str(library.base))} && {shlex.quote(str(IMGRAG))} search "
              "--like photos/trips/beach_dog.jpg --min-score -1")  # 3 hits
    rgb = "set -as terminal-features ',*:RGB'\n"  # tmux is told its terminal draws 24-bit colour

    text, ansi = tmux_screen(search, env, lines=30, config=rgb)
    screen = text.splitlines()
    assert "Traceback" not in text and screen.index("__END__") <= 30 - 2, "one screen, room for the prompts"
    assert "1 more not shown" in text and "--limit 3 shows them all" in text
    blocks = [line for line in screen if UPPER_HALF_BLOCK in line]
    assert len(blocks) == 2 * 11, "two thumbnails, as high as the 30 lines allow"
    assert all(line.count(UPPER_HALF_BLOCK) == 29 for line in blocks), "4:3 photos, 29 columns"
    assert re.search(r"\x1b\[[0-9;]*38;2;\d+;\d+;\d+", ansi), "24-bit colour"

    text, ansi = tmux_screen(search, env, lines=30)  # tmux without RGB: 256 colours
    assert re.search(r"\x1b\[[0-9;]*38;5;\d+", ansi) and not re.search(r"38;2;\d+;\d+;\d+", ansi)

    text, _ = tmux_screen(search + " --limit 3", env, lines=30, config=rgb)  # asked for: all, scrolling
    assert "more not shown" not in text
    assert sum(1 for line in text.splitlines() if UPPER_HALF_BLOCK in line) == 3 * 8
