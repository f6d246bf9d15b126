"""The sample photos `imgrag demo` ships (imgrag/sample_photos): licences, size, descriptions."""

from __future__ import annotations

import json
import re
from pathlib import Path

from imgrag import demo as demo_module
from imgrag.describe.schema import PhotoDescription

SAMPLES = Path(demo_module.__file__).parent / "sample_photos"


def test_every_sample_is_public_domain_or_cc0_small_and_described():
    photos = sorted(SAMPLES.glob("*.jpg"))
    licences = (SAMPLES / "README.md").read_text()
    described = json.loads((SAMPLES / "descriptions.json").read_text())
    assert len(photos) == 6 and sum(p.stat().st_size for p in photos) < 400_000
    for photo in photos:
        [row] = [line for line in licences.splitlines() if line.startswith(f"| `{photo.name}`")]
        assert re.search(r"\| (Public domain|CC0) \(", row), row
        PhotoDescription.model_validate(described[photo.name])
    assert set(described) - {"_note"} == {p.name for p in photos}
