"""Everything a person or a script sees: result tables and JSON on stdout, progress,
warnings and summaries on stderr. No colour or progress bar off a terminal or with NO_COLOR.

What the environment says about the terminal (NO_COLOR, TERM, IMGRAG_THUMBNAILS, ...) comes
from the command's Settings, given once by `configure`."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgrag.config import Settings
from imgrag.errors import UsageError

if TYPE_CHECKING:
    from imgrag.describe.batch import BatchSummary
    from imgrag.describe.live import DescribeSummary
    from imgrag.index.build import EmbedSummary
    from imgrag.search.ranking import Hit
    from imgrag.status import Status


_settings = Settings()  # the running command's settings (configure): only the terminal's are read here


def configure(settings: Settings) -> None:
    """The settings of the command being run: what the terminal can show and what the user asked of it."""
    global _settings
    _settings = settings


def _console(stream):
    from rich.console import Console

    return Console(file=stream, no_color=_settings.no_color, highlight=False, soft_wrap=False)


def stderr_console():
    return _console(sys.stderr)


def is_terminal(stream) -> bool:
    return stream.isatty() and not _settings.dumb_terminal


def error(message: str) -> None:
    """The one clear line a failed command prints."""
    print(f"imgrag: error: {message}", file=sys.stderr, flush=True)


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- search results --------------------------------------------------------------------

# IMGRAG_THUMBNAILS: auto (ask the terminal), a kind to use without asking, or off.
THUMBNAIL_SETTINGS = ("auto", "kitty", "sixel", "halfblock", "off")
_THUMB_PIXELS = 400  # decoded size: enough for kitty and sixel at the largest thumbnail (imgrag.cli.terminal)


def hits_json(query: str | None, hits: list[Hit], *, like: str | None = None) -> str:
    """One JSON document on one line: the whole output of --json, one line of --queries-from.
    A file name that is not UTF-8 comes out as \\udcXX escapes, which read back to the same name."""
    from imgrag.store.files import json_bytes

    doc: dict[str, Any] = {"query": query}
    if like is not None:
        doc["like"] = like
    doc.update(count=len(hits), results=[h.as_dict() for h in hits])
    return json_bytes(doc).decode("utf-8")


def hits_paths(hits: list[Hit], *, nul: bool = False) -> None:
    """--paths: one absolute path per line; -0: each ended by NUL instead, for `xargs -0`.
    The file names' own bytes, whatever their encoding, so the paths open the files."""
    end = b"\0" if nul else b"\n"
    sys.stdout.flush()
    sys.stdout.buffer.write(b"".join(os.fsencode(h.path) + end for h in hits))
    sys.stdout.buffer.flush()


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def shown_path(path: str) -> str:
    """A path as a person or a line-based tool sees it: one line, one column, printable
    (a non-UTF-8 byte becomes \ufffd, a tab or newline \\t or \\n). Exact bytes: --paths, -0."""
    text = os.fsencode(path).decode("utf-8", "replace")
    return _CONTROL.sub(lambda m: _ESCAPES.get(m.group(), f"\\x{ord(m.group()):02x}"), text)


def thumbnail_kind(flag: bool | None) -> str | None:
    """'kitty', 'sixel' or 'halfblock': how to draw thumbnails; None: draw none.

    `flag` is --thumbnails (True: even piped or with NO_COLOR, since asking outweighs the
    environment), --no-thumbnails (False) or neither (None: only on a terminal without
    NO_COLOR). IMGRAG_THUMBNAILS names the kind, or `auto` to ask the terminal."""
    setting = _settings.thumbnails
    if setting not in THUMBNAIL_SETTINGS:
        raise UsageError(f"IMGRAG_THUMBNAILS={setting!r}: use one of {', '.join(THUMBNAIL_SETTINGS)}")
    if flag is False or (flag is None and setting == "off"):
        return None
    if flag is None and not (is_terminal(sys.stdout) and not _settings.no_color):
        return None
    if setting not in ("auto", "off"):
        return setting
    return _probe_terminal() if is_terminal(sys.stdout) else "halfblock"


def _probe_terminal() -> str:
    """Ask the terminal which graphics it draws (an unanswered question costs 0.1 s)."""
    if not (sys.stdin and sys.stdin.isatty()):
        return "halfblock"  # the terminal's answer would arrive on stdin
    renderable = _textual_image()
    try:
        # textual-image's order: Konsole and WezTerm claim kitty graphics but draw sixels
        # correctly, and kitty itself draws no sixels.
        if renderable.sixel.query_terminal_support():
            return "sixel"
        if renderable.tgp.query_terminal_support():
            return "kitty"
    except Exception:  # termios errors and the like: probing is best effort
        pass
    return "halfblock"


