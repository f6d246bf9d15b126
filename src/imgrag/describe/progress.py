"""What describe reports while it runs, to whoever shows it: the CLI's progress bar
(cli/render.py), a job of `imgrag serve` (web/jobs.py), a test."""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    def start(self, total: int) -> None:
        """`total` photos are about to be described (or prepared for a batch)."""

    def advance(self, ok: bool) -> None:
        """One more photo is done: described (True) or failed (False)."""

    def warn(self, message: str) -> None:
        """Something the user should know, said once, while the run goes on."""

    def stop(self) -> None:
        """The run is over: nothing more is reported."""


class NoProgress:
    """Reports nothing: for a caller that has nothing to show, or a base for one that shows a part."""

    def start(self, total: int) -> None:
        pass

    def advance(self, ok: bool) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def stop(self) -> None:
        pass
