"""The fast query encoder: the index's own model run with ONNX Runtime, without torch.

A search is a whole process, and importing sentence-transformers (torch, transformers)
costs seconds before the first query is embedded. So `imgrag embed` exports the model's
transformer once to ONNX beside the index (`imgrag.index.onnx_export`), checked to give
the same vectors as sentence-transformers; a search then needs only onnxruntime +
tokenizers (about 0.2 s to import, a few ms per query). When there is no such export (a
pipeline the export does not reproduce, or none made yet), search falls back to
sentence-transformers.

Layout, one folder per model and weights fingerprint:

    .imgrag/models/<model>-<fingerprint>/
        model.onnx, model.onnx.data   the transformer: token ids -> token embeddings (fp32);
                                      weights kept as external data, which loads faster
        tokenizer.json                the model's tokenizer with its truncation and padding
        dense_<i>.npz                 each Dense layer's weight and bias, if the model has any
        encoder.json                  pooling settings + the verification record

IMGRAG_QUERY_ENCODER (Settings.query_encoder) picks the query encoder: `auto` (default:
the export when valid, else sentence-transformers), `onnx` (the export or an error) or
`torch` (always sentence-transformers, e.g. to compare)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgrag.errors import UsageError
from imgrag.index.embedding import cache_dir_name, file_sha256, load_model
from imgrag.store.workspace import Workspace

ENV_VAR = "IMGRAG_QUERY_ENCODER"
MODES = ("auto", "onnx", "torch")
EXPORT_FORMAT = 1  # bump when the export or the pipeline settings change: older exports are redone
ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
RECORD_FILE = "encoder.json"


class QueryEncoder(Protocol):
    """Embeds queries into the index's vector space (unit vectors, one row per query)."""

    def encode(self, queries: list[str]) -> np.ndarray: ...


class SentenceTransformersEncoder:
    """Embeds queries with the index's own model loaded by sentence-transformers (torch)."""

    def __init__(self, model_name: str) -> None:
        self.loaded = load_model(model_name)

    def encode(self, queries: list[str]) -> np.ndarray:
        return self.loaded.encode(queries)


# -- where exports live --------------------------------------------------------------------


def export_dir(ws: Workspace, model_name: str, fingerprint: str) -> Path:
    return ws.paths.models / cache_dir_name(model_name, fingerprint)


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def is_for(record: dict[str, Any], model_name: str, fingerprint: str | None) -> bool:
    return (record.get("format") == EXPORT_FORMAT and record.get("model") == model_name
            and record.get("fingerprint") == fingerprint)


def files_intact(folder: Path, record: dict[str, Any], deep: bool = False, *, trust_mtime: bool = False) -> bool:
    """Every file the export wrote, at its size (cheap, for each search) and, when `deep`,
    with its sha256 (before its vectors go into the cache for good). With `trust_mtime`
    (embed's check, on every run), a file still at the size and mtime it had when exported
    is not read again: 90 MB need not be rehashed each time."""
    files = record.get("files") or {}
    try:
        for name, want in files.items():
            st = (folder / name).stat()
            if st.st_size != want["size"]:
                return False
            unchanged = trust_mtime and st.st_mtime_ns == want.get("mtime_ns")
            if deep and not unchanged and file_sha256(folder / name) != want["sha256"]:
                return False
        return bool(files)
    except (OSError, KeyError, TypeError):
        return False


# -- search side ---------------------------------------------------------------------------


def encoder_mode(mode: str) -> str:
    """The query encoder setting (Settings.query_encoder), checked."""
    if mode not in MODES:
        raise UsageError(f"{ENV_VAR}={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def open_encoder(ws: Workspace, model_name: str, fingerprint: str | None, mode: str = "auto") -> QueryEncoder:
    """The fast encoder when a verified export for this model exists, else sentence-transformers
    (`mode`: Settings.query_encoder)."""
    mode = encoder_mode(mode)
    if mode != "torch":
        try:
            return _open_export(ws, model_name, fingerprint)
        except _NoExport as e:
            if mode == "onnx":
                raise UsageError(f"{ENV_VAR}=onnx, but {e}: run `imgrag embed` to export it, or unset the variable") from None
            if e.damaged:
                warn(f"{e}; using sentence-transformers (slower); `imgrag embed` exports it again")
    return SentenceTransformersEncoder(model_name)


def open_text_encoder(ws: Workspace, model_name: str, fingerprint: str, mode: str = "auto") -> Any:
    """The verified export as an encoder of description texts (same `encode` signature as
    the sentence-transformers model), or None when there is none or torch was asked for."""
    if encoder_mode(mode) == "torch":
        return None
    try:
        onnx = _open_export(ws, model_name, fingerprint)
    except _NoExport:
        return None
    # Vectors go into the cache for good: check every byte, not just the sizes.
    if not files_intact(export_dir(ws, model_name, fingerprint), onnx.record, deep=True):
        return None
    return _TextEncoder(onnx)


class _TextEncoder:
    def __init__(self, onnx: OnnxQueryEncoder, batch_size: int = 32) -> None:
        self.onnx = onnx
        self.batch_size = batch_size

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        parts = [self.onnx.encode(texts[i : i + self.batch_size]) for i in range(0, len(texts), self.batch_size)]
        return np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, self.onnx.pipeline["dim"]), np.float32)


