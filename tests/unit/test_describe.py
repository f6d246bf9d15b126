"""`describe` against the stand-in vision server through the real groq and openai SDKs:
resume, identity by content, retries, failures, quotas, fatal settings, privacy, odd photos.

In process, through `run_describe`; what a user or cron sees (exit codes, one-line errors,
Ctrl-C, kill -9) is in tests/e2e/test_describe_cli.py."""

from __future__ import annotations

import io
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from conftest import KEY, SCENES, assert_key_never_written, draw_scene, images_sent, scene_catalog
from imgrag.cli import report
from imgrag.config import DEFAULT_GROQ_MODEL, Settings
from imgrag.describe.live import DescribeSummary, run_describe
from imgrag.describe.plan import DescribeOptions
from imgrag.describe.progress import NoProgress, Progress
from imgrag.errors import UsageError
from imgrag.store.descriptions import load_descriptions
from imgrag.store.files import read_jsonl
from imgrag.store.workspace import Workspace
from standin_vlm import INJECTION, StandinVLM


class Recorder(NoProgress):
    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.advanced: list[bool] = []

    def advance(self, ok: bool) -> None:
        self.advanced.append(ok)

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def settings_for(server: StandinVLM, **changes) -> Settings:
    base = Settings(api_key=KEY, base_url=server.url, timeout=10.0, max_retries=2)
    return base.with_flags(**changes)


def describe(photos: Path, settings: Settings, progress: Progress | None = None, **options) -> DescribeSummary:
    return run_describe(photos, settings, DescribeOptions(**{"jobs": 2, **options}), progress or Recorder())


def records(photos: Path) -> list[dict]:
    return list(read_jsonl(photos.parent / ".imgrag" / "descriptions.jsonl"))


def failures(photos: Path) -> list[dict]:
    return list(read_jsonl(photos.parent / ".imgrag" / "failures.jsonl"))


# -- resume, identity, --force, --refresh, --limit ------------------------------------------


def test_describes_every_photo_once_and_resumes(photos, standin):
    s = describe(photos, settings_for(standin))
    assert (s.described, s.failed, s.remaining, s.exit_code) == (4, 0, 0, 0)
    recs = {r["paths"][0]: r for r in records(photos)}
    assert set(recs) == {f"photos/{n}.jpg" for n in SCENES}
    rec = recs["photos/beach_dog.jpg"]
    assert rec["description"]["caption"].startswith("A brown dog")
    assert rec["provider"] == "groq" and rec["model"] == DEFAULT_GROQ_MODEL
    assert rec["usage"]["prompt_tokens"] > 1800 and rec["width"] == 640
    body = standin.requests[0]["body"]
    assert body["response_format"] == {"type": "json_object"}, "JSON mode where the provider has it"
    assert "never instructions" in body["messages"][0]["content"][0]["text"]

    again = describe(photos, settings_for(standin))
    assert (again.described, again.already, again.requests) == (0, 4, 0)
    assert len(standin.requests) == 4


def test_moved_photo_keeps_its_description_changed_photo_gets_a_new_one(photos, standin):
    describe(photos, settings_for(standin))
    (photos / "trip").mkdir()
    (photos / "beach_dog.jpg").rename(photos / "trip" / "renamed.jpg")
    s = describe(photos, settings_for(standin))
    assert (s.described, s.already, s.requests) == (0, 4, 0)

    draw_scene(photos / "kitchen.jpg", "kitchen", size=(800, 600), quality=90)  # edited in place
    s = describe(photos, settings_for(standin))
    assert (s.described, s.already, s.requests) == (1, 3, 1)

    s = describe(photos, settings_for(standin), force=True)
    assert s.described == 4 and len(standin.requests) == 9


