"""The fast query encoder of a sentence-transformers model: an ONNX export of the index's
model, verified against sentence-transformers, used by search when valid and skipped (slow
path) when not. The model here is all-MiniLM-L6-v2's files as a model folder, which is
a sentence-transformers model like any other (the default model by name needs no export:
tests/unit/test_default_model.py). In process; what a fresh `imgrag` process imports is in tests/e2e/test_query_encoder_cli.py."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgrag.config import settings_from
from imgrag.errors import UsageError
from imgrag.index import default_model
from imgrag.index import onnx_export as ox
from imgrag.index import query_encoder as qe
from imgrag.index.embedding import LoadedModel, load_sentence_transformer
from imgrag.index.query_encoder import SentenceTransformersEncoder
from imgrag.store.workspace import Workspace
from tiny_model import make_tiny_model

# Not the texts the export was verified on.
TEXTS = [
    "dog on the beach",
    "Kettle On A Gas Stove",
    "two kids building a sandcastle at low tide",
    "scanned receipt from the hardware store, total $42.17",
    "a",
    "Sonnenuntergang über dem See",
    "猫がソファで寝ている",
    "🎂🎉",
    "people dancing at a wedding reception under string lights " * 40,  # far past 256 tokens
]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory) -> LoadedModel:
    """all-MiniLM-L6-v2 as a model folder (its files linked), loaded by sentence-transformers."""
    folder = tmp_path_factory.mktemp("models") / "minilm-folder"
    shutil.copytree(default_model.weights_folder(), folder, copy_function=os.symlink)
    return load_sentence_transformer(str(folder))


@pytest.fixture(scope="module")
def exported(tmp_path_factory, loaded):
    """A workspace whose MiniLM export was made (once for this module) by ensure_export."""
    ws = Workspace(tmp_path_factory.mktemp("exported") / ".imgrag")
    ws.root.mkdir()
    assert ox.ensure_export(ws, loaded.name, loaded.fingerprint, loaded) == "exported"
    return ws, qe.export_dir(ws, loaded.name, loaded.fingerprint)


def mode_set_to(value: str) -> str:
    """The query encoder setting when IMGRAG_QUERY_ENCODER is `value`."""
    return settings_from({qe.ENV_VAR: value}).query_encoder


def copy_of(exported, tmp_path: Path) -> tuple[Workspace, Path]:
    """A workspace of our own holding a copy of the export, free to damage."""
    ws, folder = exported
    mine = Workspace(tmp_path / ".imgrag")
    shutil.copytree(ws.root, mine.root)
    return mine, mine.root / folder.relative_to(ws.root)


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


def test_export_is_complete_and_verified(exported, loaded):
    ws, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    assert [p.name for p in ws.paths.models.iterdir()] == [folder.name], "no temporary folders left behind"
    record = qe.read_record(folder)
    assert record["verified"] is True and record["fingerprint"] == loaded.fingerprint
    assert record["verification"]["texts"] == len(ox.SAMPLE_TEXTS) >= 32
    assert record["verification"]["min_cosine"] >= ox.MIN_COSINE
    # read from the model's own configuration, not assumed
    assert record["pipeline"]["pooling"] == ["mean"] and record["pipeline"]["max_seq_length"] == 256
    assert record["pipeline"]["dim"] == loaded.dim == 384
    assert ox.ensure_export(ws, loaded.name, loaded.fingerprint) == "ready", "a second embed does not export again"


def test_onnx_vectors_match_sentence_transformers(exported, loaded):
    ws, _folder = exported
    fast = qe.open_encoder(ws, loaded.name, loaded.fingerprint)
    assert isinstance(fast, qe.OnnxQueryEncoder)
    reference = np.concatenate([loaded.encode([t]) for t in TEXTS])
    one_by_one = np.concatenate([fast.encode([t]) for t in TEXTS])
    assert one_by_one.dtype == np.float32 and one_by_one.shape == (len(TEXTS), 384)
    assert cosines(one_by_one, reference).min() >= 0.9999
    np.testing.assert_allclose(np.linalg.norm(one_by_one, axis=1), 1.0, atol=1e-5)
    batch = fast.encode(TEXTS)  # padded to the longest: the attention mask must hold
    assert cosines(batch, reference).min() >= 0.9999
    assert fast.encode([]).shape == (0, 384)


def test_long_text_is_cut_at_the_window_like_sentence_transformers(exported, loaded):
    ws, _ = exported
    fast = qe.open_encoder(ws, loaded.name, loaded.fingerprint)
    head = "a red bicycle leaning on a fence " * 60
    # past 256 tokens nothing more can change the vector, in either encoder
    a, b = fast.encode([head, head + " and a giraffe eating ice cream"])
    assert float(a @ b) > 0.99999
    assert float(a @ loaded.encode([head])[0]) >= 0.9999


@pytest.mark.parametrize("mode", ["mean", "cls", "max", "mean_sqrt_len_tokens", ("cls", "mean")])
def test_pooling_matches_sentence_transformers_pooling(loaded, mode):
    import torch

    pooling_type = type(loaded.model[1])
    st_pooling = pooling_type(embedding_dimension=8, pooling_mode=mode)
    rng = np.random.default_rng(3)
    tokens = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    expected = st_pooling({"token_embeddings": torch.tensor(tokens), "attention_mask": torch.tensor(mask)})
    modes = [mode] if isinstance(mode, str) else list(mode)
    np.testing.assert_allclose(qe.pool(tokens, mask, modes), expected["sentence_embedding"].numpy(), rtol=1e-5, atol=1e-6)


def unsupported_model(loaded: LoadedModel) -> LoadedModel:
    """The same transformer with a residual Dense layer on top: a pipeline the export does not reproduce."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense

    model = SentenceTransformer(modules=[loaded.model[0], loaded.model[1], Dense(384, 384, use_residual=True)],
                                device="cpu")
    return LoadedModel(name="minilm-dense", model=model, fingerprint="d" * 16, dim=384, path=None)


