"""Settings from flags > environment > `.env` > defaults: the one place imgrag reads its
environment.

`load_settings()` reads every setting once into a `Settings`; the CLI applies its flags
with `with_flags`; everything else (describe, search, the renderer, the server's routes)
receives that object and reads no environment of its own. `.env` is read from the current
directory (or its parents) with python-dotenv and never overrides a variable already in
the environment. Every setting is listed in `.env.example`.

A value that is not valid (IMGRAG_JOBS=many) does not stop every command: it is kept in
`Settings.invalid` and raised by `checked()` where its setting is used, so a bad
IMGRAG_JOBS stops describe but not search. Choices a single module understands
(IMGRAG_QUERY_ENCODER, IMGRAG_THUMBNAILS) are kept as given and checked there.
"""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
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

# A current Groq production text model (Groq's models and deprecations pages, 2026-12):
# Groq's replacement for llama-3.3-70b-versatile, shut down on 2026-08-16.
DEFAULT_GROQ_ANSWER_MODEL = "openai/gpt-oss-120b"
ANSWER_PRICE_INPUT = 0.15  # USD per million tokens (GPT-OSS 120B on Groq)
ANSWER_PRICE_OUTPUT = 0.60

# The settings each kind of work needs valid (see Settings.checked).
VISION_SETTINGS = ("provider", "jobs", "timeout", "max_retries", "max_side", "price_input", "price_output")
ANSWER_SETTINGS = ("answer_price_input", "answer_price_output")

_API_KEY_VARS = {"groq": "GROQ_API_KEY", "openai": "OPENAI_API_KEY"}
# Read by the provider's own SDK when IMGRAG_BASE_URL (or --base-url) is not set.
_SDK_BASE_URL_VARS = {"groq": "GROQ_BASE_URL", "openai": "OPENAI_BASE_URL"}
_TRUE = ("1", "true", "yes", "on")

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
    # -- the vision model: describe, index, ask --look ------------------------------------
    provider: str = "groq"
    model: str | None = None  # vision model; default depends on the provider
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    jobs: int = 4
    timeout: float = 60.0
    max_retries: int = 5  # per photo, for transient faults (429s excepted: they are paced, not counted)
    max_side: int = 1536
    price_input: float = DEFAULT_PRICE_INPUT  # USD per million input tokens
    price_output: float = DEFAULT_PRICE_OUTPUT  # USD per million output tokens
    # -- the answer model: ask, search --verify (same provider, base URL and key) ---------
    answer_model: str | None = None  # default: Groq's answer model, else the vision model
    answer_price_input: float = ANSWER_PRICE_INPUT
    answer_price_output: float = ANSWER_PRICE_OUTPUT
    # -- embedding and search -------------------------------------------------------------
    # The embedding model the user chose; None: an index keeps its own (DEFAULT_EMBED_MODEL
    # for a new one), and a search takes whichever model the index was built with.
    embed_model: str | None = None
    query_encoder: str = "auto"  # as given; imgrag.index.query_encoder checks it
    # -- a library in PostgreSQL (imgrag.library) ------------------------------------------
    store: str | None = field(default=None, repr=False)  # IMGRAG_STORE: postgresql://... (may hold a password)
    store_library: str | None = None  # IMGRAG_STORE_LIBRARY: whose copies this machine's paths are (default: host name)
    store_lease: float = 600.0  # IMGRAG_STORE_LEASE: seconds a worker's claim on a photo lasts
    # -- the terminal (the CLI's renderer) --------------------------------------------------
    thumbnails: str = "auto"  # IMGRAG_THUMBNAILS as given; imgrag.cli.render checks it
    no_color: bool = False  # NO_COLOR is set
    dumb_terminal: bool = False  # TERM=dumb
    colorterm: str = ""  # COLORTERM: "truecolor" or "24bit" in terminals with 24-bit colour
    in_tmux: bool = False  # TMUX is set
    # -- imgrag serve -----------------------------------------------------------------------
    serve_token: str | None = field(default=None, repr=False)  # IMGRAG_SERVE_TOKEN
    verify_get_image: bool = False  # IMGRAG_VERIFY: the original POST /get_image keeps verified photos only
    # Every provider's key from the environment, for a provider chosen by flag (`with_flags`).
    api_keys: Mapping[str, str | None] = field(default_factory=dict, repr=False, compare=False)
    # GROQ_BASE_URL / OPENAI_BASE_URL as set (each SDK reads its own; IMGRAG_BASE_URL wins), for messages.
    sdk_base_urls: Mapping[str, str | None] = field(default_factory=dict, compare=False)
    # Values the environment gave that are not valid, as (setting, error): raised by `checked`.
    invalid: tuple[tuple[str, str], ...] = ()

    @property
    def vision_model(self) -> str:
        if self.model:
            return self.model
        if self.provider == "groq":
            return DEFAULT_GROQ_MODEL
        raise UsageError("no vision model set: pass --model or set IMGRAG_MODEL (e.g. llama3.2-vision for Ollama)")

    def base_url_setting(self) -> str:
        """The setting that chose the vision server's URL, for messages that name it."""
        if self.base_url:
            return "IMGRAG_BASE_URL (or --base-url)"
        var = _SDK_BASE_URL_VARS.get(self.provider)
        if var and self.sdk_base_urls.get(self.provider):
            return var
        return "IMGRAG_BASE_URL"  # the provider's default URL: this is how to point elsewhere

    def with_flags(self, **flags: Any) -> Settings:
        """Flags given on the command line (not None) win over everything else. A provider
        chosen by flag brings its own key from the environment, or none."""
        known = {f.name for f in fields(self)}
        changes = {k: v for k, v in flags.items() if v is not None and k in known}
        provider = changes.get("provider")
        if provider and provider != self.provider and "api_key" not in changes:
            # Never the other provider's key: a Groq key must not reach another server.
            changes["api_key"] = self.api_keys.get("groq" if provider == "groq" else "openai")
        return replace(self, **changes)

    def checked(self, *names: str) -> Settings:
        """These settings, once the named ones are valid; else the UsageError of the first
        the environment set wrong (in the order they are read)."""
        for name, message in self.invalid:
            if name in names:
                raise UsageError(message)
        return self

    def require_api_key(self) -> str:
        if self.api_key:
            return self.api_key
        if self.provider == "openai":
            return "unused"  # local OpenAI-compatible servers (Ollama, llama.cpp) take any key
        raise UsageError("no API key: set GROQ_API_KEY in the environment or in .env (see .env.example)")