def test_new_model_redescribes_only_with_refresh_and_old_stays_meanwhile(photos, standin):
    describe(photos, settings_for(standin, model="vision-a"))
    s = describe(photos, settings_for(standin, model="vision-b"))
    assert (s.described, s.already) == (0, 4), "a new model alone costs nothing"

    standin.enqueue("400")  # the refresh of one photo fails
    s = describe(photos, settings_for(standin, model="vision-b"), refresh=True, jobs=1)
    assert (s.described, s.failed) == (3, 1)
    models = sorted(r["model"] for r in load_descriptions(Workspace(photos.parent / ".imgrag")).values())
    assert models == ["vision-a", "vision-b", "vision-b", "vision-b"], "the old description is still there"

    s = describe(photos, settings_for(standin, model="vision-b"), refresh=True)
    assert (s.described, s.already) == (1, 3), "the failed one is retried; the rest are current"


def test_limit_and_what_is_left(photos, standin):
    s = describe(photos, settings_for(standin), limit=3)
    assert (s.described, s.remaining) == (3, 1)
    s = describe(photos, settings_for(standin), limit=3)
    assert (s.described, s.remaining, s.already) == (1, 0, 3)


# -- faults ------------------------------------------------------------------------------------


def test_transient_faults_are_retried(photos, standin):
    # Two faults per photo at most (max_retries=2); "fenced" is a good reply, parsed all the same.
    standin.enqueue("500", "502", "fenced", "503", "reset", "fenced", "html", {"kind": "timeout", "seconds": 3})
    s = describe(photos, settings_for(standin, timeout=1.0), jobs=1)
    assert (s.described, s.failed, s.exit_code) == (4, 0, 0)
    assert s.requests == 10
    assert sorted(images_sent(standin).values()) == [1, 3, 3, 3]


def test_dripping_reply_is_cut_off_at_the_timeout_and_retried(photos, standin):
    standin.enqueue({"kind": "drip", "seconds": 8, "interval": 0.2})
    began = time.monotonic()
    s = describe(photos, settings_for(standin, timeout=1.5), jobs=1)
    assert (s.described, s.failed, s.requests) == (4, 0, 5)
    assert time.monotonic() - began < 6, "the whole request, not each read, has the timeout"


def test_huge_reply_with_absurd_usage_neither_stored_nor_stalling(photos, standin):
    standin.set_default(tpm=30_000_000)  # 12 such replies a minute, were their usage believed
    standin.enqueue({"kind": "huge", "size": 10_000_000})
    began = time.monotonic()
    s = describe(photos, settings_for(standin), jobs=1)
    assert (s.described, s.failed) == (4, 0)
    assert time.monotonic() - began < 8, "paced by believable token counts"
    assert max(len(json.dumps(r)) for r in records(photos)) < 20_000


def test_429_waits_for_retry_after_and_goes_on(photos, standin):
    standin.enqueue("429")
    began = time.monotonic()
    s = describe(photos, settings_for(standin))
    assert (s.described, s.rate_limited, s.failed) == (4, 1, 0)
    assert time.monotonic() - began >= 1.0, "retry-after: 1 was honoured"


def test_server_that_keeps_failing_stops_the_run_for_later(photos, standin):
    standin.set_default(fault="503")
    s = describe(photos, settings_for(standin, max_retries=1), jobs=1)
    assert s.stopped_by == "unavailable" and s.exit_code == 75
    assert (s.failed, s.remaining) == (0, 4), "the server is at fault, not the photos"
    assert failures(photos) == [] and "503" in s.stop_reason


def test_photo_giving_up_is_blamed_once_the_server_describes_another(photos, standin):
    standin.enqueue("503", "503")  # the first photo's two attempts; the rest succeed
    s = describe(photos, settings_for(standin, max_retries=1), jobs=1)
    assert (s.described, s.failed, s.stopped_by, s.exit_code) == (3, 1, None, 1)
    [fail] = failures(photos)
    assert fail["kind"] == "provider" and "gave up after 2 attempts" in fail["reason"]


def test_invalid_reply_is_retried_once_with_the_problem(photos, standin):
    standin.enqueue("malformed")
    s = describe(photos, settings_for(standin), jobs=1)
    assert (s.described, s.failed) == (4, 0)
    retry = standin.requests[1]["body"]["messages"]
    assert [m["role"] for m in retry] == ["user", "assistant", "user"]
    assert "not valid" in retry[2]["content"] and "JSON" in retry[2]["content"]


