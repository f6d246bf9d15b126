"""What `imgrag ask` and `imgrag search --verify` print: the answer (streamed on a terminal,
whole when piped), the photos it cites, `--json` documents, `--dry-run`'s prompt."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from imgrag.ask.answer import AskPlan, AskResult
from imgrag.ask.verify import VerifyResult
from imgrag.cli.render import hits_paths, hits_table, info, is_terminal, shown_path
from imgrag.search.ranking import Hit
from imgrag.store.files import json_bytes


def _json(doc: dict[str, Any]) -> None:
    print(json_bytes(doc).decode("utf-8"), flush=True)


def dry_run(plan: AskPlan, json_out: bool) -> None:
    if json_out:
        _json(plan.as_dict())
        return
    if plan.hits:
        print(plan.prompt())
        s = plan.settings
        assert s is not None, "a plan with photos names the model that answers"
        images = f" (with {plan.images} image{'s' if plan.images != 1 else ''})" if plan.images else ""
        photos = f"{len(plan.hits)} photo{'s' if len(plan.hits) != 1 else ''}"
        info(f"dry run: {photos} for {s.provider} model {s.model}: ~{plan.prompt_tokens:,} prompt "
             f"tokens{images} + ~{plan.completion_tokens_estimate:,} for the answer, ~${plan.cost:.4f}; nothing was sent")


def answer(events: Iterator[str | AskResult], *, json_out: bool, thumbnails: str | None,
           stored: Callable[[str], bytes | None] | None = None) -> AskResult:
    """Print the answer: streamed as it arrives on a terminal, whole off one; then the
    cited photos. Returns the final result."""
    stream = is_terminal(sys.stdout) and not json_out
    shown = False
    result = None
    try:
        for event in events:
            if isinstance(event, AskResult):
                result = event
            elif stream:
                sys.stdout.write(event)
                sys.stdout.flush()
                shown = True
    except BaseException:
        if shown:  # Ctrl-C or a cut-off answer: end the line, so the error starts its own
            sys.stdout.write("\n")
            sys.stdout.flush()
        raise
    assert result is not None
    if json_out:
        _json(result.as_dict())
        return result
    if not result.found:
        return result
    if shown:
        sys.stdout.write("\n")
    else:
        print(" ".join((result.answer or "").split()))
    cited = result.cited_hits()
    if stream:
        if cited:
            print()
            hits_table([replace(h, rank=n) for n, h in cited], thumbnails, stored=stored)
    else:
        for n, h in cited:
            # No empty last field (a line ending in a tab): the date only when the photo has one.
            print("\t".join([f"[{n}]", shown_path(h.path), *([h.taken] if h.taken else [])]))
    sys.stdout.flush()
    return result


def usage_line(result: AskResult) -> str:
    u = result.usage
    return (f"imgrag: {len(result.hits)} photo{'s' if len(result.hits) != 1 else ''} sent to {result.model}, {len(result.citations)} cited "
            f"({u['requests']} request{'s' if u['requests'] != 1 else ''}, "
            f"{u['prompt_tokens'] + u['completion_tokens']:,} tokens)")


# -- search --verify -----------------------------------------------------------------------


def verified_json(query: str, hits: list[Hit], result: VerifyResult) -> None:
    """Every candidate, with "verified" and "reason"; `count` is how many were kept."""
    results = [{**h.as_dict(), "verified": v.verified, "reason": v.reason} for h, v in zip(hits, result.verdicts, strict=True)]
    _json({"query": query, "count": result.kept, "verified_by": result.model, "results": results})


def verified_output(hits: list[Hit], result: VerifyResult, *, paths: bool, nul: bool, thumbnails: str | None) -> None:
    """--paths / -0 / table / piped lines: the kept photos only, with the model's reason."""
    kept = [replace(h, why=f"verified: {v.reason}" if v.reason else h.why)
            for h, v in zip(hits, result.verdicts, strict=True) if v.verified]
    if paths or nul:
        hits_paths(kept, nul=nul)
    elif kept:
        hits_table(kept, thumbnails)


def verify_summary(result: VerifyResult) -> str:
    fresh = len(result.verdicts) - result.cached
    tokens = result.prompt_tokens + result.completion_tokens
    return (f"imgrag: verified {len(result.verdicts)} results with {result.model}: kept {result.kept} "
            f"({result.cached} from the cache, {fresh} asked: {result.requests} request"
            f"{'s' if result.requests != 1 else ''}, {tokens:,} tokens)")
