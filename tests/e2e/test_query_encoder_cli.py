"""The fast query encoder seen from the command: `--help` imports nothing heavy, and a
search through the ONNX export imports no torch and ranks exactly like sentence-transformers
(real processes: which modules a fresh process imports is the point).
The export itself is tested in process in tests/unit/test_query_encoder.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from conftest import IMGRAG, invoke, user_env
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


def test_cli_fast_path_ranks_exactly_like_sentence_transformers(home):
    """The first embed exports the query encoder (in process; the one test that pays for a
    fresh export through the command); a search in a fresh process then needs no torch."""
    cwd, photos, env = home
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    r = invoke("embed", photos, cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    manifest = json.loads((cwd / ".imgrag" / "manifest.json").read_text())
    folder = qe.export_dir(Workspace(cwd / ".imgrag"), MODEL, manifest["embedding"]["fingerprint"])
    assert qe.read_record(folder)["verified"], "embed exported the query encoder"

    query = ["search", "a dog running by the sea", "--json", "--limit", "4", "--min-score=-1"]
    fast, names = imported_modules(query, cwd, {**env, qe.ENV_VAR: "onnx"})
    assert fast.returncode == 0, fast.stderr
    assert "onnxruntime" in names and not names & {"torch", "sentence_transformers", "transformers"}
    slow = invoke(*query, cwd=cwd, env={**env, qe.ENV_VAR: "torch"})
    assert slow.code == 0, slow.stderr
    fast_hits, slow_hits = json.loads(fast.stdout)["results"], json.loads(slow.stdout)["results"]
    assert len(fast_hits) == 4 and fast_hits[0]["path"].endswith("beach_dog.jpg")
    assert [h["sha256"] for h in fast_hits] == [h["sha256"] for h in slow_hits]
    assert [h["score"] for h in fast_hits] == pytest.approx([h["score"] for h in slow_hits], abs=2e-4)

    # nothing new to embed and the export in place: the model is not even imported
    again, names = imported_modules(["embed", str(photos)], cwd, env)
    assert again.returncode == 0, again.stderr
    assert not names & {"torch", "sentence_transformers"}
