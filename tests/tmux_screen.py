"""A real terminal for the tests of what imgrag draws in one: a detached tmux with its own
server (tmux is installed by .ci/run; without it the test fails in CI and is skipped elsewhere)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import require

UPPER_HALF_BLOCK = "\u2580"


def tmux_screen(command: str, env: dict, lines: int = 50, config: str = "", columns: int = 160,
                scrollback: bool = True) -> tuple[str, str]:
    """Run `command` in a real terminal (a detached tmux, `columns` x `lines`, its own server,
    with `config` as its configuration) and return the screen as text and with its colours
    (ANSI): with `scrollback`, what scrolled off the top too; else only what is on screen."""
    require("tmux")
    history = ["-S", "-200"] if scrollback else []
    folder = tempfile.mkdtemp(prefix="imgrag-tmux-")  # short: a socket path must fit in 108 bytes
    Path(folder, "tmux.conf").write_text(config)
    tmux = ["tmux", "-S", os.path.join(folder, "socket"), "-f", os.path.join(folder, "tmux.conf")]
    subprocess.run([*tmux, "new-session", "-d", "-x", str(columns), "-y", str(lines), f"{command}; echo __END__; sleep 60"],
                   env=env, check=True, timeout=30)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            text = subprocess.run([*tmux, "capture-pane", "-p", *history], capture_output=True, text=True,
                                  check=True).stdout
            if "__END__" in text:
                break
            time.sleep(0.3)
        else:
            pytest.fail(f"no end of output in tmux:\n{text}")
        ansi = subprocess.run([*tmux, "capture-pane", "-p", "-e", *history], capture_output=True, text=True,
                              check=True).stdout
        return text, ansi
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=30, check=False)
        shutil.rmtree(folder, ignore_errors=True)
