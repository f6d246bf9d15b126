"""The chat model that answers questions and checks results (`ask`, `search --verify`):
the describe provider's client and error handling, plus streamed replies, and errors about
the model that name the setting to change (IMGRAG_ANSWER_MODEL, or IMGRAG_MODEL for --look)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from imgrag.config import Settings
from imgrag.providers import make_provider
from imgrag.providers.base import ChatCompletionsProvider, error_code_and_message
from imgrag.providers.errors import FatalProviderError, ProviderError, TransientError


@dataclass
class Streamed:
    """A reply being streamed: headers at once, text as it arrives, usage once it is over."""

    headers: dict[str, str]
    chunks: Iterator[str] = field(repr=False)
    prompt_tokens: int = 0
    completion_tokens: int = 0


class TextChatProvider(ChatCompletionsProvider):
    model_setting = "IMGRAG_ANSWER_MODEL"

    def stream(self, messages: list[dict[str, Any]], max_tokens: int) -> Streamed:
        """Send the request; errors before the first byte of the reply are raised here
        (so they can be retried), errors later while iterating `chunks`."""
        params = self.params_for(messages, max_tokens, json_mode=False) | {"stream": True}
        if self.name == "openai":  # Groq always sends usage in the last chunk; OpenAI when asked
            params["stream_options"] = {"include_usage": True}
        try:
            sdk_stream = self.client.chat.completions.create(**params)
        except self.sdk.APIError as e:
            raise self.sdk_error(e) from None
        headers = {k.lower(): v for k, v in sdk_stream.response.headers.items()}
        reply = Streamed(headers, iter(()))
        reply.chunks = self._chunks(sdk_stream, reply)
        return reply

    def _chunks(self, sdk_stream: Any, reply: Streamed) -> Iterator[str]:
        deadline = time.monotonic() + self.timeout
        try:
            for chunk in sdk_stream:
                usage = getattr(chunk, "usage", None) or getattr(getattr(chunk, "x_groq", None), "usage", None)
                if usage is not None:
                    reply.prompt_tokens = usage.prompt_tokens or 0
                    reply.completion_tokens = usage.completion_tokens or 0
                for choice in chunk.choices or ():
                    text = getattr(choice.delta, "content", None)
                    if text:
                        yield text
                if time.monotonic() > deadline:
                    raise TransientError(f"the reply took longer than {self.timeout:g} s", reply.headers)
        except self.sdk.APIError as e:
            raise self.sdk_error(e) from None
        except Exception as e:  # the connection dropped mid-reply (httpx errors, a torn event)
            if isinstance(e, ProviderError):
                raise
            raise TransientError(f"the reply was cut off ({type(e).__name__}: {e})", reply.headers) from None
        finally:
            sdk_stream.close()

    def _status_error(self, e: Any) -> ProviderError:
        code, message = error_code_and_message(e)
        if code == "model_decommissioned":
            return FatalProviderError(
                f"the model {self.model!r} has been retired by {self.name}: set {self.model_setting} to a current "
                "model (see https://console.groq.com/docs/deprecations)"
            )
        if e.status_code == 404 and (code == "model_not_found" or "model" in message.lower()):
            return FatalProviderError(
                f"the model {self.model!r} was not found at {self.name} ({message}): "
                f"set {self.model_setting} to a model it serves"
            )
        return super()._status_error(e)


def make_text_provider(settings: Settings, model_setting: str = "IMGRAG_ANSWER_MODEL") -> TextChatProvider:
    """The provider for `settings.model`, its client built as describe builds its own."""
    base = make_provider(settings)
    provider = TextChatProvider(name=base.name, client=base.client, sdk=base.sdk, model=base.model,
                                key_setting=base.key_setting, base_url=base.base_url, timeout=base.timeout,
                                base_url_setting=base.base_url_setting)
    provider.model_setting = model_setting
    return provider
