"""The fast query encoder: the index's own model run with ONNX Runtime, without torch.

The default model (all-MiniLM-L6-v2) is always on ONNX Runtime: its graph is built once
per user from its weights (`imgrag.index.default_model`). Any other model is a
sentence-transformers model; importing sentence-transformers (torch, transformers) costs
seconds before the first query is embedded, so `imgrag embed` exports its transformer once
to ONNX beside the index (`imgrag.index.onnx_export`), checked to give the same vectors as
sentence-transformers; a search then needs only onnxruntime + tokenizers (about 0.2 s to
import, a few ms per query). When there is no such export (a pipeline the export does not
reproduce, or none made yet), search falls back to sentence-transformers.

Layout of an export, one folder per model and weights fingerprint (`imgrag.index.onnx_encoder`
runs it):

    .imgrag/models/<model>-<fingerprint>/
        model.onnx, model.onnx.data   the transformer: token ids -> token embeddings (fp32);
                                      weights kept as external data, which loads faster
        tokenizer.json                the model's tokenizer with its truncation and padding
        dense_<i>.npz                 each Dense layer's weight and bias, if the model has any
        encoder.json                  pooling settings + the verification record

IMGRAG_QUERY_ENCODER (Settings.query_encoder) picks the query encoder: `auto` (default:
the ONNX encoder when there is a valid one, else sentence-transformers), `onnx` (ONNX or an
error) or `torch` (always sentence-transformers, e.g. to compare; needs `imgrag[models]`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from imgrag.errors import UsageError
from imgrag.index import default_model
from imgrag.index.embedding import cache_dir_name, load_sentence_transformer
from imgrag.index.onnx_encoder import (  # noqa: F401 - re-exported: onnx_export and callers import them from here
    ONNX_FILE,
    RECORD_FILE,
    TOKENIZER_FILE,
    OnnxQueryEncoder,
    dense,
    file_sha256,
    files_intact,
    l2_normalise,
    pool,
    read_record,
)
from imgrag.store.workspace import Workspace

ENV_VAR = "IMGRAG_QUERY_ENCODER"
MODES = ("auto", "onnx", "torch")
EXPORT_FORMAT = 1  # bump when the export or the pipeline settings change: older exports are redone


class QueryEncoder(Protocol):
    """Embeds queries into the index's vector space (unit vectors, one row per query)."""

    def encode(self, queries: list[str]) -> np.ndarray: ...


class SentenceTransformersEncoder:
    """Embeds queries with the index's own model loaded by sentence-transformers (torch)."""

    def __init__(self, model_name: str) -> None:
        self.loaded = load_sentence_transformer(model_name)

    def encode(self, queries: list[str]) -> np.ndarray:
        return self.loaded.encode(queries)


# -- where exports live --------------------------------------------------------------------


def export_dir(ws: Workspace, model_name: str, fingerprint: str) -> Path:
    return ws.paths.models / cache_dir_name(model_name, fingerprint)


def is_for(record: dict[str, Any], model_name: str, fingerprint: str | None) -> bool:
    return (record.get("format") == EXPORT_FORMAT and record.get("model") == model_name
            and record.get("fingerprint") == fingerprint)


# -- search side ---------------------------------------------------------------------------


def encoder_mode(mode: str) -> str:
    """The query encoder setting (Settings.query_encoder), checked."""
    if mode not in MODES:
        raise UsageError(f"{ENV_VAR}={mode!r}: choose one of {', '.join(MODES)}")
    return mode


def open_encoder(ws: Workspace, model_name: str, fingerprint: str | None, mode: str = "auto") -> QueryEncoder:
    """The default model's ONNX encoder; for another model the fast encoder when a verified
    export exists, else sentence-transformers (`mode`: Settings.query_encoder)."""
    mode = encoder_mode(mode)
    if mode != "torch" and default_model.serves(model_name, fingerprint):
        return default_model.open_encoder()
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
    def __init__(self, onnx: OnnxQueryEncoder) -> None:
        self.onnx = onnx

    def encode(self, texts: list[str], show_progress: bool = False) -> np.ndarray:
        return self.onnx.encode_batches(texts)


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


def warn(message: str) -> None:
    print(f"imgrag: warning: {message}", file=sys.stderr, flush=True)