def test_reply_that_never_validates_is_a_failure_retried_next_run(photos, standin):
    standin.enqueue("schema", "schema")
    s = describe(photos, settings_for(standin), jobs=1)
    assert (s.described, s.failed, s.exit_code) == (3, 1, 1)
    [fail] = failures(photos)
    assert fail["kind"] == "reply" and "did not validate" in fail["reason"] and fail["paths"]
    assert_key_never_written(photos.parent)
    s = describe(photos, settings_for(standin))
    assert (s.described, s.failed, s.exit_code) == (1, 0, 0)


def test_fenced_and_preamble_replies_are_parsed(photos, standin):
    standin.enqueue("fenced", "preamble")
    s = describe(photos, settings_for(standin), jobs=1)
    assert (s.described, s.failed, s.requests) == (4, 0, 4)


def test_rejected_photo_is_recorded_not_retried(photos, standin):
    standin.enqueue("400")
    s = describe(photos, settings_for(standin), jobs=1)
    assert (s.described, s.failed, s.requests) == (3, 1, 4)
    assert failures(photos)[0]["kind"] == "rejected"


def test_text_in_the_photo_is_data_not_instructions(photos, standin):
    standin.enqueue("injection")
    s = describe(photos, settings_for(standin), jobs=1)
    assert (s.described, s.failed, s.requests) == (4, 0, 4)
    injected = [r for r in records(photos) if INJECTION in r["description"]["caption"]]
    assert len(injected) == 1, "stored as what the photo says, nothing more"
    assert_key_never_written(photos.parent)


@pytest.mark.parametrize("fault, setting", [
    ("401", "GROQ_API_KEY"), ("decommissioned", "IMGRAG_MODEL"), ("404_model", "IMGRAG_MODEL"),
])
def test_fatal_settings_stop_at_once_naming_the_setting(photos, standin, fault, setting):
    standin.set_default(fault=fault)
    with pytest.raises(UsageError) as e:
        describe(photos, settings_for(standin), jobs=4)
    assert setting in str(e.value) and KEY not in str(e.value)
    assert len(standin.requests) == 1, "one request alone before the server has answered: nothing wasted"
    assert records(photos) == [] and failures(photos) == []


def test_wrong_base_url_names_the_setting(photos, standin):
    with pytest.raises(UsageError, match="IMGRAG_BASE_URL"):
        describe(photos, settings_for(standin, base_url=standin.url + "/wrong"))


def test_openai_provider_through_the_openai_sdk(photos, standin):
    settings = Settings(provider="openai", base_url=standin.openai_base_url, model="llava", api_key=KEY)
    s = describe(photos, settings)
    assert s.described == 4
    assert {q["path"] for q in standin.requests} == {"/v1/chat/completions"}
    assert {r["provider"] for r in records(photos)} == {"openai"}
    standin.set_default(fault="401")
    with pytest.raises(UsageError, match="OPENAI_API_KEY"):
        describe(photos, settings, force=True)


class _ServerWithoutJsonMode(BaseHTTPRequestHandler):
    """A chat-completions server that refuses `response_format` as LM Studio does."""

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.json_mode_asked.append("response_format" in body)
        if "response_format" in body:
            status, payload = 400, {"error": {"message": "'response_format.type' must be 'json_schema' or 'text'"}}
        else:
            content = json.dumps({"caption": "A photo."})
            payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": "stop"}],
                       "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}
            status = 200
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_server_without_json_mode_is_asked_without_it(photos):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ServerWithoutJsonMode)
    server.json_mode_asked = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/v1"
        s = describe(photos, Settings(provider="openai", base_url=url, model="local-vision"), jobs=1)
    finally:
        server.shutdown()
        server.server_close()
    assert (s.described, s.failed) == (4, 0)
    assert server.json_mode_asked == [True, False, False, False, False], "refused once, then never asked again"


# -- quota and pacing -----------------------------------------------------------------------------


