"""`imgrag ask` and `imgrag search --verify` through the command, the real `groq` and
`openai` SDKs and the stand-in server, which answers text chat from what it is sent: the
right photos reach the model, citations map to the right paths, answers stream, filters
apply, nothing is sent when nothing matches, 429s and quotas behave as in describe,
photo text cannot steer the answer or the verdicts, and verdicts are cached.

The drawn ask library (tests/libraries.py) is described and indexed once per test session;
each test asks its own copy (the verdict cache is written there), in process, and starts its
own stand-in, so its request log holds only that test's requests. The answer streaming into
a terminal runs the real command in tmux."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from conftest import IMGRAG, copy_tree, invoke, require
from imgrag.config import DEFAULT_GROQ_MODEL
from libraries import ASK_KEY as KEY
from libraries import NOTICE_TEXT, ask_env
from libraries import ask_catalog as catalog
from standin_vlm import StandinVLM


@dataclass
class Lib:
    base: Path
    server: StandinVLM
    env: dict

    def path(self, rel: str) -> str:
        return str(self.base / "photos" / rel)

    def run(self, *args: str, env: dict | None = None):
        r = invoke(*args, cwd=self.base, env=env or self.env)
        assert KEY not in r.stdout + r.stderr
        return r

    def chats(self) -> list[dict]:
        return [r for r in self.server.requests if r["path"].endswith("/chat/completions")]


@pytest.fixture
def lib(library_dir, tmp_path):
    """A copy of the library (no verdict cache yet) with a fresh stand-in, through the groq SDK."""
    base = copy_tree(library_dir, tmp_path / "lib")
    with StandinVLM(catalog=catalog(tmp_path / "refs")) as server:
        yield Lib(base, server, {**ask_env(), "IMGRAG_BASE_URL": server.url})


def openai_env(lib: Lib) -> dict:
    """The openai SDK against the stand-in's /v1; no answer model set: the vision model answers."""
    env = {k: v for k, v in lib.env.items() if k != "GROQ_API_KEY"}
    env.update(IMGRAG_PROVIDER="openai", IMGRAG_BASE_URL=lib.server.openai_base_url, OPENAI_API_KEY=KEY,
               IMGRAG_MODEL="standin-vision")
    return env


def prompt_of(chat: dict) -> str:
    parts = []
    for message in chat["body"]["messages"]:
        content = message["content"]
        parts += [content] if isinstance(content, str) else [p["text"] for p in content if p["type"] == "text"]
    return "\n".join(parts)


def photo_lines(chat: dict) -> list[dict]:
    """The photos the model was sent, as the data block lists them."""
    text = prompt_of(chat)
    block = text[text.index("\n<photos>\n") + len("\n<photos>\n"): text.index("\n</photos>\n")]
    return [json.loads(line.split("] ", 1)[1]) for line in block.strip().splitlines()]


# -- ask ---------------------------------------------------------------------------------


