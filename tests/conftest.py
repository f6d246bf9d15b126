"""Shared fixtures: photos drawn with Pillow, the stand-in vision server, and the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from standin_vlm import StandinVLM

REPO = Path(__file__).resolve().parent.parent

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


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


@pytest.fixture
def home(tmp_path, standin):
    """A user's folder with photos, and an environment pointing imgrag at the stand-in."""
    photos = tmp_path / "photos"
    for name in SCENES:
        draw_scene(photos / f"{name}.jpg", name, quality=92)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "GROQ_", "OPENAI_"))}
    env.update(GROQ_API_KEY="test-key-123", IMGRAG_BASE_URL=standin.url, NO_COLOR="1")
    return tmp_path, photos, env


def run_imgrag(*args: str, cwd: Path, env: dict, timeout: float = 180, stdin: str | None = None) -> Result:
    """The real `imgrag` command in a subprocess, as a user or cron would run it."""
    proc = subprocess.run(
        [sys.executable, "-m", "imgrag", *map(str, args)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, input=stdin,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
