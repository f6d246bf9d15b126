"""The query encoder seen from the command: `--help` imports nothing heavy, and the default
model indexes and searches without importing torch, ranking exactly like sentence-transformers
(real processes: which modules a fresh process imports is the point). The export of other
models is tested in process in tests/unit/test_query_encoder.py; the default model's graph
in tests/unit/test_default_model.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import IMGRAG, invoke, user_env
from imgrag.index import default_model
from imgrag.index import query_encoder as qe
from imgrag.store.workspace import Workspace

MODEL = "all-MiniLM-L6-v2"
HEAVY = ("torch", "sentence_transformers", "transformers", "onnxruntime", "faiss", "tokenizers")


def imported_modules(args: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, set[str]]:
    """Run the installed imgrag with Python's import timing on; the top-level packages it imported."""
    proc = subprocess.run([str(IMGRAG), *args], cwd=cwd, env={**env, "PYTHONPROFILEIMPORTTIME": "1"},
                          capture_output=True, text=True, timeout=180, check=False)
    names = {line.split("|")[-1].strip().split(".")[0] for line in proc.stderr.splitlines() if line.startswith("import time:")}
    return proc, names


def test_help_imports_nothing_heavy(tmp_path):
    env = user_env()
    for args in (["--help"], ["search", "--help"]):
        proc, names = imported_modules(args, tmp_path, env)
        assert proc.returncode == 0 and "Usage" in proc.stdout
        assert "typer" in names, "the importtime listing was read"
        assert not names & set(HEAVY), f"imgrag {' '.join(args)} imported {sorted(names & set(HEAVY))}"


def test_default_model_never_imports_torch_and_ranks_like_sentence_transformers(home):
    """The default model runs on ONNX Runtime: `imgrag index` (describe + embed) and `imgrag
    search` in fresh processes never import torch, though it is installed here, and make no
    export in the workspace; the ranking is sentence-transformers' own (IMGRAG_QUERY_ENCODER=torch)."""
    cwd, photos, env = home
    indexed, names = imported_modules(["index", str(photos)], cwd, env)
    assert indexed.returncode == 0, indexed.stderr
    assert "onnxruntime" in names and not names & {"torch", "sentence_transformers", "transformers"}
    manifest = json.loads((cwd / ".imgrag" / "manifest.json").read_text())
    assert manifest["embedding"] == {"model": MODEL, "fingerprint": default_model.FINGERPRINT, "dim": 384}, \
        "the fingerprint of indexes embedded with sentence-transformers: they stay valid"
    assert not qe.export_dir(Workspace(cwd / ".imgrag"), MODEL, default_model.FINGERPRINT).exists()

    query = ["search", "a dog running by the sea", "--json", "--limit", "4", "--min-score=-1"]
    fast, names = imported_modules(query, cwd, env)
    assert fast.returncode == 0, fast.stderr
    assert "onnxruntime" in names and not names & {"torch", "sentence_transformers", "transformers"}
    slow = invoke(*query, cwd=cwd, env={**env, qe.ENV_VAR: "torch"})
    assert slow.code == 0, slow.stderr
    fast_hits, slow_hits = json.loads(fast.stdout)["results"], json.loads(slow.stdout)["results"]
    assert len(fast_hits) == 4 and fast_hits[0]["path"].endswith("beach_dog.jpg")
    assert [h["sha256"] for h in fast_hits] == [h["sha256"] for h in slow_hits]
    assert [h["score"] for h in fast_hits] == pytest.approx([h["score"] for h in slow_hits], abs=2e-4)

    # nothing new to embed: the model is not even imported
    again, names = imported_modules(["embed", str(photos)], cwd, env)
    assert again.returncode == 0, again.stderr
    assert not names & {"torch", "sentence_transformers", "onnxruntime"}
