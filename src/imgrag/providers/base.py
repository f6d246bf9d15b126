"""The provider contract and the chat-completions adapter shared by the groq and openai SDKs.

Both SDKs are generated from the same template (same methods, same exception classes),
so one adapter serves both; each provider module only builds its client."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

from ..schema import SYSTEM_PROMPT, USER_PROMPT


@dataclass
class ProviderReply:
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    headers: dict[str, str] = field(default_factory=dict)


class ProviderError(Exception):
    def __init__(self, message: str, headers: dict[str, str] | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.headers = headers or {}
        self.retry_after = retry_after


class TransientError(ProviderError):
    """5xx, timeouts, connection resets, garbled 200s: worth retrying after a pause."""


class RateLimited(TransientError):
    """429 on a per-minute limit: wait `retry_after` and go on."""


class QuotaExhausted(ProviderError):
    """429 on a daily limit: stop the run cleanly, try again tomorrow (exit 75)."""


class PhotoRejected(ProviderError):
    """The server refused this photo (400/413/422): record a failure, go on with the rest."""


class FatalProviderError(ProviderError):
    """Bad key, unknown or retired model: nothing will work until a setting changes."""


class VisionProvider(Protocol):
    name: str
    model: str

    def describe(self, data_url: str, retry_feedback: tuple[str, str] | None = None) -> ProviderReply: ...


_DAILY_MARKERS = ("per day", "(rpd)", "(tpd)")


class ChatCompletionsProvider:
    def __init__(self, *, name: str, client: Any, sdk: ModuleType, model: str, key_setting: str) -> None:
        self.name = name
        self.client = client
        self.sdk = sdk
        self.model = model
        self.key_setting = key_setting

    def describe(self, data_url: str, retry_feedback: tuple[str, str] | None = None) -> ProviderReply:
        """One request. `retry_feedback` = (previous reply, what was wrong with it)."""
        # Instructions go in the user turn: some vision models refuse a system prompt next to an image.
        messages: list[dict[str, Any]] = [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": f"{SYSTEM_PROMPT}\n\n{USER_PROMPT}"},
                    {"type": "image_url", "image_url": {"url": data_url}},
                ],
            }
        ]
        if retry_feedback:
            previous, problem = retry_feedback
            messages.append({"role": "assistant", "content": previous[:4000]})
            messages.append(
                {"role": "user", "content": f"That reply was not valid: {problem}. Reply again with only the JSON object."}
            )
        try:
            raw = self.client.chat.completions.with_raw_response.create(
                model=self.model,
                messages=messages,
                response_format={"type": "json_object"},
                temperature=0.2,
                max_tokens=1024,
            )
            headers = {k.lower(): v for k, v in raw.headers.items()}
            completion = raw.parse()
        except self.sdk.APIStatusError as e:
            raise self._status_error(e) from None
        except self.sdk.APITimeoutError:
            raise TransientError("the request timed out") from None
        except self.sdk.APIConnectionError as e:
            raise TransientError(f"connection failed ({e.__cause__ or e})") from None
        except self.sdk.APIError as e:  # a 200 whose body is not a completion (HTML page, junk)
            raise TransientError(f"unreadable response ({e})") from None
        return self._reply(completion, headers)

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
        code, message = _error_code_and_message(e)
        retry_after = _retry_after(headers)
        if status == 429:
            if any(m in message.lower() for m in _DAILY_MARKERS):
                return QuotaExhausted(f"daily quota spent ({message})", headers, retry_after)
            return RateLimited(f"rate limited: {message}", headers, retry_after)
        if status in (401, 403):
            return FatalProviderError(
                f"the {self.name} API rejected the key ({status}): check {self.key_setting}", headers
            )
        if code == "model_decommissioned":
            return FatalProviderError(
                f"the vision model {self.model!r} has been retired by {self.name}: "
                "set IMGRAG_MODEL (or --model) to a current vision model",
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


def _error_code_and_message(e: Any) -> tuple[str, str]:
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


def _retry_after(headers: dict[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                continue
    return None
