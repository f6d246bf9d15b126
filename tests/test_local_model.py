"""A sentence-transformers model folder as the embedding model, end to end through the CLI:
the manifest records its absolute path and weights fingerprint, the fast ONNX query
encoder is exported from the folder's own settings and ranks like sentence-transformers,
a moved copy of the same weights is the same model, and another model needs --rebuild."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import run_imgrag
from tiny_model import make_tiny_model


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("models")
    return make_tiny_model(base / "tiny-a", seed=1), make_tiny_model(base / "tiny-b", seed=2, pooling="cls")


def manifest_embedding(cwd: Path) -> dict:
    return json.loads((cwd / ".imgrag" / "manifest.json").read_text())["embedding"]


def search_json(cwd: Path, env: dict, encoder: str) -> list[tuple[str, float]]:
    r = run_imgrag("search", "dog on the beach", "--json", "--min-score", "0", cwd=cwd,
                   env={**env, "IMGRAG_QUERY_ENCODER": encoder})
    assert r.code == 0, r.stderr
    return [(hit["path"], hit["score"]) for hit in json.loads(r.stdout)["results"]]


def test_a_model_folder_end_to_end(home, tiny_models):
    cwd, photos, env = home
    model_a, model_b = tiny_models
    shutil.copytree(model_a, cwd / "models" / "tiny-a")
    assert run_imgrag("describe", photos, cwd=cwd, env=env).code == 0

    # A relative folder name: recorded as its absolute path, with the weights' fingerprint.
    r = run_imgrag("embed", photos, "--model", "./models/tiny-a", cwd=cwd, env=env)
    assert r.code == 0 and "4 embedded now" in r.stderr, r.stderr
    embedding = manifest_embedding(cwd)
    assert embedding["model"] == str((cwd / "models" / "tiny-a").resolve()) and embedding["dim"] == 32
    assert len(embedding["fingerprint"]) == 16
    [export] = (cwd / ".imgrag" / "models").iterdir()
    record = json.loads((export / "encoder.json").read_text())
    assert record["verified"] and record["pipeline"]["max_seq_length"] == 48, record  # the folder's own setting
    assert record["pipeline"]["pooling"] == ["mean"] and record["pipeline"]["dim"] == 32

    # Search: the ONNX export (no torch) ranks exactly as the model run by sentence-transformers;
    # IMGRAG_EMBED_MODEL spelled as an absolute path is the same model as the relative one.
    env_a = {**env, "IMGRAG_EMBED_MODEL": str(cwd / "models" / "tiny-a")}
    fast, slow = search_json(cwd, env_a, "onnx"), search_json(cwd, env_a, "torch")
    assert [p for p, _ in fast] == [p for p, _ in slow] and len(fast) == 4
    assert all(abs(a - b) < 1e-4 for (_, a), (_, b) in zip(fast, slow))

    # The same weights in another folder (moved, copied) are the same model: nothing re-embedded.
    moved = shutil.copytree(model_a, cwd / "elsewhere" / "tiny-a")
    r = run_imgrag("embed", photos, "--model", moved, cwd=cwd, env=env)
    assert r.code == 0 and "0 embedded now" in r.stderr, r.stderr
    assert manifest_embedding(cwd)["model"] == str(moved) and manifest_embedding(cwd)["fingerprint"] == embedding["fingerprint"]

    # Other weights: a clear refusal naming the fix, then a rebuild with the new model.
    r = run_imgrag("embed", photos, "--model", model_b, cwd=cwd, env=env)
    assert r.code == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"imgrag embed --rebuild {photos}" in r.stderr and str(model_b) in r.stderr
    r = run_imgrag("embed", photos, "--model", model_b, "--rebuild", cwd=cwd, env=env)
    assert r.code == 0 and "4 embedded now" in r.stderr, r.stderr
    assert manifest_embedding(cwd)["fingerprint"] != embedding["fingerprint"]
    records = [json.loads((d / "encoder.json").read_text()) for d in (cwd / ".imgrag" / "models").iterdir()]
    assert [r["pipeline"]["pooling"] for r in records] == [["cls"]] and records[0]["verified"]

    # Without --model or IMGRAG_EMBED_MODEL, the index keeps its own model.
    r = run_imgrag("embed", photos, cwd=cwd, env=env)
    assert r.code == 0 and manifest_embedding(cwd)["model"] == str(model_b), r.stderr

    # A folder that is not there: one line, before any model is loaded.
    r = run_imgrag("embed", photos, "--model", "./models/nope", cwd=cwd, env=env)
    assert r.code == 2 and r.stderr.strip() == "imgrag: error: embedding model folder not found: ./models/nope " \
        "(--model / IMGRAG_EMBED_MODEL take a model hub name or a sentence-transformers model folder)"
    r = run_imgrag("search", "dog", cwd=cwd, env={**env, "IMGRAG_EMBED_MODEL": str(model_a)})
    assert r.code == 2 and "imgrag embed --rebuild" in r.stderr and str(model_b) in r.stderr


@pytest.mark.parametrize("pooling, dense", [
    ("weightedmean", []),
    ("lasttoken", []),
    ("max", [(24, "Tanh")]),
    ("mean", [(48, "ReLU"), (16, "Identity")]),
])
def test_the_fast_encoder_reproduces_other_pipelines(tmp_path, pooling, dense):
    """Pooling modes and Dense layers read from the model's own files, checked against
    sentence-transformers itself (the same check `imgrag embed` makes before using it)."""
    from imgrag.index.embedding import load_model
    from imgrag.index.onnx_export import SAMPLE_TEXTS, export
    from imgrag.index.query_encoder import OnnxQueryEncoder
    from imgrag.store.workspace import Workspace

    folder = make_tiny_model(tmp_path / f"tiny-{pooling}", seed=3, pooling=pooling, max_seq_length=24, dense=dense)
    loaded = load_model(str(folder))
    ws = Workspace(tmp_path / ".imgrag")
    ws.root.mkdir()
    record = export(ws, loaded)
    assert record["verified"], record.get("reason")
    assert record["pipeline"]["pooling"] == [pooling] and len(record["pipeline"]["dense"]) == len(dense)
    assert record["pipeline"]["dim"] == (dense[-1][0] if dense else 32) and record["pipeline"]["max_seq_length"] == 24
    [export_folder] = (ws.root / "models").iterdir()
    fast = OnnxQueryEncoder(export_folder, record)
    texts = SAMPLE_TEXTS[:6]  # a padded batch: short and long texts together
    assert (fast.encode(texts) * loaded.encode(texts)).sum(axis=1).min() > 0.9999