class _NoExport(Exception):
    """Why there is no fast encoder; `damaged` when there should have been one."""

    def __init__(self, message: str, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


def _open_export(ws: Workspace, model_name: str, fingerprint: str | None) -> OnnxQueryEncoder:
    folder = export_dir(ws, model_name, fingerprint or "none")
    record = read_record(folder) if fingerprint else None
    if record is None:
        damaged = fingerprint is not None and (folder / RECORD_FILE).exists()
        raise _NoExport(f"the query encoder record in {folder} is damaged" if damaged
                        else f"{ws.root} has no query encoder export for {model_name!r}", damaged)
    if not is_for(record, model_name, fingerprint) or not record.get("verified"):
        # refused (a pipeline not reproduced) or made by another version: not an error
        raise _NoExport(f"the query encoder export in {folder} is not usable ({record.get('reason') or 'other version'})")
    if not files_intact(folder, record):
        raise _NoExport(f"the query encoder files in {folder} are missing or cut short", damaged=True)
    try:
        return OnnxQueryEncoder(folder, record)
    except Exception as e:  # noqa: BLE001 - a damaged file: ONNX Runtime and tokenizers raise their own kinds
        raise _NoExport(f"cannot load the query encoder in {folder} ({type(e).__name__}: {str(e)[:160]})",
                        damaged=True) from None


class OnnxQueryEncoder:
    """tokenizer.json -> ONNX transformer -> pooling -> L2 norm, as sentence-transformers does."""

    def __init__(self, folder: Path, record: dict[str, Any]) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.record = record
        self.pipeline = record["pipeline"]
        self.tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        options = ort.SessionOptions()
        # Basic optimisations only rewrite the graph without changing the arithmetic; the
        # extended fusions could move results by rounding. The verification used the same.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        # A search runs a handful of tiny batches: idle worker threads spinning for more work
        # would only take CPU from the rest of the process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.dense = [(dict(np.load(folder / layer["file"])), layer["activation"]) for layer in self.pipeline.get("dense", [])]

    def encode(self, queries: list[str]) -> np.ndarray:
        if not queries:
            return np.zeros((0, self.pipeline["dim"]), np.float32)
        texts = [q.strip() for q in queries]
        if self.pipeline["do_lower_case"]:
            texts = [t.lower() for t in texts]
        encodings = self.tokenizer.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }
        (tokens,) = self.session.run(None, {name: feeds[name] for name in self.input_names})
        pooled = pool(tokens, feeds["attention_mask"], self.pipeline["pooling"])
        for weights, activation in self.dense:
            pooled = dense(pooled, weights["weight"], weights.get("bias"), activation)
        return l2_normalise(pooled)


def pool(tokens: np.ndarray, mask: np.ndarray, modes: list[str]) -> np.ndarray:
    """Sentence-transformers' Pooling over (batch, seq, dim) token embeddings, modes concatenated."""
    tokens = tokens.astype(np.float32, copy=False)
    weights = mask[..., None].astype(np.float32)
    out = []
    for mode in modes:
        if mode == "cls":
            first = mask.argmax(axis=1)  # the first real token, whichever side the padding is on
            out.append(tokens[np.arange(len(tokens)), first])
        elif mode == "max":
            out.append(np.where(weights > 0, tokens, -np.inf).max(axis=1))
        elif mode in ("mean", "mean_sqrt_len_tokens"):
            total = (tokens * weights).sum(axis=1)
            count = np.clip(weights.sum(axis=1), 1e-9, None)
            out.append(total / (count if mode == "mean" else np.sqrt(count)))
        elif mode == "weightedmean":
            # Token i of a text weighs i (1-based, counted from its first real token).
            position = np.arange(1, mask.shape[1] + 1, dtype=np.float32)[None, :, None]
            weighted = weights * (position - mask.argmax(axis=1).astype(np.float32)[:, None, None])
            out.append((tokens * weighted).sum(axis=1) / np.clip(weighted.sum(axis=1), 1e-9, None))
        elif mode == "lasttoken":
            seq = mask.shape[1]
            from_end = mask[:, ::-1].argmax(axis=1)  # the last real token, whichever side the padding is on
            last = np.where(mask.max(axis=1) == 0, 0, seq - 1 - from_end)
            out.append((tokens * weights)[np.arange(len(tokens)), last])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return np.concatenate(out, axis=1)


def dense(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None, activation: str) -> np.ndarray:
    """Sentence-transformers' Dense module: activation(x @ weight.T + bias)."""
    y = x @ weight.T
    if bias is not None:
        y = y + bias
    if activation == "tanh":
        return np.tanh(y)
    if activation == "relu":
        return np.maximum(y, 0)
    if activation == "sigmoid":
        return 1 / (1 + np.exp(-y))
    return y


def l2_normalise(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.ascontiguousarray(vectors / np.clip(norms, 1e-12, None), dtype=np.float32)


def warn(message: str) -> None:
    print(f"imgrag: warning: {message}", file=sys.stderr, flush=True)
