"""Crashes, full disks, read-only state and concurrent cron jobs, through the command: the
kill -9, the concurrent runs and the file-size limit in real processes (signals, locks
between processes and resource limits are the point), the rest in process.
(bench/torture.py repeats the kill -9 case at many random moments.)"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import IMGRAG, invoke, require, unavailable
from reliability_support import (
    TRACEBACK,
    check_readable,
    draw_photos,
    jsonl_lines,
    seed_query_encoder,
    spawn_imgrag,
    wait_for_requests,
)

# --------------------------------------------------------------------------- kill -9


def test_kill_9_mid_describe_loses_only_requests_in_flight(home, standin):
    cwd, photos, env = home
    draw_photos(photos, 12)
    standin.set_default(latency=0.4)
    proc = spawn_imgrag("describe", photos, "--jobs", "4", cwd=cwd, env=env)
    wait_for_requests(standin, 9)
    proc.kill()
    proc.wait()
    ws = cwd / ".imgrag"
    assert check_readable(ws) == []
    before, _ = jsonl_lines(ws / "descriptions.jsonl")
    asked_before = len(standin.requests)
    assert 0 < len(before) < 16 and asked_before - len(before) <= 4, "lost at most the 4 requests in flight"

    standin.set_default(latency=0)
    r = invoke("describe", photos, "--jobs", "4", cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    after, torn = jsonl_lines(ws / "descriptions.jsonl")
    assert not torn and len(after) == 16 and len({rec["sha256"] for rec in after}) == 16
    assert after[: len(before)] == before, "records written before the kill are untouched"
    assert len(standin.requests) - asked_before == 16 - len(before), "nothing described is asked again"


# --------------------------------------------------------------------------- two writers


def test_second_writer_is_told_busy_or_waits(home, standin):
    cwd, photos, env = home
    # The first run holds the lock while its one request takes 8 s to be answered.
    standin.enqueue({"kind": "timeout", "seconds": 8})
    first = spawn_imgrag("describe", photos, "--jobs", "1", "--limit", "1", cwd=cwd, env=env)
    wait_for_requests(standin, 1)

    for cmd in (["describe", photos], ["embed", photos]):
        r = invoke(*cmd, cwd=cwd, env=env)
        assert r.code == 2 and "busy" in r.stderr and "--wait" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and TRACEBACK not in r.stderr
    dry = invoke("describe", photos, "--dry-run", cwd=cwd, env=env)  # writes nothing, so needs no lock
    assert dry.code == 0 and "nothing was sent" in dry.stdout + dry.stderr, dry.stderr
    assert first.poll() is None, "the first run was still writing during the checks"

    second = spawn_imgrag("describe", photos, "--jobs", "4", "--wait", cwd=cwd, env=env)
    _out1, err1 = first.communicate(timeout=120)
    _out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert "described 3" in err2, "the waiting run went on where the first stopped"
    records, torn = jsonl_lines(cwd / ".imgrag" / "descriptions.jsonl")
    assert not torn and len(records) == 4 and len(standin.requests) == 4
    assert len({rec["sha256"] for rec in records}) == 4


def test_search_during_embeds_sees_a_consistent_index(home):
    """Readers race index rebuilds: every search opens one whole generation."""
    from imgrag.config import DEFAULT_EMBED_MODEL
    from imgrag.index.build import run_embed
    from imgrag.search.ranking import SearchOptions
    from imgrag.search.searcher import run_search

    cwd, photos, env = home
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    index = cwd / ".imgrag"
    seed_query_encoder(index)
    run_embed(photos, DEFAULT_EMBED_MODEL, index=index)
    stop = threading.Event()
    errors: list[BaseException] = []
    rebuilds = 0

    def rebuild_forever():
        nonlocal rebuilds
        try:
            while not stop.is_set():
                run_embed(photos, DEFAULT_EMBED_MODEL, index=index, rebuild=True)
                rebuilds += 1
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    writer = threading.Thread(target=rebuild_forever)
    writer.start()
    searches = 0
    try:
        deadline = time.monotonic() + 60
        while (rebuilds < 3 or searches < 8) and time.monotonic() < deadline and not errors:
            hits = run_search("dog on the beach", index=index, embed_model=None, options=SearchOptions(limit=4))
            assert hits[0].path.endswith("beach_dog.jpg") and len({h.sha256 for h in hits}) == len(hits)
            searches += 1
    finally:
        stop.set()
        writer.join()
    assert not errors, errors
    assert rebuilds >= 3 and searches >= 8
    assert check_readable(index) == []


# --------------------------------------------------------------------------- disk full, read-only


@contextmanager
def _mount(target: Path, *options: str):
    """A tmpfs (or a read-only bind) mounted at target for the test (root only: skipped for
    anyone else; in CI, root, a mount refused fails the test)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small or read-only file system")
    target.mkdir(parents=True, exist_ok=True)
    r = subprocess.run([require("mount"), *options, str(target)], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        unavailable(f"mount not permitted here: {r.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], capture_output=True, check=False)


def _fill(folder: Path) -> None:
    """Use up every free byte of the file system holding folder (in `filler`)."""
    with open(folder / "filler", "wb", buffering=0) as f:
        for size in (1 << 16, 512, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError:
                pass


def _unfill(folder: Path) -> None:
    (folder / "filler").unlink()


def test_disk_full_is_a_clear_error_and_damages_nothing(home, standin, tmp_path):
    """Uses a 2 MB tmpfs for .imgrag/ (root + mount), filled up after a first run."""
    cwd, photos, env = home
    disk = tmp_path / "disk"
    with _mount(disk, "-t", "tmpfs", "-o", "size=2m", "tmpfs"):
        index = disk / ".imgrag"
        r = invoke("describe", photos, "--limit", "2", "--index", index, cwd=cwd, env=env)
        assert r.code == 0, r.stderr
        saved = {p: p.read_bytes() for p in index.rglob("*") if p.is_file()}
        _fill(disk)
        r = invoke("describe", photos, "--index", index, cwd=cwd, env=env)
        assert r.code == 2 and TRACEBACK not in r.stderr, r.stderr
        assert "no space left" in r.stderr and len(r.stderr.strip().splitlines()) <= 2, r.stderr
        assert check_readable(index, allow_torn_tail=False) == []
        for path, data in saved.items():
            if path.name.endswith(".jsonl"):
                assert path.read_bytes().startswith(data)
            elif path.name != "lock":
                assert path.read_bytes() == data, path
        _unfill(disk)
        r = invoke("describe", photos, "--index", index, cwd=cwd, env=env)
        assert r.code == 0, r.stderr
        records, _ = jsonl_lines(index / "descriptions.jsonl")
        assert len(records) == 4 and len({rec["sha256"] for rec in records}) == 4


def test_file_size_limit_mid_append_needs_no_root(home, standin):
    """The same guarantee without root: RLIMIT_FSIZE makes the next append fail (EFBIG)
    part-way, as a full disk would; the half-written line must be cut back off."""
    import resource
    import signal

    cwd, photos, env = home
    assert invoke("describe", photos, "--limit", "2", cwd=cwd, env=env).code == 0
    log = cwd / ".imgrag" / "descriptions.jsonl"
    before = log.read_bytes()

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) + 200, len(before) + 200))

    proc = subprocess.run([str(IMGRAG), "describe", str(photos)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, preexec_fn=limit_file_size, check=False)
    assert proc.returncode == 2 and TRACEBACK not in proc.stderr, proc.stderr
    assert "file too large" in proc.stderr and str(log) in proc.stderr
    assert log.read_bytes() == before, "the partial record was cut back off"
    r = invoke("describe", photos, cwd=cwd, env=env)
    assert r.code == 0 and len(jsonl_lines(log)[0]) == 4, r.stderr


def test_disk_full_during_embed(home, standin, tmp_path):
    """embed writes vectors and a new index generation: a full disk must leave the old index searchable."""
    from imgrag.config import DEFAULT_EMBED_MODEL
    from imgrag.errors import ImgragError
    from imgrag.index.build import run_embed
    from imgrag.search.ranking import SearchOptions
    from imgrag.search.searcher import run_search

    cwd, photos, env = home
    disk = tmp_path / "disk"
    with _mount(disk, "-t", "tmpfs", "-o", "size=3m", "tmpfs"):
        index = disk / ".imgrag"
        assert invoke("describe", photos, "--limit", "2", "--index", index, cwd=cwd, env=env).code == 0
        run_embed(photos, DEFAULT_EMBED_MODEL, index=index)
        assert invoke("describe", photos, "--index", index, cwd=cwd, env=env).code == 0
        _fill(disk)
        with pytest.raises(ImgragError, match="no space left"):
            run_embed(photos, DEFAULT_EMBED_MODEL, index=index)
        assert check_readable(index) == []
        hits = run_search("dog", index=index, embed_model=None, options=SearchOptions(limit=5, show_all=True))
        assert len(hits) == 2, "the previous index still answers"
        _unfill(disk)
        run_embed(photos, DEFAULT_EMBED_MODEL, index=index)
        assert len(run_search("dog", index=index, embed_model=None, options=SearchOptions(limit=5, show_all=True))) == 4


def test_read_only_state_folder(home, standin, tmp_path):
    """.imgrag/ on a read-only bind mount (chmod does not stop root): writers fail clearly, search works."""
    from imgrag.config import DEFAULT_EMBED_MODEL
    from imgrag.index.build import run_embed
    from imgrag.search.ranking import SearchOptions
    from imgrag.search.searcher import run_search

    cwd, photos, env = home
    assert invoke("describe", photos, "--limit", "2", cwd=cwd, env=env).code == 0
    index = cwd / ".imgrag"
    seed_query_encoder(index)
    run_embed(photos, DEFAULT_EMBED_MODEL, index=index)
    saved = {p: p.read_bytes() for p in index.rglob("*") if p.is_file()}
    with _mount(index, "--bind", "-o", "ro", str(index)):
        subprocess.run(["mount", "-o", "remount,bind,ro", str(index)], check=True)
        for cmd in (["describe", photos], ["embed", photos]):
            r = invoke(*cmd, cwd=cwd, env=env)
            assert r.code == 2 and TRACEBACK not in r.stderr, r.stderr
            assert "read-only" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        hits = run_search("dog on the beach", index=index, embed_model=None, options=SearchOptions(limit=2))
        assert hits[0].path.endswith("beach_dog.jpg"), "search only reads: it works on a read-only index"
    assert {p: p.read_bytes() for p in index.rglob("*") if p.is_file()} == saved
    assert len(standin.requests) == 2
