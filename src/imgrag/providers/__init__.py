"""Providers: chat messages (a photo and the prompt) in, text + usage + rate-limit headers out
(groq and any OpenAI-compatible server), the Batch API, the chat model of `ask`, pacing and
the one retry policy.

- `errors`: what can go wrong with a request, and `redact` (the API key is never shown);
- `retry`: what is done about each error, for live describe, the Batch API and the chat model;
- `pacing`: when the next request may start, by what the server says of its limits;
- `base`: the provider contract and its one implementation, on the groq or openai SDK
  (`groq`, `openai_compat`); `batch_api`: the files and batches endpoints; `chat`: `ask`'s model.

Validation and storage live above this, in `describe`; the SDKs are imported only when a
provider is made."""

from __future__ import annotations

from imgrag.config import Settings
from imgrag.providers.base import ProviderReply, VisionProvider
from imgrag.providers.errors import (
    FatalProviderError,
    InvalidReply,
    PhotoRejected,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    TransientError,
    redact,
)
from imgrag.providers.groq import make_groq
from imgrag.providers.openai_compat import make_openai_compat

__all__ = [
    "FatalProviderError",
    "InvalidReply",
    "PhotoRejected",
    "ProviderError",
    "ProviderReply",
    "QuotaExhausted",
    "RateLimited",
    "TransientError",
    "VisionProvider",
    "make_provider",
    "redact",
]


def make_provider(settings: Settings) -> VisionProvider:
    if settings.provider == "groq":
        return make_groq(settings)
    return make_openai_compat(settings)
