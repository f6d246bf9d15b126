"""An encoder folder on disk and what runs it: tokenizer.json -> ONNX graph -> pooling ->
(Dense layers) -> L2 norm, with ONNX Runtime and a tokenizer only (no torch): `tokenizers`
for an export, the hand-written `imgrag.index.wordpiece` for the default model (a plain
install has no `tokenizers`).

Two kinds of folder hold this layout: the per-workspace export of a sentence-transformers
model (`imgrag.index.onnx_export`) and the per-user graph of the default model, built from
its weights without torch (`imgrag.index.default_model`). Both record in encoder.json the
pipeline settings and each file's size, mtime and sha256.

    model.onnx, model.onnx.data   the graph (weights as external data, which loads faster)
    tokenizer.json                the model's tokenizer with its truncation and padding
    dense_<i>.npz                 each Dense layer's weight and bias (exports only)
    encoder.json                  the record
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ONNX_FILE = "model.onnx"
TOKENIZER_FILE = "tokenizer.json"
RECORD_FILE = "encoder.json"
# Tokens in one run of a batch of documents (docs/benchmarks.md#embed-speed). A run on one
# thread: few enough that a layer's activations stay in the core's own cache (the default
# model's feed-forward holds tokens x 1536 floats); 256-640 embed 5% more texts per second
# than batches of 64 texts (~2,500 tokens), 128 lose it to per-run overhead. A run on every
# core hands each operator's work between threads: more tokens amortise that (1,280 embed
# 8% more than 384).
ONE_THREAD_BATCH_TOKENS = 384
SHARED_BATCH_TOKENS = 1280


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entry(path: Path) -> dict[str, Any]:
    """What files_intact checks a file against: its size, mtime and sha256 when written."""
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": file_sha256(path)}


def read_record(folder: Path) -> dict[str, Any] | None:
    try:
        record = json.loads((folder / RECORD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


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




# Texts -> the model's inputs (input_ids, attention_mask, token_type_ids), padded to the longest.
Tokenize = Callable[[list[str]], dict[str, np.ndarray]]


def hf_tokenizer(path: Path) -> Tokenize:
    """A tokenizer.json run by `tokenizers`, with the truncation and padding it records."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))

    def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
        encodings = tokenizer.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    return tokenize


class OnnxQueryEncoder:
    """tokenizer.json -> ONNX transformer -> pooling -> L2 norm, as sentence-transformers does.
    `tokenize` reads the folder's tokenizer.json; by default with `tokenizers`.

    `threads` 1: each run on one thread, and `encode_batches` runs batches side by side on
    every core instead, which spends no time handing each operator's work between threads
    (a query runs as fast on one)."""

    def __init__(self, folder: Path, record: dict[str, Any], tokenize: Tokenize | None = None, *,
                 threads: int = 0) -> None:
        import onnxruntime as ort

        self.record = record
        self.pipeline = record["pipeline"]
        self.tokenize = tokenize or hf_tokenizer(folder / TOKENIZER_FILE)
        options = ort.SessionOptions()
        # Basic optimisations only: they rewrite the graph without changing the arithmetic. An
        # export from torch was verified so (the extended fusions could move results by
        # rounding); the default model's graph is fused by hand, and the extended fusions would
        # put back the slow SkipLayerNormalization (imgrag.index.bert_onnx).
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.log_severity_level = 3
        # A search runs a handful of tiny batches: idle worker threads spinning for more work
        # would only take CPU from the rest of the process.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # Each run's buffers from malloc, not from ONNX Runtime's arena: with the arena a
        # session ran either at full speed or ~8% slower for its whole life, by where its
        # buffers happened to fall (three sessions in one process: 8.5, 9.1 and 9.4 ms of
        # CPU a text); without it every session ran at 8.6-8.7 (docs/benchmarks.md#embed-speed).
        options.enable_cpu_mem_arena = False
        if threads:
            options.intra_op_num_threads = threads
        self.workers = min(8, _cores()) if threads == 1 else 1
        self.batch_tokens = ONE_THREAD_BATCH_TOKENS if threads == 1 else SHARED_BATCH_TOKENS
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.dense = [(dict(np.load(folder / layer["file"])), layer["activation"]) for layer in self.pipeline.get("dense", [])]

    def encode(self, queries: list[str]) -> np.ndarray:
        if not queries:
            return np.zeros((0, self.pipeline["dim"]), np.float32)
        return self._run(self._feeds(queries))

    def _feeds(self, queries: list[str]) -> dict[str, np.ndarray]:
        texts = [q.strip() for q in queries]
        if self.pipeline["do_lower_case"]:
            texts = [t.lower() for t in texts]
        return self.tokenize(texts)

    def _run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        inputs = {name: feeds[name] for name in self.input_names}
        if self.pipeline.get("output") == "sentence_embedding":  # pooled and normalised in the graph
            return np.ascontiguousarray(self.session.run(["sentence_embedding"], inputs)[0], dtype=np.float32)
        (tokens,) = self.session.run(["token_embeddings"], inputs)
        pooled = pool(tokens, feeds["attention_mask"], self.pipeline["pooling"])
        for weights, activation in self.dense:
            pooled = dense(pooled, weights["weight"], weights.get("bias"), activation)
        return l2_normalise(pooled)


    def encode_batches(self, texts: list[str], max_tokens: int | None = None) -> np.ndarray:
        """Many texts (a collection's descriptions): tokenised once, then in batches of texts
        of the same token length, so no padding is computed (sentence-transformers groups by
        characters and pads each batch to its longest), each of at most `max_tokens` tokens
        (by default `batch_tokens`), on `workers` threads side by side."""
        if not texts:
            return np.zeros((0, self.pipeline["dim"]), np.float32)
        feeds = self._feeds(texts)
        lengths = feeds["attention_mask"].sum(axis=1)
        left = self.pipeline.get("padding_side") == "left"

        def run(rows: np.ndarray) -> np.ndarray:
            width = int(lengths[rows].max())
            cut = slice(feeds["input_ids"].shape[1] - width, None) if left else slice(0, width)
            return self._run({name: array[rows, cut] for name, array in feeds.items()})

        batches = length_batches(lengths, max_tokens or self.batch_tokens)
        out = np.empty((len(texts), self.pipeline["dim"]), np.float32)
        if self.workers > 1 and len(batches) > 1:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.workers, thread_name_prefix="imgrag-encode") as pool:
                for rows, vectors in zip(batches, pool.map(run, batches), strict=True):
                    out[rows] = vectors
        else:
            for rows in batches:
                out[rows] = run(rows)
        return out


def length_batches(lengths: np.ndarray, max_tokens: int) -> list[np.ndarray]:
    """Row numbers grouped by equal length, shortest first, each group of at most
    `max_tokens` tokens in all (one row when a row alone is longer)."""
    order = np.argsort(lengths, kind="stable")
    starts = np.flatnonzero(np.diff(lengths[order], prepend=-1))  # where a new length begins
    batches: list[np.ndarray] = []
    for same in np.split(order, starts[1:]):
        rows = max(1, max_tokens // max(1, int(lengths[same[0]])))
        batches += [same[i : i + rows] for i in range(0, len(same), rows)]
    return batches


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


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
