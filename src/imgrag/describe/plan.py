"""Which photos a describe run sends, and what --dry-run says that would cost and take.

A photo is done when some record has its content hash, whichever model or prompt wrote it;
quarantined photos are skipped (until --retry-failed); a photo in an open batch is left to
that batch. The estimate uses the limits the last run learned from the server (kept in the
manifest), else Groq's free tier."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from imgrag.config import Settings
from imgrag.describe.progress import Progress
from imgrag.describe.quarantine import load_quarantine
from imgrag.describe.schema import PROMPT_VERSION
from imgrag.photos.files import Skipped
from imgrag.providers.pacing import Pacer
from imgrag.store.batch_log import BatchLog
from imgrag.store.descriptions import average_usage, load_descriptions, now_iso
from imgrag.store.scan import PhotoFile, by_content, scan
from imgrag.store.workspace import Workspace

# What one photo costs before a run has measured it: the image (Qwen 3.8 on Groq counts
# 2,048 tokens an image) + the prompt (~300) in, the JSON description out.
EST_IMAGE_TOKENS = 2048
EST_PROMPT_TOKENS = EST_IMAGE_TOKENS + 300
EST_COMPLETION_TOKENS = 250
EST_TOKENS_PER_PHOTO = EST_PROMPT_TOKENS + EST_COMPLETION_TOKENS
# Groq's free tier for its vision models: the --dry-run estimate until a run has learned better.
GROQ_FREE_TIER = {"requests_per_minute": 30, "tokens_per_minute": 8000, "requests_per_day": 1000}


@dataclass
class DescribeOptions:
    jobs: int = 4
    limit: int | None = None
    force: bool = False
    refresh: bool = False
    dry_run: bool = False
    wait: bool = False
    # Seconds in a rate-limit "minute": only a time-scaled stand-in server (benchmarks) differs.
    rate_window: float = 60.0
    retry_failed: bool = False  # try quarantined photos again too
    # Set from another thread (imgrag serve's cancel) to stop as Ctrl-C does: what is in flight is written.
    cancel: threading.Event | None = None
    # Photos to leave for a later run (imgrag watch: files still being written).
    hold: Callable[[PhotoFile], bool] | None = None


@dataclass
class Plan:
    groups: dict[str, list[PhotoFile]]  # the photos under the folder, by content hash
    todo: list[str]  # content hashes to describe, in order
    already: int  # photos with a description
    described: dict[str, dict[str, Any]]  # content hash -> newest description record
    quarantined: int  # photos under the folder skipped as quarantined


@dataclass
class Estimate:
    """What --dry-run says a run would cost and take."""

    photos: int
    prompt_tokens: int
    completion_tokens: int
    cost: float  # USD at the configured prices
    minutes: float | None  # at the limits below; None when no limits are known
    runs: int  # daily runs needed (1 unless a daily limit is known and too small)
    limits: dict[str, Any]
    limits_source: str


def plan(ws: Workspace, photos: Path, options: DescribeOptions, settings: Settings,
         on_skip: Callable[[Skipped], None] | None = None) -> Plan:
    """The photos under `photos` and which of them to describe.

    A new model re-describes only with --refresh, and the old description stays searchable
    until the new one replaces it."""
    found = scan(ws, [photos], on_skip=on_skip)
    groups = by_content(f for f in found if not (options.hold and options.hold(f)))
    described = load_descriptions(ws)
    held = {} if options.retry_failed else load_quarantine(ws, described)
    model = settings.vision_model
    todo: list[str] = []
    already = 0
    for sha in groups:
        if sha in held:
            continue  # can never be described: skipped until --retry-failed
        record = described.get(sha)
        stale = record is not None and (
            record.get("model") != model or record.get("prompt_version") != PROMPT_VERSION
        )
        if record is None or options.force or (options.refresh and stale):
            todo.append(sha)
        else:
            already += 1
    return Plan(groups, todo, already, described, quarantined=len(held.keys() & groups.keys()))


def skip_photos_in_open_batches(ws: Workspace, todo: list[str], progress: Progress) -> list[str]:
    """A photo in an open batch is paid for there: never send it again until that batch ends."""
    held = BatchLog(ws).held_photos()
    if not held:
        return todo
    kept = [sha for sha in todo if sha not in held]
    if len(kept) < len(todo):
        progress.warn(f"{len(todo) - len(kept)} photo(s) are in an open batch and are left to it: "
                      "`imgrag describe --batch` collects them")
    return kept


# -- --dry-run and the limits it estimates with ---------------------------------------------


def _limits_key(settings: Settings) -> str:
    return f"{settings.provider} {settings.base_url or 'default'} {settings.vision_model}"


def remember_limits(ws: Workspace, settings: Settings, pacer: Pacer) -> None:
    """Keep what this run learned about the server's limits for the next --dry-run."""
    if not pacer.calibrated:
        return
    known = dict(ws.read_manifest().get("provider_limits") or {})
    known[_limits_key(settings)] = {**pacer.limits(), "learned": now_iso()}
    ws.update_manifest(provider_limits=known)


def estimate(count: int, settings: Settings, manifest: dict[str, Any],
             described: dict[str, dict[str, Any]]) -> Estimate:
    """Tokens, cost and time to describe `count` photos at the limits last seen."""
    prompt, completion = average_usage(described) or (EST_PROMPT_TOKENS, EST_COMPLETION_TOKENS)
    limits = (manifest.get("provider_limits") or {}).get(_limits_key(settings))
    if limits:
        source = f"as measured by the last run, {limits.get('learned', 'earlier')}"
    elif settings.provider == "groq":
        limits, source = GROQ_FREE_TIER, "Groq's free tier; no run has measured yours yet"
    else:
        limits, source = {}, "no run has measured this server's limits yet"
    rates = []  # photos per minute each limit allows
    if limits.get("requests_per_minute"):
        rates.append(float(limits["requests_per_minute"]))
    if limits.get("tokens_per_minute"):
        rates.append(limits["tokens_per_minute"] / (prompt + completion))
    per_day = limits.get("requests_per_day")
    return Estimate(
        photos=count,
        prompt_tokens=count * prompt,
        completion_tokens=count * completion,
        cost=count * (prompt * settings.price_input + completion * settings.price_output) / 1e6,
        minutes=count / min(rates) if rates else None,
        runs=max(1, math.ceil(count / per_day)) if per_day else 1,
        limits={k: v for k, v in limits.items() if k != "learned"},
        limits_source=source,
    )
