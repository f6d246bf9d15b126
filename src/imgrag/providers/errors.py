"""What can go wrong with a request to a provider, one class per thing to do about it
(retry.py says what that is), and `redact`: the API key is never printed or written."""

from __future__ import annotations


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


class InvalidReply(ProviderError):
    """The server itself found the model's reply not to be valid JSON (Groq's 400
    `json_validate_failed` in JSON mode): retried once with the problem, like any bad reply."""

    def __init__(self, message: str, reply: str, headers: dict[str, str] | None = None):
        super().__init__(message, headers)
        self.reply = reply


class FatalProviderError(ProviderError):
    """Bad key, unknown or retired model: nothing will work until a setting changes."""


def redact(text: str, api_key: str | None) -> str:
    """`text` with the API key in it replaced by ***: for every message that may reach a
    terminal, a log or a file (a server's error may quote the key it was sent)."""
    return text.replace(api_key, "***") if api_key and len(api_key) >= 4 else text
