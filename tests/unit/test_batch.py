"""`run_batch` in process against the stand-in's files and batches endpoints: files split by
line count and by size, and the openai SDK's path. The workflow through the command (submit,
collect, expire, cancel, crash windows, cron) is in tests/e2e/test_batch_cli.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from conftest import scene_catalog
from imgrag.config import Settings
from imgrag.describe.batch import BatchOptions, run_batch
from imgrag.describe.live import run_describe
from imgrag.describe.plan import DescribeOptions
from imgrag.describe.progress import NoProgress
from imgrag.store.files import read_jsonl
from standin_vlm import StandinVLM

KEY = "gsk_batch_test_key_0123456789"


@pytest.fixture
def server(tmp_path_factory):
    refs = tmp_path_factory.mktemp("refs")
    with StandinVLM(catalog=scene_catalog(refs), api_key=KEY) as s:
        yield s


def records(photos: Path) -> list[dict]:
    return list(read_jsonl(photos.parent / ".imgrag" / "descriptions.jsonl"))


def wait_until_done(server: StandinVLM, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while any(s not in ("completed", "failed", "expired", "cancelled") for s in server.batch.stats()["batches"].values()):
        assert time.monotonic() < deadline, server.batch.stats()
        time.sleep(0.05)


def settings_for(server: StandinVLM, **changes) -> Settings:
    return Settings(api_key=KEY, base_url=server.url, timeout=10.0, max_retries=1).with_flags(**changes)


class Quiet(NoProgress):
    def __init__(self) -> None:
        self.warnings: list[str] = []

    def warn(self, message: str) -> None:
        self.warnings.append(message)


def test_files_over_the_line_or_size_limit_are_split(photos, server):
    server.batch.set(max_lines=2)
    s = run_batch(photos, settings_for(server), BatchOptions(max_lines=2), Quiet())
    assert [n for _, n in s.submitted] == [2, 2]
    longest = max(len(line) for b in server.batch.batches.values()
                  for line in server.batch.files[b.input_file_id].data.splitlines(keepends=True))
    wait_until_done(server)
    s = run_batch(photos, settings_for(server), BatchOptions(), Quiet())
    assert sum(c.described for c in s.collected) == 4 and s.submitted == []

    # By size: the same photos into another index, at most one line's worth of bytes a file.
    server.batch.set(max_lines=50_000)
    s = run_batch(photos, settings_for(server), BatchOptions(max_bytes=longest + 1), Quiet(),
                  index=photos.parent / "other")
    assert [n for _, n in s.submitted] == [1, 1, 1, 1]
    assert all(len(server.batch.files[server.batch.batches[i].input_file_id].data) <= longest + 1
               for i, _ in s.submitted)


def test_openai_sdk_path(photos, server):
    settings = settings_for(server, provider="openai", api_key=KEY, base_url=server.openai_base_url, model="standin-vision")
    s = run_batch(photos, settings, BatchOptions(), Quiet())
    assert [n for _, n in s.submitted] == [4]
    wait_until_done(server)
    s = run_batch(photos, settings, BatchOptions(), Quiet())
    assert [(c.status, c.described) for c in s.collected] == [("completed", 4)]
    assert {r["provider"] for r in records(photos)} == {"openai"}
    live = run_describe(photos, settings, DescribeOptions(), Quiet())
    assert live.already == 4 and live.requests == 0
