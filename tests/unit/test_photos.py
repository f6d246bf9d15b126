"""Tests for imgrag.photos.files; every fixture is drawn with Pillow in tmp_path."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageDraw, ImageFile
from PIL.TiffImagePlugin import IFDRational

from imgrag.photos import files as photos
from imgrag.photos.files import (
    PHOTO_SUFFIXES,
    PhotoError,
    PhotoMeta,
    PreparedImage,
    Skipped,
    discover,
    file_sha256,
    prepare_image,
    read_metadata,
)

RED = (255, 0, 0)


# --------------------------------------------------------------------------- helpers


def touch_photo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "blue").save(path, format="PNG")
    return path


def exif_with(
    *,
    orientation: int | None = None,
    make: str | None = None,
    model: str | None = None,
    datetime: str | None = None,
    original: str | None = None,
    offset: str | None = None,
    gps: dict | None = None,
) -> Image.Exif:
    exif = Image.Exif()
    base = {
        ExifTags.Base.Orientation: orientation,
        ExifTags.Base.Make: make,
        ExifTags.Base.Model: model,
        ExifTags.Base.DateTime: datetime,
    }
    exif.update({tag: value for tag, value in base.items() if value is not None})
    if original is not None or offset is not None:
        sub = exif.get_ifd(ExifTags.IFD.Exif)
        if original is not None:
            sub[ExifTags.Base.DateTimeOriginal] = original
        if offset is not None:
            sub[ExifTags.Base.OffsetTimeOriginal] = offset
    if gps is not None:
        exif.get_ifd(ExifTags.IFD.GPSInfo).update(gps)
    return exif


def write_jpeg(path: Path, img: Image.Image | None = None, **save_args) -> Path:
    img = img or Image.new("RGB", (40, 30), "green")
    img.save(path, format="JPEG", quality=95, **save_args)
    return path


def marked(size: tuple[int, int]) -> Image.Image:
    """A black image with a red block in its stored top-left corner."""
    img = Image.new("RGB", size, "black")
    ImageDraw.Draw(img).rectangle((0, 0, size[0] // 4, size[1] // 4), fill=RED)
    return img


def decoded(prepared: PreparedImage) -> Image.Image:
    img = Image.open(io.BytesIO(prepared.jpeg))
    img.load()
    return img


def is_red(pixel: tuple[int, int, int]) -> bool:
    r, g, b = pixel
    return r > 200 and g < 60 and b < 60


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a huge size but carries almost no data: a decompression bomb shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    return path


def can_deny_read(path: Path) -> bool:
    """chmod 000 does nothing for root; only run permission tests where it bites."""
    path.chmod(0)
    return not os.access(path, os.R_OK)


# --------------------------------------------------------------------------- discover


def test_suffixes_are_lower_case_set():
    assert PHOTO_SUFFIXES == {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}


def test_discover_recursive_sorted_and_case_insensitive(tmp_path):
    names = ["a.HEIC", "b/a.JpEg", "b/z.PNG", "c/d/e.tif", "m.webp", "n.Gif", "o.bmp", "p.tiff", "q.heif", "r.jpg"]
    for name in reversed(names):
        touch_photo(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "b" / "raw.cr2").write_text("x")
    (tmp_path / "jpg").mkdir()  # a folder named like a suffix is still a folder

    found = [p.relative_to(tmp_path).as_posix() for p in discover(tmp_path)]

    assert found == names


def test_discover_skips_hidden_and_state_folder(tmp_path):
    touch_photo(tmp_path / "keep.jpg")
    touch_photo(tmp_path / ".hidden.jpg")
    touch_photo(tmp_path / ".git" / "x.jpg")
    touch_photo(tmp_path / ".imgrag" / "cache.jpg")
    touch_photo(tmp_path / "sub" / ".imgrag" / "cache.png")
    skipped: list[Skipped] = []

    assert list(discover(tmp_path, on_skip=skipped.append)) == [tmp_path / "keep.jpg"]
    assert skipped == []  # hidden things are silent, not warnings


def test_discover_root_is_a_file(tmp_path):
    photo = touch_photo(tmp_path / "one.PNG")
    text = tmp_path / "one.txt"
    text.write_text("x")
    skipped: list[Skipped] = []

    assert list(discover(photo)) == [photo]
    assert list(discover(touch_photo(tmp_path / ".named-by-user.jpg"))) == [tmp_path / ".named-by-user.jpg"]
    assert list(discover(text, on_skip=skipped.append)) == []
    assert skipped == [Skipped(text, "not a photo")]


def test_discover_missing_root_is_reported_not_raised(tmp_path):
    skipped: list[Skipped] = []
    assert list(discover(tmp_path / "nope", on_skip=skipped.append)) == []
    assert skipped == [Skipped(tmp_path / "nope", "file not found")]


def test_discover_follows_links_inside_root_only(tmp_path):
    root = tmp_path / "root"
    real = touch_photo(root / "real" / "a.jpg")
    outside = touch_photo(tmp_path / "outside" / "b.jpg")
    (root / "link_dir").symlink_to(root / "real", target_is_directory=True)
    (root / "link_file.jpg").symlink_to(real)
    (root / "out_dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    (root / "out_file.jpg").symlink_to(outside)
    (root / "out_text.txt").symlink_to(outside)  # not a photo name: not worth a warning
    (root / "dangling.jpg").symlink_to(root / "gone.jpg")
    skipped: list[Skipped] = []

    found = list(discover(root, on_skip=skipped.append))

    assert found == [root / "link_dir" / "a.jpg", root / "link_file.jpg", root / "real" / "a.jpg"]
    assert skipped == [
        Skipped(root / "dangling.jpg", "broken link"),
        Skipped(root / "out_dir", "link points outside the folder"),
        Skipped(root / "out_file.jpg", "link points outside the folder"),
    ]


def test_discover_never_loops(tmp_path):
    touch_photo(tmp_path / "a" / "p.jpg")
    (tmp_path / "a" / "back").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "a" / "self").symlink_to(tmp_path / "a", target_is_directory=True)
    (tmp_path / "ouroboros.jpg").symlink_to(tmp_path / "ouroboros.jpg")
    skipped: list[Skipped] = []

    found = list(discover(tmp_path, on_skip=skipped.append))

    assert found == [tmp_path / "a" / "p.jpg"]
    assert sorted(s.path.name for s in skipped) == ["back", "ouroboros.jpg", "self"]
    assert {s.reason for s in skipped} == {"symlink loop"}


def test_discover_reports_unreadable_folder(tmp_path):
    touch_photo(tmp_path / "ok.jpg")
    locked = tmp_path / "locked"
    touch_photo(locked / "secret.jpg")
    try:
        if not can_deny_read(locked):
            pytest.skip("running as root: chmod cannot make a folder unreadable")
        skipped: list[Skipped] = []
        assert list(discover(tmp_path, on_skip=skipped.append)) == [tmp_path / "ok.jpg"]
        assert skipped == [Skipped(locked, "permission denied")]
    finally:
        locked.chmod(0o755)


def test_discover_reports_unreadable_file(tmp_path):
    locked = touch_photo(tmp_path / "locked.jpg")
    try:
        if not can_deny_read(locked):
            pytest.skip("running as root: chmod cannot make a file unreadable")
        skipped: list[Skipped] = []
        assert list(discover(tmp_path, on_skip=skipped.append)) == []
        assert skipped == [Skipped(locked, "permission denied")]
    finally:
        locked.chmod(0o644)


def test_discover_handles_odd_names(tmp_path):
    names = ["with space.jpg", "new\nline.png", "emoji 📷.webp", os.fsdecode(b"caf\xe9-latin1.jpg")]
    for name in names:
        touch_photo(tmp_path / name)

    found = list(discover(tmp_path))

    assert sorted(p.name for p in found) == sorted(names)
    assert all(p.exists() for p in found)
    assert os.fsencode(tmp_path / os.fsdecode(b"caf\xe9-latin1.jpg")).endswith(b"caf\xe9-latin1.jpg")


def test_discover_tolerates_files_vanishing_midway(tmp_path):
    touch_photo(tmp_path / "a" / "1.jpg")
    touch_photo(tmp_path / "a" / "2.jpg")
    touch_photo(tmp_path / "b" / "3.jpg")
    skipped: list[Skipped] = []
    walk = discover(tmp_path, on_skip=skipped.append)

    assert next(walk) == tmp_path / "a" / "1.jpg"
    (tmp_path / "a" / "2.jpg").unlink()
    shutil.rmtree(tmp_path / "b")

    assert list(walk) == []
    assert skipped == []


# --------------------------------------------------------------------------- sha256


def test_file_sha256_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom((1 << 20) * 2 + 123)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_file_sha256_errors(tmp_path):
    with pytest.raises(PhotoError, match="^file not found$"):
        file_sha256(tmp_path / "missing.jpg")
    locked = touch_photo(tmp_path / "locked.jpg")
    try:
        if can_deny_read(locked):
            with pytest.raises(PhotoError, match="^permission denied$"):
                file_sha256(locked)
    finally:
        locked.chmod(0o644)


# --------------------------------------------------------------------------- metadata


def test_read_metadata_full_exif(tmp_path):
    exif = exif_with(
        make="Canon\x00\x00 ",
        model="  Canon EOS 40D\x00",
        original="2008:05:30 15:56:01",
        offset="+02:00",
        datetime="2010:01:01 00:00:00",
        gps={
            ExifTags.GPS.GPSLatitudeRef: "S",
            ExifTags.GPS.GPSLatitude: (IFDRational(33), IFDRational(51), IFDRational(5424, 100)),
            ExifTags.GPS.GPSLongitudeRef: "W",
            ExifTags.GPS.GPSLongitude: (IFDRational(151), IFDRational(12), IFDRational(36)),
        },
    )
    path = write_jpeg(tmp_path / "a.jpg", exif=exif)

    meta = read_metadata(path)

    assert meta.width == 40 and meta.height == 30
    assert meta.taken == "2008-05-30T15:56:01+02:00"
    assert meta.camera == "Canon EOS 40D"
    assert meta.gps == pytest.approx((-(33 + 51 / 60 + 54.24 / 3600), -(151 + 12 / 60 + 36 / 3600)))
    assert meta.orientation is None


def test_read_metadata_without_exif(tmp_path):
    meta = read_metadata(touch_photo(tmp_path / "plain.png"))
    assert meta == PhotoMeta(width=4, height=4, taken=None, camera=None, gps=None, orientation=None)


@pytest.mark.parametrize(
    ("datetime", "original", "expected"),
    [
        ("2001:02:03 04:05:06", None, "2001-02-03T04:05:06"),  # DateTime as fallback
        ("2001:02:03 04:05:06", "2002:03:04 05:06:07", "2002-03-04T05:06:07"),
        (None, "2002-03-04 05:06:07\x00", "2002-03-04T05:06:07"),
        (None, "0000:00:00 00:00:00", None),
        (None, "    :  :     :  :  ", None),
        (None, "2002:13:45 99:00:00", None),
        ("garbage", "", None),
    ],
)
def test_read_metadata_dates(tmp_path, datetime, original, expected):
    path = write_jpeg(tmp_path / "d.jpg", exif=exif_with(datetime=datetime, original=original))
    assert read_metadata(path).taken == expected


def test_read_metadata_ignores_malformed_offset(tmp_path):
    path = write_jpeg(tmp_path / "o.jpg", exif=exif_with(original="2002:03:04 05:06:07", offset="junk"))
    assert read_metadata(path).taken == "2002-03-04T05:06:07"


@pytest.mark.parametrize(
    ("make", "model", "expected"),
    [
        ("NIKON CORPORATION", "NIKON D70", "NIKON D70"),
        ("Apple", "iPhone 11 Pro Max", "Apple iPhone 11 Pro Max"),
        ("WWL     ", "ION230\x00F", "WWL ION230"),
        (None, "  X100  ", "X100"),
        ("Leica", None, "Leica"),
        ("  \x00", "\x00", None),
    ],
)
def test_read_metadata_camera(tmp_path, make, model, expected):
    path = write_jpeg(tmp_path / "c.jpg", exif=exif_with(make=make, model=model))
    assert read_metadata(path).camera == expected


def gps_ifd(lat_ref, lat, lon_ref, lon) -> dict:
    tags = {
        ExifTags.GPS.GPSLatitudeRef: lat_ref,
        ExifTags.GPS.GPSLatitude: lat,
        ExifTags.GPS.GPSLongitudeRef: lon_ref,
        ExifTags.GPS.GPSLongitude: lon,
    }
    return {tag: value for tag, value in tags.items() if value is not None}


DMS_10_30 = (IFDRational(10), IFDRational(30), IFDRational(0))


@pytest.mark.parametrize(
    ("gps", "expected"),
    [
        (gps_ifd("N", DMS_10_30, "E", DMS_10_30), (10.5, 10.5)),
        (gps_ifd("S", DMS_10_30, "E", DMS_10_30), (-10.5, 10.5)),
        (gps_ifd("N", DMS_10_30, "W", DMS_10_30), (10.5, -10.5)),
        (gps_ifd("S", DMS_10_30, "W", DMS_10_30), (-10.5, -10.5)),
        (gps_ifd("N", DMS_10_30, None, None), None),  # half a position
        (gps_ifd("X", DMS_10_30, "E", DMS_10_30), None),  # unknown ref
        (gps_ifd("N", (IFDRational(1, 0), IFDRational(0), IFDRational(0)), "E", DMS_10_30), None),
        (gps_ifd("N", (IFDRational(95), IFDRational(0), IFDRational(0)), "E", DMS_10_30), None),
        (gps_ifd("N", (IFDRational(0),) * 3, "E", (IFDRational(0),) * 3), None),  # no fix
    ],
)
def test_read_metadata_gps(tmp_path, gps, expected):
    path = write_jpeg(tmp_path / "g.jpg", exif=exif_with(gps=gps))
    assert read_metadata(path).gps == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize(
    ("orientation", "size"), [(1, (40, 30)), (3, (40, 30)), (5, (30, 40)), (6, (30, 40)), (8, (30, 40))]
)
def test_read_metadata_orientation_swaps_size(tmp_path, orientation, size):
    path = write_jpeg(tmp_path / "r.jpg", exif=exif_with(orientation=orientation))
    meta = read_metadata(path)
    assert meta.orientation == orientation
    assert (meta.width, meta.height) == size


def test_read_metadata_ignores_invalid_orientation(tmp_path):
    path = write_jpeg(tmp_path / "r.jpg", exif=exif_with(orientation=9))
    meta = read_metadata(path)
    assert meta.orientation is None and (meta.width, meta.height) == (40, 30)


def test_read_metadata_does_not_decode_pixels(tmp_path, monkeypatch):
    path = write_jpeg(tmp_path / "lazy.jpg", exif=exif_with(make="Canon"))

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    assert read_metadata(path).camera == "Canon"


def test_read_metadata_rejects_non_images(tmp_path):
    fake = tmp_path / "fake.jpg"
    fake.write_text("hello, not a jpeg")
    empty = tmp_path / "empty.png"
    empty.touch()
    with pytest.raises(PhotoError, match="^not an image$"):
        read_metadata(fake)
    with pytest.raises(PhotoError, match="^empty file$"):
        read_metadata(empty)


# --------------------------------------------------------------------------- prepare_image

# Where the stored top-left corner ends up once each EXIF orientation is applied.
CORNER_AFTER_ORIENTATION = {1: "tl", 2: "tr", 3: "br", 4: "bl", 5: "tl", 6: "tr", 7: "br", 8: "bl"}


def corner_pixel(img: Image.Image, corner: str) -> tuple[int, int, int]:
    x = 2 if corner[1] == "l" else img.width - 3
    y = 2 if corner[0] == "t" else img.height - 3
    return img.getpixel((x, y))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_prepare_image_applies_orientation(tmp_path, orientation):
    path = write_jpeg(tmp_path / "o.jpg", marked((80, 40)), exif=exif_with(orientation=orientation))

    prepared = prepare_image(path)
    out = decoded(prepared)

    expected_size = (40, 80) if orientation >= 5 else (80, 40)
    assert (prepared.width, prepared.height) == out.size == expected_size
    corner = CORNER_AFTER_ORIENTATION[orientation]
    assert is_red(corner_pixel(out, corner))
    assert sum(is_red(corner_pixel(out, c)) for c in ("tl", "tr", "bl", "br")) == 1


def test_prepare_image_strips_all_metadata(tmp_path):
    exif = exif_with(
        make="Canon",
        model="Secret Model",
        gps=gps_ifd("N", DMS_10_30, "E", DMS_10_30),
    )
    fake_icc = b"\0\0\0\x80ICCPROFILE-MARKER" + b"\0" * 100
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">XMP-MARKER</x:xmpmeta>'
    path = write_jpeg(tmp_path / "m.jpg", exif=exif, icc_profile=fake_icc, comment=b"COMMENT-MARKER", xmp=xmp)
    with Image.open(path) as img:
        assert img.info.get("comment") == b"COMMENT-MARKER"  # the fixture really carries it

    prepared = prepare_image(path)
    out = decoded(prepared)

    assert out.format == "JPEG" and out.mode == "RGB"
    assert not out.getexif()
    for key in ("exif", "icc_profile", "comment", "xmp", "photoshop"):
        assert key not in out.info
    for marker in (b"Exif", b"ICC_PROFILE", b"MARKER", b"Secret", b"http://ns.adobe.com/xap"):
        assert marker not in prepared.jpeg


def test_prepare_image_strips_png_metadata(tmp_path):
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("Comment", "PNG-TEXT-MARKER")
    path = tmp_path / "m.png"
    Image.new("RGB", (20, 20), "white").save(path, pnginfo=info, exif=exif_with(make="PNG-EXIF-MARKER"))

    prepared = prepare_image(path)

    assert b"MARKER" not in prepared.jpeg and not decoded(prepared).getexif()


def test_prepare_image_downscales_long_side(tmp_path):
    path = write_jpeg(tmp_path / "big.jpg", marked((3000, 1000)))
    prepared = prepare_image(path, max_side=600)
    out = decoded(prepared)
    assert (prepared.width, prepared.height) == out.size == (600, 200)
    assert is_red(corner_pixel(out, "tl")) and not is_red(corner_pixel(out, "br"))


def test_prepare_image_never_upscales(tmp_path):
    path = touch_photo(tmp_path / "tiny.png")
    prepared = prepare_image(path, max_side=1536)
    assert (prepared.width, prepared.height) == (4, 4)


def test_prepare_image_downscales_portrait_with_orientation(tmp_path):
    path = write_jpeg(tmp_path / "p.jpg", marked((1200, 600)), exif=exif_with(orientation=6))
    prepared = prepare_image(path, max_side=300)
    assert (prepared.width, prepared.height) == (150, 300)
    assert is_red(corner_pixel(decoded(prepared), "tr"))


def save_cmyk_jpeg(path: Path) -> None:
    Image.new("RGB", (16, 16), RED).convert("CMYK").save(path, format="JPEG", quality=95)


def save_palette_transparent_png(path: Path) -> None:
    img = Image.new("P", (16, 16), 1)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    ImageDraw.Draw(img).rectangle((0, 0, 7, 7), fill=0)
    img.save(path, transparency=0)  # palette entry 0 (black) is fully transparent


def save_la_png(path: Path) -> None:
    img = Image.new("LA", (16, 16), (0, 255))
    ImageDraw.Draw(img).rectangle((0, 0, 7, 7), fill=(0, 0))
    img.save(path)


def save_rgba_png(path: Path) -> None:
    img = Image.new("RGBA", (16, 16), RED + (255,))
    ImageDraw.Draw(img).rectangle((0, 0, 7, 7), fill=(0, 0, 0, 0))
    img.save(path)


def save_pa_png(path: Path) -> None:
    img = Image.new("RGBA", (16, 16), RED + (255,))
    ImageDraw.Draw(img).rectangle((0, 0, 7, 7), fill=(0, 0, 0, 0))
    img.convert("PA").save(path.with_suffix(".webp"), lossless=True)
    path.with_suffix(".webp").rename(path)


def save_16bit_png(path: Path) -> None:
    values = np.zeros((16, 16), dtype=np.uint16)
    values[:, 8:] = 65535
    values[0, 0] = 32896  # 128 * 257
    Image.fromarray(values).save(path)


def save_32bit_tiff(path: Path) -> None:
    values = np.full((16, 16), 1000, dtype=np.int32)
    values[:, 8:] = 1_000_000
    Image.fromarray(values).save(path)


def save_float_tiff(path: Path) -> None:
    values = np.full((16, 16), -1.0, dtype=np.float32)
    values[:, 8:] = 1.0
    values[0, 0] = np.nan
    Image.fromarray(values).save(path)


def save_rgb_colour_key_png(path: Path) -> None:
    img = Image.new("RGB", (16, 16), RED)
    ImageDraw.Draw(img).rectangle((0, 0, 7, 7), fill=(0, 0, 0))
    img.save(path, transparency=(0, 0, 0))


def save_1bit_bmp(path: Path) -> None:
    img = Image.new("1", (16, 16), 0)
    ImageDraw.Draw(img).rectangle((8, 0, 15, 15), fill=1)
    img.save(path)


def save_animated_gif(path: Path) -> None:
    frames = [Image.new("RGB", (16, 16), colour) for colour in (RED, (0, 0, 255), (0, 255, 0))]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)


def save_grey_tiff(path: Path) -> None:
    img = Image.new("L", (16, 16), 0)
    ImageDraw.Draw(img).rectangle((8, 0, 15, 15), fill=255)
    img.save(path)


# file name, writer, expected mode once opened, {pixel: expected RGB} in the output
MODE_CASES = [
    ("cmyk.jpg", save_cmyk_jpeg, "CMYK", {(8, 8): RED}),
    ("palette.png", save_palette_transparent_png, "P", {(2, 2): (255, 255, 255), (12, 12): RED}),
    ("la.png", save_la_png, "LA", {(2, 2): (255, 255, 255), (12, 12): (0, 0, 0)}),
    ("rgba.png", save_rgba_png, "RGBA", {(2, 2): (255, 255, 255), (12, 12): RED}),
    ("pa.webp", save_pa_png, "RGBA", {(2, 2): (255, 255, 255), (12, 12): RED}),
    ("key.png", save_rgb_colour_key_png, "RGB", {(2, 2): (255, 255, 255), (12, 12): RED}),
    ("deep.png", save_16bit_png, "I;16", {(0, 0): (128, 128, 128), (2, 8): (0, 0, 0), (12, 8): (255, 255, 255)}),
    ("int.tif", save_32bit_tiff, "I", {(2, 8): (0, 0, 0), (12, 8): (255, 255, 255)}),
    ("float.tiff", save_float_tiff, "F", {(2, 8): (0, 0, 0), (12, 8): (255, 255, 255)}),
    ("bits.bmp", save_1bit_bmp, "1", {(2, 8): (0, 0, 0), (12, 8): (255, 255, 255)}),
    ("anim.gif", save_animated_gif, "P", {(8, 8): RED}),
    ("grey.tif", save_grey_tiff, "L", {(2, 8): (0, 0, 0), (12, 8): (255, 255, 255)}),
]


@pytest.mark.parametrize(("name", "writer", "mode", "pixels"), MODE_CASES, ids=[c[0] for c in MODE_CASES])
def test_prepare_image_converts_every_mode(tmp_path, name, writer, mode, pixels):
    path = tmp_path / name
    writer(path)
    with Image.open(path) as img:
        assert img.mode == mode  # the fixture is what it claims to be

    out = decoded(prepare_image(path))

    assert out.mode == "RGB" and out.size == (16, 16)
    for xy, rgb in pixels.items():
        assert np.allclose(out.getpixel(xy), rgb, atol=12), (xy, out.getpixel(xy), rgb)


def test_prepare_image_mpo_uses_first_picture(tmp_path):
    path = tmp_path / "phone.jpg"  # phones save multi-picture JPEGs under .jpg
    marked((64, 32)).save(path, format="MPO", save_all=True, append_images=[Image.new("RGB", (64, 32), "blue")])
    with Image.open(path) as img:
        assert img.format == "MPO"
    out = decoded(prepare_image(path, max_side=32))
    assert out.size == (32, 16) and is_red(corner_pixel(out, "tl"))


def noisy(size: int) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_prepare_image_shrinks_until_base64_fits(tmp_path):
    path = tmp_path / "noise.png"
    noisy(400).save(path)
    unconstrained = prepare_image(path)
    limit = 20_000
    assert len(base64.b64encode(unconstrained.jpeg)) > limit

    prepared = prepare_image(path, max_base64_bytes=limit)

    assert len(base64.b64encode(prepared.jpeg)) <= limit
    assert prepared.width < 400 and prepared.height < 400  # quality alone was not enough
    assert decoded(prepared).size == (prepared.width, prepared.height)


def test_prepare_image_lowers_quality_before_size(tmp_path):
    path = tmp_path / "noise.png"
    noisy(200).save(path)
    full = len(base64.b64encode(prepare_image(path, quality=95).jpeg))

    prepared = prepare_image(path, quality=95, max_base64_bytes=full - 1)

    assert (prepared.width, prepared.height) == (200, 200)
    assert len(base64.b64encode(prepared.jpeg)) < full


def test_prepare_image_impossible_cap(tmp_path):
    with pytest.raises(PhotoError, match="cannot fit"):
        prepare_image(touch_photo(tmp_path / "a.png"), max_base64_bytes=50)


def test_data_url_round_trips(tmp_path):
    prepared = prepare_image(touch_photo(tmp_path / "a.png"))
    url = prepared.data_url()
    assert url.startswith("data:image/jpeg;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == prepared.jpeg
    assert "jpeg=" not in repr(prepared)  # no megabytes of bytes in logs


def test_prepare_image_rejects_empty_and_non_images(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.touch()
    text = tmp_path / "text.jpg"
    text.write_text("just some words\n" * 20)
    with pytest.raises(PhotoError, match="^empty file$"):
        prepare_image(empty)
    with pytest.raises(PhotoError, match="^not an image$"):
        prepare_image(text)


def test_prepare_image_rejects_truncated_jpeg(tmp_path):
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    data = write_jpeg(tmp_path / "whole.jpg", noisy(256)).read_bytes()
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(data[: len(data) // 2])

    read_metadata(cut)  # the header is intact: metadata is still readable
    with pytest.raises(PhotoError, match="^truncated or corrupt image$"):
        prepare_image(cut)


def test_prepare_image_rejects_grey_padded_jpeg(tmp_path):
    # Data cut short but the end marker kept: libjpeg pads with grey and only warns.
    data = write_jpeg(tmp_path / "whole.jpg", noisy(256)).read_bytes()
    padded = tmp_path / "padded.jpg"
    padded.write_bytes(data[: len(data) // 2] + b"\xff\xd9")
    with pytest.raises(PhotoError, match="^truncated or corrupt image$"):
        prepare_image(padded)


def test_prepare_image_accepts_flat_grey_photo(tmp_path):
    path = write_jpeg(tmp_path / "grey.jpg", Image.new("RGB", (64, 64), (128, 128, 128)))
    assert prepare_image(path).width == 64


def test_prepare_image_rejects_corrupt_png(tmp_path):
    data = io.BytesIO()
    noisy(64).save(data, format="PNG")
    broken = tmp_path / "broken.png"
    broken.write_bytes(data.getvalue()[:-200])
    with pytest.raises(PhotoError, match="^truncated or corrupt image$"):
        prepare_image(broken)


def test_prepare_image_rejects_pillow_sized_bomb(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 20_000, 20_000)
    for func in (prepare_image, read_metadata):
        with pytest.raises(PhotoError, match=r"^too large \(decompression bomb: 400 megapixels\)$"):
            func(bomb)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_prepare_image_rejects_bomb_above_our_limit_before_decoding(tmp_path, monkeypatch):
    bomb = png_header_only(tmp_path / "bomb.png", 15_000, 13_000)  # 195 MP: Pillow only warns

    def no_decoding(self):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(PhotoError, match=r"^too large \(decompression bomb: 195 megapixels\)$"):
        prepare_image(bomb)


def test_bomb_warning_raised_as_error_is_a_rejection(tmp_path):
    bomb = png_header_only(tmp_path / "bomb.png", 15_000, 13_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with pytest.raises(PhotoError, match=r"^too large \(decompression bomb: 195 megapixels\)$"):
            read_metadata(bomb)


def test_pixel_limit_is_a_module_constant():
    assert photos.MAX_PIXELS == 180_000_000


def test_prepare_image_file_errors(tmp_path):
    with pytest.raises(PhotoError, match="^file not found$"):
        prepare_image(tmp_path / "gone.jpg")
    with pytest.raises(PhotoError, match="^not a file$"):
        prepare_image(tmp_path)
    locked = touch_photo(tmp_path / "locked.png")
    try:
        if not can_deny_read(locked):
            pytest.skip("running as root: chmod cannot make a file unreadable")
        for func in (prepare_image, read_metadata):
            with pytest.raises(PhotoError, match="^permission denied$"):
                func(locked)
    finally:
        locked.chmod(0o644)


# --------------------------------------------------------------------------- HEIC


@pytest.fixture
def heic_file(tmp_path) -> Path:
    import pillow_heif  # a dependency; its wheels carry the HEVC encoder that writes this fixture

    path = tmp_path / "phone.HEIC"
    exif = exif_with(make="Apple", model="iPhone 15", original="2024:06:01 12:00:00")
    pillow_heif.from_pillow(marked((64, 32))).save(path, quality=90, exif=exif.tobytes())
    return path


def test_heic_metadata_and_prepare(heic_file):
    meta = read_metadata(heic_file)
    assert (meta.width, meta.height) == (64, 32)
    assert meta.camera == "Apple iPhone 15"
    assert meta.taken == "2024-06-01T12:00:00"

    prepared = prepare_image(heic_file)
    out = decoded(prepared)
    assert out.size == (64, 32)
    assert is_red(corner_pixel(out, "tl"))
    assert b"Exif" not in prepared.jpeg


def test_heic_with_wrong_suffix_is_still_read(heic_file):
    misnamed = heic_file.rename(heic_file.with_name("phone.jpg"))
    assert prepare_image(misnamed).width == 64


def test_pillow_heif_is_imported_lazily():
    code = "import sys, imgrag.photos.files; assert 'pillow_heif' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------------------- big photos: reduced decodes


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "1", "I;16", "RGB", "L", "CMYK"])
def test_a_big_photo_is_reduced_in_every_mode_with_the_colours_of_a_full_decode(tmp_path, mode):
    """Shrunk by a whole factor (strip by strip for modes Image.reduce would copy whole) before
    orientation and colour conversion: the same picture as converting first, within JPEG noise."""
    full = Image.new("RGBA", (3000, 600), (255, 0, 0, 255))
    ImageDraw.Draw(full).rectangle((1500, 0, 2999, 599), fill=(0, 0, 255, 0))  # right half transparent
    img = {"P": full.convert("RGB").convert("P"), "1": full.convert("1"),
           "I;16": full.convert("L").convert("I;16"), "CMYK": full.convert("RGB").convert("CMYK")}.get(mode)
    img = img if img is not None else full.convert(mode)
    path = tmp_path / ("p.tiff" if mode in ("I;16", "CMYK") else "p.png")
    img.save(path)
    expected = photos._to_rgb(Image.open(path))
    expected.thumbnail((256, 256), Image.Resampling.LANCZOS)

    out = decoded(prepare_image(path, max_side=256))  # 3000 // 512: reduced 5 times first

    assert out.size == expected.size == (256, 51)
    diff = np.abs(np.asarray(out, dtype=int) - np.asarray(expected, dtype=int))
    assert diff[:, 8:120].max() < 24 and diff[:, 136:248].max() < 24  # away from the edge between halves


def test_a_big_oriented_tiff_keeps_its_orientation_when_reduced(tmp_path):
    path = tmp_path / "o.tiff"
    exif = exif_with(orientation=6)
    marked((2400, 1200)).save(path, exif=exif)
    out = decoded(prepare_image(path, max_side=200))  # reduced 6 times before it is turned
    assert out.size == (100, 200) and is_red(corner_pixel(out, CORNER_AFTER_ORIENTATION[6]))


def test_decodes_share_a_pixel_budget_first_come_first_served():
    import threading

    budget = photos.PixelBudget(100)
    held, peak, order = [0], [0], []
    lock = threading.Lock()
    go = threading.Event()

    def decode(name: str, pixels: int) -> None:
        with budget.hold(pixels):
            with lock:
                held[0] += min(pixels, 100)
                peak[0] = max(peak[0], held[0])
                order.append(name)
            if name == "first":
                go.wait()  # holds its share until every other one is queued
            with lock:
                held[0] -= min(pixels, 100)

    threads = []
    for queued, (name, pixels) in enumerate([("first", 30), ("big", 90), ("small", 30), ("huge", 500), ("tiny", 10)]):
        threads.append(threading.Thread(target=decode, args=(name, pixels)))
        threads[-1].start()
        while len(budget._queue) < queued:  # wait until it queues, so they queue in this order
            threading.Event().wait(0.001)
    go.set()
    for t in threads:
        t.join()
    assert peak[0] <= 100  # a photo over the whole budget takes all of it, not more
    assert order == ["first", "big", "small", "huge", "tiny"]  # small and tiny would fit beside big: they wait
