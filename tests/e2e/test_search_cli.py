"""`imgrag search` as people and scripts use it, through the command: every output mode
(terminal table with thumbnails, tab-separated, --json, --paths, -0, --queries-from), the
exit codes, the filters (--in, --after/--before) and --like.

They search the drawn library (tests/libraries.py: described by the stand-in vision server
and indexed once per test session), in process; the terminal table runs the real command in
tmux, a real terminal."""

from __future__ import annotations

import json
import os
import re
import shlex

import pytest

from conftest import IMGRAG, draw_scene
from tmux_screen import UPPER_HALF_BLOCK, tmux_screen


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


# -- output modes ------------------------------------------------------------------------


def test_json_document(library):
    r = library.search("dog on the beach", "--json", "--limit", "3", cwd=library.photos / "home")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)  # one document, nothing else on stdout
    assert doc["query"] == "dog on the beach" and doc["count"] == len(doc["results"]) >= 1
    top = doc["results"][0]
    assert set(top) == {"rank", "score", "path", "paths", "caption", "why", "taken", "sha256", "extra"}
    assert set(top["extra"]) == {"dense", "lexical", "visible_text", "crowding"}  # the score's parts
    assert top["rank"] == 1 and top["path"] == library.path("trips/beach_dog.jpg")
    assert top["paths"] == [top["path"]] and re.fullmatch(r"[0-9a-f]{64}", top["sha256"])
    assert top["caption"].startswith("A brown dog") and top["taken"] == "2023-07-14T10:00:00"
    assert "dog" in top["why"] and "beach" in top["why"]
    scores = [h["score"] for h in doc["results"]]
    assert scores == sorted(scores, reverse=True) and [h["rank"] for h in doc["results"]] == list(range(1, len(scores) + 1))


def test_piped_output_is_tab_separated_without_colour_or_thumbnails(library):
    r = library.search("kettle on the stove", env={**library.env, "NO_COLOR": ""})  # colour allowed, but piped
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    rank, score, path, caption = lines[0].split("\t")
    assert rank == "1" and path == library.path("home/kitchen.jpg") and "kettle" in caption
    assert re.fullmatch(r"\d\.\d{3}", score)
    assert all(len(line.split("\t")) == 4 for line in lines)
    assert "\x1b" not in r.stdout and UPPER_HALF_BLOCK not in r.stdout and r.stderr == ""


def test_paths_and_nul_separated(library):
    r = library.search("children with a birthday cake", "--paths", "--limit", "1")
    assert r.code == 0, r.stderr
    assert r.stdout == library.path("home/birthday.jpg") + "\n"

    r = library.search("--like", library.path("trips/beach_dog.jpg"), "-0", "--min-score", "-1")
    assert r.code == 0, r.stderr
    assert r.stdout.endswith("\0") and "\n" not in r.stdout
    paths = r.stdout.split("\0")[:-1]
    # every other photo (the two birthday copies are one), never the photo itself
    assert sorted(paths) == sorted(library.path(p) for p in ("home/birthday.jpg", "home/kitchen.jpg", "trips/stop_sign.jpg"))


def test_queries_from_stdin_and_file(library, tmp_path):
    stdin = ("dog on the beach\n\n   \nred stop sign\nzebra crossing the arctic tundra at night\n"
             "  children   with a birthday cake\n")
    r = library.search("--queries-from", "-", "--limit", "2", stdin=stdin)
    assert r.code == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert [d["query"] for d in docs] == ["dog on the beach", "red stop sign", "zebra crossing the arctic tundra at night",
                                          "children with a birthday cake"]
    assert docs[0]["results"][0]["path"] == library.path("trips/beach_dog.jpg")
    assert docs[1]["results"][0]["path"] == library.path("trips/stop_sign.jpg")
    assert docs[2]["count"] == 0 and docs[2]["results"] == []  # below the default cut-off
    # one result for a photo with two copies: every copy, absolute
    assert docs[3]["results"][0]["paths"] == [library.path("home/birthday.jpg"), library.path("trips/birthday_copy.jpg")]

    # Nothing found for any query: exit 1. (A filter nobody passes: no model is loaded.)
    queries = tmp_path / "queries.txt"
    queries.write_text("dog\nkettle\n")
    r = library.search("--queries-from", str(queries), "--after", "2030-01-01")
    assert r.code == 1
    assert [json.loads(line)["count"] for line in r.stdout.splitlines()] == [0, 0]
    assert "no query found" in one_line(r.stderr)


