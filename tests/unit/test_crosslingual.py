"""Which queries go to the multilingual model (imgrag.index.crosslingual)."""

from __future__ import annotations

import numpy as np
import pytest

from imgrag.index import crosslingual


@pytest.mark.parametrize("query", ["a dog running on the beach", "red kettle", "tennis", "birthday cake",
                                   "Black men in poor neighborhood .", "giraffe"])
def test_english_stays_with_the_english_model(query):
    assert crosslingual.is_english(query)


@pytest.mark.parametrize("query", ["ein Hund läuft am Strand", "un chien court sur la plage", "海辺の犬", "пляж",
                                   "해변의 개", "海滩上的狗", "Sahilde koşan bir köpek"])
def test_other_languages_go_to_the_multilingual_model(query):
    assert not crosslingual.is_english(query)


def test_multilingual_vectors_land_near_their_english_meaning():
    from imgrag.index.embedding import DEFAULT_MODEL, load_model

    english = load_model(DEFAULT_MODEL).encode(["a dog running on the beach", "a red kettle in a kitchen",
                                                "people skiing down a snowy mountain"])
    queries = crosslingual.multilingual_vectors(["Ein Hund rennt am Strand", "キッチンの赤いやかん", "Люди катаются на лыжах с горы"])
    assert np.allclose(np.linalg.norm(queries, axis=1), 1.0, atol=1e-5)
    assert list(np.argmax(queries @ english.T, axis=1)) == [0, 1, 2]


def test_only_the_model_the_map_was_fitted_to():
    from imgrag.index.embedding import DEFAULT_MODEL
    from imgrag.index.query_encoder import SentenceTransformersEncoder

    english = SentenceTransformersEncoder(DEFAULT_MODEL)
    assert isinstance(crosslingual.for_model(english, "all-MiniLM-L6-v2"), crosslingual.CrossLingualEncoder)
    assert crosslingual.for_model(english, "sentence-transformers/all-mpnet-base-v2") is english


def test_a_query_in_another_language_gets_the_multilingual_default_set():
    from imgrag.index import default_model
    from imgrag.search.cutoff import DEFAULT_CUTOFF, MULTILINGUAL_CUTOFF
    from imgrag.search.searcher import QueryVectors

    vectors = QueryVectors(crosslingual.CrossLingualEncoder(default_model.open_encoder()))
    assert vectors.cutoff("Raketenstart bei Nacht") is MULTILINGUAL_CUTOFF
    assert vectors.cutoff("夜のロケット") is MULTILINGUAL_CUTOFF
    assert vectors.cutoff("rocket launch at night") is DEFAULT_CUTOFF
    # another model's index has no map: every query is English to it
    assert QueryVectors(default_model.open_encoder()).cutoff("Raketenstart bei Nacht") is DEFAULT_CUTOFF


def test_the_score_alone_decides_by_its_own_bar_without_a_background():
    from imgrag.search.cutoff import MULTILINGUAL_CUTOFF, Background, shown

    scores, words = np.array([0.35, 0.31, 0.2], np.float32), np.zeros(3, np.float32)
    assert list(shown(scores, words, None, MULTILINGUAL_CUTOFF)) == [True, True, False]
    # with a background (a collection of 30 photos or more) the score bar is `score`, and standing counts
    assert list(shown(scores, words, Background(0.3, 0.1), MULTILINGUAL_CUTOFF)) == [False, False, False]
    assert list(shown(scores, words, Background(0.05, 0.04), MULTILINGUAL_CUTOFF)) == [True, True, False]
