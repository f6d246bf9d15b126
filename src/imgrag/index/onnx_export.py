"""The query encoder's export: `imgrag embed` writes the index's model as ONNX once per
model (`imgrag.index.query_encoder` reads it at search time).

Every setting comes from the model's own files as sentence-transformers read them: the
tokenizer's window (max_seq_length), lower-casing, pooling modes, Dense layers (weights +
activation). A pipeline this module does not reproduce exactly (a default prompt, a module
other than Transformer -> Pooling -> Dense... -> Normalize, a pooling mode not listed
below) is refused, and search falls back to sentence-transformers.

The folder is built under a temporary name and renamed into place, so it is complete or
absent. A refused export leaves a folder with only encoder.json saying why, so the next
`imgrag embed` does not load the model to try again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from imgrag.index import default_model
from imgrag.index.embedding import LoadedModel, embedding_dimension, load_model
from imgrag.index.onnx_encoder import file_entry
from imgrag.index.query_encoder import (
    EXPORT_FORMAT,
    ONNX_FILE,
    RECORD_FILE,
    TOKENIZER_FILE,
    OnnxQueryEncoder,
    export_dir,
    files_intact,
    is_for,
    read_record,
    warn,
)
from imgrag.store.files import fsync_dir
from imgrag.store.workspace import Workspace

MIN_COSINE = 0.9999
POOLING_MODES = ("mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
# Kept in a refusal's record: one made by an older version, which reproduced fewer
# pipelines (no Dense layers, fewer pooling modes), is tried again.
PIPELINE_VERSION = 2
_ACTIVATIONS = {
    "torch.nn.modules.activation.Tanh": "tanh",
    "torch.nn.modules.linear.Identity": "identity",
    "torch.nn.modules.activation.ReLU": "relu",
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
}

# Texts the export must embed like sentence-transformers before it is used: short and long
# queries, case, accents, scripts, emoji, punctuation, and one past the encoder's window.
SAMPLE_TEXTS = [
    "dog on beach",
    "Dog On Beach",
    "a brown dog running on a sandy beach by the sea",
    "receipt",
    "x",
    "",
    "   leading and trailing spaces   ",
    "kettle on a gas stove in the kitchen",
    "children blowing out candles on a birthday cake",
    "A red STOP sign at a street corner.",
    "sunset over the mountains, orange sky",
    "my passport photo page",
    "screenshot of an error message in a terminal",
    "two people hiking in the snow with backpacks",
    "café in Paris, croissant and espresso",
    "Straße in München bei Nacht",
    "東京の夜景",
    "пляж и море",
    "🐶🏖️ beach day!!!",
    "whiteboard with handwritten notes: Q3 roadmap, ship v2.1",
    "cat sleeping on a laptop keyboard",
    "bicycle leaning against a brick wall",
    "wedding ceremony outdoors under an arch of flowers",
    "a plate of sushi and a bowl of ramen",
    "the Eiffel Tower at night",
    "baby's first steps",
    "car dashboard showing 88 mph",
    "a crowd at a rock concert with stage lights",
    "snowy forest path, early morning fog",
    "document scan: invoice #12345 due 2024-03-01",
    "A child in a pink dress is climbing up a set of stairs in an entry way. " * 30,
    "Objects: dog, ball, frisbee, grass, tree, fence. Tags: park, summer, play. " * 12,
]


class Unsupported(Exception):
    """A pipeline this module does not reproduce; str() says what."""


def export_needed(ws: Workspace, model_name: str, fingerprint: str) -> bool:
    """True unless this version already decided for this model: exported intact, or refused."""
    folder = export_dir(ws, model_name, fingerprint)
    record = read_record(folder)
    if record is None or not is_for(record, model_name, fingerprint):
        return True
    if not record.get("verified") and record.get("pipeline_version", 1) < PIPELINE_VERSION:
        return True  # refused by a version that reproduced fewer pipelines: try again
    return bool(record.get("verified")) and not files_intact(folder, record, deep=True, trust_mtime=True)


def ensure_export(ws: Workspace, model_name: str, fingerprint: str, loaded: LoadedModel | None = None) -> str:
    """Export the index's model for fast search unless done already; never fails the caller.

    Loads the model only when there is no export yet (once per model). Returns a short
    status for logs: "ready", "exported", "refused: ..." or "failed: ..."."""
    if default_model.serves(model_name, fingerprint):
        return _default_graph_ready()
    if not export_needed(ws, model_name, fingerprint):
        record = read_record(export_dir(ws, model_name, fingerprint)) or {}
        return "ready" if record.get("verified") else f"refused: {record.get('reason')}"
    try:
        if loaded is None or loaded.fingerprint != fingerprint:
            loaded = load_model(model_name)
        if loaded.fingerprint != fingerprint:
            return "failed: the model's weights changed since the index was built"
        record = export(ws, loaded)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the index is written and searchable either way: warn, retry next embed
        warn(f"could not export the fast query encoder ({type(e).__name__}: {str(e)[:200]}); "
              "search will use sentence-transformers (slower)")
        return f"failed: {type(e).__name__}"
    if record.get("verified"):
        return "exported"
    warn(f"no fast query encoder for {model_name!r}: {record['reason']}; search uses sentence-transformers")
    return f"refused: {record['reason']}"


def _default_graph_ready() -> str:
    """The default model needs no export: its graph is built once per user. Build it now if
    this embed did not load the model, so that the first search does not wait for it."""
    try:
        default_model.encoder_folder()
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - the index is written either way; the first search builds it
        warn(f"could not build the {default_model.NAME} encoder ({type(e).__name__}: {str(e)[:200]})")
        return f"failed: {type(e).__name__}"
    return "ready"


def export(ws: Workspace, loaded: LoadedModel) -> dict[str, Any]:
    """Write the export folder (or a refusal record) for this model; returns its record."""
    final = export_dir(ws, loaded.name, loaded.fingerprint)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    record: dict[str, Any] = {"format": EXPORT_FORMAT, "model": loaded.name, "fingerprint": loaded.fingerprint}
    try:
        try:
            pipeline = describe_pipeline(loaded.model)
        except Unsupported as e:
            record.update(verified=False, reason=str(e), pipeline_version=PIPELINE_VERSION)
        else:
            record.update(pipeline=pipeline)
            _export_tokenizer(loaded.model, pipeline, tmp / TOKENIZER_FILE)
            _export_transformer(loaded.model, pipeline, tmp)
            _export_dense(loaded.model, pipeline, tmp)
            record.update(_verify(tmp, record, loaded))
            if not record["verified"]:
                record["reason"] = (f"the ONNX export differs from sentence-transformers "
                                    f"(cosine {record['verification']['min_cosine']:.6f} < {MIN_COSINE})")
                for f in tmp.iterdir():
                    f.unlink()
            else:
                record["files"] = {f.name: file_entry(f) for f in sorted(tmp.iterdir())}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _install(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune(ws.paths.models, keep=final.name)
    return record


def describe_pipeline(model: Any) -> dict[str, Any]:
    """The settings of a sentence-transformers pipeline this module reproduces, or Unsupported.

    Read from the loaded model, i.e. from its modules.json, sentence_bert_config.json and
    1_Pooling/config.json as sentence-transformers interpreted them."""
    kinds = [type(m).__name__ for m in model]
    middle = kinds[2:-1] if kinds[-1:] == ["Normalize"] else kinds[2:]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Dense" for k in middle):
        raise Unsupported(f"the pipeline {' -> '.join(kinds)} is not Transformer -> Pooling [-> Dense...] [-> Normalize]")
    dense_layers = [_dense_settings(m) for m in list(model)[2:2 + len(middle)]]
    if getattr(model, "default_prompt_name", None):
        raise Unsupported(f"the model adds the prompt {model.default_prompt_name!r} to every text")
    transformer, pooling = model[0], model[1]
    tokenizer = getattr(transformer, "tokenizer", None)
    if tokenizer is None or not getattr(tokenizer, "is_fast", False):
        raise Unsupported("the model has no fast (tokenizers) tokenizer")
    config = pooling.get_config_dict()
    modes = config.get("pooling_mode", "mean")
    modes = [modes] if isinstance(modes, str) else list(modes)
    if not modes or any(m not in POOLING_MODES for m in modes):
        raise Unsupported(f"pooling {modes} (supported: {', '.join(POOLING_MODES)})")
    for flag in ("query_length", "document_length", "query_expansion"):
        if getattr(transformer, flag, None):
            raise Unsupported(f"the transformer sets {flag}")
    inputs = [n for n in tokenizer.model_input_names if n in ("input_ids", "attention_mask", "token_type_ids")]
    if "input_ids" not in inputs:
        raise Unsupported("the tokenizer gives no input_ids")
    return {
        "modules": kinds,
        "max_seq_length": int(transformer.max_seq_length),
        "do_lower_case": bool(getattr(transformer, "do_lower_case", False)),
        "pooling": modes,
        "dense": [{**layer, "file": f"dense_{i}.npz"} for i, layer in enumerate(dense_layers)],
        "normalize": True,  # imgrag always asks for unit vectors (normalize_embeddings=True)
        "dim": int(embedding_dimension(model) or model.encode(["x"]).shape[1]),
        "inputs": inputs,
        "padding_side": tokenizer.padding_side,
    }


def _dense_settings(module: Any) -> dict[str, Any]:
    config = module.get_config_dict()
    activation = _ACTIVATIONS.get(str(config.get("activation_function")))
    if activation is None:
        raise Unsupported(f"a Dense layer with activation {config.get('activation_function')}")
    if config.get("use_residual") or config.get("module_input_name", "sentence_embedding") != "sentence_embedding" \
            or config.get("module_output_name") not in (None, "sentence_embedding"):
        raise Unsupported("a Dense layer with a residual or on other features than the sentence embedding")
    return {"activation": activation, "in": int(config["in_features"]), "out": int(config["out_features"])}


def _export_dense(model: Any, pipeline: dict[str, Any], folder: Path) -> None:
    """Each Dense layer's weights, in fp32 as sentence-transformers computes with them."""
    for module, layer in zip(list(model)[2:], pipeline["dense"], strict=False):
        linear = module.linear
        arrays = {"weight": linear.weight.detach().cpu().float().numpy()}
        if linear.bias is not None:
            arrays["bias"] = linear.bias.detach().cpu().float().numpy()
        with (folder / layer["file"]).open("wb") as f:
            np.savez(f, **arrays)


