"""What a new user tripped over (issue 20, section 3), each through the `imgrag` command:
the enclosing index found upwards, hints and wording, numbers that agree, a truncated JPEG,
the terminal at 80x24 (tmux), the vision server's URL in messages. In process, but for
the terminal (tmux) and the progress bar (a real process on a real terminal)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import socket

import numpy as np
import pytest

from conftest import IMGRAG, copy_tree, draw_scene, images_sent, invoke, user_env
from libraries import ask_catalog, ask_env
from standin_vlm import StandinVLM
from tmux_screen import tmux_screen

# -- the enclosing index ------------------------------------------------------------------


def test_a_subfolder_uses_the_enclosing_index_and_a_second_one_only_when_asked(home, standin):
    base, photos, env = home
    draw_scene(photos / "trips" / "beach2.jpg", "beach_dog", size=(600, 400), quality=90)
    r = invoke("index", photos, cwd=base, env=env)
    assert r.code == 0, r.stderr
    sent = sum(images_sent(standin).values())
    r = invoke("index", photos / "trips", cwd=base, env=env)
    assert r.code == 0, r.stderr
    assert sum(images_sent(standin).values()) == sent, "nothing described again"
    assert not (photos / ".imgrag").exists(), "no second index beside trips/"
    assert f"using the index in {base / '.imgrag'}" in r.stderr and "--new-index" in r.stderr
    manifest = json.loads((base / ".imgrag" / "manifest.json").read_text())
    assert manifest["roots"] == ["photos"], "trips/ is inside a folder already indexed"
    r = invoke("status", photos / "trips", "--json", cwd=base, env=env)
    doc = json.loads(r.stdout)
    assert doc["workspace"] == str(base / ".imgrag") and doc["photos"] == 5 and doc["files"] == 5
    r = invoke("search", "dog on the beach", "--paths", cwd=photos / "trips", env=env)
    assert r.code == 0 and str(photos / "beach_dog.jpg") in r.stdout, "searches see the whole index"
    # Asked for: an index of trips/ alone, beside it; then found first from inside trips/.
    r = invoke("index", photos / "trips", "--new-index", cwd=base, env=env)
    assert r.code == 0, r.stderr
    assert json.loads((photos / ".imgrag" / "manifest.json").read_text())["roots"] == ["trips"]
    r = invoke("search", "dog on the beach", "--paths", "--all", cwd=photos / "trips", env=env)
    assert r.stdout.splitlines() == [str(photos / "trips" / "beach2.jpg")]
    r = invoke("index", photos / "trips", "--new-index", "--index", base, cwd=base, env=env)
    assert r.code == 2 and "--new-index" in r.stderr


def test_index_naming_a_photo_folder_says_where_its_index_is(home, standin):
    base, photos, env = home
    draw_scene(photos / "trips" / "beach2.jpg", "beach_dog", size=(600, 400), quality=90)
    assert invoke("index", photos, cwd=base, env=env).code == 0
    for folder in (photos, photos / "trips"):
        r = invoke("search", "dog on the beach", "--index", folder, cwd=base, env=env)
        assert r.code == 2 and r.stderr.count("\n") == 1, r.stderr
        assert f"indexed in {base / '.imgrag'} (--index {base})" in r.stderr, r.stderr
    r = invoke("search", "dog on the beach", "--index", base / "elsewhere", cwd=base, env=env)
    assert r.code == 2 and "run `imgrag index PHOTOS` first" in r.stderr


# -- ask ------------------------------------------------------------------------------------


@pytest.fixture
def ask_lib(library_dir, tmp_path):
    """A copy of the ask library and a stand-in that answers from what it is sent."""
    base = copy_tree(library_dir, tmp_path / "lib")
    with StandinVLM(catalog=ask_catalog(tmp_path / "refs")) as server:
        yield base, {**ask_env(), "IMGRAG_BASE_URL": server.url}


def test_ask_suggests_only_flags_it_has_and_piped_citations_end_cleanly(ask_lib):
    base, env = ask_lib
    r = invoke("ask", "quarterly tax spreadsheet with invoice numbers", cwd=base, env=env)
    assert r.code == 1 and "no photo matches the question" in r.stderr
    assert "--all" not in r.stderr and "--min-score 0" in r.stderr
    r = invoke("ask", "a red stop sign at a street corner", cwd=base, env=env)
    assert r.code == 0, r.stderr
    cited = r.stdout.splitlines()[1:]
    assert any(line.split("\t")[1] == str(base / "photos" / "trips" / "stop_sign.jpg") for line in cited), r.stdout
    assert cited and not any(line.endswith("\t") for line in cited), cited


# -- search --in ------------------------------------------------------------------------------


def test_search_in_a_folder_shows_the_copy_inside_it(library):
    """home/birthday.jpg and trips/birthday_copy.jpg are one photo."""
    for folder, shown in (("trips", "trips/birthday_copy.jpg"), ("home", "home/birthday.jpg")):
        r = library.search("children with a birthday cake", "--in", f"photos/{folder}", "--json", "--limit", "1")
        assert r.code == 0, r.stderr
        [hit] = json.loads(r.stdout)["results"]
        assert hit["path"] == library.path(shown) and set(hit["paths"]) == {
            library.path("trips/birthday_copy.jpg"), library.path("home/birthday.jpg")}
        r = library.search("children with a birthday cake", "--in", f"photos/{folder}", "--paths", "--limit", "1")
        assert r.stdout == library.path(shown) + "\n"


def test_imgrag_index_in_dot_env_is_honoured(library, tmp_path):
    """IMGRAG_INDEX written in .env, as .env.example suggests, names the index like --index."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text(f"IMGRAG_INDEX={library.base / '.imgrag'}\n")
    r = library.search("children with a birthday cake", "--paths", "--limit", "1", cwd=elsewhere)
    assert r.code == 0, r.stderr
    assert r.stdout.strip() in {library.path("home/birthday.jpg"), library.path("trips/birthday_copy.jpg")}


