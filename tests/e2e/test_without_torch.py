"""A plain install has no torch and no onnx: the default model does everything (demo, index, search) and
another model says in one line which extra it needs; `imgrag mcp` says so for the MCP SDK.
Real processes in which torch, sentence-transformers, transformers, tokenizers,
huggingface_hub, mcp and onnx cannot be imported (a sitecustomize refuses them), as in a
virtualenv made by `pip install imgrag` alone."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from conftest import IMGRAG
from tiny_model import make_tiny_model

BLOCKED = ("torch", "sentence_transformers", "transformers", "tokenizers", "huggingface_hub", "mcp", "onnx")  # not onnxruntime: a plain install has it
SITECUSTOMIZE = f'''
import sys

class _NotInstalled:
    """As if these packages were not installed."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _NotInstalled())
'''


@pytest.fixture
def no_torch(home, tmp_path):
    """`home` (photos, the stand-in vision server), with the BLOCKED packages unimportable."""
    cwd, photos, env = home
    site = tmp_path / "no-torch"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**env, "PYTHONPATH": str(site), "HOME": str(tmp_path / "user")}
    return cwd, photos, env


def run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([str(IMGRAG), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=180, check=False)


def test_the_default_model_needs_no_torch_and_another_names_the_extra(no_torch, tmp_path):
    cwd, photos, env = no_torch
    check = subprocess.run(["python3", "-c", "import torch"], env=env, capture_output=True, text=True, check=False)
    assert check.returncode != 0 and "No module named 'torch'" in check.stderr, "torch is out of reach"

    demo = run(["demo"], cwd, env)
    assert demo.returncode == 0, demo.stderr
    assert "espresso.jpg" in demo.stdout, "the demo finds the sample photo of a cup of coffee"

    indexed = run(["index", str(photos)], cwd, env)
    assert indexed.returncode == 0, indexed.stderr
    found = run(["search", "a dog running by the sea", "--json", "--limit", "1"], cwd, env)
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)["results"][0]["path"].endswith("beach_dog.jpg")

    folder = make_tiny_model(tmp_path / "tiny-model", seed=1)  # made here, with torch
    other = run(["embed", str(photos), "--model", str(folder), "--rebuild"], cwd, env)
    assert other.returncode == 2, other.stderr
    assert other.stderr.count("\n") == 1 and "pip install 'imgrag[models]'" in other.stderr, other.stderr
    hub_name = run(["embed", str(photos), "--model", "sentence-transformers/all-mpnet-base-v2", "--rebuild"], cwd, env)
    assert hub_name.returncode == 2 and "imgrag[models]" in hub_name.stderr, hub_name.stderr
    forced = run(["search", "dog", "--json"], cwd, {**env, "IMGRAG_QUERY_ENCODER": "torch"})
    assert forced.returncode == 2 and "imgrag[models]" in forced.stderr, forced.stderr
    still = run(["search", "a dog running by the sea", "--json", "--limit", "1"], cwd, env)
    assert still.returncode == 0 and json.loads(still.stdout)["results"], "the index is untouched"


def test_mcp_without_its_extra_names_the_extra(no_torch, tmp_path):
    cwd, photos, env = no_torch
    check = subprocess.run(["python3", "-c", "import mcp"], env=env, capture_output=True, text=True, check=False)
    assert check.returncode != 0 and "No module named 'mcp'" in check.stderr, "mcp is out of reach"
    for args in (["mcp", str(photos)], ["mcp", str(photos), "--http", "--port", "0"]):
        refused = run(args, cwd, env)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.count("\n") == 1 and "pip install 'imgrag[mcp]'" in refused.stderr, refused.stderr
        assert refused.stdout == ""
    listed = run(["--help"], cwd, env)
    assert listed.returncode == 0 and re.search(r"\bmcp\b", listed.stdout), "imgrag --help still lists mcp"