def test_nothing_found_exit_1(library):
    r = library.search("--like", library.path("home/kitchen.jpg"), "--min-score", "5", "--json")
    assert r.code == 1
    doc = json.loads(r.stdout)
    assert doc["count"] == 0 and doc["query"] is None and doc["like"] == library.path("home/kitchen.jpg")
    assert "no matching photos" in one_line(r.stderr) and "--min-score" in r.stderr

    r = library.search("--like", library.path("home/kitchen.jpg"), "--min-score", "5", "--paths")
    assert r.code == 1 and r.stdout == "" and "no matching photos" in one_line(r.stderr)


# -- filters and --like --------------------------------------------------------------------


def like_paths(library, *args: str) -> tuple[int, list[str]]:
    """Every photo like kitchen.jpg that passes `args` (no cut-off), as paths under photos/."""
    r = library.search("--like", library.path("home/kitchen.jpg"), "--min-score", "-1", "--json", *args)
    assert r.code in (0, 1), r.stderr
    return r.code, sorted(os.path.relpath(h["path"], library.photos) for h in json.loads(r.stdout)["results"])


def test_filter_in_folder(library):
    # A photo is in a folder when any copy is: the birthday photo's copy is in trips/.
    # The birthday photo is shown at its copy inside trips/ (issue 20).
    assert like_paths(library, "--in", "photos/trips") == (0, ["trips/beach_dog.jpg", "trips/birthday_copy.jpg", "trips/stop_sign.jpg"])
    assert like_paths(library, "--in", str(library.photos / "home")) == (0, ["home/birthday.jpg"])
    # relative to where the command runs, and a folder given as .. or with a trailing slash
    r = library.search("--like", "kitchen.jpg", "--in", "../trips/", "--paths", "--min-score", "-1",
                       cwd=library.photos / "home")
    assert r.code == 0 and sorted(r.stdout.splitlines()) == sorted(
        library.path(p) for p in ("trips/birthday_copy.jpg", "trips/beach_dog.jpg", "trips/stop_sign.jpg"))


def test_filter_dates_exif_then_file_time(library):
    # EXIF time when there is one (kitchen 2024-01-05 08:00 local to the camera, beach_dog
    # 2023-07-14), else file time (stop_sign 2022-03-01, birthday 2024-06-01).
    assert like_paths(library, "--after", "2024-01-01") == (0, ["home/birthday.jpg"])
    assert like_paths(library, "--before", "2023-08") == (0, ["trips/beach_dog.jpg", "trips/stop_sign.jpg"])
    assert like_paths(library, "--after", "2023", "--before", "2024-06-01") == (0, ["trips/beach_dog.jpg"])
    assert like_paths(library, "--after", "2022-03-01T13:00", "--in", "photos/trips") == (
        0, ["trips/beach_dog.jpg", "trips/birthday_copy.jpg"])


def test_text_query_with_filters_keeps_the_limit(library):
    """Filters apply before the cut to --limit: the best photo outside the filter does not
    use up the one place."""
    r = library.search("dog on the beach", "--in", "photos/home", "--limit", "1", "--min-score", "-1", "--json")
    assert r.code == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    assert len(results) == 1 and "/home/" in results[0]["path"]


def test_like_leaves_out_the_photo_and_explains(library):
    r = library.search("--like", library.path("trips/birthday_copy.jpg"), "--json", "--min-score", "-1")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    paths = [h["path"] for h in doc["results"]]
    assert library.path("home/birthday.jpg") not in paths and library.path("trips/birthday_copy.jpg") not in paths
    assert len(paths) == 3 and all(h["why"] for h in doc["results"])


# -- errors: exit 2 and one line -------------------------------------------------------------


@pytest.mark.parametrize("args, message", [
    (["dog", "--like", "x.jpg"], "QUERY and --like cannot be combined"),
    (["dog", "--json", "--paths"], "--json and --paths/-0 cannot be combined"),
    (["--queries-from", "-", "--paths"], "--queries-from prints one JSON line"),
    ([], "say what to look for"),
    (["   "], "the query is empty"),
    (["dog", "--after", "last tuesday"], "--after 'last tuesday' is not a date"),
    (["dog", "--in", "no/such/folder"], "--in no/such/folder: no such folder"),
    (["dog", "--in", "x" * 300], "no such folder inside"),
    (["dog", "--after", "0001-01-01T00:00+14:00"], "--after '0001-01-01T00:00+14:00' is out of range"),
    (["dog", "--before", "9999-12-31T23:59:59-14:00"], "--before '9999-12-31T23:59:59-14:00' is out of range"),
    (["--queries-from", "no-such-file.txt"], "--queries-from no-such-file.txt: No such file"),
])
def test_usage_errors(library, args, message):
    r = library.search(*args)
    assert r.code == 2 and r.stdout == ""
    assert message in one_line(r.stderr)


