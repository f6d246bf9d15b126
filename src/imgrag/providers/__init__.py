"""Providers: image + prompt in, text + usage + rate-limit headers out (groq and any
OpenAI-compatible server), the Batch API, the chat model of `ask`, pacing and the one retry policy.

Pacing, retries, validation and storage live above this, in `describe`."""

from __future__ import annotations

from imgrag.config import Settings
from imgrag.providers.base import (
    FatalProviderError,
    InvalidReply,
    PhotoRejected,
    ProviderReply,
    QuotaExhausted,
    RateLimited,
    TransientError,
    VisionProvider,
)

__all__ = [
    "FatalProviderError",
    "InvalidReply",
    "PhotoRejected",
    "ProviderReply",
    "QuotaExhausted",
    "RateLimited",
    "TransientError",
    "VisionProvider",
    "make_provider",
]


def make_provider(settings: Settings) -> VisionProvider:
    if settings.provider == "groq":
        from imgrag.providers.groq import make_groq

        return make_groq(settings)
    from imgrag.providers.openai_compat import make_openai_compat

    return make_openai_compat(settings)
