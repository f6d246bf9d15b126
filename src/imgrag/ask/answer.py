"""`imgrag ask`: retrieve the photos that best match a question (the ranking and filters
of `search`), send their descriptions to a chat model, stream its short answer, and map
the photos it cites ([1], [2]) back to their paths.

`plan_ask()` is everything before the request (what `--dry-run` shows); `answer_plan()`
sends it and yields the answer's text as it arrives, then one `AskResult` (the `--json`
shape). The CLI and the web route call both (the route with the server's shared Caller);
`ask()` is the two in one call, for a library user."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from imgrag.ask.context import context_hits
from imgrag.ask.photo_briefs import answer_item, load_records
from imgrag.ask.prompts import answer_messages, prompt_text, text_chars
from imgrag.config import Settings, answer_settings
from imgrag.errors import TryLater, UsageError
from imgrag.photos.files import PhotoError, prepare_image
from imgrag.providers import TransientError, redact
from imgrag.providers.chat import make_text_provider
from imgrag.providers.retry import Caller
from imgrag.search.ranking import Hit
from imgrag.search.searcher import Searcher, clean_query

DEFAULT_LIMIT = 8
# Room for the answer, and for the reasoning of a model that thinks first (GPT-OSS).
MAX_ANSWER_TOKENS = 2048
# Estimates for --dry-run: tokens are ~4 characters of English; an image costs ~1,800
# tokens at any size past ~1,000 px (describe's estimate); an answer with its reasoning ~400.
CHARS_PER_TOKEN = 4
IMAGE_TOKENS = 1800
EST_ANSWER_TOKENS = 400

_CITATION = re.compile(r"\[(\d{1,3}(?:\s*,\s*\d{1,3})*)\]")


@dataclass
class AskPlan:
    """The request `ask` would send (nothing is sent to build it)."""

    question: str
    hits: list[Hit]
    messages: list[dict[str, Any]] = field(default_factory=list, repr=False)
    settings: Settings | None = None  # provider, model and prices of the model that answers
    model_setting: str = "IMGRAG_ANSWER_MODEL"
    images: int = 0

    @property
    def model(self) -> str | None:
        return self.settings.model if self.settings and self.hits else None

    @property
    def prompt_tokens(self) -> int:
        return text_chars(self.messages) // CHARS_PER_TOKEN + IMAGE_TOKENS * self.images if self.hits else 0

    @property
    def completion_tokens_estimate(self) -> int:
        return EST_ANSWER_TOKENS if self.hits else 0

    @property
    def cost(self) -> float:
        """USD at the configured prices, for the prompt and a typical answer."""
        if not self.hits or self.settings is None:
            return 0.0
        s = self.settings
        return (self.prompt_tokens * s.price_input + EST_ANSWER_TOKENS * s.price_output) / 1e6

    def prompt(self) -> str:
        return prompt_text(self.messages)

    def as_dict(self) -> dict[str, Any]:
        return {"question": self.question, "dry_run": True, "model": self.model, "prompt": self.prompt(),
                "photos": [photo_record(n, h) for n, h in enumerate(self.hits, start=1)],
                "estimate": {"prompt_tokens": self.prompt_tokens, "completion_tokens": EST_ANSWER_TOKENS,
                             "images": self.images, "cost_usd": round(self.cost, 6)}}


@dataclass
class Citation:
    n: int
    id: str  # the photo's content hash (its identity in the index)
    path: str


@dataclass
class AskResult:
    question: str
    answer: str | None  # None: no photo matched, nothing was sent
    citations: list[Citation]
    hits: list[Hit]  # the photos sent, [1] first
    model: str | None
    usage: dict[str, int]

    @property
    def found(self) -> bool:
        return bool(self.hits)

    def cited_hits(self) -> list[tuple[int, Hit]]:
        return [(c.n, self.hits[c.n - 1]) for c in self.citations]

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "citations": [{"n": c.n, "id": c.id, "path": c.path} for c in self.citations],
            "photos": [photo_record(n, h) for n, h in enumerate(self.hits, start=1)],
            "model": self.model,
            "usage": self.usage,
        }


def photo_record(n: int, hit: Hit) -> dict[str, Any]:
    return {"n": n, "id": hit.sha256, **hit.as_dict()}


def citations(answer: str, hits: list[Hit]) -> list[Citation]:
    """The photos an answer cites, first mention first; a number naming no photo sent is dropped."""
    seen: dict[int, Citation] = {}
    for group in _CITATION.findall(answer):
        for part in group.split(","):
            n = int(part)
            if 1 <= n <= len(hits) and n not in seen:
                seen[n] = Citation(n, hits[n - 1].sha256, hits[n - 1].path)
    return list(seen.values())


def plan_ask(question: str, searcher: Searcher, settings: Settings, *, limit: int = DEFAULT_LIMIT,
             look: int = 0, min_score: float | None = None) -> AskPlan:
    """Retrieve the photos and build the exact request; send nothing."""
    question = clean_query(question)
    if limit < 1:
        raise UsageError("--limit must be at least 1")
    if look < 0:
        raise UsageError("--look must be 0 or more")
    hits = context_hits(searcher, question, limit, min_score)
    if not hits:
        return AskPlan(question, [])
    # A library in PostgreSQL (imgrag.library) keeps the records itself; a .imgrag/ folder in descriptions.jsonl.
    stored = getattr(searcher, "records", None)
    records = stored([h.sha256 for h in hits]) if stored else load_records(searcher.ws, [h.sha256 for h in hits])
    items = [answer_item(searcher.ws, h, records.get(h.sha256)) for h in hits]
    images = _images(hits[:look], settings) if look else []
    if images:  # the photos themselves: the vision model answers
        answering, setting = replace(settings, model=settings.vision_model), "IMGRAG_MODEL"
    else:
        answering, setting = answer_settings(settings), "IMGRAG_ANSWER_MODEL"
    return AskPlan(question, hits, answer_messages(question, items, images), answering, setting, len(images))


def _images(hits: list[Hit], settings: Settings) -> list[str]:
    """Data URLs of the photos as describe sends them: downscaled, re-encoded, no metadata."""
    urls = []
    for hit in hits:
        try:
            urls.append(prepare_image(Path(hit.path), max_side=settings.max_side).data_url())
        except (PhotoError, OSError) as e:
            raise UsageError(f"--look: cannot read {hit.path} ({e})") from None
    return urls


def ask(question: str, searcher: Searcher, settings: Settings, *, limit: int = DEFAULT_LIMIT, look: int = 0,
        min_score: float | None = None, caller: Caller | None = None) -> Iterator[str | AskResult]:
    """Yield the answer's text as it streams in, then the AskResult. No photo above the
    cut-off: only the AskResult (answer None), and nothing is sent."""
    plan = plan_ask(question, searcher, settings, limit=limit, look=look, min_score=min_score)
    yield from answer_plan(plan, caller)


def answer_plan(plan: AskPlan, caller: Caller | None = None) -> Iterator[str | AskResult]:
    """Send a plan (from `plan_ask`): its answer's text as it streams in, then the AskResult."""
    usage = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0}
    if not plan.hits:
        yield AskResult(plan.question, None, [], [], None, usage)
        return
    answering = plan.settings
    assert answering is not None, "a plan with photos names the model that answers"
    provider = make_text_provider(answering, plan.model_setting)
    caller = caller or Caller(answering)
    sent = [0]
    reply = caller.call(lambda: provider.stream(plan.messages, MAX_ANSWER_TOKENS), sent)
    parts: list[str] = []
    try:
        for text in reply.chunks:
            parts.append(text)
            yield text
    except TransientError as e:  # mid-answer: what was shown cannot be taken back, so no retry
        raise TryLater(redact(f"the answer was cut off: {e}", caller.settings.api_key)) from None
    caller.learn(reply.prompt_tokens, reply.completion_tokens)
    answer = "".join(parts).strip()
    if not answer:  # e.g. a reasoning model that spent its tokens thinking
        raise TryLater(f"the model {answering.model} returned an empty answer: try again")
    usage.update(requests=sent[0], prompt_tokens=reply.prompt_tokens,
                 completion_tokens=reply.completion_tokens)
    yield AskResult(plan.question, answer, citations(answer, plan.hits), plan.hits, answering.model, usage)
