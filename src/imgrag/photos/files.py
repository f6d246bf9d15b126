"""Find photos on disk, hash them, read their metadata and prepare them for upload."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import math
import os
import re
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import ExifTags, Image, JpegImagePlugin, UnidentifiedImageError

PHOTO_SUFFIXES: frozenset[str] = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".heic", ".heif"}
)

# Largest image we agree to decode. Medium-format cameras reach ~150 MP, so Pillow's
# default (89 MP warning) is too strict; anything above this is treated as a bomb.
MAX_PIXELS = 180_000_000
# Pillow warns above this and refuses twice this; match ours so it does not warn about
# the 90-180 MP photos we accept.
Image.MAX_IMAGE_PIXELS = MAX_PIXELS

_CHUNK = 1 << 20
# Pixels decoded at once by this process (describe's workers and the server's thumbnails
# alike): a 170 MP PNG decodes whole (Pillow has no reduced decode but JPEG's), ~0.5-0.7 GB,
# so a burst of them must queue instead of each taking that much.
DECODE_BUDGET = MAX_PIXELS
# Shrink by whole factors (a cheap box average) down to this many times the target size, then
# resample the rest properly: Pillow's `reducing_gap`, done here so it also runs in strips.
_REDUCING_GAP = 2
_STRIP_PIXELS = 4_000_000  # pixels of the source converted at a time while reducing
# What a photo is, by its content (Pillow's format name), as served over HTTP.
MEDIA_TYPES = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp",
               "GIF": "image/gif", "BMP": "image/bmp", "TIFF": "image/tiff", "HEIF": "image/heif",
               "AVIF": "image/avif"}
_MIN_QUALITY = 40
_QUALITY_STEP = 10
_SHRINK = 0.75
# What Pillow and its plugins raise for broken image data (beyond UnidentifiedImageError).
_CORRUPT = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, RuntimeError)

_heif_registered = False


class PhotoError(Exception):
    """A photo that cannot be used; str(e) is a short human reason."""


@dataclass(frozen=True)
class Skipped:
    """Something discover() passed over, for a warning."""

    path: Path
    reason: str


@dataclass(frozen=True)
class PhotoMeta:
    width: int | None  # as displayed, i.e. after EXIF orientation
    height: int | None
    taken: str | None  # ISO 8601, with the EXIF offset when recorded
    camera: str | None
    gps: tuple[float, float] | None  # (lat, lon) in signed decimal degrees
    orientation: int | None


@dataclass(frozen=True)
class PreparedImage:
    jpeg: bytes = field(repr=False)
    width: int
    height: int
    warning: str | None = None  # the photo was usable, but not whole (a JPEG cut short)

    def data_url(self) -> str:
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg).decode("ascii")


# --------------------------------------------------------------------------- discovery


def discover(root: Path, *, on_skip: Callable[[Skipped], None] | None = None) -> Iterator[Path]:
    """Every photo file under root, recursively, in a deterministic order."""
    root = Path(root)
    report = on_skip or (lambda _skipped: None)
    try:
        real_root = root.resolve(strict=True)
    except FileNotFoundError:
        report(Skipped(root, "file not found"))
        return
    except OSError as e:
        report(Skipped(root, _os_reason(e)))
        return
    if real_root.is_dir():
        yield from _walk(root, real_root, {real_root}, real_root, report)
    elif _is_photo_name(root.name):
        yield root
    else:
        report(Skipped(root, "not a photo"))


def _walk(
    folder: Path, real_folder: Path, visited: set[Path], real_root: Path, report: Callable[[Skipped], None]
) -> Iterator[Path]:
    try:
        with os.scandir(folder) as it:
            entries = sorted(it, key=lambda e: e.name)
    except FileNotFoundError:
        return  # vanished while we walked
    except OSError as e:
        report(Skipped(folder, _os_reason(e)))
        return
    for entry in entries:
        if entry.name.startswith("."):  # hidden, including our own .imgrag state folder
            continue
        path = folder / entry.name
        try:
            is_link = entry.is_symlink()
            is_dir = entry.is_dir()  # follows links
        except OSError as e:
            if e.errno == errno.ELOOP:  # a link chain that leads back to itself
                report(Skipped(path, "symlink loop"))
            continue  # otherwise it vanished
        if is_link:
            target = _link_target(path, is_dir, real_root, report)
            if target is None:
                continue
        else:
            target = real_folder / entry.name
        if is_dir:
            # Real folders cannot form cycles; only a link can lead back somewhere seen.
            if is_link and target in visited:
                report(Skipped(path, "symlink loop"))
                continue
            visited.add(target)
            yield from _walk(path, target, visited, real_root, report)
        elif _is_photo_name(entry.name):
            if os.access(path, os.R_OK):
                yield path
            elif os.path.lexists(path):
                report(Skipped(path, "permission denied"))


def _link_target(path: Path, is_dir: bool, real_root: Path, report: Callable[[Skipped], None]) -> Path | None:
    """Where a symlink leads, or None (reported when it matters) if it must not be followed."""
    relevant = is_dir or _is_photo_name(path.name)
    try:
        target = path.resolve(strict=True)
    except FileNotFoundError:
        if relevant:
            report(Skipped(path, "broken link"))
        return None
    except RuntimeError:  # the link chain loops on itself
        report(Skipped(path, "symlink loop"))
        return None
    except OSError as e:
        report(Skipped(path, _os_reason(e)))
        return None
    if not target.is_relative_to(real_root):
        if relevant:
            report(Skipped(path, "link points outside the folder"))
        return None
    return target


def _is_photo_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in PHOTO_SUFFIXES


def _os_reason(e: OSError) -> str:
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, (FileNotFoundError, NotADirectoryError)):
        return "file not found"
    if isinstance(e, IsADirectoryError):
        return "not a file"
    if e.errno == errno.ELOOP:
        return "symlink loop"
    return e.strerror or type(e).__name__


# --------------------------------------------------------------------------- hashing


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as e:
        raise PhotoError(_os_reason(e)) from e
    return digest.hexdigest()


# --------------------------------------------------------------------------- opening


@contextmanager
def _open_image(source: Path | BinaryIO) -> Iterator[Image.Image]:
    """Open lazily (header only), rejecting anything we will not decode. A file object
    (an already checked one, see imgrag.store.serving) is read from its start and left open."""
    if not isinstance(source, Path):
        source.seek(0)
        yield from _opened_image(source)
        return
    try:
        f = open(source, "rb")  # noqa: SIM115 - the context manager below closes it
    except OSError as e:
        raise PhotoError(_os_reason(e)) from e
    with f:
        yield from _opened_image(f)


def _opened_image(f: BinaryIO) -> Iterator[Image.Image]:
    if os.fstat(f.fileno()).st_size == 0:
        raise PhotoError("empty file")
    if _looks_like_heif(f):
        _register_heif()
    with _identify(f) as img:
        _check_pixels(*img.size)
        yield img


def media_type(f: BinaryIO) -> str:
    """The photo's media type from its content (header only), never from its name: a file
    Pillow does not read as one of the photo formats is refused (PhotoError)."""
    with _open_image(f) as img:
        kind = MEDIA_TYPES.get(img.format or "")
    f.seek(0)
    if kind is None:
        raise PhotoError("not a photo format")
    return kind


def _identify(f: BinaryIO) -> Image.Image:
    try:
        return Image.open(f)
    except UnidentifiedImageError as e:
        raise PhotoError("not an image") from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning when run with -W error
        raise PhotoError(_bomb_reason(e)) from e
    except _CORRUPT as e:
        raise PhotoError("truncated or corrupt image") from e


def _looks_like_heif(f: BinaryIO) -> bool:
    # ISO-BMFF files start with a size then 'ftyp'; sniffing catches misnamed HEICs too.
    head = f.read(12)
    f.seek(0)
    return head[4:8] == b"ftyp"


def _register_heif() -> None:
    global _heif_registered
    if not _heif_registered:
        import pillow_heif  # slow import, only when a HEIC/HEIF is met

        pillow_heif.register_heif_opener()  # idempotent, so two threads racing here is harmless
        _heif_registered = True


def _check_pixels(width: int, height: int) -> None:
    if width * height > MAX_PIXELS:
        raise PhotoError(_too_large(width * height))


def _bomb_reason(e: Exception) -> str:
    # Pillow's message is 'Image size (N pixels) exceeds limit ...'.
    match = re.search(r"\((\d+) pixels\)", str(e))
    return _too_large(int(match.group(1)) if match else None)


def _too_large(pixels: int | None) -> str:
    if pixels is None:
        return "too large (decompression bomb)"
    return f"too large (decompression bomb: {round(pixels / 1e6)} megapixels)"


# --------------------------------------------------------------------------- metadata


def read_metadata(path: Path) -> PhotoMeta:
    with _open_image(path) as img:
        try:
            exif = img.getexif()
        except _CORRUPT:  # metadata is best effort; a broken EXIF block is not a broken photo
            exif = Image.Exif()
        orientation = _orientation(exif)
        width, height = img.size
        if orientation in (5, 6, 7, 8):  # rotated a quarter turn when displayed
            width, height = height, width
        sub_ifd = _ifd(exif, ExifTags.IFD.Exif)
        return PhotoMeta(
            width=width,
            height=height,
            taken=_taken(exif, sub_ifd),
            camera=_camera(exif.get(ExifTags.Base.Make), exif.get(ExifTags.Base.Model)),
            gps=_gps(_ifd(exif, ExifTags.IFD.GPSInfo)),
            orientation=orientation,
        )


def _ifd(exif: Image.Exif, tag: int) -> dict:
    try:
        return exif.get_ifd(tag)
    except _CORRUPT + (KeyError, TypeError):
        return {}


def _orientation(exif: Image.Exif) -> int | None:
    value = exif.get(ExifTags.Base.Orientation)
    return value if isinstance(value, int) and 1 <= value <= 8 else None


def _text(value: object) -> str | None:
    """An EXIF string, cut at its NUL terminator and with whitespace tidied."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return None
    value = " ".join(value.strip("\x00").split("\x00", 1)[0].split())
    return value or None