def _export_tokenizer(model: Any, pipeline: dict[str, Any], path: Path) -> None:
    """The backend tokenizer, set to truncate and pad as sentence-transformers asks transformers to."""
    from tokenizers import Tokenizer

    hf = model[0].tokenizer
    tok = Tokenizer.from_str(hf.backend_tokenizer.to_str())
    tok.enable_truncation(max_length=pipeline["max_seq_length"], strategy="longest_first",
                          direction=getattr(hf, "truncation_side", "right"))
    tok.enable_padding(direction=hf.padding_side, pad_id=hf.pad_token_id or 0, pad_type_id=hf.pad_token_type_id or 0,
                       pad_token=hf.pad_token or "[PAD]")
    tok.save(str(path))


def _export_transformer(model: Any, pipeline: dict[str, Any], folder: Path) -> None:
    """torch.onnx (TorchScript exporter: works offline, needs no onnxscript) -> external-data ONNX."""
    import onnx
    import torch
    from tokenizers import Tokenizer

    names = pipeline["inputs"]
    transformer = model[0].auto_model.eval()

    class TokenEmbeddings(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
            return self.transformer(**dict(zip(names, tensors, strict=True))).last_hidden_state

    # Trace a padded batch, so the graph keeps the attention-mask path that short queries
    # in a batch need (an all-ones mask lets transformers skip it).
    tok = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
    sample = tok.encode_batch(["a photo", "a longer example sentence about a photo of a dog"])
    feeds = {
        "input_ids": [e.ids for e in sample],
        "attention_mask": [e.attention_mask for e in sample],
        "token_type_ids": [e.type_ids for e in sample],
    }
    args = tuple(torch.tensor(feeds[n], dtype=torch.long) for n in names)
    inline = folder / "inline.onnx"
    axes = {n: {0: "batch", 1: "sequence"} for n in [*names, "token_embeddings"]}
    with torch.no_grad(), warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(TokenEmbeddings(), args, str(inline), input_names=names, output_names=["token_embeddings"],
                          dynamic_axes=axes, opset_version=17, do_constant_folding=True, dynamo=False)
    graph = onnx.load(str(inline))
    onnx.save_model(graph, str(folder / ONNX_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=ONNX_FILE + ".data", size_threshold=1024)
    inline.unlink()


def _verify(folder: Path, record: dict[str, Any], loaded: LoadedModel) -> dict[str, Any]:
    """Embed SAMPLE_TEXTS both ways one at a time (as a search does), and the short ones as
    one padded batch too (the attention-mask path). Texts go one at a time through
    sentence-transformers as well: a batch would pad every text to the longest one's 256 tokens."""
    fast = OnnxQueryEncoder(folder, record)
    reference = np.concatenate([loaded.encode([t]) for t in SAMPLE_TEXTS])
    single = np.concatenate([fast.encode([t]) for t in SAMPLE_TEXTS])
    short = [i for i, t in enumerate(SAMPLE_TEXTS) if len(t) < 200]
    batch = fast.encode([SAMPLE_TEXTS[i] for i in short])
    cosines = np.concatenate([(single * reference).sum(axis=1), (batch * reference[short]).sum(axis=1)])
    min_cosine = float(cosines.min())
    return {
        "verified": bool(min_cosine >= MIN_COSINE and single.shape == reference.shape),
        "verification": {
            "texts": len(SAMPLE_TEXTS),
            "min_cosine": round(min_cosine, 7),
            "max_abs_diff": float(np.abs(single - reference).max()),
            "threshold": MIN_COSINE,
            "onnxruntime": _version("onnxruntime"),
            "torch": _version("torch"),
            "sentence_transformers": _version("sentence_transformers"),
        },
    }


def _version(module: str) -> str:
    return getattr(sys.modules.get(module), "__version__", "?")


def _install(tmp: Path, final: Path) -> None:
    """Swap the new folder in: a reader sees the old folder, none, or the new one."""
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        final.rename(old)
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(final)
    fsync_dir(final.parent)


def _prune(folder: Path, keep: str) -> None:
    """Exports of models this workspace no longer uses (and leftovers of crashed exports)."""
    for child in folder.iterdir():
        if child.is_dir() and child.name != keep:
            shutil.rmtree(child, ignore_errors=True)
