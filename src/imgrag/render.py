"""Everything a person or a script sees: result tables and JSON on stdout, progress,
warnings and summaries on stderr. No colour or progress bar off a terminal or with NO_COLOR."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .describe import DescribeSummary
    from .embed_job import EmbedSummary
    from .search import Hit


def _console(stream):
    from rich.console import Console

    return Console(file=stream, no_color=bool(os.environ.get("NO_COLOR")), highlight=False, soft_wrap=False)


def stderr_console():
    return _console(sys.stderr)


def is_terminal(stream) -> bool:
    return stream.isatty() and os.environ.get("TERM") != "dumb"


def error(message: str) -> None:
    """The one clear line a failed command prints."""
    print(f"imgrag: error: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- search results --------------------------------------------------------------------


def hits_json(query: str, hits: list[Hit]) -> str:
    return json.dumps(
        {"query": query, "count": len(hits), "results": [asdict(h) for h in hits]}, ensure_ascii=False
    )


def hits_table(hits: list[Hit]) -> None:
    """A table on a terminal; off one, tab-separated lines that never wrap (for awk and cut)."""
    if not is_terminal(sys.stdout):
        for h in hits:
            print(f"{h.rank}\t{h.score:.3f}\t{h.path}\t{' '.join(h.caption.split())}")
        return
    from rich.table import Table

    console = _console(sys.stdout)
    table = Table(show_header=True, header_style="bold", expand=False)
    table.add_column("#", justify="right", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("path", overflow="fold")
    table.add_column("caption", overflow="fold")
    for h in hits:
        table.add_row(str(h.rank), f"{h.score:.3f}", h.path, h.caption)
    console.print(table)


# -- describe ----------------------------------------------------------------------------


class DescribeProgress:
    """A progress bar on a terminal, nothing but warnings elsewhere (cron mails stay short)."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task = None
        self._console = stderr_console()

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


def describe_summary(s: DescribeSummary, dry_run: bool, est_tokens: int, price_in: float, price_out: float) -> None:
    if dry_run:
        tokens = s.todo * est_tokens
        cost = tokens / 1e6 * price_in + s.todo * 300 / 1e6 * price_out
        info(
            f"dry run: {s.found} photos, {s.already} already described, would describe {s.todo} "
            f"(~{tokens:,} input tokens, ~${cost:.2f}); nothing was sent"
        )
        return
    parts = [f"described {s.described}", f"failed {s.failed}", f"already done {s.already}"]
    if s.remaining:
        parts.append(f"{s.remaining} left")
    line = "imgrag: " + ", ".join(parts) + f" ({s.requests} requests, {s.prompt_tokens + s.completion_tokens:,} tokens)"
    if s.stopped_by == "quota":
        line += f"; daily quota spent: run again later for the {s.remaining} left"
    elif s.stopped_by == "interrupt":
        line += "; interrupted"
    info(line)
    for path, reason in s.failures[:10]:
        info(f"imgrag: failed: {path}: {reason}")
    if len(s.failures) > 10:
        info(f"imgrag: ... and {len(s.failures) - 10} more (see .imgrag/failures.jsonl)")


def embed_summary(s: EmbedSummary) -> None:
    info(
        f"imgrag: indexed {s.described} of {s.photos} photos ({s.encoded} embedded now, {s.cached} from cache)"
        + ("" if s.rebuilt_index else "; index unchanged")
        + (f"; {s.photos - s.described} not described yet" if s.photos > s.described else "")
    )