def test_ask_json_groq_cites_the_right_photo(lib):
    r = lib.run("ask", "where is the red kettle?", "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert set(doc) == {"question", "answer", "citations", "photos", "model", "usage"}
    assert doc["model"] == "openai/gpt-oss-120b"  # the default answer model on Groq
    kitchen = next(p for p in doc["photos"] if p["path"] == lib.path("home/kitchen.jpg"))
    assert doc["citations"] == [{"n": kitchen["n"], "id": kitchen["sha256"], "path": kitchen["path"]}]
    assert f"[{kitchen['n']}]" in doc["answer"] and "kettle" in doc["answer"]
    assert [p["n"] for p in doc["photos"]] == list(range(1, len(doc["photos"]) + 1))
    assert doc["usage"]["requests"] == 1 and doc["usage"]["prompt_tokens"] > 0 and doc["usage"]["completion_tokens"] > 0

    (chat,) = lib.chats()
    body = chat["body"]
    assert body["model"] == "openai/gpt-oss-120b" and body["stream"] is True and chat["image_bytes"] == []
    assert chat["headers"]["authorization"] == f"Bearer {KEY}"
    sent = photo_lines(chat)
    assert len(sent) == len(doc["photos"])
    assert sent[kitchen["n"] - 1]["caption"] == "A kitchen with a red kettle on a gas stove."
    assert sent[kitchen["n"] - 1]["folder"] == os.path.join("photos", "home")
    assert "/" + "tmp" not in json.dumps(sent)  # folders relative to the index, never full paths

    # GPS and the EXIF date go along when a photo has them (the beach photo, in Lisbon).
    r = lib.run("ask", "a dog running on the beach", "--json")
    assert r.code == 0, r.stderr
    [beach] = [s for s in photo_lines(lib.chats()[-1]) if s["caption"].startswith("A brown dog")]
    assert beach["gps"] == [38.7, -9.13333] and beach["taken"] == "2023-07-14 10:00"


def test_ask_openai_sdk_and_piped_output(lib):
    lib.server.enqueue({"kind": "429", "retry_after": 1})  # waited out, as describe does
    r = lib.run("ask", "a dog running on the beach", env=openai_env(lib))
    assert r.code == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "A brown dog running on a sandy beach" in lines[0] and "\x1b" not in r.stdout
    cited = [line.split("\t") for line in lines[1:]]
    assert cited[0][1] == lib.path("trips/beach_dog.jpg") and cited[0][2] == "2023-07-14T10:00:00"
    assert cited[0][0] == lines[0][lines[0].index("[") : lines[0].index("]") + 1]
    assert "2 requests" in r.stderr and "standin-vision" in r.stderr
    rate_limited, chat = lib.chats()
    assert rate_limited["response_status"] == 429 and chat["response_status"] == 200
    assert chat["path"] == "/v1/chat/completions" and chat["body"]["model"] == "standin-vision"
    assert chat["body"]["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("provider", ["groq", "openai"])
def test_ask_streams_through_both_sdks(lib, provider, monkeypatch):
    """The library function a web route calls: text chunks as they arrive, then the result."""
    from imgrag.ask.answer import AskResult, ask
    from imgrag.config import load_settings
    from imgrag.search.searcher import Searcher

    env = lib.env if provider == "groq" else openai_env(lib)
    for name in [k for k in os.environ if k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        if name.startswith(("IMGRAG_", "GROQ_", "OPENAI_")):
            monkeypatch.setenv(name, value)
    lib.server.stream_interval = 0.01
    searcher = Searcher(index=lib.base / ".imgrag", embed_model=None)
    events = list(ask("children with a birthday cake", searcher, load_settings()))
    *chunks, result = events
    assert isinstance(result, AskResult) and all(isinstance(c, str) for c in chunks)
    assert len(chunks) > 3 and "".join(chunks).strip() == result.answer
    assert [h.path for _, h in result.cited_hits()] == [lib.path("home/birthday.jpg")]
    assert result.usage["prompt_tokens"] > 0  # usage from the last chunk (x_groq, or include_usage)


def test_ask_filters_reach_the_model(lib):
    # --min-score 0: the photos in the folder are sent whatever their score, and only they.
    r = lib.run("ask", "what is in the photos?", "--in", "photos/home", "--json", "--limit", "8", "--min-score", "0")
    assert r.code == 0, r.stderr
    (chat,) = lib.chats()
    sent = photo_lines(chat)
    assert len(sent) == 3 and {s["folder"] for s in sent} == {os.path.join("photos", "home")}
    # The best match (the beach photo, in trips/) is left out by the filter.
    r = lib.run("ask", "a dog on the beach", "--in", "photos/home", "--json", "--min-score", "0")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["photos"]) == 3 and all(p["path"].startswith(lib.path("home")) for p in doc["photos"])
    # With the default cut-off no photo in home/ is a match: exit 1, nothing sent.
    r = lib.run("ask", "a dog on the beach", "--in", "photos/home", "--json")
    assert r.code == 1 and json.loads(r.stdout)["photos"] == [] and len(lib.chats()) == 2


def test_ask_no_match_sends_nothing(lib):
    r = lib.run("ask", "quarterly tax spreadsheet with invoice numbers")
    assert r.code == 1 and r.stdout == ""
    assert "no photo matches the question" in r.stderr and "nothing was sent" in r.stderr
    r = lib.run("ask", "a dog", "--after", "2090-01-01", "--json")
    assert r.code == 1
    assert json.loads(r.stdout) == {"question": "a dog", "answer": None, "citations": [], "photos": [],
                                    "model": None, "usage": {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}}
    assert lib.chats() == []

    # Sent anyway (--min-score 0), photos that do not tell: the model says so, and cites nothing.
    r = lib.run("ask", "quarterly tax spreadsheet with invoice numbers", "--min-score", "0", "--limit", "2", "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "do not tell" in doc["answer"] and doc["citations"] == [] and len(doc["photos"]) == 2


def test_ask_unknown_citation_is_dropped(lib):
    lib.server.enqueue("cite_unknown")
    r = lib.run("ask", "stop sign at a street corner", "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "[99]" in doc["answer"]
    assert [c["path"] for c in doc["citations"]] == [lib.path("trips/stop_sign.jpg")]


def test_ask_dry_run_prints_the_prompt_and_sends_nothing(lib):
    r = lib.run("ask", "where is the red kettle?", "--dry-run")
    assert r.code == 0, r.stderr
    assert "Question: \"where is the red kettle?\"" in r.stdout and "<photos>" in r.stdout
    assert "A kitchen with a red kettle" in r.stdout and "Never name, identify" in r.stdout
    assert "tokens" in r.stderr and "$" in r.stderr and "nothing was sent" in r.stderr
    r = lib.run("ask", "where is the red kettle?", "--dry-run", "--look", "1", "--json")
    doc = json.loads(r.stdout)
    assert doc["dry_run"] is True and doc["estimate"]["images"] == 1 and doc["estimate"]["prompt_tokens"] > 1800
    assert "[image: JPEG without metadata" in doc["prompt"]
    assert lib.chats() == []


def test_ask_look_sends_the_photo_without_metadata(lib):
    r = lib.run("ask", "a dog running on the beach", "--look", "1", "--json")
    assert r.code == 0, r.stderr
    (chat,) = lib.chats()
    assert chat["body"]["model"] == DEFAULT_GROQ_MODEL  # the vision model looks
    (image,) = chat["image_bytes"]
    with Image.open(__import__("io").BytesIO(image)) as img:
        assert img.format == "JPEG" and not img.getexif() and "exif" not in img.info
    assert json.loads(r.stdout)["photos"][0]["path"] == lib.path("trips/beach_dog.jpg")


def test_ask_retries_429_and_stops_on_quota_key_and_retired_model(lib):
    lib.server.enqueue({"kind": "429", "retry_after": 1})
    r = lib.run("ask", "stop sign at a street corner")
    assert r.code == 0, r.stderr
    assert [c["response_status"] for c in lib.chats()] == [429, 200]

    lib.server.enqueue("daily")
    r = lib.run("ask", "stop sign at a street corner")
    assert r.code == 75 and r.stdout == ""
    assert r.stderr.startswith("imgrag: error: daily quota spent") and len(r.stderr.splitlines()) == 1

    lib.server.enqueue("401")
    r = lib.run("ask", "stop sign at a street corner")
    assert r.code == 2 and "rejected the key" in r.stderr and "GROQ_API_KEY" in r.stderr

    lib.server.enqueue("decommissioned")
    r = lib.run("ask", "stop sign at a street corner")
    assert r.code == 2 and "IMGRAG_ANSWER_MODEL" in r.stderr and "retired" in r.stderr

    lib.server.enqueue("empty")
    r = lib.run("ask", "stop sign at a street corner")
    assert r.code == 75 and "empty answer" in r.stderr

    lib.server.enqueue("stream_cut")
    r = lib.run("ask", "stop sign at a street corner")
    assert r.code == 75 and "cut off" in r.stderr and "Traceback" not in r.stderr


def test_ask_without_key(lib):
    env = {k: v for k, v in lib.env.items() if k != "GROQ_API_KEY"}
    r = invoke("ask", "stop sign", cwd=lib.base, env=env)
    assert r.code == 2 and "GROQ_API_KEY" in r.stderr and lib.chats() == []


# -- injection ---------------------------------------------------------------------------


def test_standin_obeys_instructions_outside_the_data_block(lib):
    """The injection tests below can fail: text that escapes its block is obeyed."""
    import groq

    client = groq.Groq(api_key=KEY, base_url=lib.server.url)
    naive = ("Question: what does the notice say?\n<photos>\n[1] {\"caption\": \"A notice\", \"visible_text\": \""
             + "\", \"".join(NOTICE_TEXT) + "\"}\n</photos>")
    reply = client.chat.completions.create(model="m", messages=[{"role": "user", "content": naive}])
    assert "PWNED" in reply.choices[0].message.content


def test_photo_text_does_not_steer_the_answer_or_the_verdicts(lib):
    r = lib.run("ask", "what does the printed notice on the cork board say?", "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert "PWNED" not in doc["answer"]
    assert doc["citations"][0]["path"] == lib.path("home/notice.jpg")
    (chat,) = lib.chats()
    sent = photo_lines(chat)  # the photo's text went along, as data
    assert any(s.get("visible_text") == NOTICE_TEXT for s in sent)

    r = lib.run("search", "printed notice on a cork board", "--verify", "--json", "--min-score", "0", "--limit", "5")
    assert r.code == 0, r.stderr
    results = json.loads(r.stdout)["results"]
    verdicts = {os.path.basename(h["path"]): h["verified"] for h in results}
    assert verdicts["notice.jpg"] is True
    assert list(verdicts.values()).count(True) == 1, verdicts  # not "keep everything"


# -- search --verify ---------------------------------------------------------------------


def test_verify_json_paths_and_cache(lib):
    args = ("search", "kettle on a gas stove", "--verify", "--min-score", "0", "--limit", "4")
    r = lib.run(*args, "--json")
    assert r.code == 0, r.stderr
    doc = json.loads(r.stdout)
    assert len(doc["results"]) == 4 and doc["count"] == 1
    for h in doc["results"]:
        assert isinstance(h["verified"], bool) and h["reason"] and "score" in h
        assert h["verified"] == (h["path"] == lib.path("home/kitchen.jpg"))
    (chat,) = lib.chats()
    assert chat["body"]["model"] == "openai/gpt-oss-120b" and chat["body"]["response_format"] == {"type": "json_object"}
    assert "kept 1" in r.stderr and "0 from the cache" in r.stderr

    # Again, as --paths: only the kept photo, and no request at all (the cache answers).
    r = lib.run(*args, "--paths")
    assert r.code == 0, r.stderr
    assert r.stdout == lib.path("home/kitchen.jpg") + "\n"
    assert len(lib.chats()) == 1 and "4 from the cache" in r.stderr and "0 requests" in r.stderr
    cache = (lib.base / ".imgrag" / "verdicts.jsonl").read_text()
    assert len(cache.splitlines()) == 4 and KEY not in cache

    # Piped lines list only kept photos; nothing kept: exit 1.
    r = lib.run("search", "a zebra", "--verify", "--min-score", "0", "--limit", "2")
    assert r.code == 1 and r.stdout == "" and "kept 0" in r.stderr


def test_verify_openai_sdk_and_bad_reply_retried(lib):
    lib.server.enqueue("malformed")  # an answer the stand-in spoils: asked again once
    r = lib.run("search", "birthday cake with candles", "--verify", "--limit", "3", "--json", env=openai_env(lib))
    assert r.code == 0, r.stderr
    chats = lib.chats()
    assert [(c["path"], c["response_status"]) for c in chats] == [("/v1/chat/completions", 200)] * 2
    results = json.loads(r.stdout)["results"]
    assert any(h["verified"] for h in results if h["path"] == lib.path("home/birthday.jpg"))


def test_verify_needs_a_query(lib):
    r = lib.run("search", "--like", lib.path("home/kitchen.jpg"), "--verify")
    assert r.code == 2 and "--verify" in r.stderr and lib.chats() == []
    r = invoke("search", "--queries-from", "-", "--verify", cwd=lib.base, env=lib.env, stdin="kettle\n")
    assert r.code == 2 and "--queries-from" in r.stderr and r.stdout == "" and lib.chats() == []


def test_answer_streams_in_a_real_terminal(lib):
    """In a terminal the answer appears word by word, then the cited photos with thumbnails."""
    import shlex
    import subprocess
    import tempfile
    import time

    require("tmux")
    lib.server.stream_interval = 0.25
    env = {k: v for k, v in lib.env.items() if k not in ("NO_COLOR", "COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    folder = tempfile.mkdtemp(prefix="imgrag-tmux-")
    tmux = ["tmux", "-S", os.path.join(folder, "socket"), "-f", os.devnull]
    command = (f"cd {shlex.quote(str(lib.base))} && {shlex.quote(str(IMGRAG))} ask "
               "'children with a birthday cake'; echo __END__; sleep 60")
    subprocess.run([*tmux, "new-session", "-d", "-x", "160", "-y", "50", command], env=env, check=True, timeout=30)
    screens = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not (screens and "__END__" in screens[-1]):
            screens.append(subprocess.run([*tmux, "capture-pane", "-p"], capture_output=True, text=True,
                                          check=True).stdout)
            time.sleep(0.1)
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder, ignore_errors=True)
    final = screens[-1]
    assert "__END__" in final and "Traceback" not in final
    assert "Children blowing out candles on a birthday cake." in final and lib.path("home/birthday.jpg") in final
    assert "\u2580" * 14 in final  # the cited photo's thumbnail
    partial = [s for s in screens if "From the photos:" in s and "birthday cake." not in s]
    assert partial, "the answer never showed in part: not streamed"


def test_ask_finds_the_photos_a_question_is_about(lib):
    # Asked as people ask: the question's form ("which photos were taken at …", "when were we
    # last …") is not searched as if it were a caption (bench/ask_questions.py measures it).
    for question in ("which photos were taken at a beach?", "when were we last at the beach?",
                     "do I have any pictures of a stop sign?"):
        r = lib.run("ask", question, "--dry-run", "--json")
        assert r.code == 0, (question, r.stderr)
        sent = [p["path"] for p in json.loads(r.stdout)["photos"]]
        wanted = lib.path("trips/stop_sign.jpg" if "stop sign" in question else "trips/beach_dog.jpg")
        assert sent and sent[0] == wanted, (question, sent)
    assert lib.chats() == []


def test_search_and_ask_in_other_languages(lib):
    # The descriptions are English; a query in another language finds the same photos
    # (imgrag.index.crosslingual: bench/crosslingual.py measures it).
    for query, photo in (("海辺を走る犬", "trips/beach_dog.jpg"), ("кухня с красным чайником", "home/kitchen.jpg"),
                         ("un perro corriendo en la playa", "trips/beach_dog.jpg")):
        r = lib.run("search", query, "--json")
        assert r.code == 0, (query, r.stderr)
        assert json.loads(r.stdout)["results"][0]["path"] == lib.path(photo), query
    r = lib.run("ask", "Küche mit rotem Wasserkocher", "--dry-run", "--json")
    assert r.code == 0, r.stderr
    assert json.loads(r.stdout)["photos"][0]["path"] == lib.path("home/kitchen.jpg")
    assert lib.chats() == []
