"""The index pipeline (imgrag.pipeline): describe, then embed, by the same rules for the CLI
and a server's jobs. Against the stand-in vision server, with the packaged embedding model."""

from __future__ import annotations

import threading
from pathlib import Path

from conftest import SCENES, draw_scene, invoke
from imgrag.config import Settings
from imgrag.errors import EXIT_OK
from imgrag.index.generations import open_generation
from imgrag.pipeline import Report, Steps, run_pipeline
from imgrag.store.workspace import Workspace


class Recorder(Report):
    def __init__(self) -> None:
        self.events: list[str] = []

    def phase(self, name: str) -> None:
        self.events.append(name)

    def described(self, summary) -> None:
        self.events.append(f"described {summary.described} of {summary.found}")

    def embedded(self, summary) -> None:
        self.events.append(f"embedded {summary.described}")


def two_folders(base: Path) -> Workspace:
    """A workspace that knows two photo folders, two scenes in each."""
    ws = Workspace(base / ".imgrag")
    ws.root.mkdir(parents=True)
    for folder, names in (("a", list(SCENES)[:2]), ("b", list(SCENES)[2:])):
        for name in names:
            draw_scene(base / folder / f"{name}.jpg", name, quality=92)
        ws.add_root(base / folder)
    return ws


def settings_for(standin) -> Settings:
    return Settings(api_key="test-key-123", base_url=standin.url, timeout=10.0, max_retries=1)


def test_every_known_folder_shares_one_limit_then_embed_follows(tmp_path, standin):
    ws = two_folders(tmp_path)
    report = Recorder()
    result = run_pipeline(None, settings_for(standin), Steps(limit=3, jobs=2), report, index=ws.root)
    assert report.events == ["describe", "described 2 of 2", "described 1 of 2", "embed", "embedded 3"]
    assert result.exit_code == EXIT_OK and open_generation(ws).size == 3


def test_a_cancelled_run_describes_nothing_more_and_does_not_embed(tmp_path, standin):
    ws = two_folders(tmp_path)
    cancel = threading.Event()
    cancel.set()
    report = Recorder()
    result = run_pipeline(None, settings_for(standin), Steps(cancel=cancel), report, index=ws.root)
    assert report.events == ["describe"] and result.embedded is None
    assert standin.stats()["requests"] == 0


def test_a_dry_run_sends_and_writes_nothing(tmp_path, standin):
    ws = two_folders(tmp_path)
    result = run_pipeline(None, settings_for(standin), Steps(dry_run=True), Recorder(), index=ws.root)
    assert [s.estimate.photos for s in result.described if s.estimate] == [2, 2]
    assert result.pending is not None and result.pending.next_describe == 4
    assert standin.stats()["requests"] == 0 and not ws.paths.descriptions.exists()


def test_describe_limit_0_reports_what_is_left_and_sends_nothing(home, standin):
    cwd, photos, env = home
    r = invoke("describe", photos, "--limit", "0", cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    assert "described 0" in r.stderr and "4 left" in r.stderr
    assert standin.stats()["requests"] == 0
