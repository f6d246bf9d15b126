"""Settings: read once from the environment; a value set wrong stops only the work that uses it."""

from __future__ import annotations

import pytest

from imgrag.config import ANSWER_SETTINGS, VISION_SETTINGS, answer_settings, settings_from
from imgrag.errors import UsageError


def test_a_bad_value_is_raised_where_its_setting_is_used():
    settings = settings_from({"IMGRAG_JOBS": "many", "IMGRAG_ANSWER_PRICE_INPUT": "-1"})
    assert settings.jobs == 4, "the default stands in until the setting is used"
    with pytest.raises(UsageError, match=r"IMGRAG_JOBS='many' is not a valid int"):
        settings.checked(*VISION_SETTINGS)
    with pytest.raises(UsageError, match="IMGRAG_ANSWER_PRICE_INPUT must be greater than 0"):
        answer_settings(settings)
    assert settings.checked("embed_model") is settings, "search needs neither"


def test_the_first_bad_value_in_reading_order_is_the_one_reported():
    settings = settings_from({"IMGRAG_PROVIDER": "acme", "IMGRAG_TIMEOUT": "soon"})
    with pytest.raises(UsageError, match="IMGRAG_PROVIDER='acme': choose one of groq, openai"):
        settings.checked(*VISION_SETTINGS)
    assert settings.checked(*ANSWER_SETTINGS) is settings


def test_a_provider_chosen_by_flag_brings_its_own_key():
    settings = settings_from({"GROQ_API_KEY": "gsk-1", "OPENAI_API_KEY": "sk-2"})
    assert settings.api_key == "gsk-1"
    assert settings.with_flags(provider="openai").api_key == "sk-2"
    assert settings.with_flags(provider="openai", api_key="sk-3").api_key == "sk-3"


def test_a_groq_key_never_goes_to_an_openai_compatible_server():
    settings = settings_from({"GROQ_API_KEY": "gsk-1"})
    assert settings.with_flags(provider="openai").api_key is None
    assert settings.with_flags(provider="openai").require_api_key() == "unused"


def test_answer_model_and_prices():
    answering = answer_settings(settings_from({"IMGRAG_ANSWER_MODEL": "m", "IMGRAG_ANSWER_PRICE_OUTPUT": "2"}))
    assert (answering.model, answering.price_input, answering.price_output) == ("m", 0.15, 2.0)
    assert answer_settings(settings_from({})).model == "openai/gpt-oss-120b"
    with pytest.raises(UsageError, match="no answer model set"):
        answer_settings(settings_from({"IMGRAG_PROVIDER": "openai"}))


def test_the_terminal_and_server_settings():
    settings = settings_from({"NO_COLOR": "1", "TERM": "dumb", "IMGRAG_THUMBNAILS": " Kitty ",
                              "IMGRAG_SERVE_TOKEN": " t0ken ", "IMGRAG_VERIFY": "yes", "IMGRAG_EMBED_MODEL": "m"})
    assert settings.no_color and settings.dumb_terminal and settings.thumbnails == "kitty"
    assert settings.serve_token == "t0ken" and settings.verify_get_image and settings.embed_model == "m"
    assert "t0ken" not in repr(settings)
    bare = settings_from({})
    assert (bare.thumbnails, bare.query_encoder, bare.embed_model, bare.serve_token) == ("auto", "auto", None, None)