_EXIF_DATE = re.compile(r"(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_EXIF_OFFSET = re.compile(r"[+-]\d{2}:\d{2}")


def _taken(exif: Image.Exif, sub_ifd: dict) -> str | None:
    pairs = (
        (sub_ifd.get(ExifTags.Base.DateTimeOriginal), sub_ifd.get(ExifTags.Base.OffsetTimeOriginal)),
        (exif.get(ExifTags.Base.DateTime), sub_ifd.get(ExifTags.Base.OffsetTime)),
    )
    for raw, raw_offset in pairs:
        when = _iso_datetime(_text(raw))
        if when:
            offset = _text(raw_offset)
            return when + offset if offset and _EXIF_OFFSET.fullmatch(offset) else when
    return None


def _iso_datetime(text: str | None) -> str | None:
    match = _EXIF_DATE.match(text or "")
    if not match:
        return None
    try:  # rejects '0000:00:00 00:00:00' and other impossible dates
        year, month, day, hour, minute, second = map(int, match.groups())
        return datetime(year, month, day, hour, minute, second).isoformat()
    except ValueError:
        return None


def _camera(make: object, model: object) -> str | None:
    make, model = _text(make), _text(model)
    if make and model:
        # 'Canon' + 'Canon EOS 40D', 'NIKON CORPORATION' + 'NIKON D70': say the brand once
        brand = make.split()[0].lower()
        if model.lower().startswith((make.lower(), brand + " ")) or model.lower() == brand:
            return model
        return f"{make} {model}"
    return make or model


def _gps(gps: dict) -> tuple[float, float] | None:
    lat = _degrees(gps.get(ExifTags.GPS.GPSLatitude), gps.get(ExifTags.GPS.GPSLatitudeRef), "N", "S", 90)
    lon = _degrees(gps.get(ExifTags.GPS.GPSLongitude), gps.get(ExifTags.GPS.GPSLongitudeRef), "E", "W", 180)
    if lat is None or lon is None or (lat == 0 and lon == 0):  # 0,0 is what fix-less receivers write
        return None
    return (lat, lon)


def _degrees(value: object, ref: object, positive: str, negative: str, limit: float) -> float | None:
    parts = value if isinstance(value, tuple) else (value,)
    try:
        numbers = [float(p) for p in parts]
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    if not 1 <= len(numbers) <= 3 or not all(math.isfinite(n) and n >= 0 for n in numbers):
        return None
    degrees = sum(n / 60**i for i, n in enumerate(numbers))
    ref_text = (_text(ref) or positive).upper()
    if ref_text not in (positive, negative) or degrees > limit:
        return None
    return round(-degrees if ref_text == negative else degrees, 7)


# --------------------------------------------------------------------------- upload


def give_decoded_memory_back() -> None:
    """Make a long-lived process (`imgrag serve`) return a big decode's memory to the system.

    glibc raises its mmap threshold to the size of the last big block freed (up to 32 MB), so
    after the first decode Pillow's 16 MB image blocks come from the heap and stay in the
    process: 0.9 GB kept after one 170 MP PNG. Fixing the threshold (which turns that
    adjustment off) keeps them mmapped and unmapped when freed. No-op off glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
        if libc is not None and hasattr(libc, "mallopt"):
            libc.mallopt(-3, 4 << 20)  # M_MMAP_THRESHOLD: blocks of 4 MB and more are mmapped
    except OSError:
        pass


class PixelBudget:
    """At most `total` pixels decoded at once, first come first served.

    threading.Semaphore counts units, not weights: one 170 MP decode must hold what forty
    4 MP ones would, and a FIFO queue keeps a stream of small ones from starving a big one."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._free = total
        self._queue: deque[object] = deque()
        self._cond = threading.Condition()

    @contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = max(1, min(pixels, self.total))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            self._cond.wait_for(lambda: self._queue[0] is ticket and self._free >= pixels)
            self._queue.popleft()
            self._free -= pixels
            self._cond.notify_all()
        try:
            yield
        finally:
            with self._cond:
                self._free += pixels
                self._cond.notify_all()


DECODES = PixelBudget(DECODE_BUDGET)


def prepare_image(
    source: Path | BinaryIO, *, max_side: int = 1536, max_base64_bytes: int = 4_000_000, quality: int = 85
) -> PreparedImage:
    """The photo as a JPEG of at most max_side pixels a side, oriented, without metadata.
    A big photo is decoded reduced where the format allows (JPEG) and shrunk before any
    copy is made, and decodes wait for their turn in DECODES."""
    with _open_image(source) as img:
        is_jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)  # includes MPO from phones
        if is_jpeg:
            _draft(img, max_side)
        with DECODES.hold(img.width * img.height):
            warning = _decode(img, is_jpeg)
            turn = _turn(img)  # read from the file's image: a reduced copy may not carry it (TIFF)
            img = _reduce(img, max_side)
        if turn is not None:
            img = img.transpose(turn)
        img = _to_rgb(img)
    img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    img.info.clear()  # Pillow copies some info keys (e.g. comment) into saved files
    img, jpeg = _encode_within(img, quality, max_base64_bytes)
    return PreparedImage(jpeg=jpeg, width=img.width, height=img.height, warning=warning)


