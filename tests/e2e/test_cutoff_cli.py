"""The default result set through the command, on the drawn library (tests/libraries.py:
beach dog, kitchen, stop sign, birthday): one concept shows its photo only, an off-topic
query exits 1 with the hint, and --all, --min-score and --limit override it.
The cut-off itself is tested in process in tests/unit/test_cutoff.py."""

from __future__ import annotations

import json


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def shown_paths(library, *args):
    r = library.search(*args, "--json")
    doc = json.loads(r.stdout)
    return r.code, sorted(h["path"].removeprefix(str(library.photos) + "/") for h in doc["results"])


def test_cli_one_concept_shows_its_photo_only(library):
    assert shown_paths(library, "stop sign") == (0, ["trips/stop_sign.jpg"])
    assert shown_paths(library, "kettle") == (0, ["home/kitchen.jpg"])


def test_cli_off_topic_exits_1_with_the_hint(library):
    r = library.search("invoice number 4471")
    assert r.code == 1 and r.stdout == ""
    line = one_line(r.stderr)
    assert line.startswith("imgrag: no matching photos") and "--all" in line and "--min-score 0" in line


def test_cli_all_min_score_and_limit_override(library):
    code, everything = shown_paths(library, "invoice number 4471", "--all")
    assert code == 0 and len(everything) == 4  # every photo (the birthday photo's copy shares its row)
    assert shown_paths(library, "invoice number 4471", "--all", "--limit", "2")[1].__len__() == 2
    assert len(shown_paths(library, "invoice number 4471", "--min-score", "0")[1]) == 4
    assert shown_paths(library, "stop sign", "--min-score", "0", "--limit", "1") == (0, ["trips/stop_sign.jpg"])
    r = library.search("dog", "--all", "--min-score", "0.3")
    assert r.code == 2 and one_line(r.stderr).startswith("imgrag: error: --all and --min-score cannot be combined")
