"""What a person sees while describe and embed run: a progress bar on a terminal, then
each step's summary on stderr (imgrag.pipeline runs them, for `imgrag describe`, `embed`
and `index`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from imgrag.cli.render import age, info, is_terminal, stderr_console
from imgrag.describe.batch import BATCH_DISCOUNT, BatchSummary
from imgrag.describe.live import DescribeSummary
from imgrag.errors import UsageError
from imgrag.index.build import EmbedSummary
from imgrag.pipeline import Report, estimate_line
from imgrag.store.workspace import Workspace


def which_index(photos: Path | None, index: Path | None, new_index: bool) -> Path | None:
    """The --index a describe/embed/index run uses: PHOTOS' own with --new-index; when an
    index in a parent folder covers PHOTOS (and will be used), one line on stderr says so."""
    if new_index:
        if photos is None or index is not None:
            raise UsageError("--new-index makes an index beside PHOTOS: give PHOTOS, and not --index")
        return Workspace.beside(photos).root
    if photos is not None and index is None and photos.is_dir():
        ws = Workspace.for_photos(photos)
        if ws.root != Workspace.beside(photos).root:
            info(f"imgrag: using the index in {ws.root}, which covers {photos.resolve()} "
                 "(--new-index makes one of its own)")
    return index


class PipelineProgress(Report):
    """A progress bar on a terminal, nothing but warnings elsewhere (cron mails stay short);
    each step's summary on stderr when it ends."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        self._console = stderr_console()
        self.show_embed_bar = is_terminal(sys.stderr)

    def described(self, summary: DescribeSummary | BatchSummary) -> None:
        if isinstance(summary, BatchSummary):
            batch_summary(summary)
        else:
            describe_summary(summary)

    def embedded(self, summary: EmbedSummary) -> None:
        embed_summary(summary)

    def start(self, total: int) -> None:
        if not is_terminal(sys.stderr) or total == 0:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("describing"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[failed]} failed"),
            TimeRemainingColumn(), console=self._console, transient=True,
        )
        self._bar.start()
        self._task = self._bar.add_task("describe", total=total, failed=0)

    def advance(self, ok: bool) -> None:
        if self._bar is not None:
            failed = self._bar.tasks[0].fields["failed"] + (0 if ok else 1)
            self._bar.update(self._task, advance=1, failed=failed)

    def warn(self, message: str) -> None:
        if self._bar is not None:
            self._bar.console.print(f"warning: {message}", markup=False, highlight=False)
        else:
            info(f"imgrag: warning: {message}")

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def describe_summary(s: DescribeSummary) -> None:
    if s.estimate is not None:
        info(estimate_line(s))
        _quarantine_lines(s)
        return
    parts = [f"described {s.described}", f"failed {s.failed}", f"already done {s.already}"]
    if s.remaining:
        parts.append(f"{s.remaining} left")
    tokens = s.prompt_tokens + s.completion_tokens
    limited = f", {s.rate_limited} rate-limited" if s.rate_limited else ""
    requests = f"{s.requests} request{'' if s.requests == 1 else 's'}"
    line = "imgrag: " + ", ".join(parts) + f" ({requests}{limited}, {tokens:,} tokens)"
    if s.stopped_by == "quota":
        line += f"; daily quota spent: run again later for the {s.remaining} left"
    elif s.stopped_by == "unavailable":
        line += f"; stopped: {s.stop_reason}; run again later for the {s.remaining} left"
    elif s.stopped_by == "interrupt":
        line += "; interrupted"
    info(line)
    for path, reason in s.failures[:10]:
        info(f"imgrag: failed: {path}: {reason}")
    if len(s.failures) > 10:
        info(f"imgrag: ... and {len(s.failures) - 10} more (see .imgrag/failures.jsonl)")
    _quarantine_lines(s)