def test_unsupported_pipeline_is_refused_once_and_search_uses_the_slow_path(tmp_path, loaded, capsys):
    custom = unsupported_model(loaded)
    with pytest.raises(ox.Unsupported, match="Dense"):
        ox.describe_pipeline(custom.model)
    ws = Workspace(tmp_path / ".imgrag")
    status = ox.ensure_export(ws, custom.name, custom.fingerprint, custom)
    assert status.startswith("refused:") and "Dense" in status
    assert "warning" in capsys.readouterr().err
    folder = qe.export_dir(ws, custom.name, custom.fingerprint)
    assert [p.name for p in folder.iterdir()] == ["encoder.json"]
    assert not ox.export_needed(ws, custom.name, custom.fingerprint), "the next embed does not load the model to retry"
    assert ox.ensure_export(ws, custom.name, custom.fingerprint).startswith("refused:")
    with pytest.raises(UsageError, match="Dense"):  # auto would load the model by name: it has none on the hub
        qe.open_encoder(ws, custom.name, custom.fingerprint, mode_set_to("onnx"))
    assert capsys.readouterr().err == "", "a refused export is a normal state, not a warning"


def test_missing_export_falls_back_to_sentence_transformers(tmp_path, loaded):
    ws = Workspace(tmp_path / ".imgrag")
    ws.root.mkdir()
    assert isinstance(qe.open_encoder(ws, loaded.name, loaded.fingerprint), SentenceTransformersEncoder)
    assert isinstance(qe.open_encoder(ws, loaded.name, None), SentenceTransformersEncoder), "an index without a fingerprint"
    with pytest.raises(UsageError, match="imgrag embed"):
        qe.open_encoder(ws, loaded.name, loaded.fingerprint, mode_set_to("onnx"))
    with pytest.raises(UsageError, match="auto, onnx, torch"):
        qe.open_encoder(ws, loaded.name, loaded.fingerprint, mode_set_to("fastest"))


def test_forced_slow_path_and_other_fingerprint(exported, loaded):
    ws, _ = exported
    assert isinstance(qe.open_encoder(ws, loaded.name, "0" * 16), SentenceTransformersEncoder), "an export of other weights is not used"
    assert isinstance(qe.open_encoder(ws, loaded.name, loaded.fingerprint, mode_set_to("torch")), SentenceTransformersEncoder)


@pytest.mark.parametrize("damage", ["truncated weights", "garbled graph", "garbled record", "tokenizer gone"])
def test_damaged_export_falls_back_with_a_warning_and_is_redone(exported, loaded, tmp_path, capsys, damage):
    ws, folder = copy_of(exported, tmp_path)
    if damage == "truncated weights":
        with (folder / "model.onnx.data").open("r+b") as f:
            f.truncate(1000)
    elif damage == "garbled graph":  # same size, so only loading it can tell
        size = (folder / "model.onnx").stat().st_size
        (folder / "model.onnx").write_bytes(b"\x07not a protobuf" * (size // 14) + b"x" * (size % 14))
    elif damage == "garbled record":
        (folder / "encoder.json").write_text('{"format": 1, "verif')
    else:
        (folder / "tokenizer.json").unlink()
    encoder = qe.open_encoder(ws, loaded.name, loaded.fingerprint)
    assert isinstance(encoder, SentenceTransformersEncoder)
    assert "warning" in capsys.readouterr().err
    assert ox.export_needed(ws, loaded.name, loaded.fingerprint), "the next embed exports it again"


@pytest.mark.parametrize("pooling, dense", [
    ("weightedmean", []),
    ("lasttoken", []),
    ("max", [(24, "Tanh")]),
    ("mean", [(48, "ReLU"), (16, "Identity")]),
])
def test_the_fast_encoder_reproduces_other_pipelines(tmp_path, pooling, dense):
    """Pooling modes and Dense layers read from the model's own files, checked against
    sentence-transformers itself (the same check `imgrag embed` makes before using it)."""
    from imgrag.index.onnx_export import SAMPLE_TEXTS, export
    from imgrag.index.query_encoder import OnnxQueryEncoder
    from imgrag.store.workspace import Workspace

    folder = make_tiny_model(tmp_path / f"tiny-{pooling}", seed=3, pooling=pooling, max_seq_length=24, dense=dense)
    loaded = load_sentence_transformer(str(folder))
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
