"""Embedding models and the vector cache that makes each embedding paid once.

The default model (all-MiniLM-L6-v2) runs on ONNX Runtime (`imgrag.index.default_model`):
no torch. Any other model is a sentence-transformers model, which needs the
`imgrag[models]` extra (torch + sentence-transformers).

The cache lives in `.imgrag/vectors/<model>-<fingerprint>/` as two append-only files:
`vectors.f32` (raw float32 rows) and `keys.txt` (one text hash per row, written after
its row). A crash can leave rows without keys, never keys without rows; both are cut
back to the shorter on the next write."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from imgrag.config import DEFAULT_EMBED_MODEL
from imgrag.errors import UsageError
from imgrag.index import default_model
from imgrag.store.files import fsync_dir

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from imgrag.index.onnx_encoder import OnnxQueryEncoder

DEFAULT_MODEL = DEFAULT_EMBED_MODEL  # all-MiniLM-L6-v2, on ONNX Runtime: no torch
MODELS_EXTRA = "pip install 'imgrag[models]'"
BATCH_SIZE = 64


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def is_local_model(name: str) -> bool:
    """A model named by a folder (as `resolve_model_name` records it), not a hub name."""
    return os.path.isabs(name)


def resolve_model_name(spec: str) -> str:
    """The name an index records for a model: a hub name as given; a local folder (a path
    starting with / ~ or ., or an existing folder) as its absolute path, so every spelling
    of it from any directory is one model. The weights' fingerprint is recorded beside it."""
    spec = spec.strip()
    if not spec:
        raise UsageError("the embedding model name is empty: set --model / IMGRAG_EMBED_MODEL or leave it unset")
    path = Path(spec).expanduser()
    if not (spec.startswith(("/", "~", ".")) or path.is_dir()):
        return spec
    if not path.is_dir():
        raise UsageError(f"embedding model folder not found: {spec} (--model / IMGRAG_EMBED_MODEL take a "
                         "model hub name or a sentence-transformers model folder)")
    if not any((path / f).is_file() for f in ("modules.json", "config.json")):
        raise UsageError(f"{path} is not a sentence-transformers model folder (it has no modules.json or config.json)")
    return str(path.resolve())


@dataclass
class LoadedModel:
    name: str
    model: SentenceTransformer | None  # a sentence-transformers model; None for the default model
    fingerprint: str
    dim: int
    path: Path | None  # local folder of the weights, when known
    onnx: OnnxQueryEncoder | None = None  # the default model's encoder (ONNX Runtime)

    def encode(self, texts: list[str], batch_size: int = BATCH_SIZE, show_progress: bool = False) -> np.ndarray:
        if self.onnx is not None:
            return self.onnx.encode_batches(texts)  # batches of tokens, not texts
        assert self.model is not None
        vecs = self.model.encode(
            texts,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vecs, dtype=np.float32)


@functools.cache
def load_model(name: str) -> LoadedModel:
    """Load by name (once per process): the default model on ONNX Runtime (its graph built
    once per user), any other with sentence-transformers (`load_sentence_transformer`)."""
    name = resolve_model_name(name)
    if default_model.is_default(name):
        return LoadedModel(name=name, model=None, fingerprint=default_model.FINGERPRINT, dim=default_model.DIM,
                           path=None, onnx=default_model.open_encoder())
    return load_sentence_transformer(name)


def require_sentence_transformers(name: str) -> None:
    """One line naming the extra when a model needs sentence-transformers (torch) and it is
    not installed. (Imported here because loading the model imports it next anyway.)"""
    try:
        import sentence_transformers  # noqa: F401
    except ImportError:
        raise UsageError(f"the embedding model {name!r} needs sentence-transformers and torch: {MODELS_EXTRA} "
                         f"(the default {DEFAULT_MODEL} needs neither)") from None