def _textual_image() -> Any:
    """textual_image.renderable, imported without the terminal probe it runs on import:
    that probe crashes when stdin is not a terminal, and we probe ourselves, once."""
    name = "textual_image.renderable"
    if name not in sys.modules:
        real_stdout = sys.__stdout__
        sys.__stdout__ = None  # type: ignore[misc]  # it probes only when sys.__stdout__ is a tty
        try:
            import textual_image.renderable  # noqa: F401
        finally:
            sys.__stdout__ = real_stdout  # type: ignore[misc]
    if not (sys.stdin and sys.stdin.isatty()):
        # Its cell-size lookup would ask the terminal over stdin, too (and crash): settle it
        # in advance with the size it falls back to (VT340 cells), in its own cache.
        try:
            from textual_image import _terminal

            if not hasattr(_terminal.get_cell_size, "_result"):
                _terminal.get_cell_size._result = _terminal.CellSize(10, 20)  # type: ignore[attr-defined]
        except (ImportError, AttributeError):  # another version: nothing to settle
            pass
    return sys.modules[name]


def _thumbnail(path: str, kind: str, rows: int) -> tuple[Any, int]:
    """(a picture of the photo at most `rows` high for a table cell, its width in cells),
    or a dim note when it cannot be read."""
    import io

    from PIL import Image
    from rich.text import Text

    from imgrag.cli.terminal import thumbnail_cells
    from imgrag.photos.files import PhotoError, prepare_image

    renderable = _textual_image()
    draw = {"kitty": renderable.TGPImage, "sixel": renderable.SixelImage, "halfblock": renderable.HalfcellImage}[kind]
    try:
        small = prepare_image(Path(path), max_side=_THUMB_PIXELS, quality=85)  # oriented, HEIC-aware, fast
        image = Image.open(io.BytesIO(small.jpeg))
        cols, high = thumbnail_cells(image.width, image.height, rows)
        return draw(image, width=cols, height=high), cols
    except (PhotoError, OSError):
        note = "(unreadable)" if Path(path).exists() else "(missing)"
        return Text(note, style="dim"), len(note)


def hits_table(hits: list[Hit], thumbnails: str | None = None, *, fit_screen: bool = False) -> None:
    """A table on a terminal (with a thumbnail per hit when `thumbnails` names a kind, see
    thumbnail_kind); off one, tab-separated lines that never wrap (for awk and cut).

    Thumbnails are as big as the screen allows; with `fit_screen` (no --limit given) the
    table shows only the hits that fit on one screen, and says on stderr how to see the rest."""
    if thumbnails is None and not is_terminal(sys.stdout):
        for h in hits:
            print(f"{h.rank}\t{h.score:.3f}\t{shown_path(h.path)}\t{' '.join(h.caption.split())}")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from imgrag.cli.terminal import fit_thumbnails, has_truecolor, screen_lines

    pictures: list[tuple[Any, int]] = []
    if thumbnails is None:
        console = _console(sys.stdout)
    else:  # thumbnails were asked for, or the terminal shows them: colour is part of them
        console = Console(file=sys.stdout, force_terminal=True, no_color=False, highlight=False, soft_wrap=False,
                          color_system="truecolor" if has_truecolor(_settings.colorterm, _settings.in_tmux) else "auto")
        fit = fit_thumbnails(len(hits), screen_lines(sys.stdout), cut=fit_screen)
        if fit.shown < len(hits):
            info(f"imgrag: {len(hits) - fit.shown} more not shown (thumbnails fill the screen): "
                 f"--limit {len(hits)} shows them all, --no-thumbnails lists them compactly")
            hits = hits[: fit.shown]
        pictures = [_thumbnail(h.path, thumbnails, fit.rows) for h in hits]
    table = Table(show_header=True, header_style="bold", expand=False, show_lines=thumbnails is not None)
    table.add_column("#", justify="right", no_wrap=True)
    if thumbnails is not None:
        table.add_column("photo", no_wrap=True, width=max(cols for _, cols in pictures))
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("path, caption, why it matched", overflow="fold")
    for i, h in enumerate(hits):
        about = Text()
        about.append(shown_path(h.path), style="bold")
        if len(h.paths) > 1:  # the same photo (same bytes) in other places too
            more = len(h.paths) - 1
            about.append(f"  (+{more} {'copy' if more == 1 else 'copies'})", style="dim")
        about.append("\n" + " ".join(h.caption.split()))
        if h.why and h.why != h.caption:
            about.append("\n" + h.why, style="dim")
        if h.taken:
            about.append(f"\ntaken {h.taken.replace('T', ' ')}", style="dim")
        cells = [str(h.rank), f"{h.score:.3f}", about]
        if thumbnails is not None:
            cells.insert(1, pictures[i][0])
        table.add_row(*cells)
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


def describe_summary(s: DescribeSummary) -> None:
    if s.estimate is not None:
        info(_dry_run_line(s))
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


