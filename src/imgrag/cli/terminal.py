"""What the terminal can show: 24-bit colour, and how big thumbnails can be for a table of
results to fit on one screen."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

TRUECOLOR = ("truecolor", "24bit")  # what COLORTERM says in terminals with 24-bit colour

# A thumbnail is this many text rows high (a half-block row is two pixels): 8 rows is about
# the least a photo is recognisable at, 12 (32x24 pixels for 4:3) is plenty beside its text.
MIN_ROWS, MAX_ROWS = 8, 12
# Lines of a screen not for the table: the command typed, a notice on stderr, the next prompt.
SCREEN_MARGIN = 3
# A table's lines besides its rows and the rule under each: top rule, header, header rule.
TABLE_FRAME = 3


def has_truecolor(colorterm: str, in_tmux: bool) -> bool:
    """COLORTERM=truecolor|24bit (`colorterm`), or inside tmux whose terminal has RGB (or Tc)."""
    if colorterm.strip().lower() in TRUECOLOR:
        return True
    return in_tmux and _tmux_has_rgb()


def _tmux_has_rgb() -> bool:
    """tmux passes 24-bit colour through when the terminal it draws on has the RGB feature:
    the attached client's features (tmux >= 3.2), else what its options grant terminals."""
    features = _tmux("display-message", "-p", "#{client_termfeatures}")
    if "RGB" in features.split(","):
        return True
    granted = _tmux("show-options", "-gqv", "terminal-features") + _tmux("show-options", "-gqv", "terminal-overrides")
    return bool(re.search(r"[:,](RGB|Tc)\b", granted))


def _tmux(*args: str) -> str:
    try:
        done = subprocess.run(["tmux", *args], capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return ""
    return done.stdout if done.returncode == 0 else ""


@dataclass(frozen=True)
class ThumbnailFit:
    shown: int  # how many hits the table shows
    rows: int  # text rows per thumbnail


def fit_thumbnails(hits: int, screen_lines: int | None, *, cut: bool) -> ThumbnailFit:
    """Thumbnails as big as the screen allows for `hits` rows (MIN_ROWS..MAX_ROWS). With
    `cut`, only as many hits as fit at MIN_ROWS; else all (the table then scrolls).
    `screen_lines` None: no screen to fit (piped), MAX_ROWS."""
    if screen_lines is None or hits == 0:
        return ThumbnailFit(hits, MAX_ROWS)
    room = screen_lines - SCREEN_MARGIN - TABLE_FRAME  # each hit takes rows + 1 lines (its rule below)
    shown = min(hits, max(1, room // (MIN_ROWS + 1))) if cut else hits
    rows = max(MIN_ROWS, min(MAX_ROWS, room // shown - 1))
    return ThumbnailFit(shown, rows)


def screen_lines(stream) -> int | None:
    """The terminal's height when `stream` is one, else None."""
    try:
        if not stream.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    return shutil.get_terminal_size().lines


def thumbnail_cells(width: int, height: int, rows: int) -> tuple[int, int]:
    """(columns, rows) for a photo of width x height pixels at most `rows` high and at most
    half as wide again as a 4:3 photo (a text cell is about twice as high as wide)."""
    if width <= 0 or height <= 0:
        return rows, rows
    most = round(rows * 2 * 4 / 3 * 1.5)
    cols = round(rows * 2 * width / height)
    if cols <= most:
        return max(1, cols), rows
    return most, max(1, round(most * height / (2 * width)))


def path_lines(path: str, width: int) -> str:
    """`path` broken into lines of at most `width` characters after a `/` (or the system's
    separator), so a narrow terminal wraps it between names, not inside one; a single name
    longer than `width` is left for the table to fold."""
    if width <= 0 or len(path) <= width:
        return path
    lines = [""]
    for part in re.split(r"(?<=[/\\])", path):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append("")
        lines[-1] += part
    return "\n".join(lines)


def text_column_width(console_width: int, other_columns: list[int]) -> int:
    """The width rich gives a table's last column when the table fills `console_width`:
    each column has one space of padding on either side, and a border before each and at the end."""
    borders = len(other_columns) + 2
    return console_width - borders - sum(w + 2 for w in other_columns) - 2