# -- a JPEG cut short ------------------------------------------------------------------------


def test_a_jpeg_missing_its_last_rows_is_described_with_a_warning(home, standin):
    from PIL import ImageFile

    base, photos, env = home
    whole = (photos / "stop_sign.jpg").read_bytes()
    # Its last rows are gone (a few: the stand-in, matching by perceptual hash, still knows it).
    (photos / "stop_sign.jpg").write_bytes(whole[: len(whole) * 19 // 20])
    r = invoke("index", photos, cwd=base, env=env)
    assert r.code == 0, r.stderr
    assert "warning: stop_sign.jpg: truncated: its last" in r.stderr.replace("photos/", "")
    assert "described what decodes" in r.stderr and "failed 0" in r.stderr and "quarantined" not in r.stderr
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False, "scoped to that one image, not set for the process"
    r = invoke("search", "a red stop sign at a street corner", "--paths", "--limit", "1", cwd=base, env=env)
    assert r.stdout == f"{photos / 'stop_sign.jpg'}\n", "described as the stop sign it shows"
    # Half a photo is not a photo: still refused, as before.
    (photos / "kitchen.jpg").write_bytes((photos / "kitchen.jpg").read_bytes()[:1000])
    r = invoke("describe", photos, "--force", cwd=base, env=env)
    assert r.code == 1 and "kitchen.jpg: unreadable photo: truncated or corrupt image" in r.stderr


# -- numbers that agree -------------------------------------------------------------------------


def test_failed_and_quarantined_photos_are_named_and_counted_apart(home):
    from serving import in_process, wait_job

    base, photos, env = home
    (photos / "notes.jpg").write_text("shopping list: eggs, milk\n")
    r = invoke("index", photos, cwd=base, env=env)
    assert r.code == 1 and "failed: photos/notes.jpg: unreadable photo: not an image" in r.stderr
    r = invoke("status", photos, cwd=base, env=env)
    assert "failed:       1" in r.stdout and "  photos/notes.jpg: unreadable photo: not an image" in r.stdout, r.stdout
    doc = json.loads(invoke("status", "--json", cwd=base, env=env).stdout)
    assert [(p["path"], p["reason"]) for p in doc["failed_photos"]] == [("photos/notes.jpg", "unreadable photo: not an image")]

    # A page's index job, finished: its counters say what its result says.
    with in_process(photos, cwd=base, env=env) as http:
        job = http.post("/api/jobs", json={"kind": "index"}).json()
        job = wait_job(http, job["id"])
        assert job["state"] == "done" and job["result"]["failed"] == 1 and job["result"]["described"] == 0
        assert (job["done"], job["total"], job["failed"]) == (1, 1, 1), job
        # One job at a time, said in English.
        (photos / "more").mkdir()
        for i in range(3):
            draw_scene(photos / "more" / f"k{i}.jpg", "kitchen", quality=50 + i)
    # Three strikes: quarantined, then neither failed nor "not described yet".
    r = invoke("index", photos, cwd=base, env=env)
    assert "quarantined: photos/notes.jpg" in r.stderr
    r = invoke("embed", photos, cwd=base, env=env)
    assert r.code == 0 and "not described yet" not in r.stderr and "1 quarantined" in r.stderr, r.stderr
    doc = json.loads(invoke("status", "--json", cwd=base, env=env).stdout)
    assert doc["failed"] == 0 and doc["failed_photos"] == [] and doc["quarantined"] == 1


def test_a_second_job_is_refused_in_english(home, standin):
    from serving import in_process, wait_job

    base, photos, env = home
    for i in range(6):
        draw_scene(photos / "more" / f"k{i}.jpg", "kitchen", quality=50 + i)
    standin.set_default(latency=1.0)
    try:
        with in_process(photos, cwd=base, env=env) as http:
            job = http.post("/api/jobs", json={"kind": "index"}).json()
            r = http.post("/api/jobs", json={"kind": "describe"})
            assert r.status_code == 409 and r.json()["error"].startswith("an index job is already running"), r.text
            http.delete(f"/api/jobs/{job['id']}")
            wait_job(http, job["id"])
    finally:
        standin.set_default(latency=0.0)


def test_like_scores_stay_within_0_and_1(home, standin):
    from PIL import Image

    base, photos, env = home
    original = Image.open(photos / "beach_dog.jpg")
    original.save(photos / "beach_dog_q70.jpg", quality=70)  # other bytes, the same picture and description
    assert invoke("index", photos, cwd=base, env=env).code == 0
    doc = json.loads(invoke("search", "--like", photos / "beach_dog.jpg", "--json", "--all", cwd=base, env=env).stdout)
    top = doc["results"][0]
    assert top["path"] == str(photos / "beach_dog_q70.jpg") and top["score"] == 1.0, top
    assert all(0 <= h["score"] <= 1 for h in doc["results"])


# -- messages and wording -------------------------------------------------------------------


def test_an_unreachable_server_from_groq_base_url_is_named_by_its_url(home):
    base, photos, env = home
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    env = {k: v for k, v in env.items() if k != "IMGRAG_BASE_URL"}
    r = invoke("describe", photos, cwd=base, env={**env, "GROQ_BASE_URL": dead, "IMGRAG_MAX_RETRIES": "1"})
    assert r.code == 75, r.stderr
    assert f"cannot connect to {dead}" in r.stderr and "check GROQ_BASE_URL and the network" in r.stderr
    assert "IMGRAG_BASE_URL" not in r.stderr


def test_one_photo_is_one_photo(home):
    base, photos, env = home
    for name in ("kitchen", "stop_sign", "birthday"):
        (photos / f"{name}.jpg").unlink()
    r = invoke("describe", photos, "--dry-run", cwd=base, env=env)
    assert r.code == 0 and "dry run: 1 photo, 0 already described, would describe 1:" in r.stderr, r.stderr


def test_top_level_help_examples_fit_80_columns(tmp_path):
    r = invoke("--help", cwd=tmp_path, env=user_env(COLUMNS="80"))
    lines = r.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    for command, comment in (("imgrag demo", "no network"), ("imgrag index ~/Pictures", "cron"),
                             ('imgrag search "dog on the beach"', "~/Pictures")):
        [line] = [line for line in lines if command in line]
        assert comment in line, f"the example and its comment on one line: {line!r}"


# -- the stand-in vision server ------------------------------------------------------------------


def same_ups_and_downs(grid: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another grid of grey levels whose rows rise and fall where `grid`'s do: the same dhash
    (which compares neighbours along each row), a different picture (phash far apart)."""
    out = np.zeros_like(grid)
    for i, row in enumerate(grid):
        signs = np.where(np.diff(row) < 0, -1, 1)
        seq = np.concatenate([[0], np.cumsum(signs * rng.integers(15, 60, len(signs)))])
        seq -= seq.min()
        out[i] = 20 + seq * 200 // max(int(seq.max()), 1)
    return out


def test_a_photo_without_a_catalog_entry_gets_a_generic_description(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(48)
    known = rng.integers(20, 236, (8, 9))
    blocks = np.ones((40, 40))
    known_image = Image.fromarray(np.uint8(np.kron(known, blocks))).convert("RGB")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.uint8(np.kron(same_ups_and_downs(known, rng), blocks))).convert("RGB").save(
        photos / "stranger.jpg", quality=90)
    with StandinVLM(catalog=[(known_image, {"caption": "A red fire engine parked outside the station."})]) as server:
        env = user_env(GROQ_API_KEY="test-key-123", IMGRAG_BASE_URL=server.url, NO_COLOR="1")
        r = invoke("describe", photos, cwd=tmp_path, env=env)
    assert r.code == 0, r.stderr
    [record] = [json.loads(line) for line in (tmp_path / ".imgrag" / "descriptions.jsonl").read_text().splitlines()]
    description = record["description"]
    assert "fire engine" not in json.dumps(description)
    assert description["caption"].startswith("a 360x320 image") and description["tags"] == ["unknown"]


# -- an 80x24 terminal (tmux) ---------------------------------------------------------------------


def terminal_env(env: dict) -> dict:
    env = {k: v for k, v in env.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    return {**env, "TERM": "xterm-256color"}


def test_80x24_terminal_keeps_the_notice_on_screen_and_wraps_paths_between_names(library, tmp_path):
    # A deeper folder than a user's ~/Pictures/..., so paths need two lines at 80 columns.
    lib = copy_tree(library.base, tmp_path / "a-library-with-a-long-folder-name" / "for-the-terminal")
    search = f"cd {shlex.quote(str(lib))} && {shlex.quote(str(IMGRAG))} search"
    screen, _ = tmux_screen(f"{search} 'a photo' --all", terminal_env(library.env), lines=24, columns=80)
    assert "Traceback" not in screen
    lines = screen.rstrip("\n").splitlines()  # the last lines are those left on the screen
    assert lines[-1] == "__END__" and re.fullmatch(r"imgrag: \d+ more not shown: --limit \d+ shows them all, "
                                                    r"--no-thumbnails lists them", lines[-2]), screen
    assert all(len(line) <= 80 for line in lines)
    # The text column of the first row: the path's pieces, each ending at a folder's "/".
    cells = [line.split("│")[4].strip() for line in lines if line.count("│") == 5]
    first = cells[: next(i for i, c in enumerate(cells) if c.endswith(".jpg")) + 1]  # its path comes first
    path = "".join(first)
    assert path.startswith(str(lib / "photos")) and path.endswith(".jpg") and len(first) > 1, cells
    assert all(piece.endswith("/") for piece in first[:-1]), f"a path broke inside a name: {first}"


def test_no_sentence_transformers_bar_during_index_on_a_terminal(library, tmp_path):
    lib = copy_tree(library.base, tmp_path / "lib")
    shutil.rmtree(lib / ".imgrag" / "vectors")  # every description is embedded again, by the model itself (torch)
    env = {**terminal_env(library.env), "IMGRAG_QUERY_ENCODER": "torch", "HF_HUB_OFFLINE": "1"}
    screen, _ = tmux_screen(f"cd {shlex.quote(str(lib))} && {shlex.quote(str(IMGRAG))} embed photos", env, lines=24,
                            columns=80)
    assert "imgrag: indexed 4 of 4 photos (4 embedded now" in screen, screen
    assert "Batches" not in screen and "it/s" not in screen and "s/it" not in screen, screen
