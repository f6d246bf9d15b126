"""Any OpenAI-compatible server (Ollama, llama.cpp server, vLLM, LM Studio, OpenAI)
through the official `openai` SDK and --base-url (e.g. http://localhost:11434/v1 for Ollama)."""

from __future__ import annotations

from imgrag.config import Settings
from imgrag.providers.base import ChatCompletionsProvider, make_chat_provider


def make_openai_compat(settings: Settings) -> ChatCompletionsProvider:
    import openai

    return make_chat_provider(settings, openai, openai.OpenAI, name="openai", key_setting="OPENAI_API_KEY")