def _quarantine_lines(s: DescribeSummary | BatchSummary) -> None:
    """Photos set aside: said once when it happens, then counted in one short line."""
    for path, reason, strikes in s.newly_quarantined[:10]:
        info(f"imgrag: quarantined: {path}: {reason} ({strikes} times in a row; "
             "skipped from now on, `imgrag describe --retry-failed` tries it again)")
    if len(s.newly_quarantined) > 10:
        info(f"imgrag: ... and {len(s.newly_quarantined) - 10} more quarantined (see `imgrag status`)")
    if s.quarantined:
        info(f"imgrag: {s.quarantined} quarantined photo{'' if s.quarantined == 1 else 's'} skipped "
             "(see `imgrag status`; `imgrag describe --retry-failed` tries them again)")


def embed_summary(s: EmbedSummary) -> None:
    kind = {"flat": "exact", "ivf-sq8": "IVF-SQ8"}.get(s.index_type, s.index_type)
    undescribed = s.photos - s.described - s.quarantined
    # where: `index PHOTOS` puts a new index beside PHOTOS, or uses one higher up
    written = f"; {kind} index written" + (f" in {s.workspace}" if s.workspace else "")
    info(
        f"imgrag: indexed {s.described} of {s.photos} photos ({s.encoded} embedded now, "
        + (f"{s.copies} share{'s' if s.copies == 1 else ''} a description with another photo, " if s.copies else "")
        + f"{s.cached} from cache)"
        + (written if s.rebuilt_index else "; index unchanged")
        + (f"; {undescribed} not described yet" if undescribed > 0 else "")
        + (f"; {s.quarantined} quarantined (see `imgrag status`)" if s.quarantined else "")
    )


def batch_summary(s: BatchSummary) -> None:
    """What a `describe --batch` run did, on stderr."""
    for line in _batch_lines(s):
        info(line)
    _quarantine_lines(s)


def _batch_lines(s: BatchSummary) -> list[str]:
    lines = []
    if s.estimate is not None:
        e = s.estimate
        held = f", {s.held} in open batches" if s.held else ""
        lines.append(
            f"dry run (batch): {s.found} photos, {s.already} already described{held}, would submit {e.photos}: "
            f"~{e.prompt_tokens:,} input + ~{e.completion_tokens:,} output tokens, ~${e.cost:.2f} at the batch "
            f"price (half of ~${e.cost / BATCH_DISCOUNT:.2f}), results within {s.window}; nothing was sent")
        return lines
    for collected in s.collected:
        lines.append(f"imgrag: collected batch {collected.batch_id} ({collected.status}): {collected.described} "
                     f"described, {collected.failed} failed"
                     + (f", {collected.unfinished} left for the next batch" if collected.unfinished else ""))
    for b in s.open:
        counts = b.get("counts") or {}
        done = f", {counts.get('completed', 0)}/{counts.get('total', 0)} done" if counts.get("total") else ""
        lines.append(f"imgrag: batch {b['id']} of {b['photos']} photo(s): {b['state']}{done}, "
                     f"submitted {age(b['age_s'])} ago")
    if s.cancelled:
        lines.append(f"imgrag: cancelled {len(s.cancelled)} batch(es): {', '.join(s.cancelled)}; "
                     "the next `imgrag describe --batch` collects what they finished")
    if s.submitted:
        photos = sum(n for _, n in s.submitted)
        ids = ", ".join(i for i, _ in s.submitted)
        lines.append(f"imgrag: submitted {photos} photo(s) in {len(s.submitted)} batch(es) ({ids}), completion "
                     f"window {s.window}; run `imgrag describe --batch` again later to collect them")
    elif not s.cancelled and not s.stopped_by:
        waiting = f"; {s.held} photo(s) wait in open batches" if s.held else ""
        lines.append(f"imgrag: nothing new to submit ({s.already + s.described} described{waiting})")
    if s.stopped_by:
        lines.append(f"imgrag: stopped: {s.stop_reason}; what finished is saved, run again later")
    for path, reason in s.failures[:10]:
        lines.append(f"imgrag: failed: {path}: {reason}")
    if len(s.failures) > 10:
        lines.append(f"imgrag: ... and {len(s.failures) - 10} more (see .imgrag/failures.jsonl)")
    return lines
