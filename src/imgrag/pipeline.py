"""The index pipeline: describe the photos not described yet, then embed what is described
into a new index generation. `imgrag describe`, `imgrag embed` and `imgrag index`, the
page's jobs (describe, embed, index) and the original service's endpoints all run it
through `run_pipeline`, by the same rules:

- the photos are one folder, or every folder the index knows; each is described in turn,
  through the live API or the Batch API (`batch`), and a `limit` counts over all of them
  (`limit` 0 describes nothing but still reports what the first folder holds);
- describing stops at the first folder the provider stops (quota spent, unavailable) or
  an interrupt stops (Ctrl-C, a cancelled job);
- embedding follows describing even when some photos failed or the quota ran out, but
  not an interrupt: what was described is embedded by the next run;
- a dry run sends and writes nothing: the describe estimate, and what embed would do;
- run from a process of its own (the CLI: `background`), it steps back in CPU priority
  when no one is watching (imgrag.priority), as a cron `imgrag index` should. A server's
  job does not: where the priority is per process, that would slow the server itself.

What happens is told to a `Report` as it happens (the CLI prints summaries, a server's
job counts); `run_pipeline` returns every summary and the exit code `imgrag index` gives.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from imgrag.config import VISION_SETTINGS, Settings
from imgrag.describe.batch import BatchOptions, BatchSummary, run_batch
from imgrag.describe.live import DescribeSummary, run_describe
from imgrag.describe.plan import DescribeOptions
from imgrag.describe.progress import NoProgress
from imgrag.errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME_FAILED, EXIT_TEMPFAIL, UsageError
from imgrag.index.build import EmbedSummary, run_embed, workspace_for
from imgrag.priority import step_back_when_unattended
from imgrag.status import Status, collect_status
from imgrag.store.scan import PhotoFile
from imgrag.store.workspace import Workspace

# Describe's exit codes, the one that says most first: a run of several folders gives it.
_WORST_FIRST = (EXIT_INTERRUPTED, EXIT_TEMPFAIL, EXIT_SOME_FAILED, EXIT_OK)


@dataclass
class Steps:
    """What to run, and how."""

    describe: bool = True
    embed: bool = True
    # -- describe -------------------------------------------------------------------------
    jobs: int | None = None  # requests in flight; None: Settings.jobs
    limit: int | None = None  # photos described at most this run, over every folder
    force: bool = False  # describe again photos already described
    refresh: bool = False  # re-describe photos described by another model or prompt version
    retry_failed: bool = False  # try quarantined photos again (live API only)
    dry_run: bool = False  # send nothing, write nothing: estimates
    batch: bool = False  # through the Batch API
    window: str = "24h"  # the Batch API's completion window
    cancel_batches: bool = False  # cancel the open batches instead of submitting
    # -- embed ----------------------------------------------------------------------------
    embed_model: str | None = None  # None: Settings.embed_model, else the index's own model
    rebuild: bool = False  # rebuild the index from scratch
    # -- running --------------------------------------------------------------------------
    wait: bool = False  # wait for another writer of the index instead of refusing
    cancel: threading.Event | None = None  # set from another thread: stop as Ctrl-C does
    hold: Callable[[PhotoFile], bool] | None = None  # photos describe leaves for a later run (still being written)
    background: bool = False  # a process of its own: step back when unattended


class Report(NoProgress):
    """What the pipeline says as it goes; describe's progress (start, advance, warn, stop)
    comes through the same object. Every method may be left as it is."""

    show_embed_bar = False  # embed draws its own progress bar (on a terminal)

    def phase(self, name: str) -> None:
        """Called with "describe", then with "embed"."""

    def described(self, summary: DescribeSummary | BatchSummary) -> None:
        """One folder described (or estimated)."""

    def embedding(self, done: int, total: int) -> None:
        """Texts embedded so far."""

    def embedded(self, summary: EmbedSummary) -> None:
        """A new index is written (or the current one was up to date): searchable now."""


@dataclass
class PipelineResult:
    described: list[DescribeSummary | BatchSummary] = field(default_factory=list)  # one per folder
    embedded: EmbedSummary | None = None  # None: embed did not run
    pending: Status | None = None  # a dry run's view of what embed would do

    @property
    def interrupted(self) -> bool:
        return any(s.exit_code == EXIT_INTERRUPTED for s in self.described)

    @property
    def exit_code(self) -> int:
        """Describe's exit code (EXIT_OK when nothing was described): what `imgrag index` exits with."""
        codes = {s.exit_code for s in self.described}
        return next((code for code in _WORST_FIRST if code in codes), EXIT_OK)