def test_like_errors(library, tmp_path):
    stranger = draw_scene(tmp_path / "stranger.jpg", "beach_dog", size=(320, 240))
    r = library.search("--like", str(stranger))
    assert r.code == 2 and "is not in the index" in one_line(r.stderr)
    r = library.search("--like", str(tmp_path / "gone.jpg"))
    assert r.code == 2 and "no such photo" in one_line(r.stderr)
    r = library.search("--like", library.path("home/kitchen.jpg"), "--in", str(tmp_path))
    assert r.code == 2 and "no such folder inside" in one_line(r.stderr)


def test_in_that_is_a_symlink_loop_is_one_line(library, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    for folder in (loop, loop / "inside"):
        r = library.search("dog", "--in", str(folder))
        assert r.code == 2 and "no such folder inside" in one_line(r.stderr), r.stderr


# -- thumbnails --------------------------------------------------------------------------


def colours(ansi: str, layer: str) -> list[tuple[int, int, int]]:
    """The 24-bit colours an ANSI text sets, foreground ('38') or background ('48')."""
    return [tuple(map(int, m)) for m in re.findall(layer + r";2;(\d+);(\d+);(\d+)", ansi)]


def test_forced_half_block_thumbnails(library):
    """--thumbnails draws them even piped and with NO_COLOR; IMGRAG_THUMBNAILS picks the kind."""
    env = {**library.env, "IMGRAG_THUMBNAILS": "halfblock", "COLORTERM": "truecolor", "COLUMNS": "160"}
    r = library.search("--like", library.path("home/birthday.jpg"), "--thumbnails", "--min-score", "-1",
                       "--in", "photos/trips", env=env)
    assert r.code == 0, r.stderr
    out = r.stdout
    assert library.path("trips/beach_dog.jpg") in out and library.path("trips/stop_sign.jpg") in out
    # two 4:3 photos, each a block of 12 rows (no screen to fit: the largest) of 32 upper half
    # blocks (top pixel: text colour, bottom pixel: background colour)
    rows = [line for line in out.splitlines() if UPPER_HALF_BLOCK in line]
    assert len(rows) == 2 * 12 and all(line.count(UPPER_HALF_BLOCK) == 32 for line in rows)
    fg, bg = colours(out, "38"), colours(out, "48")
    assert len(fg) >= len(rows) * 32 and len(bg) >= len(rows) * 32
    # the beach photo's sand (240, 220, 160) and the stop sign photo's grey (90, 90, 90) are
    # drawn, up to JPEG noise
    for expected in ((240, 220, 160), (90, 90, 90)):
        assert any(max(abs(a - b) for a, b in zip(c, expected, strict=True)) <= 12 for c in fg + bg), expected

    r = library.search("--like", library.path("home/birthday.jpg"), "--no-thumbnails", "--min-score", "-1", env=env)
    assert r.code == 0 and UPPER_HALF_BLOCK not in r.stdout and "\x1b" not in r.stdout and "\t" in r.stdout

    r = library.search("dog", env={**library.env, "IMGRAG_THUMBNAILS": "pictures"})
    assert r.code == 2 and "IMGRAG_THUMBNAILS" in one_line(r.stderr)


def test_table_with_thumbnails_in_a_real_terminal(library):
    env = {k: v for k, v in library.env.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    search = f"cd {shlex.quote(str(library.base))} && {shlex.quote(str(IMGRAG))} search"
    text, ansi = tmux_screen(f"{search} 'dog on the beach' --limit 2", env)
    assert "Traceback" not in text and "error" not in text
    assert library.path("trips/beach_dog.jpg") in text and "A brown dog" in text
    # tmux draws neither sixels nor kitty graphics: asked, it is found to need half-blocks
    assert UPPER_HALF_BLOCK * 14 in text
    assert re.search(r"\x1b\[[0-9;]*38;", ansi) and re.search(r"\x1b\[[0-9;]*48;", ansi), "thumbnails are in colour"

    # --no-thumbnails, and stdin not a terminal (the terminal cannot be asked): still a table
    text, _ = tmux_screen(f"{search} --like photos/trips/beach_dog.jpg --min-score -1 --no-thumbnails < /dev/null", env)
    assert "Traceback" not in text and UPPER_HALF_BLOCK not in text
    assert library.path("home/kitchen.jpg") in text and "│" in text  # a table, not tab-separated lines

    # thumbnails with stdin not a terminal: half-blocks without asking, no crash
    text, _ = tmux_screen(f"{search} --like photos/trips/beach_dog.jpg --min-score -1 --limit 1 < /dev/null", env)
    assert "Traceback" not in text and UPPER_HALF_BLOCK * 14 in text


