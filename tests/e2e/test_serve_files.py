"""`imgrag serve` against a hostile photo folder: what it sends as a photo is a regular file
inside the photo folders that still holds the indexed content, typed by that content, in a
sandbox; a symlink planted in place of a photo (to `.env`, the description log, a file
outside the folders, an HTML or SVG page, a FIFO) gets a 404, never the file; a replaced
photo is not sent under its old id, and no thumbnail of the replacement is kept under it.

One library indexed once (the stand-in vision server describes it) and one real `imgrag
serve` (uvicorn on 127.0.0.1) for the module; each test puts the photos back as they were."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from PIL import Image

from conftest import draw_scene
from libraries import described
from serving import Served, start_server

API_KEY = "gsk-test-key-never-served-4b1d"
SECRET = "not a photo of yours 7f3a"


@dataclass
class Library:
    base: Path
    photos: Path
    server: Served
    ids: dict[str, str]  # name under photos/ -> id

    def thumbs(self) -> Path:
        return self.base / ".imgrag" / "thumbs"


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    def draw(photos: Path) -> None:
        draw_scene(photos / "beach_dog.jpg", "beach_dog", quality=92)
        draw_scene(photos / "stop_sign.jpg", "stop_sign", quality=92)
        draw_scene(photos / "misnamed.jpg", "kitchen", format="PNG")  # a PNG named .jpg

    with described(tmp_path_factory, "serve-files", draw, GROQ_API_KEY=API_KEY) as drawn:
        base, photos, root = drawn.base, drawn.photos, drawn.base.parent
        # What a link could reach: the key beside the index, the folder holding .imgrag/, outside it,
        # and pages inside the photo folder that a browser would run on the server's origin.
        (base / ".env").write_text(f"GROQ_API_KEY={API_KEY}\n")
        (base / "notes.txt").write_text(SECRET)
        (root / "outside.txt").write_text(SECRET)
        (photos / "page.html").write_text(f"<script>alert('{SECRET}')</script>")
        (photos / "drawing.svg").write_text(f'<svg xmlns="http://www.w3.org/2000/svg"><script>/*{SECRET}*/</script></svg>')
        os.mkfifo(photos / "pipe.jpg.fifo")
        ids = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in photos.glob("*.jpg")}
        server = start_server(str(photos), cwd=base, env=drawn.env, log=root / "serve.log")
        try:
            yield Library(base, photos, server, ids)
        finally:
            server.stop()


@pytest.fixture(scope="module")
def http(lib):
    with lib.server.client() as c:
        yield c


@contextmanager
def swapped(photo: Path, *, link_to: Path | None = None, content: bytes | None = None) -> Iterator[None]:
    """The photo replaced by a symlink or by other bytes, then written back as it was (a new
    mtime, the same content)."""
    original = photo.read_bytes()
    photo.unlink()
    if link_to is not None:
        photo.symlink_to(link_to)
    else:
        photo.write_bytes(content or b"")
    try:
        yield
    finally:
        photo.unlink()
        photo.write_bytes(original)


def photo_urls(lib: Library, name: str) -> list[str]:
    sha = lib.ids[name]
    return [f"/api/photos/{sha}/file", f"/api/photos/{sha}/thumbnail", f"/api/photos/{sha}/thumbnail?size=512",
            f"/api/photos/{sha}/preview", f"/images/photos/{name}"]


def assert_refused(r: httpx.Response, *reasons: str) -> None:
    assert r.status_code == 404, (r.status_code, r.headers, r.content[:200])
    assert r.headers["content-type"] == "application/json" and r.json()["reason"] in reasons, r.text
    assert r.headers["cache-control"] == "no-store" and "etag" not in r.headers
    for secret in (API_KEY, SECRET, "caption"):
        assert secret not in r.text


def assert_photo_headers(r: httpx.Response) -> None:
    assert r.headers["x-content-type-options"] == "nosniff"
    csp = r.headers["content-security-policy"]
    assert "sandbox" in csp and "default-src 'none'" in csp and "script-src" not in csp


@pytest.mark.parametrize("target, reasons", [
    (".env", ("not allowed",)),  # hidden, and beside .imgrag/: outside the photo folder
    (".imgrag/descriptions.jsonl", ("not allowed",)),
    ("notes.txt", ("not allowed",)),  # in the folder holding .imgrag/, not in the photo folder
    ("../outside.txt", ("not allowed",)),
    ("photos/page.html", ("changed",)),  # inside the photo folder, but not the indexed content
    ("photos/drawing.svg", ("changed",)),
    ("photos/pipe.jpg.fifo", ("not allowed",)),  # would block a naive open() for ever
    ("photos", ("not allowed",)),  # a folder
])
def test_a_symlink_planted_in_place_of_a_photo_is_never_served(lib, http, target, reasons):
    urls = photo_urls(lib, "beach_dog.jpg")
    for url in urls:  # served, and its thumbnails cached, before the link is planted
        assert http.get(url).status_code == 200, url
    with swapped(lib.photos / "beach_dog.jpg", link_to=lib.base / target):
        for url in urls:
            assert_refused(http.get(url), *reasons)
    for url in urls:
        assert http.get(url).status_code == 200, url


def test_a_link_inside_the_photo_folder_to_the_same_photo_is_served(lib, http):
    copy = lib.photos / "copy.jpg"
    shutil.copy(lib.photos / "stop_sign.jpg", copy)
    with swapped(lib.photos / "stop_sign.jpg", link_to=copy):
        r = http.get(f"/api/photos/{lib.ids['stop_sign.jpg']}/file")
        assert r.status_code == 200 and r.content == copy.read_bytes()
    copy.unlink()


def test_photos_are_typed_by_content_and_sandboxed(lib, http):
    sha = lib.ids["misnamed.jpg"]
    r = http.get(f"/api/photos/{sha}/file")
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"  # its name says .jpg
    assert r.content == (lib.photos / "misnamed.jpg").read_bytes()
    assert r.headers["etag"] == f'"{sha}"' and "immutable" in r.headers["cache-control"]
    assert_photo_headers(r)
    r = http.get(f"/api/photos/{lib.ids['beach_dog.jpg']}/file")
    assert r.headers["content-type"] == "image/jpeg" and r.headers["content-length"] == str(len(r.content))
    assert_photo_headers(r)
    for url in (f"/api/photos/{sha}/thumbnail", f"/api/photos/{sha}/preview", "/images/photos/misnamed.jpg"):
        r = http.get(url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("image/"), url
        assert_photo_headers(r)


def test_a_replaced_photo_is_not_served_as_the_old_one_and_comes_back_when_restored(lib, http):
    from imgrag.photos.files import prepare_image

    photo = lib.photos / "beach_dog.jpg"
    sha = lib.ids["beach_dog.jpg"]
    original = photo.read_bytes()
    before = http.get(f"/api/photos/{sha}/file")
    assert before.status_code == 200 and before.headers["etag"] == f'"{sha}"'
    grid = http.get(f"/api/photos/{sha}/thumbnail").content
    for made in lib.thumbs().rglob(f"{sha}-*.jpg"):  # only what is made while it is replaced counts
        if not made.name.endswith("-256.jpg"):
            made.unlink()
    other = io.BytesIO()
    draw_scene(lib.base / "other.jpg", "stop_sign", quality=90)
    other.write((lib.base / "other.jpg").read_bytes())
    with swapped(photo, content=other.getvalue()):
        for url in photo_urls(lib, "beach_dog.jpg"):
            assert_refused(http.get(url), "changed")
        cached = http.get(f"/api/photos/{sha}/thumbnail", headers={"If-None-Match": f'"{sha}-256"'})
        assert_refused(cached, "changed")  # not a 304 either: the old content is gone
        assert sorted(p.name for p in lib.thumbs().rglob(f"{sha}-*.jpg")) == [f"{sha}-256.jpg"]
    # Restored (the same bytes, a new mtime): hashed again, served again, thumbnails of the original.
    assert photo.read_bytes() == original
    r = http.get(f"/api/photos/{sha}/file")
    assert r.status_code == 200 and r.content == original and r.headers["etag"] == f'"{sha}"'
    assert http.get(f"/api/photos/{sha}/thumbnail").content == grid
    big = http.get(f"/api/photos/{sha}/thumbnail", params={"size": 512})
    expected = prepare_image(photo, max_side=512, max_base64_bytes=1 << 40, quality=80).jpeg
    assert big.status_code == 200 and big.content == expected


def test_only_the_page_sizes_are_made(lib, http):
    sha = lib.ids["stop_sign.jpg"]
    shutil.rmtree(lib.thumbs(), ignore_errors=True)
    got = {}
    for asked in (32, 64, 100, 150, 200, 256, 300, 400, 600, 1024):
        r = http.get(f"/api/photos/{sha}/thumbnail", params={"size": asked})
        assert r.status_code == 200
        got[asked] = (max(Image.open(io.BytesIO(r.content)).size), r.headers["etag"])
    assert {size for size, _ in got.values()} == {96, 256, 512}
    assert got[100] == (96, f'"{sha}-96"') and got[200] == (256, f'"{sha}-256"') and got[1024] == (512, f'"{sha}-512"')
    assert sorted(p.name for p in lib.thumbs().rglob("*.jpg")) == [f"{sha}-{s}.jpg" for s in (256, 512, 96)]
    assert http.get(f"/api/photos/{sha}/thumbnail", params={"size": 2000}).status_code == 400
