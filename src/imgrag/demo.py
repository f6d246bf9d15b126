"""The demo collection: a few public-domain / CC0 photos shipped with imgrag, with sample
descriptions written by hand, indexed in a per-user data folder. A first run (`imgrag
demo`) and the web page with nothing indexed yet show imgrag working with no API key and
no network: only the packaged embedding model runs.

    <user data dir>/imgrag/demo/     e.g. ~/.local/share/imgrag/demo on Linux
        photos/                      copies of the sample photos
        .imgrag/                     an ordinary index, as `imgrag index photos` makes

Each step does only what is missing (photos copied, descriptions recorded, new texts
embedded), so the demo is cheap to run again and finishes what an interrupted run began.
A photo the user changed or deleted there is put back."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from platformdirs import user_data_path

from imgrag.describe.schema import PROMPT_VERSION, PhotoDescription
from imgrag.index.build import EmbedSummary, run_embed
from imgrag.index.embedding import DEFAULT_MODEL
from imgrag.search.ranking import DEFAULT_MIN_SCORE, Hit, SearchOptions
from imgrag.search.searcher import Searcher
from imgrag.store.descriptions import load_descriptions, now_iso
from imgrag.store.files import JsonlAppender, fsync_dir
from imgrag.store.workspace import Workspace

SAMPLE_PROVIDER = "sample"
SAMPLE_MODEL = "imgrag-sample-descriptions"
DEFAULT_QUERY = "a cup of coffee"


@dataclass
class DemoResult:
    photos: Path  # the demo's photo folder
    copied: int  # sample photos (re)written this run
    recorded: int  # sample descriptions recorded this run
    embed: EmbedSummary  # what the embed step did


def demo_home() -> Path:
    """The folder that holds the demo's photos/ and .imgrag/ (XDG_DATA_HOME is honoured)."""
    return user_data_path("imgrag", appauthor=False) / "demo"


def demo_photos(progress: Callable[[str], None] | None = None, query_encoder: str = "auto") -> Path:
    """The demo photo folder, indexed (created on first use, repaired if changed): for
    callers that only need somewhere to search, such as `imgrag serve` with no index."""
    return build_demo(progress, query_encoder).photos


def build_demo(progress: Callable[[str], None] | None = None, query_encoder: str = "auto") -> DemoResult:
    """`query_encoder`: Settings.query_encoder."""
    photos = demo_home() / "photos"
    photos.mkdir(parents=True, exist_ok=True)
    ws = Workspace.for_photos(photos)
    samples = _samples()
    with ws.writer_lock(wait=True):
        copied = _copy_photos(samples, photos)
        recorded = _record_descriptions(ws, photos, samples)
        ws.add_root(photos)
    if progress and (copied or recorded):
        progress(f"imgrag: demo: {len(samples)} sample photos (public domain / CC0) with hand-written sample "
                 f"descriptions in {photos}")
    # Always the packaged model, whatever IMGRAG_EMBED_MODEL says: it works offline (and
    # an index someone re-embedded with another model is rebuilt with it, from the cache).
    other_model = (ws.read_manifest().get("embedding") or {}).get("model") not in (None, DEFAULT_MODEL)
    embedded = run_embed(photos, DEFAULT_MODEL, wait=True, rebuild=other_model, query_encoder=query_encoder)
    return DemoResult(photos, copied, recorded, embedded)


def run_demo(query: str | None, progress: Callable[[str], None] | None = None,
             query_encoder: str = "auto") -> tuple[DemoResult, str, list[Hit]]:
    """Build (or reuse) the demo index and search it: (what was built, the query, the hits)."""
    result = build_demo(progress, query_encoder)
    query = query if query is not None else DEFAULT_QUERY
    # The demo's own model, not IMGRAG_EMBED_MODEL.
    searcher = Searcher(index=result.photos.parent, embed_model=None, query_encoder=query_encoder)
    return result, query, searcher.search(query, SearchOptions(limit=3, min_score=DEFAULT_MIN_SCORE))


def next_steps(photos: Path) -> str:
    """What to run after the demo: search it more, then index one's own photos."""
    home = photos.parent
    return "\n".join([
        "",
        "More searches of the demo photos:",
        f'  imgrag search --index "{home}" "rocket at night"',
        "Next, your own photos: a vision model describes each photo once, then search offline.",
        "With a Groq API key (https://console.groq.com/keys; `imgrag describe PHOTOS --dry-run` shows the cost first):",
        "  export GROQ_API_KEY=gsk_...",
        "  imgrag index ~/Pictures",
        '  imgrag search "dog on the beach"          # from anywhere under ~/Pictures',
        "Or keep every photo on this machine with a local vision server, e.g. Ollama:",
        "  imgrag index ~/Pictures --provider openai --base-url http://localhost:11434/v1 --model llama3.2-vision",
    ])


@dataclass(frozen=True)
class _Sample:
    name: str
    data: bytes
    description: dict[str, Any]


def _samples() -> list[_Sample]:
    folder = resources.files("imgrag") / "sample_photos"
    described = json.loads((folder / "descriptions.json").read_text(encoding="utf-8"))
    out = []
    for name, desc in described.items():
        if name.startswith("_"):
            continue
        PhotoDescription.model_validate(desc)  # a broken sample file is a bug: fail loudly here
        out.append(_Sample(name, (folder / name).read_bytes(), desc))
    return out


def _copy_photos(samples: list[_Sample], photos: Path) -> int:
    """Write each sample photo that is missing or differs; atomically, so a crash leaves
    either the old file or the whole new one."""
    copied = 0
    for sample in samples:
        target = photos / sample.name
        try:
            if target.read_bytes() == sample.data:
                continue
        except OSError:
            pass
        tmp = target.with_name(f".{sample.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as f:
            f.write(sample.data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        copied += 1
    if copied:
        fsync_dir(photos)
    return copied


def _record_descriptions(ws: Workspace, photos: Path, samples: list[_Sample]) -> int:
    """Append a record, clearly marked as a sample, for each sample photo not described yet."""
    from PIL import Image

    described = load_descriptions(ws)
    todo = []
    for sample in samples:
        sha = hashlib.sha256(sample.data).hexdigest()
        if sha not in described:
            todo.append((sha, sample))
    if not todo:
        return 0
    with JsonlAppender(ws.paths.descriptions) as log:
        for sha, sample in todo:
            path = photos / sample.name
            st = path.stat()
            with Image.open(path) as img:
                width, height = img.size
            log.append({
                "sha256": sha,
                "paths": [ws.relative(path)],
                "size": st.st_size,
                "mtime": st.st_mtime_ns // 1_000_000_000,
                "width": width,
                "height": height,
                "taken": None,
                "camera": None,
                "gps": None,
                "provider": SAMPLE_PROVIDER,
                "model": SAMPLE_MODEL,
                "prompt_version": PROMPT_VERSION,
                "created": now_iso(),
                "usage": None,
                "note": "sample description written by hand for the imgrag demo, not by a vision model",
                "description": sample.description,
            })
    return len(todo)
