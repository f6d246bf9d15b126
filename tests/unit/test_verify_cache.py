"""The pieces under `ask` and `--verify` that need no index: reading the description log
for a few photos, and the verdict cache surviving a crash mid-write (library level, through
the real groq SDK and the stand-in; no embedding model is loaded, so these are quick)."""

from __future__ import annotations

import json

from imgrag.ask.photo_briefs import load_records
from imgrag.ask.verify import verify_hits
from imgrag.config import Settings
from imgrag.search.ranking import Hit
from imgrag.store.files import json_line
from imgrag.store.workspace import Workspace
from standin_vlm import StandinVLM

A, B, C = "a" * 64, "b" * 64, "c" * 64


def workspace(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / ".imgrag")
    ws.root.mkdir()
    lines = [
        json_line({"sha256": A, "paths": ["p/a.jpg"], "description": {"caption": "an old red kettle"}}),
        json_line({"sha256": B, "paths": ["p/b.jpg"], "description": {"caption": "a dog on a beach"}}),
        json_line({"sha256": A, "paths": ["p/a.jpg"], "description": {"caption": "a red kettle on a stove"}}),
        json_line({"sha256": C, "paths": ["p/c.jpg"], "reason": "no description here"}),
    ]
    ws.paths.descriptions.write_bytes(b"".join(lines) + b'{"sha256": "' + C.encode() + b'", "descr')  # torn tail
    return ws


def hit(ws: Workspace, sha: str, rank: int) -> Hit:
    path = str(ws.base / "p" / f"{sha[0]}.jpg")
    return Hit(rank=rank, score=0.5, sha256=sha, path=path, paths=[path], caption="", taken=None)


def test_load_records_newest_wins_and_skips_the_rest(tmp_path):
    ws = workspace(tmp_path)
    records = load_records(ws, [A, C])
    assert list(records) == [A]  # C has no valid description; B was not asked for
    assert records[A]["description"]["caption"] == "a red kettle on a stove"


def test_verdict_cache_survives_a_torn_write(tmp_path):
    ws = workspace(tmp_path)
    hits = [hit(ws, A, 1), hit(ws, B, 2)]
    with StandinVLM() as server:
        settings = Settings(provider="groq", base_url=server.url, api_key="test-key-cache")
        first = verify_hits("kettle", hits, ws, settings)
        assert [v.verified for v in first.verdicts] == [True, False] and first.requests == 1
        cache = ws.paths.verdicts
        with cache.open("ab") as f:
            f.write(b'{"key": "torn mid-wr')  # a crash in the middle of an append

        again = verify_hits("kettle", hits, ws, settings)
        assert [(v.verified, v.cached) for v in again.verdicts] == [(True, True), (False, True)]
        assert again.requests == 0 and len(server.requests) == 1

        other = verify_hits("dog on the beach", hits, ws, settings)
        assert [v.verified for v in other.verdicts] == [False, True] and other.requests == 1
    records = [json.loads(line) for line in cache.read_bytes().splitlines()]  # the torn tail was cut off
    assert len(records) == 4 and {r["query"] for r in records} == {"kettle", "dog on the beach"}
    assert "test-key-cache" not in cache.read_text()
