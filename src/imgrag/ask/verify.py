"""`imgrag search --verify`: the chat model reads the top candidates' descriptions with the
query and keeps only those that match, with a reason for each (scores are kept).

Verdicts are cached in `.imgrag/verdicts.jsonl`, one fsynced line per verdict (the same
append-only, torn-tail-safe log as descriptions.jsonl), keyed by the query, the photo's
content hash, the text sent about it, the model and the prompt version: asking again
costs nothing, and a re-described photo or a new model or prompt is asked afresh."""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from functools import partial
from typing import Any

from filelock import FileLock
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from imgrag.ask.photo_briefs import load_records, verify_item
from imgrag.ask.prompts import VERIFY_PROMPT_VERSION, data_json, verify_messages
from imgrag.config import Settings, answer_settings
from imgrag.errors import StorageError, TryLater
from imgrag.providers import InvalidReply
from imgrag.providers.chat import make_text_provider
from imgrag.providers.retry import Caller
from imgrag.search.ranking import Hit
from imgrag.store.descriptions import now_iso
from imgrag.store.files import JsonlAppender, read_jsonl
from imgrag.store.workspace import Workspace

# One verdict is ~20 tokens; the rest is room for a model that reasons first (GPT-OSS).
MAX_VERIFY_TOKENS = 4096


@dataclass
class Verdict:
    verified: bool
    reason: str
    cached: bool = False


@dataclass
class VerifyResult:
    verdicts: list[Verdict]  # one per hit, in order
    model: str
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def cached(self) -> int:
        return sum(v.cached for v in self.verdicts)

    @property
    def kept(self) -> int:
        return sum(v.verified for v in self.verdicts)


class _OneVerdict(BaseModel):
    model_config = ConfigDict(extra="ignore")
    n: int
    match: bool
    reason: str = Field(default="", max_length=500)


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")
    verdicts: list[_OneVerdict]


class VerifyReplyError(ValueError):
    pass


def parse_verdicts(text: str, count: int) -> dict[int, _OneVerdict]:
    """Verdicts by candidate number (1..count); a reply missing some is not valid."""
    try:
        start = text.index("{")
        data = json.JSONDecoder().raw_decode(text, start)[0]
        reply = _Reply.model_validate(data)
    except (ValueError, ValidationError) as e:
        raise VerifyReplyError(f"the reply is not the verdicts JSON ({str(e)[:200]})") from None
    verdicts = {v.n: v for v in reply.verdicts if 1 <= v.n <= count}
    missing = [n for n in range(1, count + 1) if n not in verdicts]
    if missing:
        raise VerifyReplyError(f"no verdict for candidate(s) {', '.join(map(str, missing))}")
    return verdicts


def verdict_key(query: str, sha256: str, item: dict[str, Any], model: str) -> str:
    text = "\n".join([" ".join(query.lower().split()), sha256, data_json(item), model, str(VERIFY_PROMPT_VERSION)])
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class VerdictCache:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.path = ws.paths.verdicts

    def load(self) -> dict[str, dict[str, Any]]:
        return {r["key"]: r for r in read_jsonl(self.path) if isinstance(r.get("key"), str)}

    def add(self, records: list[dict[str, Any]]) -> None:
        """Append (under a lock of its own: searches are readers and do not take the writer
        lock). A folder we cannot write to costs the cache, not the search."""
        try:
            with FileLock(str(self.ws.paths.verdicts_lock), timeout=10), JsonlAppender(self.path) as log:
                for record in records:
                    log.append(record)
        except (StorageError, OSError, TimeoutError) as e:
            print(f"imgrag: warning: verdicts not cached ({e})", file=sys.stderr)


def verify_hits(query: str, hits: list[Hit], ws: Workspace, settings: Settings,
                caller: Caller | None = None) -> VerifyResult:
    """A verdict for each hit: from the cache, else from one request for all the others."""
    answering = answer_settings(settings)
    result = VerifyResult([], answering.model or "")
    if not hits:
        return result
    records = load_records(ws, [h.sha256 for h in hits])
    items = [verify_item(h, records.get(h.sha256)) for h in hits]
    keys = [verdict_key(query, h.sha256, item, result.model) for h, item in zip(hits, items, strict=True)]
    cache = VerdictCache(ws)
    known = cache.load()
    todo = [i for i, key in enumerate(keys) if key not in known]
    fresh = _ask(query, [items[i] for i in todo], answering, caller, result) if todo else {}
    new_records = []
    for i, (hit, key) in enumerate(zip(hits, keys, strict=True)):
        if key in known:
            result.verdicts.append(Verdict(bool(known[key].get("verified")), str(known[key].get("reason", "")), True))
            continue
        v = fresh[todo.index(i) + 1]
        result.verdicts.append(Verdict(v.match, v.reason))
        new_records.append({"key": key, "sha256": hit.sha256, "query": query, "model": result.model,
                            "prompt_version": VERIFY_PROMPT_VERSION, "verified": v.match, "reason": v.reason,
                            "time": now_iso()})
    if new_records:
        cache.add(new_records)
    return result


def _ask(query: str, items: list[dict[str, Any]], settings: Settings, caller: Caller | None,
         result: VerifyResult) -> dict[int, _OneVerdict]:
    """One request for the candidates; a reply that is not valid is asked again once."""
    provider = make_text_provider(settings)
    caller = caller or Caller(settings)
    messages = verify_messages(query, items)
    problem = ""
    for _ in range(2):
        sent = [0]
        try:
            reply = caller.call(partial(provider.complete, messages, MAX_VERIFY_TOKENS), sent)
        except InvalidReply as e:  # the server itself found the JSON invalid (Groq's json_validate_failed)
            result.requests += sent[0]
            problem = str(e)
            messages = _asked_again(messages, e.reply, problem)
            continue
        result.requests += sent[0]
        result.prompt_tokens += reply.prompt_tokens
        result.completion_tokens += reply.completion_tokens
        caller.learn(reply.prompt_tokens, reply.completion_tokens)
        try:
            return parse_verdicts(reply.text, len(items))
        except VerifyReplyError as e:
            problem = str(e)
            messages = _asked_again(messages, reply.text, problem)
    raise TryLater(f"the model's verdicts were not valid twice ({problem}): try again, or search without --verify")


def _asked_again(messages: list[dict[str, Any]], previous: str, problem: str) -> list[dict[str, Any]]:
    """The request again with the reply that did not do and what was wrong with it (as describe asks)."""
    return [*messages, {"role": "assistant", "content": previous[:4000] or "(empty)"},
            {"role": "user", "content": f"That reply was not valid: {problem}. "
                                        "Reply again with only the JSON object, one verdict per candidate."}]
