"""The web page of `imgrag serve`, in a real browser: Playwright driving Debian's Chromium
against one real `imgrag serve` (uvicorn on 127.0.0.1, with a token) over a folder that the
first test indexes from the page, through the stand-in vision server; a second, read-only
server is started by the test of that mode. One browser per session; each test gets a
fresh browser context. (The file runs on one worker, in order: pyproject's --dist loadfile.)
A failing test leaves a screenshot of every page it opened in the artifacts folder
(IMGRAG_TEST_ARTIFACTS, else imgrag-test-artifacts in the system's temp folder)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import ExifTags, Image
from playwright import sync_api

from conftest import IMGRAG, SCENES, draw_scene, require, user_env
from reliability_support import seed_query_encoder
from standin_vlm import StandinVLM

expect = sync_api.expect

CHROMIUM = "/usr/bin/chromium"  # Debian's chromium package (.ci/run installs it)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--no-first-run"]
TOKEN = "page-test-token-5f2c"  # the served folder needs it: the login form is tested too
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WAIT_MS = 15_000  # two shared cores: give the page time, but fail long before pytest would hang

# Where each scene lives, and the date its EXIF (or, for kitchen, its file time) gives it.
LAYOUT = {
    "beach_dog": ("trips", "2023:07:14 10:00:00"),
    "stop_sign": ("trips", "2024:05:01 09:00:00"),
    "birthday": ("home", "2022:12:24 16:00:00"),
    "kitchen": ("home", None),
}
KITCHEN_MTIME = time.mktime((2021, 3, 1, 12, 0, 0, 0, 0, -1))
# A description is untrusted text: this one tries to run script if the page ever inserts it as HTML.
MARKUP = '<img src=x onerror="window.__pwned=1">'


def caption(scene: str) -> str:
    return SCENES[scene][2]


# ---- fixtures: stand-in, workspaces, servers, browser ----------------------------------

@pytest.fixture(scope="session")
def standin_server(tmp_path_factory):
    refs = tmp_path_factory.mktemp("page-standin-refs")
    entries = []
    for name, (_, _, cap, objects, phrases) in SCENES.items():
        desc = {"caption": cap, "objects": objects, "search_phrases": phrases}
        if name == "kitchen":
            desc |= {"description": f"A kettle {MARKUP} on a gas stove.", "text": ["<b>HOT</b>", "Gas"]}
        if name == "beach_dog":
            desc |= {"description": "A happy brown dog runs along the wet sand.", "tags": ["summer", "pets"],
                     "people": {"count": 0, "activities": []}, "setting": "sandy beach"}
        entries.append((draw_scene(refs / f"{name}.png", name), desc))
    server = StandinVLM(catalog=entries)
    server.start()
    yield server
    server.stop()


def write_photos(photos: Path) -> None:
    for name, (folder, taken) in LAYOUT.items():
        path = photos / folder / f"{name}.jpg"
        exif = Image.Exif()
        if taken:
            exif.get_ifd(ExifTags.IFD.Exif)[ExifTags.Base.DateTimeOriginal] = taken
        if name == "beach_dog":
            exif[ExifTags.Base.Make] = "Canon"
            exif[ExifTags.Base.Model] = "EOS R5"
            exif.get_ifd(ExifTags.IFD.GPSInfo).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
        draw_scene(path, name, quality=92, exif=exif.tobytes())
    os.utime(photos / "home" / "kitchen.jpg", (KITCHEN_MTIME, KITCHEN_MTIME))


def page_env(standin: StandinVLM, **extra: str) -> dict:
    return user_env(GROQ_API_KEY="test-key-123", IMGRAG_BASE_URL=standin.url, NO_COLOR="1", **extra)


class Served:
    """A real `imgrag serve` subprocess; its stderr is kept for failure messages."""

    def __init__(self, photos: Path, env: dict, *args: str) -> None:
        self.photos = photos
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [str(IMGRAG), "serve", str(photos), "--port", "0", *args],
            cwd=photos.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        found = threading.Event()
        self.url = ""

        def read() -> None:
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r" at (http://\S+/)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        if not found.wait(60) or not self.url:
            self.stop()
            raise AssertionError(f"imgrag serve did not start:\n{''.join(self.log)}")

    def wait_until_loaded(self, headers: dict | None = None) -> None:
        """The index and query encoder load in the background; wait for them so the first
        search in a test is not also the one that pays for loading."""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            status = httpx.get(self.url + "api/status", headers=headers, timeout=10).json()
            if status.get("index_loaded") or not status.get("exists", True) or not status.get("index_size"):
                return
            time.sleep(0.2)
        raise AssertionError(f"the index never loaded:\n{''.join(self.log)}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session")
def served(tmp_path_factory, standin_server):
    """One `imgrag serve` for the whole file, over a folder nobody has indexed yet, with a
    token. The job test (first in this file) indexes it from the page, as a new user would;
    the tests after it search what it built (see `server`)."""
    root = tmp_path_factory.mktemp("page-library")
    photos = root / "photos"
    write_photos(photos)
    served = Served(photos, page_env(standin_server, IMGRAG_SERVE_TOKEN=TOKEN))
    try:
        yield served
    finally:
        served.stop()


@pytest.fixture(scope="session")
def server(served):
    """The served folder, indexed: by the page's job test when it ran first, else here over
    the API (a test run on its own). Embedding loads a model, so this happens once."""
    status = httpx.get(served.url + "api/status", headers=AUTH, timeout=30).json()
    if not status.get("index_size") or not status.get("index_up_to_date"):
        seed_query_encoder(served.photos.parent / ".imgrag")  # see the job test
        job = httpx.post(served.url + "api/jobs", json={"kind": "index"}, headers=AUTH, timeout=30)
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + 180
        while (state := httpx.get(served.url + f"api/jobs/{job.json()['id']}", headers=AUTH).json())["state"] == "running":
            assert time.monotonic() < deadline, f"the index job did not end:\n{''.join(served.log)}"
            time.sleep(0.2)
        assert state["state"] == "done", state
    served.wait_until_loaded(AUTH)
    return served


@pytest.fixture(scope="session")
def browser():
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=require("chromium", CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    # Not pytest's temp folder: it keeps only the last few runs of anyone's tests.
    folder = Path(os.environ.get("IMGRAG_TEST_ARTIFACTS") or Path(tempfile.gettempdir()) / "imgrag-test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def open_page(browser, artifacts, request):
    """open_page(url, **context options) -> a page; on failure each page is screenshotted.
    Script errors on any page fail the test."""
    failed_before = request.session.testsfailed
    opened = []

    def make(url: str, *, logged_in: bool = True, **options):
        """logged_in: the context sends the token as scripts do (Authorization header)."""
        if logged_in:
            options.setdefault("extra_http_headers", AUTH)
        options.setdefault("viewport", {"width": 1280, "height": 800})
        options.setdefault("color_scheme", "light")
        context = browser.new_context(**options)
        context.set_default_timeout(WAIT_MS)
        page = context.new_page()
        page.js_errors = []
        page.on("pageerror", lambda e: page.js_errors.append(str(e)))
        opened.append(page)
        page.goto(url)
        return page

    yield make
    test_failed = request.session.testsfailed > failed_before
    errors = [e for page in opened for e in page.js_errors]
    for i, page in enumerate(opened):
        if test_failed or errors:
            name = re.sub(r"[^\w.-]+", "_", request.node.name)
            shot = artifacts / f"{name}-{i}.png"
            try:
                page.screenshot(path=shot, full_page=True)
                print(f"screenshot: {shot}", file=sys.stderr)
            except sync_api.Error:
                pass
        page.context.close()
    assert not errors, f"script errors on the page: {errors}"


expect.set_options(timeout=WAIT_MS)


def search(page, query: str) -> None:
    box = page.locator("#q")
    box.fill(query)
    box.press("Enter")


def tile_alts(page) -> list[str]:
    return page.locator("#grid .tile img").evaluate_all("imgs => imgs.map(i => i.alt)")


def photo_id(server: Served, scene: str) -> str:
    found = httpx.get(server.url + "api/search", params={"q": SCENES[scene][4][0], "limit": 1}, headers=AUTH).json()
    assert found["results"][0]["caption"] == caption(scene)
    return found["results"][0]["id"]


# ---- first, as a new user: log in, index the folder from the page -------------------------

def log_in(page) -> None:
    login = page.locator("#login")
    expect(login).to_be_visible()
    page.fill("#login-token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(login).to_be_hidden()


def test_login_form_sets_a_cookie_not_a_url(served, open_page):
    page = open_page(served.url, logged_in=False)
    expect(page.locator("#login")).to_be_visible()
    page.fill("#login-token", "wrong-token")
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("not right")
    page.fill("#login-token", TOKEN)
    page.click("#login-form button[type=submit]")
    expect(page.locator("#login")).to_be_hidden()
    expect(page.locator("#status-summary")).to_have_text(re.compile(r"\S"))
    assert TOKEN not in page.url and TOKEN not in page.evaluate("document.cookie")
    cookies = page.context.cookies()
    assert cookies and all(c["httpOnly"] for c in cookies)
    page.reload()  # the cookie keeps the session: no second login
    expect(page.locator("#status-summary")).to_have_text(re.compile(r"\S"))
    expect(page.locator("#login")).to_be_hidden()


def test_index_job_from_the_page_estimate_confirm_progress_cancel_done(served, standin_server, open_page):
    """Runs first: the folder is not indexed yet (see `served`)."""
    page = open_page(served.url, logged_in=False)
    log_in(page)
    status = page.locator("#status")
    expect(status).to_be_visible()  # nothing indexed yet: the page says what to do
    expect(page.locator("#status-next")).to_contain_text("Nothing is indexed here yet")
    search(page, "dog")
    expect(page.locator("#grid .tile")).to_have_count(0)

    # First the dry run: an estimate, and nothing sent to the vision server.
    requests_before = len(standin_server.requests)
    page.click("#job-buttons [data-kind=index]")
    job_text = page.locator("#job-text")
    expect(job_text).to_contain_text("Would describe 4 photos")
    expect(job_text).to_contain_text("tokens")
    expect(job_text).to_contain_text("then embed them")
    expect(job_text).to_contain_text("Nothing has been sent yet")
    assert len(standin_server.requests) == requests_before

    # The query-encoder export is not what this is about (and would cost the job seconds).
    seed_query_encoder(served.photos.parent / ".imgrag")

    # Confirm, watch it run, cancel it.
    standin_server.set_default(latency=1.5)
    try:
        page.click("#job-confirm")
        expect(page.locator("#job-progress")).to_be_visible()
        expect(job_text).to_contain_text(re.compile(r"of 4"))
        page.click("#job-cancel")
        expect(job_text).to_contain_text("Index cancelled", timeout=30_000)
    finally:
        standin_server.set_default(latency=0.0)
    expect(page.locator("#job-buttons [data-kind=index]")).to_be_enabled()

    # Again, to the end; a reload meanwhile finds the running job and follows it.
    page.click("#job-buttons [data-kind=index]")
    expect(page.locator("#job-confirm")).to_be_visible()
    standin_server.set_default(latency=1.0)  # still running when the page is back
    try:
        page.click("#job-confirm")
        expect(page.locator("#job-progress")).to_be_visible()
        page.reload()
        expect(page.locator("#job-progress")).to_be_visible()
        expect(page.locator("#job-buttons [data-kind=index]")).to_be_disabled()
    finally:
        standin_server.set_default(latency=0.0)
    expect(job_text).to_contain_text(re.compile(r"Index done"), timeout=150_000)
    expect(page.locator("#status-summary")).to_have_text("up to date")
    search(page, "red stop sign")
    expect(page.locator("#grid .tile").first.locator("img")).to_have_attribute("alt", caption("stop_sign"))

    # Nothing left to do: the estimate says so, and Cancel leaves it there.
    page.click("#job-buttons [data-kind=embed]")
    expect(job_text).to_contain_text("Nothing to embed: the index is up to date")
    page.click("#job-cancel")
    expect(page.locator("#job")).to_be_hidden()
    expect(page.locator("#job-buttons [data-kind=embed]")).to_be_enabled()


# ---- searching ----------------------------------------------------------------------------

def test_typed_query_puts_the_right_photo_first(server, open_page):
    page = open_page(server.url)
    expect(page.locator("#q")).to_be_focused()  # focused on load
    page.keyboard.type("dog on the beach")
    page.keyboard.press("Enter")
    first = page.locator("#grid .tile").first
    expect(first.locator("img")).to_have_attribute("alt", caption("beach_dog"))
    expect(first.locator(".caption")).to_have_text(caption("beach_dog"))
    expect(first.locator(".score")).to_have_text(re.compile(r"^0\.\d\d$"))
    expect(first.locator("time")).to_have_attribute("datetime", re.compile(r"^2023-07-14T10:00"))
    assert page.evaluate("new URLSearchParams(location.search).get('q')") == "dog on the beach"
    # The thumbnail really loaded (a JPEG from the server, not a broken image).
    expect(first.locator("img")).to_have_js_property("complete", True)
    assert first.locator("img").evaluate("i => i.naturalWidth") > 0


def test_shared_link_restores_query_and_filters(server, open_page):
    page = open_page(server.url + "?q=photo&min_score=0&sort=date&in=photos%2Ftrips")
    expect(page.locator("#q")).to_have_value("photo")
    expect(page.locator("#filters")).to_be_visible()  # active filters are shown, not hidden
    expect(page.locator("#filters [name=in]")).to_have_value("photos/trips")
    expect(page.locator("#filters [name=sort]")).to_have_value("date")
    expect(page.locator("#filters [name=min_score]")).to_have_value("0")
    expect(page.locator("#grid .tile")).to_have_count(2)
    assert tile_alts(page) == [caption("stop_sign"), caption("beach_dog")]  # newest first


def test_filters_sort_and_back_forward(server, open_page):
    page = open_page(server.url + "?q=photo&min_score=0")
    expect(page.locator("#grid .tile")).to_have_count(4)
    relevance = tile_alts(page)

    if page.locator("#filters").is_hidden():
        page.click("#filters-toggle")
    page.select_option("#filters [name=sort]", "date")  # a select applies at once
    expect(page).to_have_url(re.compile(r"sort=date"))
    expect(page.locator("#grid .tile").first.locator("img")).to_have_attribute("alt", caption("stop_sign"))
    assert tile_alts(page) == [caption(s) for s in ("stop_sign", "beach_dog", "birthday", "kitchen")]

    page.fill("#filters [name=after]", "2022-06")
    page.fill("#filters [name=before]", "2024")
    page.fill("#filters [name=in]", "photos/home")
    page.click("#filters button[type=submit]")
    expect(page.locator("#grid .tile")).to_have_count(1)
    assert tile_alts(page) == [caption("birthday")]
    expect(page.locator("#filter-count")).to_have_text("5")  # in, after, before, sort and min_score

    page.go_back()  # the date-sorted list again, and the form says so
    expect(page.locator("#grid .tile")).to_have_count(4)
    expect(page.locator("#filters [name=in]")).to_have_value("")
    expect(page.locator("#filters [name=sort]")).to_have_value("date")
    page.go_back()
    expect(page.locator("#filters [name=sort]")).to_have_value("relevance")
    expect(page.locator("#grid .tile")).to_have_count(4)
    assert tile_alts(page) == relevance
    page.go_forward()
    page.go_forward()
    expect(page.locator("#grid .tile")).to_have_count(1)
    expect(page.locator("#filters [name=after]")).to_have_value("2022-06")


def test_no_results_says_so_and_offers_the_nearest(server, open_page):
    page = open_page(server.url + "?q=zebra+in+the+snow")
    message = page.locator("#message")
    expect(message).to_contain_text("No photos match “zebra in the snow”")
    expect(message).to_contain_text("none stands out as a match for this query")
    expect(page.locator("#grid .tile")).to_have_count(0)
    page.click("#show-nearest")
    expect(page).to_have_url(re.compile(r"min_score=0"))
    expect(page.locator("#grid .tile")).to_have_count(4)


def test_more_results_page_by_page(server, open_page):
    page = open_page("about:blank")
    offsets = []
    page.on("request", lambda r: offsets.append(re.search(r"offset=(\d+)", r.url).group(1)) if "/api/search" in r.url else None)
    page.goto(server.url + "?q=photo&min_score=0&limit=1")
    # One photo a page: the end of the grid is in view, so each next page loads by itself
    # (as on scroll) from next_offset, until the last says there is none.
    expect(page.locator("#grid .tile")).to_have_count(4)
    expect(page.locator("#more")).to_be_hidden()
    assert offsets == ["0", "1", "2", "3"]
    ids = page.locator("#grid .tile").evaluate_all("ts => ts.map(t => t.dataset.id)")
    assert len(set(ids)) == 4
    expect(page.locator("#count")).to_have_text("4 photos for “photo”")


# ---- the detail view -----------------------------------------------------------------------

def test_detail_view_shows_everything_then_more_like_this(server, open_page):
    page = open_page(server.url)
    search(page, "dog on the beach")
    page.locator("#grid .tile").first.click()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    expect(page).to_have_url(re.compile(r"photo=[0-9a-f]{64}"))
    expect(page.locator("#detail-caption")).to_have_text(caption("beach_dog"))
    fields = page.locator("#detail-fields")
    expect(fields).to_contain_text("A happy brown dog runs along the wet sand.")
    expect(fields).to_contain_text("sandy beach")
    for word in ("dog", "beach", "sea", "summer", "pets", "dog running by the ocean"):
        expect(fields.locator(".chips li", has_text=word).first).to_be_visible()
    expect(fields).to_contain_text("Canon EOS R5")
    expect(fields).to_contain_text("48.85833, 2.29444")  # 48°51'30" N, 2°17'40" E
    expect(fields).to_contain_text(re.compile(r"Jul 14, 2023|14 Jul 2023"))
    expect(fields).to_contain_text(re.compile(r"/photos/trips/beach_dog\.jpg"))
    expect(page.locator("#detail-why")).to_contain_text("dog")
    preview = page.locator("#detail-img")
    expect(preview).to_have_attribute("alt", caption("beach_dog"))
    expect(preview).to_have_js_property("complete", True)
    assert preview.evaluate("i => i.naturalWidth") > 0
    original = page.request.get(page.locator("#detail-file").evaluate("a => a.href"))
    assert original.ok and original.body() == (server.photos / "trips" / "beach_dog.jpg").read_bytes()

    page.click("#detail-like")
    expect(detail).to_be_hidden()
    expect(page).to_have_url(re.compile(r"like=[0-9a-f]{64}"))
    expect(page.locator("#like-banner")).to_contain_text(caption("beach_dog"))
    # Four unrelated scenes: nothing is similar enough, so the page offers the nearest.
    expect(page.locator("#message")).to_contain_text("No similar photos")
    page.click("#show-nearest")
    expect(page).to_have_url(re.compile(r"like=[0-9a-f]{64}.*min_score=0|min_score=0.*like="))
    expect(page.locator("#grid .tile")).to_have_count(3)
    alts = tile_alts(page)
    assert alts and caption("beach_dog") not in alts  # the photo itself is left out
    page.go_back()
    page.go_back()  # back to the photo that was open
    expect(detail).to_be_visible()
    expect(page.locator("#detail-caption")).to_have_text(caption("beach_dog"))


def test_description_text_is_never_markup(server, open_page):
    page = open_page(server.url)
    search(page, "kettle on stove")
    page.locator("#grid .tile").first.click()
    fields = page.locator("#detail-fields")
    expect(fields).to_contain_text(MARKUP)  # shown as the text it is
    expect(fields).to_contain_text("<b>HOT</b>")
    assert fields.locator("img, b").count() == 0
    assert page.evaluate("window.__pwned") is None


# ---- keyboard ------------------------------------------------------------------------------

def test_keyboard_slash_arrows_enter_escape(server, open_page):
    page = open_page(server.url + "?q=photo&min_score=0")
    expect(page.locator("#grid .tile")).to_have_count(4)
    page.locator("#grid .tile").nth(2).focus()
    page.keyboard.press("/")
    expect(page.locator("#q")).to_be_focused()
    page.keyboard.press("ArrowDown")  # from the search box into the grid
    tiles = page.locator("#grid .tile")
    expect(tiles.nth(0)).to_be_focused()
    page.keyboard.press("ArrowRight")
    expect(tiles.nth(1)).to_be_focused()
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowLeft")
    expect(tiles.nth(1)).to_be_focused()
    page.keyboard.press("End")
    expect(tiles.nth(3)).to_be_focused()
    page.keyboard.press("Home")
    page.keyboard.press("Enter")
    expect(page.locator("#detail")).to_be_visible()
    first_caption = tile_alts(page)[0]
    expect(page.locator("#detail-caption")).to_have_text(first_caption)
    page.keyboard.press("ArrowRight")  # next photo inside the detail view
    expect(page.locator("#detail-caption")).to_have_text(tile_alts(page)[1])
    page.keyboard.press("Escape")
    expect(page.locator("#detail")).to_be_hidden()
    expect(page).not_to_have_url(re.compile(r"photo="))
    expect(tiles.nth(1)).to_be_focused()  # focus goes back to the photo that was open


def test_arrow_down_moves_a_whole_row(server, open_page):
    page = open_page(server.url + "?q=photo&min_score=0", viewport={"width": 560, "height": 800})
    tiles = page.locator("#grid .tile")
    expect(tiles).to_have_count(4)
    tops = tiles.evaluate_all("ts => ts.map(t => Math.round(t.getBoundingClientRect().top))")
    per_row = tops.count(tops[0])
    assert 1 < per_row < 4
    tiles.nth(0).focus()
    page.keyboard.press("ArrowDown")
    expect(tiles.nth(per_row)).to_be_focused()
    page.keyboard.press("ArrowUp")
    expect(tiles.nth(0)).to_be_focused()


# ---- phone width, light and dark -----------------------------------------------------------

def luminance(css_rgb: str) -> float:
    r, g, b = (int(v) for v in re.findall(r"\d+", css_rgb)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_phone_width_in_dark_mode(server, open_page):
    page = open_page(server.url, viewport={"width": 375, "height": 740}, color_scheme="dark", is_mobile=True, has_touch=True)
    page.goto(server.url + "?q=photo&min_score=0")
    tiles = page.locator("#grid .tile")
    expect(tiles).to_have_count(4)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing sideways
    boxes = [tiles.nth(i).bounding_box() for i in range(4)]
    assert boxes[0]["y"] == boxes[1]["y"] and boxes[2]["y"] > boxes[0]["y"]  # two columns
    assert boxes[0]["width"] >= 140
    assert luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")) < 0.2
    assert luminance(page.evaluate("getComputedStyle(document.querySelector('.caption')).color")) > 0.7
    tiles.nth(0).tap()
    detail = page.locator("#detail")
    expect(detail).to_be_visible()
    box = detail.bounding_box()
    assert box["width"] >= 370  # full screen on a phone
    expect(page.locator("#detail-close")).to_be_in_viewport()
    expect(page.locator("#detail-img")).to_be_in_viewport()
    page.locator("#detail-close").tap()
    expect(detail).to_be_hidden()


def test_desktop_light_mode_is_light(server, open_page):
    page = open_page(server.url + "?q=birthday+cake")
    expect(page.locator("#grid .tile").first).to_be_visible()
    assert luminance(page.evaluate("getComputedStyle(document.body).backgroundColor")) > 0.8
    assert luminance(page.evaluate("getComputedStyle(document.querySelector('.caption')).color")) < 0.3




# ---- errors and a read-only server ---------------------------------------------------------

def test_a_bad_parameter_shows_the_servers_error_line(server, open_page):
    page = open_page(server.url + "?q=dog&after=2024-13-45")
    expect(page.locator("#message .error")).to_contain_text("2024-13-45")
    expect(page.locator("#grid .tile")).to_have_count(0)


def test_read_only_server_searches_but_offers_no_jobs(server, standin_server, open_page):
    read_only = Served(server.photos, page_env(standin_server, IMGRAG_SERVE_TOKEN=TOKEN), "--read-only")
    try:
        read_only.wait_until_loaded(AUTH)
        page = open_page(read_only.url)
        page.click("#status-toggle")
        expect(page.locator("#status-next")).to_contain_text("read-only")
        expect(page.locator("#job-buttons")).to_be_hidden()
        search(page, "red stop sign")
        expect(page.locator("#grid .tile").first.locator("img")).to_have_attribute("alt", caption("stop_sign"))
    finally:
        read_only.stop()


def test_ask_box_streams_an_answer_with_clickable_citations(server, open_page):
    """The Ask box: the answer appears, its [n] are links, a click opens the cited photo."""
    page = open_page(server.url)
    page.fill("#ask-q", "is there a kettle on a gas stove?")
    page.press("#ask-q", "Enter")
    expect(page.locator("#answer-text")).to_contain_text(caption("kitchen"))
    citation = page.locator("#answer-text a.citation")
    expect(citation).to_have_count(1)
    expect(page.locator("#answer-cited li")).to_have_count(1)
    expect(page.locator("#answer-cited img")).to_have_attribute("src", re.compile(r"/api/photos/[0-9a-f]{64}/thumbnail"))
    expect(page.locator("#answer-meta")).to_contain_text("read by")
    citation.click()
    expect(page.locator("#detail")).to_be_visible()
    expect(page.locator("#detail-caption")).to_have_text(caption("kitchen"))
    assert page.evaluate("window.__pwned") is None  # model and description text never became markup

    page.keyboard.press("Escape")
    page.fill("#ask-q", "quarterly tax spreadsheet with invoice numbers")
    page.press("#ask-q", "Enter")  # no photo clears the cut-off: nothing is sent, and the page says so
    expect(page.locator("#answer-meta")).to_contain_text("nothing was sent")
    expect(page.locator("#answer-text a.citation")).to_have_count(0)
    expect(page.locator("#answer-cited li")).to_have_count(0)


# ---- what a new user tripped over (issue 20) ---------------------------------------------------

def test_show_the_nearest_anyway_is_for_that_query_only(server, open_page):
    page = open_page(server.url + "?q=zebra+in+the+snow")
    page.click("#show-nearest")
    expect(page.locator("#grid .tile")).to_have_count(4)
    search(page, "red stop sign")
    expect(page.locator("#grid .tile").first.locator("img")).to_have_attribute("alt", caption("stop_sign"))
    assert "min_score" not in page.url  # the default set again, not every photo
    expect(page.locator("#grid .tile")).to_have_count(1)
    # A minimum score chosen in Filters stays for the next query.
    page.goto(server.url + "?q=red+stop+sign&min_score=0.1")
    search(page, "kettle on stove")
    expect(page).to_have_url(re.compile(r"q=kettle.*min_score=0\.1"))


def test_ask_box_says_which_filters_it_uses(server, open_page):
    page = open_page(server.url + "?q=photo&in=photos%2Fhome&after=2020")
    scope = page.locator("#ask-scope")
    expect(scope).to_be_visible()
    expect(scope).to_contain_text("in photos/home")
    expect(scope).to_contain_text("taken from 2020")
    page.click("#filters-clear")
    expect(scope).to_be_hidden()


def test_an_old_answer_goes_when_another_search_is_shown(server, open_page):
    page = open_page(server.url + "?q=kettle+on+stove")
    page.fill("#ask-q", "is there a kettle on a gas stove?")
    page.press("#ask-q", "Enter")
    expect(page.locator("#answer-text")).to_contain_text(caption("kitchen"))
    page.locator("#answer-text a.citation").click()  # opening a cited photo keeps it
    page.keyboard.press("Escape")
    expect(page.locator("#answer")).to_be_visible()
    search(page, "red stop sign")  # a later search: the answer to the earlier one goes
    expect(page.locator("#grid .tile").first.locator("img")).to_have_attribute("alt", caption("stop_sign"))
    expect(page.locator("#answer")).to_be_hidden()


def run_job(server: Served, kind: str) -> None:
    job = httpx.post(server.url + "api/jobs", json={"kind": kind}, headers=AUTH, timeout=30).json()
    deadline = time.monotonic() + 120
    while httpx.get(server.url + f"api/jobs/{job['id']}", headers=AUTH).json()["state"] == "running":
        assert time.monotonic() < deadline, f"the {kind} job did not end"
        time.sleep(0.2)
    server.wait_until_loaded(AUTH)


def test_phone_width_cited_paths_wrap_and_the_detail_view_steps(server, open_page):
    # A copy of the kitchen photo under names with no place to break a line (no vision request:
    # the same content), asked about within its folder so that the copy there is cited.
    folder = server.photos / "Holidays_2024_Lisbon_Sintra_Cascais_with_the_grandparents"
    folder.mkdir()
    copy = folder / "IMG_20240715_103000123456789_HDR_edited_final.jpg"
    copy.write_bytes((server.photos / "home" / "kitchen.jpg").read_bytes())
    try:
        run_job(server, "embed")
        page = open_page(server.url + f"?in=photos/{folder.name}", viewport={"width": 390, "height": 844},
                         is_mobile=True, has_touch=True)
        page.fill("#ask-q", "is there a kettle on a gas stove?")
        page.press("#ask-q", "Enter")
        expect(page.locator("#answer-cited li")).to_have_count(1)
        expect(page.locator("#answer-cited li")).to_contain_text(str(copy))
        assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sideways
    finally:
        copy.unlink()
        folder.rmdir()
        run_job(server, "embed")

    page.goto(server.url + "?q=photo&min_score=0")
    expect(page.locator("#grid .tile")).to_have_count(4)
    first = tile_alts(page)
    page.locator("#grid .tile").first.tap()
    expect(page.locator("#detail-next")).to_be_visible()
    expect(page.locator("#detail-prev")).to_be_visible()
    page.locator("#detail-next").scroll_into_view_if_needed()
    page.locator("#detail-next").tap()
    expect(page.locator("#detail-caption")).to_have_text(first[1])
    page.locator("#detail-prev").tap()
    expect(page.locator("#detail-caption")).to_have_text(first[0])
    assert page.evaluate("document.documentElement.scrollWidth") <= 390


# Where each line of an element's text starts after the first, and the character before it.
LINE_BREAKS_JS = """el => {
  const breaks = []; let top = null, before = "";
  const walker = document.createTreeWalker(el, NodeFilter.SHOW_TEXT);
  while (walker.nextNode()) {
    const text = walker.currentNode;
    for (let i = 0; i < text.length; i++) {
      const range = document.createRange(); range.setStart(text, i); range.setEnd(text, i + 1);
      const box = range.getClientRects()[0];
      if (!box) continue;
      if (top !== null && box.top > top + 2) breaks.push(before + "|" + text.data.slice(i, i + 12));
      top = box.top; before = text.data[i];
    }
  }
  return breaks;
}"""


def test_wide_detail_view_wraps_a_long_path_between_folder_names(server, open_page):
    folder = server.photos / "Summer holidays in Portugal 2024" / "Lisbon Sintra and Cascais" / "Day 3 the beach at Guincho"
    folder.mkdir(parents=True)
    copy = folder / "IMG_20240715_103000_HDR.jpg"
    copy.write_bytes((server.photos / "home" / "kitchen.jpg").read_bytes())
    try:
        run_job(server, "embed")
        page = open_page(server.url + "?photo=" + photo_id(server, "kitchen"), viewport={"width": 1280, "height": 900})
        path = page.locator("#detail-fields .path", has_text=copy.name)
        expect(path).to_be_visible()
        breaks = path.evaluate(LINE_BREAKS_JS)
        assert breaks, "the path is long enough to wrap at this width"
        assert all(b.startswith("/|") for b in breaks), f"a line broke inside a name: {breaks}"
    finally:
        shutil.rmtree(server.photos / "Summer holidays in Portugal 2024")
        run_job(server, "embed")


def test_status_panel_names_the_photo_that_failed(server, open_page):
    photos = server.photos
    broken = photos / "home" / "notes.jpg"
    broken.write_text("shopping list: eggs, milk\n")
    try:
        run_job(server, "describe")
        page = open_page(server.url)
        page.click("#status-toggle")
        expect(page.locator("#status-failed li")).to_have_count(1)
        expect(page.locator("#status-failed")).to_contain_text("photos/home/notes.jpg: unreadable photo: not an image")
        # The estimate of one photo says "1 photo".
        page.locator("#job-buttons [data-kind=describe]").click()
        expect(page.locator("#job-text")).to_contain_text("Would describe 1 photo:")
        page.click("#job-cancel")
    finally:
        broken.unlink()
