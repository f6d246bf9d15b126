"""What `imgrag search` prints for a hit (imgrag.cli.render), in process."""

from __future__ import annotations

import json
import os


def test_odd_file_names_stay_one_line_and_exact(capsysbinary):
    """A file name holding a tab, a newline and a byte that is not UTF-8 (an old Latin-1
    drive): one line per hit in the tab-separated output, the exact bytes with -0, and
    JSON that reads back to the same name."""
    from imgrag.cli import render
    from imgrag.search.ranking import Hit

    name = "/photos/" + os.fsdecode(b"caf\xe9") + "\tnew\nline.jpg"
    hit = Hit(rank=1, score=0.5, sha256="0" * 64, path=name, paths=[name], caption="A cafe\nterrace.", taken=None)

    render.hits_paths([hit, hit], nul=True)
    assert capsysbinary.readouterr().out == os.fsencode(name) + b"\0" + os.fsencode(name) + b"\0"

    render.hits_table([hit])  # not a terminal: tab-separated
    line = capsysbinary.readouterr().out.decode("utf-8")
    assert line == "1\t0.500\t/photos/caf\ufffd\\tnew\\nline.jpg\tA cafe terrace.\n"

    print(render.hits_json("cafe", [hit]))
    doc = json.loads(capsysbinary.readouterr().out)
    assert doc["results"][0]["path"] == name and doc["results"][0]["paths"] == [name]
