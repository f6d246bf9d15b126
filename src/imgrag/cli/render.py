"""Everything a person or a script sees: result tables and JSON on stdout, progress,
warnings and summaries on stderr. No colour or progress bar off a terminal or with NO_COLOR.

What the environment says about the terminal (NO_COLOR, TERM, IMGRAG_THUMBNAILS, ...) comes
from the command's Settings, given once by `configure`."""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgrag.cli.terminal import (
    fit_thumbnails,
    has_truecolor,
    path_lines,
    screen_lines,
    text_column_width,
    thumbnail_cells,
)
from imgrag.config import Settings
from imgrag.errors import UsageError
from imgrag.store.files import json_bytes

if TYPE_CHECKING:
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
    except Exception:  # noqa: BLE001, S110 - termios errors and the like: probing is best effort
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


def _thumbnail(path: str, kind: str, rows: int, stored: Callable[[], bytes | None] | None = None) -> tuple[Any, int]:
    """(a picture of the photo at most `rows` high for a table cell, its width in cells),
    or a dim note when it cannot be read. `stored`: the library's own thumbnail of it, for a
    file that is not on this machine (a store's photos may be on others)."""
    from PIL import Image
    from rich.text import Text

    from imgrag.photos.files import PhotoError, prepare_image

    renderable = _textual_image()
    draw = {"kitty": renderable.TGPImage, "sixel": renderable.SixelImage, "halfblock": renderable.HalfcellImage}[kind]
    try:
        jpeg: bytes | None
        try:
            jpeg = prepare_image(Path(path), max_side=_THUMB_PIXELS, quality=85).jpeg  # oriented, HEIC-aware, fast
        except (PhotoError, OSError):
            jpeg = stored() if stored is not None else None
            if jpeg is None:
                raise
        image = Image.open(io.BytesIO(jpeg))
        cols, high = thumbnail_cells(image.width, image.height, rows)
        return draw(image, width=cols, height=high), cols
    except (PhotoError, OSError):
        note = "(unreadable)" if Path(path).exists() else "(missing)"
        return Text(note, style="dim"), len(note)


def hits_table(hits: list[Hit], thumbnails: str | None = None, *, fit_screen: bool = False,
               stored: Callable[[str], bytes | None] | None = None) -> None:
    """A table on a terminal (with a thumbnail per hit when `thumbnails` names a kind, see
    thumbnail_kind); off one, tab-separated lines that never wrap (for awk and cut).

    Thumbnails are as big as the screen allows; with `fit_screen` (no --limit given) the
    table shows only the hits that fit on one screen, and says on stderr how to see the rest.
    `stored(sha256)`: a library's own thumbnail, for photos whose files are not on this machine."""
    if thumbnails is None and not is_terminal(sys.stdout):
        for h in hits:
            print(f"{h.rank}\t{h.score:.3f}\t{shown_path(h.path)}\t{' '.join(h.caption.split())}")
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    pictures: list[tuple[Any, int]] = []
    not_shown = ""
    if thumbnails is None:
        console = _console(sys.stdout)
    else:  # thumbnails were asked for, or the terminal shows them: colour is part of them
        console = Console(file=sys.stdout, force_terminal=True, no_color=False, highlight=False, soft_wrap=False,
                          color_system="truecolor" if has_truecolor(_settings.colorterm, _settings.in_tmux) else "auto")
        fit = fit_thumbnails(len(hits), screen_lines(sys.stdout), cut=fit_screen)
        if fit.shown < len(hits):  # said under the table, where it stays on screen; short for 80 columns
            not_shown = (f"imgrag: {len(hits) - fit.shown} more not shown: --limit {len(hits)} shows them all, "
                         "--no-thumbnails lists them")
            hits = hits[: fit.shown]
        pictures = [_thumbnail(h.path, thumbnails, fit.rows, partial(stored, h.sha256) if stored else None) for h in hits]
    table = Table(show_header=True, header_style="bold", expand=False, show_lines=thumbnails is not None)
    table.add_column("#", justify="right", no_wrap=True)
    if thumbnails is not None:
        table.add_column("photo", no_wrap=True, width=max(cols for _, cols in pictures))
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("path, caption, why it matched", overflow="fold")
    others = [len(str(max((h.rank for h in hits), default=1))), 5]  # rank and score
    if thumbnails is not None:
        others.append(max(cols for _, cols in pictures))
    width = text_column_width(console.width, others)
    for i, h in enumerate(hits):
        about = Text()
        about.append(path_lines(shown_path(h.path), width), style="bold")
        if len(h.paths) > 1:  # the same photo (same bytes) in other places too
            more = len(h.paths) - 1
            about.append(f"  (+{more} {'copy' if more == 1 else 'copies'})", style="dim")
        about.append("\n" + " ".join(h.caption.split()))
        if h.why and h.why != h.caption:
            about.append("\n" + h.why, style="dim")
        if h.taken:
            about.append(f"\ntaken {h.taken.replace('T', ' ')}", style="dim")
        cells: list[Any] = [str(h.rank), f"{h.score:.3f}", about]
        if thumbnails is not None:
            cells.insert(1, pictures[i][0])
        table.add_row(*cells)
    console.print(table)
    if not_shown:
        sys.stdout.flush()
        info(not_shown)


def _failed_status_lines(s: Status, shown: int = 10) -> list[str]:
    """`failed: N`, then which photos and why (a count alone leaves the user to dig in .imgrag/)."""
    lines = [f"failed:       {s.failed}" + (" (tried again by the next run)" if s.failed else "")]
    lines += [f"  {p['path']}: {p['reason']}" for p in s.failed_photos[:shown]]
    if s.failed > shown:
        lines.append(f"  ... and {s.failed - shown} more (imgrag status --json lists them all)")
    return lines


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
        *_failed_status_lines(s),
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
                     f"{age(b['age_s'])} old" + (f" (as of {b['seen']})" if b.get("seen") else ""))
    lines.append(f"next run would: {next_step(s)}")
    return "\n".join(lines)


def age(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"