def _quarantine_lines(s: DescribeSummary) -> None:
    """Photos set aside: said once when it happens, then counted in one short line."""
    for path, reason, strikes in s.newly_quarantined[:10]:
        info(f"imgrag: quarantined: {path}: {reason} ({strikes} times in a row; "
             "skipped from now on, `imgrag describe --retry-failed` tries it again)")
    if len(s.newly_quarantined) > 10:
        info(f"imgrag: ... and {len(s.newly_quarantined) - 10} more quarantined (see `imgrag status`)")
    if s.quarantined:
        info(f"imgrag: {s.quarantined} quarantined photo{'' if s.quarantined == 1 else 's'} skipped "
             "(see `imgrag status`; `imgrag describe --retry-failed` tries them again)")


def _dry_run_line(s: DescribeSummary) -> str:
    e = s.estimate
    line = (
        f"dry run: {s.found} photos, {s.already} already described, would describe {e.photos}: "
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


def embed_summary(s: EmbedSummary) -> None:
    kind = {"flat": "exact", "ivf-sq8": "IVF-SQ8"}.get(s.index_type, s.index_type)
    info(
        f"imgrag: indexed {s.described} of {s.photos} photos ({s.encoded} embedded now, "
        + (f"{s.copies} {'copy' if s.copies == 1 else 'copies'} of another photo's description, " if s.copies else "")
        + f"{s.cached} from cache)"
        + (f"; {kind} index written" if s.rebuilt_index else "; index unchanged")
        + (f"; {s.photos - s.described} not described yet" if s.photos > s.described else "")
    )


def _quarantined_status_lines(s: Status, shown: int = 10) -> list[str]:
    if not s.quarantined:
        return []
    lines = [f"quarantined:  {s.quarantined} (skipped by every run; `imgrag describe --retry-failed` tries them again)"]
    lines += [f"  {p['path']}: {p['reason']}" for p in s.quarantined_photos[:shown]]
    if s.quarantined > shown:
        lines.append(f"  ... and {s.quarantined - shown} more (imgrag status --json lists them all)")
    return lines


def status_text(s: Status) -> str:
    """`imgrag status` for a person: one fact per line."""
    from imgrag.status import next_step

    fingerprint = f" (weights {s.embed_fingerprint}, {s.dim} dimensions)" if s.embed_fingerprint else ""
    vision = ", ".join(f"{m} ({n})" for m, n in sorted(s.vision_models.items(), key=lambda kv: -kv[1])) or "-"
    index = (f"{s.index_size} photos, {s.index_type}" + ("" if s.index_up_to_date else ", out of date")
             if s.index_type else "none yet")
    lines = [
        f"workspace:    {s.workspace}" + ("" if s.exists else " (not created yet)"),
        f"folders:      {', '.join(s.roots) or '-'}",
        f"photos:       {s.photos} found" + (f" ({s.files} files)" if s.files != s.photos else ""),
        f"described:    {s.described}",
        f"failed:       {s.failed}",
        *_quarantined_status_lines(s),
        f"embedded:     {s.embedded}",
        f"index:        {index}",
        f"model:        {s.embed_model or '-'}{fingerprint}",
        f"described by: {vision}",
    ]
    if s.index_problem:
        lines.append(f"problem:      {s.index_problem}")
    for b in s.batches:
        counts = b.get("counts") or {}
        done = f", {counts.get('completed', 0)}/{counts.get('total', 0)} done" if counts.get("total") else ""
        lines.append(f"batch:        {b['id'] or '(submission interrupted)'}: {b['photos']} photos, {b['state']}{done}, "
                     f"{_age(b['age_s'])} old" + (f" (as of {b['seen']})" if b.get("seen") else ""))
    lines.append(f"next run would: {next_step(s)}")
    return "\n".join(lines)


def batch_summary(s: BatchSummary) -> None:
    """What a `describe --batch` run did, on stderr."""
    for line in _batch_lines(s):
        info(line)


def _batch_lines(s: BatchSummary) -> list[str]:
    from imgrag.describe.batch import BATCH_DISCOUNT

    lines = []
    if s.estimate is not None:
        e = s.estimate
        held = f", {s.held} in open batches" if s.held else ""
        lines.append(
            f"dry run (batch): {s.found} photos, {s.already} already described{held}, would submit {e.photos}: "
            f"~{e.prompt_tokens:,} input + ~{e.completion_tokens:,} output tokens, ~${e.cost:.2f} at the batch "
            f"price (half of ~${e.cost / BATCH_DISCOUNT:.2f}), results within {s.window}; nothing was sent")
        return lines
    for b in s.collected:
        lines.append(f"imgrag: collected batch {b.batch_id} ({b.status}): {b.described} described, {b.failed} failed"
                     + (f", {b.unfinished} left for the next batch" if b.unfinished else ""))
    for b in s.open:
        counts = b.get("counts") or {}
        done = f", {counts.get('completed', 0)}/{counts.get('total', 0)} done" if counts.get("total") else ""
        lines.append(f"imgrag: batch {b['id']} of {b['photos']} photo(s): {b['state']}{done}, "
                     f"submitted {_age(b['age_s'])} ago")
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


def _age(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