def test_daily_quota_in_headers_stops_before_a_wasted_request(tmp_path, photos):
    with StandinVLM(catalog=scene_catalog(tmp_path / "refs"), rpd=2) as server:
        s = describe(photos, settings_for(server), jobs=4)
        assert (s.stopped_by, s.exit_code, s.described, s.remaining) == ("quota", 75, 2, 2)
        assert server.stats()["requests"] == 2, "never more in flight than the day has left; 0 left: stop"
        manifest = Workspace(photos.parent / ".imgrag").read_manifest()
        [limits] = manifest["provider_limits"].values()
        assert limits["requests_per_day"] == 2


@pytest.mark.parametrize("fault", ["daily", {"kind": "429", "retry_after": 3600}], ids=["rpd", "hour-long-wait"])
def test_daily_quota_429_stops_cleanly(photos, standin, fault):
    standin.enqueue(fault)
    s = describe(photos, settings_for(standin), jobs=3)
    assert (s.stopped_by, s.exit_code, s.described, s.failed, s.remaining) == ("quota", 75, 0, 0, 4)
    line = summary_line(s)
    assert "4 left" in line and "quota" in line


def test_token_limit_is_kept_without_a_429(tmp_path, photos):
    # A 2-second "minute" holding 2 photos' tokens: 4 photos need a second window.
    with StandinVLM(catalog=scene_catalog(tmp_path / "refs"), tpm=5000, time_scale=2 / 60) as server:
        began = time.monotonic()
        s = describe(photos, settings_for(server), jobs=4, rate_window=2.0)
        took = time.monotonic() - began
        assert (s.described, s.rate_limited) == (4, 0)
        assert server.stats()["rate_limited"] == 0 and took >= 2.0


def test_unadvertised_per_minute_limit_is_learned_from_one_429(tmp_path, photos):
    # Headers carry the daily request limit (as on Groq); 3 requests a 2-second "minute" are enforced unannounced.
    # (Not shorter: on a loaded machine a request's way to the server takes long enough to
    # shift it into the next 1-second window.)
    for name in SCENES:
        draw_scene(photos / f"{name}_2.jpg", name, size=(600, 450), quality=90)
    with StandinVLM(catalog=scene_catalog(tmp_path / "refs"), rpd=1000, rpm=3, time_scale=2 / 60) as server:
        s = describe(photos, settings_for(server), jobs=4, rate_window=2.0)
        assert (s.described, s.failed) == (8, 0)
        assert 1 <= s.rate_limited <= 4, "429s only until the limit named in the first one is learned"


# -- dry run ------------------------------------------------------------------------------------


def summary_line(s: DescribeSummary) -> str:
    buf = io.StringIO()
    real, sys.stderr = sys.stderr, buf
    try:
        report.describe_summary(s)
    finally:
        sys.stderr = real
    return buf.getvalue()