def run_pipeline(photos: Path | None, settings: Settings, steps: Steps, report: Report | None = None, *,
                 index: Path | None = None) -> PipelineResult:
    """Describe, then embed, the photos in `photos` (None: every folder the index knows),
    in the workspace `index` names (else the one of the photos)."""
    report = report or Report()
    if steps.describe:
        settings = settings.checked(*VISION_SETTINGS)
    if steps.background:
        step_back_when_unattended()  # before any thread starts: threads inherit it
    result = PipelineResult()
    if steps.describe:
        report.phase("describe")
        _describe(photos, settings, steps, report, index, result)
    cancelled = steps.cancel is not None and steps.cancel.is_set()
    if steps.embed and not cancelled and not result.interrupted:
        report.phase("embed")
        if steps.dry_run:
            result.pending = collect_status(workspace_for(photos, index), photos)
        else:
            result.embedded = run_embed(
                photos, steps.embed_model or settings.embed_model, rebuild=steps.rebuild, wait=steps.wait,
                index=index, show_progress=report.show_embed_bar, cancel=steps.cancel, on_progress=report.embedding,
                query_encoder=settings.query_encoder)
            report.embedded(result.embedded)
    return result


def _describe(photos: Path | None, settings: Settings, steps: Steps, report: Report, index: Path | None,
              result: PipelineResult) -> None:
    left = steps.limit
    for n, folder in enumerate(_folders(photos, index)):
        # A limit used up by the folders before stops here; --limit 0 still reports the first.
        if (steps.cancel is not None and steps.cancel.is_set()) or (n and left == 0):
            break
        summary = _describe_folder(folder, settings, steps, left, report, index)
        result.described.append(summary)
        report.described(summary)
        if left is not None:
            left = max(0, left - summary.todo)
        if summary.stopped_by:  # quota spent, provider unavailable, or interrupted: so would the next be
            break


def photo_folders(photos: Path | None, ws: Workspace) -> list[Path]:
    """The folder given, else every photo folder the index knows that is there now (a root
    that is gone, such as an unplugged drive, is skipped)."""
    return [photos] if photos is not None else [r for r in ws.roots() if r.is_dir()]


def _folders(photos: Path | None, index: Path | None) -> list[Path]:
    if photos is not None:
        return [photos]
    ws = workspace_for(None, index)
    folders = photo_folders(None, ws)
    if not folders:
        raise UsageError(f"{ws.root} knows no photo folder: run `imgrag serve PHOTOS` with the folder to index")
    return folders


def _describe_folder(folder: Path, settings: Settings, steps: Steps, limit: int | None, report: Report,
                     index: Path | None) -> DescribeSummary | BatchSummary:
    if steps.batch:  # a batch has no requests in flight to pace, and quarantined photos wait for a live run
        batch = BatchOptions(window=steps.window, cancel=steps.cancel_batches, dry_run=steps.dry_run, limit=limit,
                             force=steps.force, refresh=steps.refresh, wait=steps.wait)
        return run_batch(folder, settings, batch, report, index=index)
    live = DescribeOptions(jobs=steps.jobs if steps.jobs is not None else settings.jobs, limit=limit,
                           force=steps.force, refresh=steps.refresh, dry_run=steps.dry_run, wait=steps.wait,
                           retry_failed=steps.retry_failed, cancel=steps.cancel, hold=steps.hold)
    return run_describe(folder, settings, live, report, index=index)


def estimate_line(s: DescribeSummary) -> str:
    """A describe dry run in one line: what `imgrag describe --dry-run` prints and the page shows."""
    e = s.estimate
    assert e is not None, "a dry run's summary"
    line = (
        f"dry run: {s.found} photo{'' if s.found == 1 else 's'}, {s.already} already described, would describe {e.photos}: "
        f"~{e.prompt_tokens:,} input + ~{e.completion_tokens:,} output tokens, ~${e.cost:.2f}"
    )
    if e.minutes is not None and e.photos:
        limits = ", ".join(f"{v:,} {k.replace('_per_', '/').replace('_', ' ')}" for k, v in e.limits.items()
                           if k != "tokens_per_photo")
        line += f", {_duration(e.minutes)} of requests at {limits} ({e.limits_source})"
        if e.runs > 1:
            line += f"; the daily limit spreads it over {e.runs} daily runs"
    elif e.photos:
        line += f"; time unknown: {e.limits_source}"
    return line + "; nothing was sent"


def _duration(minutes: float) -> str:
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {round(minutes)} min"
    if minutes < 48 * 60:
        return f"about {minutes / 60:.1f} h"
    return f"about {minutes / 1440:.1f} days"
