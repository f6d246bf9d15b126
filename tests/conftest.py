"""Shared by tests/unit and tests/e2e: photos drawn with Pillow, the stand-in vision server,
folders built once per test session, and the two ways to run `imgrag`:

- `invoke(...)`: the command in this process, through Typer's CliRunner: no Python, torch
  and sentence-transformers start-up per run, and the embedding model loads once per test
  process. stdout and stderr are not terminals, as under `subprocess` capture.
- `run_imgrag(...)`: the installed `imgrag` entry point in a real process, for what only a
  real process shows: signals (Ctrl-C, kill -9), a user's or cron's own run, resource limits,
  which modules a fresh process imports.

Where a real process is the point, tests say why in their docstring."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

# No test reaches a network: a model hub lookup fails at once instead of waiting for one.
# (Read by huggingface_hub when it is imported, so before anything imports it.)
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from standin_vlm import StandinVLM

IMGRAG = Path(sys.executable).parent / "imgrag"  # the entry point `pip install` wrote

# Colour photos that are easy to tell apart by perceptual hash, with what they "show".
SCENES = {
    "beach_dog": ((240, 220, 160), (30, 120, 220), "A brown dog running on a sandy beach by the sea.",
                  ["dog", "beach", "sea"], ["dog on beach", "dog running by the ocean"]),
    "kitchen": ((200, 200, 200), (150, 60, 20), "A kitchen with a red kettle on a gas stove.",
                ["kettle", "stove", "kitchen"], ["kettle on stove", "kitchen"]),
    "stop_sign": ((90, 90, 90), (200, 20, 20), "A red STOP sign at a street corner.",
                  ["stop sign", "street"], ["stop sign"]),
    "birthday": ((250, 240, 250), (240, 120, 200), "Children blowing out candles on a birthday cake.",
                 ["cake", "candles", "children"], ["birthday party", "cake with candles"]),
}


def draw_scene(path: Path, name: str, size=(640, 480), **save_kwargs) -> Path:
    """A distinct picture per scene: background, a big shape, and a pattern that differs."""
    bg, fg, *_ = SCENES[name]
    seed = sum(map(ord, name))
    img = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(img)
    w, h = size
    for i in range(6):
        x = (seed * (i + 3) * 37) % w
        y = (seed * (i + 5) * 53) % h
        d.rectangle([x, y, x + w // 5, y + h // 6], fill=tuple((c + 40 * i) % 256 for c in fg))
    d.ellipse([w // 4, h // 4, w // 4 + w // (2 + seed % 3), h // 4 + h // 3], fill=fg)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **save_kwargs)
    return path


def scene_catalog(folder: Path) -> list[tuple[Path, dict]]:
    """Reference pictures + descriptions for the stand-in (kept outside the photo folder)."""
    entries = []
    for name, (_, _, caption, objects, phrases) in SCENES.items():
        ref = draw_scene(folder / f"{name}.png", name)
        entries.append((ref, {"caption": caption, "objects": objects, "search_phrases": phrases}))
    return entries


def user_env(**settings: str) -> dict[str, str]:
    """This environment without any imgrag or provider setting, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))}
    env.update(settings)
    return env


# -- running imgrag ---------------------------------------------------------------------------


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@contextmanager
def as_a_new_run(env: dict, cwd: Path) -> Iterator[None]:
    """This process as a new `imgrag` run finds its own: `env` its whole environment, `cwd`
    its working directory, `.env` not read yet. Put back afterwards, with the CPU priority
    that describe/embed lower when no terminal is attached (imgrag.priority)."""
    import imgrag.config

    assert hasattr(imgrag.config, "_env_loaded"), "imgrag.config no longer remembers reading .env this way"
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    niceness = os.getpriority(os.PRIO_PROCESS, 0)
    os.environ.clear()
    os.environ.update(env)
    imgrag.config._env_loaded = False  # a new process has not read .env yet
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
        imgrag.config._env_loaded = False
        if os.getpriority(os.PRIO_PROCESS, 0) != niceness:
            try:
                os.setpriority(os.PRIO_PROCESS, 0, niceness)
            except PermissionError:  # only root may raise a priority again; the tests just run slower
                pass


