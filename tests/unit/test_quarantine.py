"""Which failures count towards quarantine (imgrag.describe.quarantine), in process.
What a cron job sees is in tests/e2e/test_quarantine_cli.py."""

from __future__ import annotations

import pytest

from imgrag.describe.quarantine import permanent_reason, strikes


@pytest.mark.parametrize("kind, reason, permanent", [
    ("photo", "unreadable photo: truncated or corrupt image", "unreadable"),
    ("photo", "unreadable photo: empty file", "unreadable"),
    ("photo", "unreadable photo: too large (decompression bomb: 1600 megapixels)", "decompression bomb"),
    ("photo", "unreadable photo: permission denied", None),  # chmod fixes it: not the photo's fault
    ("photo", "unreadable photo: file not found", None),
    ("rejected", "rejected by the model (400: Invalid image data: the image could not be decoded)", "invalid image"),
    ("rejected", "rejected by the model (400: 'messages.0.content' : value is invalid)", None),
    ("provider", "gave up after 6 attempts: server error 503: Service Unavailable", None),
    ("reply", "the reply did not validate twice: the reply holds no JSON object", None),
])
def test_which_reasons_are_permanent(kind, reason, permanent):
    assert permanent_reason(kind, reason) == permanent


def test_strikes_count_the_same_permanent_reason_in_a_row_only():
    assert strikes(None, "unreadable") == 1
    assert strikes({"permanent": "unreadable", "strikes": 2}, "unreadable") == 3
    assert strikes({"permanent": "invalid image", "strikes": 2}, "unreadable") == 1, "another reason starts over"
    assert strikes({"permanent": None, "strikes": 0}, "unreadable") == 1, "a transient failure broke the streak"
    assert strikes({"permanent": "unreadable", "strikes": 2}, None) == 0
    assert strikes({"reason": "written by an older imgrag"}, "unreadable") == 1
