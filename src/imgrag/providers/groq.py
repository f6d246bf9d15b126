"""Groq through the official `groq` SDK (default provider)."""

from __future__ import annotations

from ..config import Settings
from .base import ChatCompletionsProvider


def make_groq(settings: Settings) -> ChatCompletionsProvider:
    import groq

    client = groq.Groq(
        api_key=settings.require_api_key(),
        base_url=settings.base_url,  # None: the SDK's default (or GROQ_BASE_URL)
        max_retries=0,  # retries are ours: they share the pacing of every worker
        timeout=settings.timeout,
    )
    return ChatCompletionsProvider(
        name="groq", client=client, sdk=groq, model=settings.vision_model, key_setting="GROQ_API_KEY",
        base_url=settings.base_url, timeout=settings.timeout,
    )
