"""Vision providers: image + prompt in, text + usage + rate-limit headers out.

Pacing, retries, validation and storage live above this, in `describe`."""

from __future__ import annotations

from ..config import Settings
from .base import (
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
        from .groq import make_groq

        return make_groq(settings)
    from .openai_compat import make_openai_compat

    return make_openai_compat(settings)
