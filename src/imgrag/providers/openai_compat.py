"""Any OpenAI-compatible server (Ollama, llama.cpp server, vLLM, LM Studio, OpenAI)
through the official `openai` SDK and --base-url."""

from __future__ import annotations

from ..config import Settings
from .base import ChatCompletionsProvider


def make_openai_compat(settings: Settings) -> ChatCompletionsProvider:
    import openai

    client = openai.OpenAI(
        api_key=settings.require_api_key(),
        base_url=settings.base_url,  # e.g. http://localhost:11434/v1 for Ollama
        max_retries=0,  # retries are ours: they share the pacing of every worker
        timeout=settings.timeout,
    )
    return ChatCompletionsProvider(
        name="openai", client=client, sdk=openai, model=settings.vision_model, key_setting="OPENAI_API_KEY",
        base_url=settings.base_url, timeout=settings.timeout,
    )