def _draft(img: Image.Image, max_side: int) -> None:
    # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when that still covers the target size.
    scale = max_side / max(img.size)
    if scale < 1:
        img.draft(None, (math.ceil(img.width * scale), math.ceil(img.height * scale)))


# EXIF orientation -> the turn that shows the photo upright (as ImageOps.exif_transpose).
_TURNS = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}


def _turn(img: Image.Image) -> Image.Transpose | None:
    try:
        return _TURNS.get(_orientation(img.getexif()) or 1)
    except _CORRUPT:  # unreadable EXIF: show the pixels as stored
        return None


def _reduce(img: Image.Image, max_side: int) -> Image.Image:
    """The decoded image shrunk by a whole factor, still at least _REDUCING_GAP times max_side.

    Done before orientation and colour conversion, each of which copies the whole image.
    Modes Image.reduce cannot do, or does through a full-size copy (alpha is premultiplied
    first), are converted to RGB and reduced a strip at a time, so no second full-size image
    is ever made."""
    factor = max(img.size) // (max_side * _REDUCING_GAP)
    if factor < 2:
        return img
    if img.mode not in ("1", "P", "LA", "PA", "RGBA") and not img.mode.startswith("I;16"):
        return img.reduce(factor)
    out = Image.new("RGB", (-(-img.width // factor), -(-img.height // factor)))
    rows = factor * max(1, _STRIP_PIXELS // (img.width * factor))
    for top in range(0, img.height, rows):
        strip = _to_rgb(img.crop((0, top, img.width, min(img.height, top + rows))))
        out.paste(strip.reduce(factor), (0, top // factor))
    return out


def _decode(img: Image.Image, is_jpeg: bool) -> str | None:
    """Decode the pixels; a JPEG cut short but mostly there decodes as far as it goes (what
    viewers show), and a warning says so. Anything less raises PhotoError."""
    ended_early = _end_at_eof(img) if is_jpeg else None
    try:
        img.load()
    except Image.DecompressionBombError as e:
        raise PhotoError(_bomb_reason(e)) from e
    except _CORRUPT as e:
        raise PhotoError("truncated or corrupt image") from e
    missing = _grey_padded_rows(img) if is_jpeg and img.mode in ("L", "RGB") else 0
    if missing > img.height * (1 - MIN_DECODED):
        raise PhotoError("truncated or corrupt image")
    if missing:
        return f"truncated: its last {missing / img.height:.0%} of rows are missing; described what decodes"
    if ended_early is not None and ended_early():
        return "truncated file: described what decodes"
    return None


# A cut-off JPEG is described when at least this share of its rows decodes (the bottom
# strip of a photo rarely decides what it shows); less is treated as unreadable.
MIN_DECODED = 0.75


def _end_at_eof(img: Image.Image) -> Callable[[], bool]:
    """Pillow's ImageFile.LOAD_TRUNCATED_IMAGES for this one image: at a premature end of
    the file, hand libjpeg the end-of-image marker, so it finishes with what it has (and
    pads the rest with grey). That setting is global to the process, and other threads
    decode other photos meanwhile, so this shadows the image's own `load_read`
    (JpegImageFile.load_read's truncated branch) instead. Returns whether it happened."""
    read = img.load_read  # type: ignore[attr-defined]
    ended = False

    def load_read(read_bytes: int) -> bytes:
        nonlocal ended
        data = read(read_bytes)
        if not data and not ended:
            ended = True
            return b"\xff\xd9"
        return data

    img.load_read = load_read  # type: ignore[attr-defined]
    return lambda: ended


def _grey_padded_rows(img: Image.Image) -> int:
    """How many rows at the bottom libjpeg filled with mid-grey: the part of a JPEG cut short.

    A scan that hits an end marker early is padded with exact 128 grey and libjpeg only
    warns, which Pillow does not surface. Padding always reaches the bottom row; a top row
    that is grey too means a flat grey picture rather than missing data.
    """
    pixels = np.asarray(img)
    grey = (pixels == 128).reshape(img.height, -1).all(axis=1)
    if not grey[-1] or grey[0]:
        return 0
    return int(img.height - np.flatnonzero(~grey)[-1] - 1)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB" and "transparency" not in img.info:  # a PNG colour key makes RGB transparent
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return _to_8bit(img).convert("RGB")
    if "A" in img.mode or "a" in img.mode or "transparency" in img.info:
        rgba = img.convert("RGBA")
        flat = Image.new("RGB", rgba.size, "white")  # transparent areas read as paper, not black
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return img.convert("RGB")


def _to_8bit(img: Image.Image) -> Image.Image:
    """Greyscale 16-bit, 32-bit int or float pixels to 8-bit 'L'."""
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("I;16"):
        values = values / 257  # full 16-bit range onto 0..255
    else:
        # 32-bit int and float images have no fixed range: stretch what is there.
        finite = values[np.isfinite(values)]
        low, high = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
        values = (np.nan_to_num(values, nan=low) - low) * (255 / (high - low)) if high > low else values * 0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))  # 2-D uint8 is mode L


def _encode_within(img: Image.Image, quality: int, max_base64_bytes: int) -> tuple[Image.Image, bytes]:
    """Encode, trading quality and then size until the base64 form fits."""
    while True:
        jpeg = _jpeg(img, quality)
        if _base64_len(jpeg) <= max_base64_bytes:
            return img, jpeg
        if quality > _MIN_QUALITY:
            quality = max(_MIN_QUALITY, quality - _QUALITY_STEP)
        elif max(img.size) > 1:
            size = (max(1, int(img.width * _SHRINK)), max(1, int(img.height * _SHRINK)))
            img = img.resize(size, Image.Resampling.LANCZOS)
        else:
            raise PhotoError(f"cannot fit in {max_base64_bytes} base64 bytes")


def _jpeg(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def _base64_len(data: bytes) -> int:
    return 4 * math.ceil(len(data) / 3)