def thinks_by_default(model: str) -> bool:
    """Whether `model` reasons at length before its answer unless asked not to."""
    return model.lower().startswith(THINKING_MODEL_PREFIXES)


def load_settings() -> Settings:
    """Every setting from the environment and `.env` (read once per process); the CLI
    applies flags with `with_flags`. Never raises: see `Settings.checked`."""
    load_dotenv_once()
    return settings_from(os.environ)


def settings_from(env: Mapping[str, str]) -> Settings:
    """The settings these environment variables give."""
    invalid: list[tuple[str, str]] = []

    def number(setting: str, name: str, kind: Callable[[str], Any], default: Any) -> Any:
        try:
            return _number(env, name, kind, default)
        except UsageError as e:
            invalid.append((setting, str(e)))
            return default

    provider = (env.get("IMGRAG_PROVIDER") or "groq").strip().lower()
    if provider not in PROVIDERS:
        invalid.append(("provider", f"IMGRAG_PROVIDER={provider!r}: choose one of {', '.join(PROVIDERS)}"))
    keys = {p: env.get(var) or None for p, var in _API_KEY_VARS.items()}
    default = Settings()
    return Settings(
        provider=provider,
        model=env.get("IMGRAG_MODEL") or None,
        base_url=env.get("IMGRAG_BASE_URL") or None,
        api_key=keys.get(provider),
        jobs=number("jobs", "IMGRAG_JOBS", int, default.jobs),
        timeout=number("timeout", "IMGRAG_TIMEOUT", float, default.timeout),
        max_retries=number("max_retries", "IMGRAG_MAX_RETRIES", int, default.max_retries),
        max_side=number("max_side", "IMGRAG_MAX_SIDE", int, default.max_side),
        price_input=number("price_input", "IMGRAG_PRICE_INPUT", float, default.price_input),
        price_output=number("price_output", "IMGRAG_PRICE_OUTPUT", float, default.price_output),
        answer_model=env.get("IMGRAG_ANSWER_MODEL") or None,
        answer_price_input=number("answer_price_input", "IMGRAG_ANSWER_PRICE_INPUT", float, ANSWER_PRICE_INPUT),
        answer_price_output=number("answer_price_output", "IMGRAG_ANSWER_PRICE_OUTPUT", float, ANSWER_PRICE_OUTPUT),
        embed_model=env.get("IMGRAG_EMBED_MODEL") or None,
        query_encoder=(env.get("IMGRAG_QUERY_ENCODER") or "auto").strip().lower(),
        thumbnails=env.get("IMGRAG_THUMBNAILS", "").strip().lower() or "auto",
        store=env.get("IMGRAG_STORE", "").strip() or None,
        store_library=env.get("IMGRAG_STORE_LIBRARY", "").strip() or None,
        store_lease=number("store_lease", "IMGRAG_STORE_LEASE", float, default.store_lease),
        no_color=bool(env.get("NO_COLOR")),
        dumb_terminal=env.get("TERM") == "dumb",
        colorterm=env.get("COLORTERM", "").strip().lower(),
        in_tmux=bool(env.get("TMUX")),
        serve_token=env.get("IMGRAG_SERVE_TOKEN", "").strip() or None,
        verify_get_image=env.get("IMGRAG_VERIFY", "").strip().lower() in _TRUE,
        api_keys=keys,
        sdk_base_urls={p: env.get(var) or None for p, var in _SDK_BASE_URL_VARS.items()},
        invalid=tuple(invalid),
    )


def _number(env: Mapping[str, str], name: str, kind: Callable[[str], Any], default: Any) -> Any:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a valid {getattr(kind, '__name__', 'number')}") from None
    if value <= 0:
        raise UsageError(f"{name} must be greater than 0")
    return value


def answer_settings(settings: Settings) -> Settings:
    """`settings` for the text model that answers and verifies: same provider, base URL and
    key as describe, the model from IMGRAG_ANSWER_MODEL (default: Groq's, else the
    vision model, which reads text too), prices from IMGRAG_ANSWER_PRICE_INPUT/OUTPUT."""
    model = settings.answer_model
    if model is None:
        model = DEFAULT_GROQ_ANSWER_MODEL if settings.provider == "groq" else settings.model
    if not model:
        raise UsageError("no answer model set: set IMGRAG_ANSWER_MODEL (e.g. llama3.2 for Ollama)")
    settings.checked(*ANSWER_SETTINGS)
    return replace(settings, model=model, price_input=settings.answer_price_input,
                   price_output=settings.answer_price_output)