def invoke(*args: object, cwd: Path, env: dict, stdin: str | None = None) -> Result:
    """`imgrag ARGS` in this process (Typer's CliRunner against imgrag.cli.app), as a real run
    would see it (as_a_new_run): `stdin` is its input (none: empty); stdout and stderr are
    captured, not terminals. An unexpected exception fails the test with its traceback (a real
    run would print one)."""
    from imgrag.cli import app

    with as_a_new_run(env, cwd):
        result = _Runner().invoke(app, [str(a) for a in args], input=stdin, catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


class _Runner(CliRunner):
    """Typer's CliRunner without its fixed 80-column help: help is as wide as a real run's
    (COLUMNS, else the terminal, else 80)."""

    @contextmanager
    def isolation(self, *args, **kwargs):
        import typer.testing

        with super().isolation(*args, **kwargs) as streams:
            typer.testing.formatting.FORCED_WIDTH = None  # put back by the runner afterwards
            yield streams


def run_imgrag(*args: object, cwd: Path, env: dict, timeout: float = 180, stdin: str | None = None) -> Result:
    """The installed `imgrag` command in a real process, as a user or cron runs it: stdin is
    `stdin`, else nothing (not a terminal), stdout and stderr are captured."""
    assert IMGRAG.exists(), f"{IMGRAG} is missing: install the project (pip install -e '.[test]')"
    given = {"input": stdin} if stdin is not None else {"stdin": subprocess.DEVNULL}
    proc = subprocess.run([str(IMGRAG), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False, **given)
    return Result(proc.returncode, proc.stdout, proc.stderr)


def unavailable(reason: str) -> NoReturn:
    """What a test needs from this machine is missing: in CI (CI=true), where .ci/run provides
    it, the test fails; elsewhere it is skipped, saying why."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (in CI this fails the test)")
    pytest.skip(reason)


def require(tool: str, path: str | None = None) -> str:
    """The path of a program the tests need (tmux, chromium, mount...): see unavailable()."""
    found = path if path and os.path.exists(path) else shutil.which(tool)
    if not found:
        unavailable(f"{tool} is not installed (apt-get install {tool}; .ci/run installs tmux and chromium)")
    return found


# -- folders built once per session ----------------------------------------------------------


def shared_root(tmp_path_factory) -> Path:
    """A folder common to every xdist worker of this session (else this run's temp folder)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """The folder `name`, made by `build` once per test session: the first worker to ask
    builds it (under a lock), the others wait and use it. Tests only read it, or copy it."""
    from filelock import FileLock

    root = shared_root(tmp_path_factory)
    base, ready = root / name, root / f"{name}.ready"
    with FileLock(str(root / f"{name}.lock")):
        if not ready.exists():
            shutil.rmtree(base, ignore_errors=True)
            base.mkdir()
            build(base)
            ready.touch()
    return base


@contextmanager
def described_generation(folder: Path, descriptions: dict[str, dict], model) -> Iterator:
    """An index generation in folder/.imgrag of photos/NAME.jpg, each described as
    `descriptions[NAME]`, embedded by `model` (recorded as the default model), open for ranking."""
    from imgrag.index.embedding import DEFAULT_MODEL
    from imgrag.index.generations import Doc, open_generation, write_generation
    from imgrag.store.workspace import Workspace

    ws = Workspace(folder / ".imgrag")
    docs = [Doc.described(name, [f"photos/{name}.jpg"], d) for name, d in descriptions.items()]
    write_generation(ws, docs, model.encode([d.text for d in docs]), {"embedding": {"model": DEFAULT_MODEL}})
    generation = open_generation(ws)
    try:
        yield generation
    finally:
        generation.db.close()


def copy_tree(src: Path, dst: Path) -> Path:
    """A private copy of a built folder to change (stored paths are relative: a copy works).
    The query-encoder export (.imgrag/models/, ~90 MB, never written in place) is hard-linked."""

    def copy(a: str, b: str) -> None:
        if f"{os.sep}.imgrag{os.sep}models{os.sep}" in a:
            os.link(a, b)
        else:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, symlinks=True, copy_function=copy)
    return dst


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def photos(tmp_path) -> Path:
    """A folder of the SCENES as JPEGs (test_standin.py has photos of its own)."""
    folder = tmp_path / "photos"
    for name in SCENES:
        draw_scene(folder / f"{name}.jpg", name, quality=92)
    return folder


@pytest.fixture
def standin(tmp_path_factory):
    """The stand-in vision server, knowing every scene in SCENES."""
    refs = tmp_path_factory.mktemp("standin-refs")
    server = StandinVLM(catalog=scene_catalog(refs))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def home(tmp_path, standin):
    """A user's folder with photos, and an environment pointing imgrag at the stand-in."""
    photos = tmp_path / "photos"
    for name in SCENES:
        draw_scene(photos / f"{name}.jpg", name, quality=92)
    env = user_env(GROQ_API_KEY="test-key-123", IMGRAG_BASE_URL=standin.url, NO_COLOR="1")
    return tmp_path, photos, env


@pytest.fixture(scope="session")
def library(tmp_path_factory):
    """The drawn search library (tests/libraries.py), indexed once per session; read only."""
    from libraries import Library, build_search_library, search_env

    base = built_once(tmp_path_factory, "search-library", build_search_library)
    return Library(base, base / "photos", search_env())


@pytest.fixture(scope="session")
def library_dir(tmp_path_factory) -> Path:
    """The drawn ask library (tests/libraries.py), indexed once per session; read only: a test
    that writes (a verdict cache) works on a copy (copy_tree)."""
    from libraries import build_ask_library

    return built_once(tmp_path_factory, "ask-library", build_ask_library)


# -- the API key the tests give imgrag, and the checks that it never leaks ----------------------

KEY = "gsk_test_secret_key_1234567890"


def images_sent(server) -> dict[str, int]:
    """How many times the stand-in vision server was sent each image (by content hash)."""
    return server.stats()["images"]


def assert_key_never_written(root: Path, *texts: str) -> None:
    """KEY is in no file under `root` and in none of `texts` (output a run printed)."""
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
    for text in texts:
        assert KEY not in text