@functools.cache
def load_sentence_transformer(name: str) -> LoadedModel:
    """A model with sentence-transformers (torch): the default model's packaged weights
    offline (tests compare the ONNX path with this), a local folder as it is, others from
    the hub cache."""
    name = resolve_model_name(name)
    local = default_model.weights_folder() if default_model.is_default(name) else None
    if local is not None or is_local_model(name):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub for a local folder
    _quiet_libraries(name)
    from sentence_transformers import SentenceTransformer

    try:
        model = SentenceTransformer(str(local) if local else name, device="cpu")
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds: missing repo, offline, bad files
        raise UsageError(
            f"cannot load embedding model {name!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            f"check IMGRAG_EMBED_MODEL / --model (default {DEFAULT_MODEL} works offline)"
        ) from None
    dim = embedding_dimension(model) or int(model.encode(["x"]).shape[1])
    fingerprint = default_model.FINGERPRINT if local else weights_fingerprint(model)
    return LoadedModel(name=name, model=model, fingerprint=fingerprint, dim=dim,
                       path=local or (Path(name) if is_local_model(name) else None))


def embedding_dimension(model: Any) -> int | None:
    """A sentence-transformers model's output size, under the method name of new or old versions."""
    get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return get_dim()


def _quiet_libraries(name: str) -> None:
    """Loading bars and deprecation chatter from transformers would land in cron mail (set
    before sentence-transformers is first imported: they are read then)."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|sentence_transformers)")
    require_sentence_transformers(name)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def weights_fingerprint(model: Any) -> str:
    """A hash of every parameter: same name with other weights is another model."""
    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cache_dir_name(model_name: str, fingerprint: str) -> str:
    # A local folder is known by its own name: the fingerprint tells same-named folders apart.
    shown = Path(model_name).name if is_local_model(model_name) else model_name
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", shown).strip("_")[-60:] or "model"
    return f"{slug}-{fingerprint}"


class VectorCache:
    """Append-only store of normalised vectors keyed by text hash, for one model."""

    def __init__(self, folder: Path, dim: int, fingerprint: str = "") -> None:
        self.folder = folder
        self.dim = dim
        self.fingerprint = fingerprint  # of the model's weights, when the caller knows it
        self._vec_path = folder / "vectors.f32"
        self._key_path = folder / "keys.txt"
        self.keys: dict[str, int] = {}
        self._rows = 0  # valid rows on disk (keys may repeat after a crash between the two writes)
        self._key_bytes = 0
        self._load_keys()

    def _load_keys(self) -> None:
        try:
            raw = self._key_path.read_bytes()
        except FileNotFoundError:
            return
        lines = raw.split(b"\n")[:-1]  # drop the part after the last newline: torn or empty
        try:
            rows = self._vec_path.stat().st_size // (4 * self.dim)
        except FileNotFoundError:
            rows = 0
        for i, line in enumerate(lines[:rows]):
            self.keys.setdefault(line.decode("ascii", "replace"), i)
            self._key_bytes += len(line) + 1
        self._rows = min(rows, len(lines))

    def __contains__(self, key: str) -> bool:
        return key in self.keys

    def vectors(self) -> np.ndarray:
        """Every cached row (memory-mapped: nothing is read until used)."""
        if self._rows == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.memmap(self._vec_path, dtype=np.float32, mode="r", shape=(self._rows, self.dim))

    def get(self, keys: list[str]) -> np.ndarray:
        all_rows = self.vectors()
        return np.ascontiguousarray(all_rows[[self.keys[k] for k in keys]]) if keys else np.zeros((0, self.dim), np.float32)

    def add(self, keys: list[str], vecs: np.ndarray) -> None:
        """Append rows, then their keys; both fsynced, so a crash loses at most this batch."""
        if not keys:
            return
        assert vecs.shape == (len(keys), self.dim) and len(set(keys)) == len(keys)
        self.folder.mkdir(parents=True, exist_ok=True)
        n = self._rows
        with self._vec_path.open("ab") as f:
            f.truncate(n * 4 * self.dim)  # cut rows a crash left without keys
            f.write(np.ascontiguousarray(vecs, dtype=np.float32).tobytes())
            f.flush()
            os.fsync(f.fileno())
        added = "".join(k + "\n" for k in keys).encode("ascii")
        with self._key_path.open("ab") as f:
            f.truncate(self._key_bytes)  # cut a torn last key
            f.write(added)
            f.flush()
            os.fsync(f.fileno())
        fsync_dir(self.folder)
        for i, k in enumerate(keys):
            self.keys.setdefault(k, n + i)
        self._rows += len(keys)
        self._key_bytes += len(added)
