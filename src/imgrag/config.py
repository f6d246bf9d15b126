"""Settings from flags > environment > `.env` > defaults.

`.env` is read from the current directory (or its parents) with python-dotenv and never
overrides a variable already in the environment; flags are applied on top by the CLI.
Every setting is listed in `.env.example`.
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from imgrag.errors import UsageError

# Groq's current vision model (preview; checked against Groq's model and deprecations pages,
# 2026-12). Groq retires vision models every few months: Llama 4 Scout went on 2026-07-17,
# Qwen 3.6 27B on 2026-09-14. When this one goes, IMGRAG_MODEL names its successor.
DEFAULT_GROQ_MODEL = "qwen/qwen3.8-27b"
# Its prices on Groq, USD per million tokens: the --dry-run estimate unless IMGRAG_PRICE_* say otherwise.
DEFAULT_PRICE_INPUT = 0.80
DEFAULT_PRICE_OUTPUT = 4.00
# Models that think before answering unless the request sends reasoning_effort "none".
THINKING_MODEL_PREFIXES = ("qwen/qwen3",)
DEFAULT_EMBED_MODEL = "all-MiniLM-L6-v2"
PROVIDERS = ("groq", "openai")

_env_loaded = False


def load_dotenv_once() -> None:
    """Read `.env` into os.environ (without overriding); junk lines are skipped, not fatal."""
    global _env_loaded
    if _env_loaded:
        return
    _env_loaded = True
    from dotenv import find_dotenv, load_dotenv

    path = find_dotenv(usecwd=True)
    if not path:
        return
    try:
        raw = Path(path).read_bytes()
    except OSError as e:  # a .env we cannot read is not worth failing a cron job over
        print(f"imgrag: warning: cannot read {path}: {e.strerror}", file=sys.stderr)
        return
    # Bytes that are not UTF-8 spoil only their own line, not the whole file.
    load_dotenv(stream=io.StringIO(raw.decode("utf-8", "replace")), override=False)


@dataclass(frozen=True)
class Settings:
    provider: str = "groq"
    model: str | None = None  # vision model; default depends on the provider
    base_url: str | None = None
    api_key: str | None = None
    embed_model: str = DEFAULT_EMBED_MODEL
    jobs: int = 4
    timeout: float = 60.0
    max_retries: int = 5  # per photo, for transient faults (429s excepted: they are paced, not counted)
    max_side: int = 1536
    price_input: float = DEFAULT_PRICE_INPUT  # USD per million input tokens
    price_output: float = DEFAULT_PRICE_OUTPUT  # USD per million output tokens

    @property
    def vision_model(self) -> str:
        if self.model:
            return self.model
        if self.provider == "groq":
            return DEFAULT_GROQ_MODEL
        raise UsageError("no vision model set: pass --model or set IMGRAG_MODEL (e.g. llama3.2-vision for Ollama)")

    def with_flags(self, **flags: Any) -> Settings:
        """Flags given on the command line (not None) win over everything else."""
        known = {f.name for f in fields(self)}
        changes = {k: v for k, v in flags.items() if v is not None and k in known}
        return replace(self, **changes)

    def require_api_key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.provider == "openai":
            return "unused"  # local OpenAI-compatible servers (Ollama, llama.cpp) take any key
        raise UsageError("no API key: set GROQ_API_KEY in the environment or in .env (see .env.example)")


def thinks_by_default(model: str) -> bool:
    """Whether `model` reasons at length before its answer unless asked not to."""
    return model.lower().startswith(THINKING_MODEL_PREFIXES)


def _number(name: str, kind: type, default: Any) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if value <= 0:
        raise UsageError(f"{name} must be greater than 0")
    return value


def load_settings() -> Settings:
    """Settings from the environment and `.env`; the CLI applies flags with `with_flags`."""
    load_dotenv_once()
    env = os.environ.get
    provider = (env("IMGRAG_PROVIDER") or "groq").strip().lower()
    if provider not in PROVIDERS:
        raise UsageError(f"IMGRAG_PROVIDER={provider!r}: choose one of {', '.join(PROVIDERS)}")
    default = Settings()
    return Settings(
        provider=provider,
        model=env("IMGRAG_MODEL") or None,
        base_url=env("IMGRAG_BASE_URL") or None,
        api_key=api_key_for(provider),
        embed_model=env("IMGRAG_EMBED_MODEL") or DEFAULT_EMBED_MODEL,
        jobs=_number("IMGRAG_JOBS", int, default.jobs),
        timeout=_number("IMGRAG_TIMEOUT", float, default.timeout),
        max_retries=_number("IMGRAG_MAX_RETRIES", int, default.max_retries),
        max_side=_number("IMGRAG_MAX_SIDE", int, default.max_side),
        price_input=_number("IMGRAG_PRICE_INPUT", float, default.price_input),
        price_output=_number("IMGRAG_PRICE_OUTPUT", float, default.price_output),
    )


def api_key_for(provider: str) -> str | None:
    """The API key for `provider` from the environment or `.env` (also for one chosen by flag)."""
    load_dotenv_once()
    return os.environ.get("GROQ_API_KEY" if provider == "groq" else "OPENAI_API_KEY") or None


def explicit_embed_model() -> str | None:
    """IMGRAG_EMBED_MODEL if the user set it: a search checks it against the index's model."""
    load_dotenv_once()
    return os.environ.get("IMGRAG_EMBED_MODEL") or None


# -- the answer model: `imgrag ask` and `imgrag search --verify` ----------------------------

# A current Groq production text model (Groq's models and deprecations pages, 2026-12):
# Groq's replacement for llama-3.3-70b-versatile, shut down on 2026-08-16.
DEFAULT_GROQ_ANSWER_MODEL = "openai/gpt-oss-120b"
ANSWER_PRICE_INPUT = 0.15  # USD per million tokens (GPT-OSS 120B on Groq)
ANSWER_PRICE_OUTPUT = 0.60


def answer_settings(settings: Settings) -> Settings:
    """`settings` for the text model that answers and verifies: same provider, base URL and
    key as describe, the model from IMGRAG_ANSWER_MODEL (default: Groq's, else the
    vision model, which reads text too), prices from IMGRAG_ANSWER_PRICE_INPUT/OUTPUT."""
    load_dotenv_once()
    model = os.environ.get("IMGRAG_ANSWER_MODEL") or None
    if model is None:
        model = DEFAULT_GROQ_ANSWER_MODEL if settings.provider == "groq" else settings.model
    if not model:
        raise UsageError("no answer model set: set IMGRAG_ANSWER_MODEL (e.g. llama3.2 for Ollama)")
    return replace(
        settings,
        model=model,
        price_input=_number("IMGRAG_ANSWER_PRICE_INPUT", float, ANSWER_PRICE_INPUT),
        price_output=_number("IMGRAG_ANSWER_PRICE_OUTPUT", float, ANSWER_PRICE_OUTPUT),
    )
