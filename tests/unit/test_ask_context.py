"""`ask` searches a question's subject, not its form (imgrag.ask.context)."""

from __future__ import annotations

import pytest

from imgrag.ask.context import is_survey, search_words


@pytest.mark.parametrize(("question", "subject"), [
    ("which photos show a dog?", "dog"),
    ("which photos were taken at a beach?", "beach"),
    ("when were we last at the beach?", "beach"),
    ("when was the last time it snowed?", "snowed"),
    ("what animals are in my photos?", "animals"),
    ("which sports do my photos show?", "sports"),
    ("what kinds of vehicles are in my photos?", "vehicles"),
    ("do I have any photos of a wedding?", "wedding"),
    ("show me pictures of kids in a pool", "kids in a pool"),
    ("where did I take photos of boats?", "boats"),
    ("a dog running on the beach", "a dog running on the beach"),  # a search, not a question: as it is
    ("which photos?", "which photos?"),  # nothing left: the question as it is
])
def test_search_words(question, subject):
    assert search_words(question) == subject


def test_is_survey():
    assert is_survey("what animals are in my photos?") and is_survey("which sports appear in my photos?")
    assert is_survey("what kinds of food did we eat?")
    assert not is_survey("which photos show a dog?") and not is_survey("when were we last at the beach?")
    assert not is_survey("what was the restaurant called?")