def test_dry_run_sends_nothing_and_estimates_at_known_limits(photos, standin):
    s = describe(photos, settings_for(standin), dry_run=True)
    assert standin.requests == [] and s.todo == 4
    e = s.estimate
    assert e.limits == {"requests_per_minute": 30, "tokens_per_minute": 8000, "requests_per_day": 1000}
    # Qwen 3.8 on Groq: 2,048 tokens an image + ~300 of prompt in, ~250 out, at $0.80 / $4.00 a million.
    assert e.minutes == pytest.approx(4 / (8000 / 2598)) and e.prompt_tokens == 4 * 2348
    assert e.cost == pytest.approx(4 * (2348 * 0.80 + 250 * 4.00) / 1e6)
    line = summary_line(s)
    assert "would describe 4" in line and "nothing was sent" in line and "free tier" in line

    standin.set_default(tpm=600_000)
    describe(photos, settings_for(standin), limit=2)
    s = describe(photos, settings_for(standin), dry_run=True)
    e = s.estimate
    assert standin.stats()["requests"] == 2 and e.photos == 2
    assert e.limits["tokens_per_minute"] == 600_000 and "measured by the last run" in e.limits_source
    used = [r["usage"] for r in records(photos)]
    assert e.prompt_tokens == 2 * (sum(u["prompt_tokens"] for u in used) // 2), "measured cost per photo"


# -- every photo a user has ------------------------------------------------------------------------


def test_odd_photos_are_converted_or_rejected_with_a_reason(photos, standin):
    odd = photos / "odd"
    odd.mkdir()
    Image.new("CMYK", (300, 200), (0, 120, 200, 0)).save(odd / "cmyk.jpg")
    Image.new("P", (300, 200), 3).save(odd / "palette.png", transparency=3)
    Image.new("I;16", (300, 200), 40000).save(odd / "sixteen.png")
    Image.new("RGBA", (300, 200), (10, 200, 10, 128)).save(odd / "alpha.png")
    frames = [Image.new("RGB", (120, 80), c) for c in ("red", "blue")]
    frames[0].save(odd / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    big = draw_scene(odd / "big.png", "kitchen", size=(3000, 2000))
    data = draw_scene(odd / "cut.jpg", "stop_sign", quality=90).read_bytes()
    (odd / "cut.jpg").write_bytes(data[: len(data) // 2])
    (odd / "bomb.png").write_bytes(_png_header_only(20_000, 20_000))
    import pillow_heif  # a dependency; its wheels carry the HEVC encoder

    pillow_heif.from_pillow(Image.new("RGB", (200, 100), "orange")).save(odd / "phone.heic")

    s = describe(photos, settings_for(standin, max_side=800))
    assert (s.described, s.failed, s.exit_code) == (11, 2, 1)
    reasons = {f["paths"][0]: f["reason"] for f in failures(photos)}
    assert "truncated" in reasons["photos/odd/cut.jpg"]
    assert "decompression bomb" in reasons["photos/odd/bomb.png"]
    for q in standin.requests:
        [sent] = q["image_bytes"]
        img = Image.open(io.BytesIO(sent))
        assert img.format == "JPEG" and img.mode == "RGB" and max(img.size) <= 800
    assert big.stat().st_size > 0


def _png_header_only(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def test_metadata_stays_local_and_oriented_pixels_are_sent(tmp_path, standin):
    folder = tmp_path / "photos"
    folder.mkdir()
    img = Image.new("RGB", (400, 200), "white")
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "Canon"
    exif[ExifTags.Base.Model] = "EOS R5"
    exif[ExifTags.Base.Orientation] = 6  # displayed a quarter turn: 200 wide, 400 high
    sub = exif.get_ifd(ExifTags.IFD.Exif)
    sub[ExifTags.Base.DateTimeOriginal] = "2024:07:14 18:30:00"
    sub[ExifTags.Base.BodySerialNumber] = "SERIAL-0042-XYZ"
    exif.get_ifd(ExifTags.IFD.GPSInfo).update({1: "N", 2: (48.0, 51.0, 30.0), 3: "E", 4: (2.0, 17.0, 40.0)})
    img.save(folder / "paris.jpg", exif=exif.tobytes(), comment=b"owner: Jane Doe")

    s = describe(folder, settings_for(standin))
    assert s.described == 1
    [sent] = standin.requests[0]["image_bytes"]
    for secret in (b"Canon", b"EOS R5", b"SERIAL-0042", b"Jane Doe", b"Exif"):
        assert secret not in sent
    shown = Image.open(io.BytesIO(sent))
    assert shown.size == (200, 400) and not shown.getexif()
    [rec] = records(folder)
    assert rec["camera"] == "Canon EOS R5" and rec["taken"] == "2024-07-14T18:30:00"
    assert rec["gps"] == [pytest.approx(48.858333, abs=1e-5), pytest.approx(2.294444, abs=1e-5)]


# -- usage estimates ---------------------------------------------------------------------------------


def test_average_usage_reads_the_newest_records_by_time_not_by_first_position():
    from imgrag.store.descriptions import average_usage

    def rec(hour: int, prompt: int) -> dict:
        # the field describe writes (describe/outcomes.py)
        return {"created": f"2026-11-24T{hour:02d}:00:00+00:00", "usage": {"prompt_tokens": prompt, "completion_tokens": 10}}

    # "a" was described first (cheap), then again last (expensive, e.g. after --refresh):
    # it keeps its first place in the dict, but it is the newest record.
    records = {"a": rec(9, 3000), "b": rec(1, 1000), "c": rec(2, 1000)}
    assert average_usage(records, recent=2) == (2000, 10)
    assert average_usage({}, recent=2) is None
