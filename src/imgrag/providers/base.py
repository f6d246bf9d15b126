"""The provider contract and the chat-completions adapter shared by the groq and openai SDKs.

Both SDKs are generated from the same template (same methods, same exception classes),
so one adapter serves both; each provider module only names its SDK and client class."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from imgrag.config import DEFAULT_GROQ_MODEL, Settings, thinks_by_default
from imgrag.providers.errors import (
    FatalProviderError,
    InvalidReply,
    PhotoRejected,
    ProviderError,
    QuotaExhausted,
    RateLimited,
    TransientError,
)
from imgrag.providers.retry import LONG_WAIT


@dataclass
class ProviderReply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class VisionProvider(Protocol):
    """What describe, the Batch API (batch_api.py) and the chat model (chat.py) use of a
    provider; `ChatCompletionsProvider` is the one there is."""

    name: str
    model: str
    key_setting: str  # the setting that holds its API key, for messages
    base_url: str | None  # the URL requests go to (the SDK's, whichever setting chose it), for messages
    base_url_setting: str  # the setting that chose it, for messages
    timeout: float
    client: Any  # the SDK's client: the Batch API and the chat model send through it too
    sdk: ModuleType

    def params_for(self, messages: list[dict[str, Any]], max_tokens: int = ..., *,
                   json_mode: bool | None = None) -> dict[str, Any]: ...
    def complete(self, messages: list[dict[str, Any]], max_tokens: int = ...) -> ProviderReply: ...
    def parse_completion(self, body: bytes | dict[str, Any], headers: dict[str, str]) -> ProviderReply: ...
    def sdk_error(self, e: Any) -> ProviderError: ...


# The longest reply asked for; a description takes ~150-400 tokens.
MAX_REPLY_TOKENS = 1024

_DAILY_MARKERS = ("per day", "(rpd)", "(tpd)")


def make_chat_provider(settings: Settings, sdk: ModuleType, client_class: Any, *, name: str,
                       key_setting: str) -> ChatCompletionsProvider:
    """A provider on `sdk`, whose client class takes the same arguments in both SDKs."""
    client = client_class(
        api_key=settings.require_api_key(),
        base_url=settings.base_url,  # None: the SDK's default (or its GROQ_/OPENAI_BASE_URL)
        max_retries=0,  # retries are ours: they share the pacing of every worker
        timeout=settings.timeout,
    )
    return ChatCompletionsProvider(
        name=name, client=client, sdk=sdk, model=settings.vision_model, key_setting=key_setting,
        # The URL the SDK uses: IMGRAG_BASE_URL, else its own GROQ_/OPENAI_BASE_URL, else its default.
        base_url=str(client.base_url).rstrip("/"), timeout=settings.timeout,
        base_url_setting=settings.base_url_setting(),
    )


class ChatCompletionsProvider:
    def __init__(self, *, name: str, client: Any, sdk: ModuleType, model: str, key_setting: str,
                 base_url: str | None = None, timeout: float = 60.0,
                 base_url_setting: str = "IMGRAG_BASE_URL") -> None:
        self.name = name
        self.base_url_setting = base_url_setting
        self.client = client
        self.sdk = sdk
        self.model = model
        self.key_setting = key_setting
        self.base_url = base_url
        self.json_mode = True  # until the server says it has none
        # Thinking models (Qwen 3.x) reason for hundreds of tokens before the JSON unless told not to.
        self.reasoning_off = thinks_by_default(model)
        self.timeout = timeout  # seconds for a whole request, reply included

    def params_for(self, messages: list[dict[str, Any]], max_tokens: int = MAX_REPLY_TOKENS, *,
                   json_mode: bool | None = None) -> dict[str, Any]:
        """A chat request's parameters: JSON mode (unless the server has none, or json_mode=False)
        and, for thinking models, no thinking."""
        params: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": 0.2,
                                  "max_tokens": max_tokens}
        if self.reasoning_off:
            params["reasoning_effort"] = "none"
        if self.json_mode and json_mode is not False:
            params["response_format"] = {"type": "json_object"}
        return params

    def complete(self, messages: list[dict[str, Any]], max_tokens: int = MAX_REPLY_TOKENS) -> ProviderReply:
        """One chat request in JSON mode (see `_create`): what describe sends for a photo."""
        return self.send(self.params_for(messages, max_tokens))

    def send(self, params: dict[str, Any]) -> ProviderReply:
        """One request, its errors sorted into ours."""
        try:
            headers, body = self._create(params)
        except self.sdk.APIError as e:
            raise self.sdk_error(e) from None
        return self.parse_completion(body, headers)

    def parse_completion(self, body: bytes | dict[str, Any], headers: dict[str, str]) -> ProviderReply:
        """A chat completion's text and usage: of a live reply (bytes) or of a batch output line (parsed)."""
        completions = self.sdk.types.chat.ChatCompletion
        try:
            completion = completions.model_validate(body) if isinstance(body, dict) else completions.model_validate_json(body)
        except ValueError:  # a 200 whose body is not a completion (an HTML page, junk)
            raise TransientError(f"unreadable response ({str(body)[:80]!r})", headers) from None
        return self._reply(completion, headers)

    def sdk_error(self, e: Any) -> ProviderError:
        """Our error for an exception of the SDK (any `sdk.APIError`)."""
        if isinstance(e, self.sdk.APIStatusError):
            return self._status_error(e)
        if isinstance(e, self.sdk.APITimeoutError):
            return TransientError("the request timed out")
        if isinstance(e, self.sdk.APIConnectionError):
            where = self.base_url or f"the {self.name} API"
            return TransientError(f"cannot connect to {where} ({e.__cause__ or e}): check {self.base_url_setting} "
                                  "and the network")
        return TransientError(f"unreadable response ({e})")  # a response the SDK cannot read

    def _create(self, params: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """The chat request, in JSON mode unless the server has refused JSON mode: some
        OpenAI-compatible servers (LM Studio, older llama.cpp) reject `json_object` with a
        400; the prompt asks for JSON anyway and replies are validated either way."""
        try:
            return self._send(params)
        except self.sdk.BadRequestError as e:
            if "response_format" not in params or "response_format" not in error_code_and_message(e)[1].lower():
                raise
            self.json_mode = False
            return self._send({k: v for k, v in params.items() if k != "response_format"})

    def _send(self, params: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        """(headers, body) of one request, within `timeout` seconds in all. The SDK's
        timeout is per read, so a server dripping its reply a few bytes at a time would
        hold a worker for as long as it likes: the body is read here against a deadline."""
        deadline = time.monotonic() + self.timeout
        with self.client.chat.completions.with_streaming_response.create(**params) as response:
            headers = {k.lower(): v for k, v in response.headers.items()}
            chunks = []
            for chunk in response.iter_bytes():
                chunks.append(chunk)
                if time.monotonic() > deadline:  # leaving the block drops the connection
                    raise TransientError(f"the reply took longer than {self.timeout:g} s", headers)
        return headers, b"".join(chunks)

    def _reply(self, completion: Any, headers: dict[str, str]) -> ProviderReply:
        try:
            text = completion.choices[0].message.content or ""
        except (AttributeError, IndexError, TypeError):
            raise TransientError("the response holds no completion", headers) from None
        usage = getattr(completion, "usage", None)
        return ProviderReply(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            headers=headers,
        )

    def _status_error(self, e: Any) -> ProviderError:
        status = e.status_code
        headers = {k.lower(): v for k, v in e.response.headers.items()}
        code, message = error_code_and_message(e)
        retry_after = _retry_after(headers)
        if status == 429:
            if any(m in message.lower() for m in _DAILY_MARKERS):
                return QuotaExhausted(f"daily quota spent ({message})", headers, retry_after)
            if code == "insufficient_quota":  # OpenAI: the account's credit is spent
                return QuotaExhausted(f"quota spent ({message})", headers, retry_after)
            if retry_after is not None and retry_after > LONG_WAIT:
                return QuotaExhausted(f"rate limited for {retry_after / 60:.0f} minutes ({message})", headers, retry_after)
            return RateLimited(f"rate limited: {message}", headers, retry_after)
        if code == "json_validate_failed":
            return InvalidReply(f"the reply was not valid JSON ({message})", _failed_generation(e), headers)
        if status in (401, 403):
            return FatalProviderError(
                f"the {self.name} API rejected the key ({status}): check {self.key_setting}", headers
            )
        if code == "model_decommissioned":
            return FatalProviderError(_retired_message(self.name, self.model), headers)
        if status == 404 and code != "model_not_found" and "model" not in message.lower():
            return FatalProviderError(
                f"no chat-completions endpoint at {self.base_url or 'the default URL'} (404: {message}): "
                f"check {self.base_url_setting}; OpenAI-compatible servers usually end in /v1",
                headers,
            )
        if status == 404 or code == "model_not_found":
            return FatalProviderError(
                f"the vision model {self.model!r} was not found at {self.name} ({message}): "
                "set IMGRAG_MODEL (or --model) to a vision model it serves",
                headers,
            )
        if status in (400, 413, 415, 422):
            return PhotoRejected(f"rejected by the model ({status}: {message})", headers)
        return TransientError(f"server error {status}: {message}", headers, retry_after)


def _retired_message(provider: str, model: str) -> str:
    """One line naming the setting to change and what to change it to."""
    if provider == "groq" and model != DEFAULT_GROQ_MODEL:
        fix = f"set IMGRAG_MODEL (or --model) to a current vision model, e.g. {DEFAULT_GROQ_MODEL} (the default)"
    elif provider == "groq":  # the default itself has gone: only Groq's pages know its successor
        fix = "set IMGRAG_MODEL (or --model) to a current vision model from https://console.groq.com/docs/models"
    else:
        fix = "set IMGRAG_MODEL (or --model) to a current vision model"
    return f"the vision model {model!r} has been retired by {provider}: {fix}"


def error_code_and_message(e: Any) -> tuple[str, str]:
    body = e.body
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            return "", body[:200]
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            return str(err.get("code") or ""), str(err.get("message") or "")[:300]
    return "", str(e.message)[:300]


def _failed_generation(e: Any) -> str:
    body = e.body if isinstance(e.body, dict) else {}
    err = body.get("error", body)
    return str(err.get("failed_generation") or "") if isinstance(err, dict) else ""


def _retry_after(headers: dict[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
