"""What a new user tripped over (issue 20, section 3), each through the `imgrag` command:
the enclosing index found upwards, hints and wording, numbers that agree, a truncated JPEG,
the terminal at 80x24 (tmux), the vision server's URL in messages. In process, but for
the terminal (tmux) and the progress bar (a real process on a real terminal)."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import SCENES, copy_tree, draw_scene, images_sent, invoke, user_env
from libraries import ask_catalog, ask_env
from standin_vlm import StandinVLM

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


# -- a JPEG cut short ------------------------------------------------------------------------


def test_a_jpeg_missing_its_last_rows_is_described_with_a_warning(home, standin):
    from PIL import ImageFile

    base, photos, env = home
    whole = (photos / "stop_sign.jpg").read_bytes()
    (photos / "stop_sign.jpg").write_bytes(whole[: len(whole) * 9 // 10])  # its last rows are gone
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
