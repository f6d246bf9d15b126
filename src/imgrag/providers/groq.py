"""Groq through the official `groq` SDK (default provider)."""

from __future__ import annotations

from imgrag.config import Settings
from imgrag.providers.base import ChatCompletionsProvider, make_chat_provider


def make_groq(settings: Settings) -> ChatCompletionsProvider:
    import groq

    return make_chat_provider(settings, groq, groq.Groq, name="groq", key_setting="GROQ_API_KEY")
