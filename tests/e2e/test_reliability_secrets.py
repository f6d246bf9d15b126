"""Secrets and privacy: the API key is never printed, logged or stored, whatever happens,
and no photo metadata (EXIF, GPS, XMP, comments) leaves the machine. Through the command in
process; the crash and the Ctrl-C in real processes."""

from __future__ import annotations

import io
import signal
import time
from pathlib import Path

from PIL import Image, ImageDraw

from conftest import invoke
from reliability_support import jsonl_lines, spawn_imgrag, wait_for_requests

KEY = "gsk_RELIABILITY_canary_9f3c2e71d4b8a6"
KEY_PARTS = (KEY, KEY[4:], KEY[-12:])  # the whole key, or any telltale piece of it


def _leaks(*texts: str | bytes) -> list[str]:
    found = []
    for text in texts:
        data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
        found += [part for part in KEY_PARTS if part.encode() in data]
    return found


def _state_files(cwd: Path) -> list[Path]:
    return [p for p in (cwd / ".imgrag").rglob("*") if p.is_file()]


def _spawn_and_wait_for_a_request(standin, photos: Path, cwd: Path, env: dict):
    """A describe run, once its first request has reached the server (and is held there)."""
    seen = len(standin.requests)
    proc = spawn_imgrag("describe", photos, "--force", cwd=cwd, env=env)
    wait_for_requests(standin, seen + 1)
    return proc


def test_key_never_leaks_through_success_failure_401_and_crash(home, standin):
    cwd, photos, env = home
    env = {**env, "GROQ_API_KEY": KEY, "IMGRAG_TIMEOUT": "1.5", "PYTHONFAULTHANDLER": "1"}
    outputs: list[str] = []

    standin.api_key = KEY
    standin.enqueue("500", "schema", "schema", "400", "reset")  # retries and recorded failures
    r = invoke("describe", photos, "--jobs", "1", cwd=cwd, env=env)
    assert r.code == 1, r.stderr  # two photos failed (invalid twice, rejected), two were described
    outputs += [r.stdout, r.stderr]

    standin.api_key = "another-key"  # now the server rejects ours: 401
    r = invoke("describe", photos, "--force", cwd=cwd, env=env)
    assert r.code == 2 and "GROQ_API_KEY" in r.stderr, r.stderr
    outputs += [r.stdout, r.stderr]

    # A crash: the process dies mid-request with every thread's stack dumped (faulthandler).
    standin.api_key = KEY
    standin.set_default(latency=30)
    proc = _spawn_and_wait_for_a_request(standin, photos, cwd, env)
    proc.send_signal(signal.SIGABRT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGABRT and "Fatal Python error" in err
    outputs += [out, err]

    # And Ctrl-C in the middle of a request.
    proc = _spawn_and_wait_for_a_request(standin, photos, cwd, env)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)  # a second Ctrl-C abandons the requests in flight
    out, err = proc.communicate(timeout=60)
    outputs += [out, err]
    standin.set_default(latency=0)

    assert _leaks(*outputs) == []
    files = _state_files(cwd)
    assert any(p.name == "failures.jsonl" for p in files) and any(p.name == "descriptions.jsonl" for p in files)
    assert {str(p): _leaks(p.read_bytes()) for p in files if _leaks(p.read_bytes())} == {}
    # The key went only where it belongs: the Authorization header, never a request body.
    assert all(KEY not in str(q["body"]) for q in standin.requests)


def _photo_with_every_kind_of_metadata(path: Path) -> Path:
    img = Image.new("RGB", (400, 300), (200, 120, 40))
    ImageDraw.Draw(img).ellipse([100, 60, 300, 240], fill=(20, 60, 200))
    exif = Image.Exif()
    exif[0x010F] = "SecretCam Inc"  # Make
    exif[0x0110] = "SpyPhone 9"  # Model
    exif[0x0131] = "PrivateSoft 1.0"  # Software
    exif[0x013B] = "Jane Q Photographer"  # Artist
    exif[0x8298] = "Copyright Jane Q"  # Copyright
    exif[0x0112] = 6  # Orientation: applied to the pixels, not sent as a tag
    exif.get_ifd(0x8769)[0x9003] = "2021:07:04 12:34:56"  # DateTimeOriginal
    exif.get_ifd(0x8769)[0xA431] = "SERIAL-0042-PRIVATE"  # BodySerialNumber
    gps = exif.get_ifd(0x8825)
    gps[1], gps[2], gps[3], gps[4] = "N", (51.0, 30.0, 12.5), "W", (0.0, 7.0, 39.0)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:Description PersonInImage="Jane Q"/></x:xmpmeta>'
    img.save(path, "JPEG", quality=90, exif=exif.tobytes(), comment=b"home address: 1 Secret Lane",
             xmp=xmp, icc_profile=b"\0" * 128 + b"acspPRIVATE-ICC")
    return path


def test_no_metadata_leaves_the_machine(home, standin):
    cwd, photos, env = home
    _photo_with_every_kind_of_metadata(photos / "private.jpg")
    r = invoke("describe", photos, cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    sent = [data for q in standin.requests for data in q["image_bytes"]]
    assert len(sent) == 5
    secrets = [b"SecretCam", b"SpyPhone", b"PrivateSoft", b"Jane Q", b"SERIAL-0042", b"Secret Lane",
               b"2021:07:04", b"xmpmeta", b"PRIVATE-ICC", b"Exif\0\0"]
    sizes = []
    for data in sent:
        assert [s for s in secrets if s in data] == []
        with Image.open(io.BytesIO(data)) as img:
            assert dict(img.getexif()) == {}
            assert not {"exif", "xmp", "comment", "icc_profile", "photoshop"} & set(img.info)
            sizes.append(img.size)
    # The orientation was applied to the pixels (portrait), so nothing needed the tag.
    assert (300, 400) in sizes and (400, 300) not in sizes
    # What the record keeps stays on this machine, in .imgrag/.
    records, _ = jsonl_lines(cwd / ".imgrag" / "descriptions.jsonl")
    private = next(rec for rec in records if rec["paths"] == ["photos/private.jpg"])
    assert private["camera"] == "SecretCam Inc SpyPhone 9" and private["taken"] == "2021-07-04T12:34:56"
    assert private["gps"] and private["gps"][0] > 51 and private["gps"][1] < 0
