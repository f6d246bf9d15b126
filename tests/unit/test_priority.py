"""Describe/embed/index step back for interactive work only when no terminal is attached."""

import os
import pty
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "setpriority"), reason="no process priorities here")

PROBE = ("import os; from imgrag.priority import step_back_when_unattended as s; "
         "print(s(), os.getpriority(os.PRIO_PROCESS, 0))")


def _probe(stdin, stderr, preexec=None) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", PROBE], stdin=stdin, stderr=stderr, stdout=subprocess.PIPE,
                         text=True, check=True, preexec_fn=preexec).stdout.split()
    return out[0], int(out[1])


def test_without_a_terminal_it_lowers_its_cpu_priority():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    lowered, now = _probe(subprocess.DEVNULL, subprocess.PIPE)
    assert (lowered, now) == (("True", 10) if start < 10 else ("False", start))


def test_on_a_terminal_it_keeps_its_priority():
    start = os.getpriority(os.PRIO_PROCESS, 0)
    leader, follower = pty.openpty()
    try:
        assert _probe(follower, subprocess.PIPE) == ("False", start)  # stdin is a terminal
        assert _probe(subprocess.DEVNULL, follower) == ("False", start)  # stderr is one
    finally:
        os.close(leader)
        os.close(follower)


def test_it_never_raises_a_priority_already_lower():
    lowered, now = _probe(subprocess.DEVNULL, subprocess.PIPE, preexec=lambda: os.setpriority(os.PRIO_PROCESS, 0, 15))
    assert (lowered, now) == ("False", 15)
