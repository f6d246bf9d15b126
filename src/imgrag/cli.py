"""The `imgrag` command: parse, call one function, render. No logic lives here.

Heavy modules (torch, sentence-transformers, faiss, the SDKs) are imported inside the
commands that need them, so `imgrag --help` answers at once."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_SOME, ImgragError

app = typer.Typer(
    name="imgrag",
    help=(
        "Find photos by what is in them.\n\n"
        "A vision model describes each photo once; the descriptions are embedded into a local index "
        "in .imgrag/ beside your photo folder.\n\n"
        "  imgrag index ~/Pictures/2024          # describe + embed (safe to run from cron)\n\n"
        "  imgrag search \"dog on the beach\"      # from anywhere under ~/Pictures"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PhotosArg = Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).", show_default=False)]
IndexOpt = Annotated[
    Optional[Path],
    typer.Option("--index", envvar="IMGRAG_INDEX", help="The .imgrag/ folder to use (or the folder holding it).", show_default=False),
]
WaitOpt = Annotated[bool, typer.Option("--wait", help="If another imgrag is writing the index, wait for it instead of exiting.")]


def _exits(fn: Callable) -> Callable:
    """Turn our errors and Ctrl-C into one line on stderr and the documented exit code."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from . import render

        try:
            code = fn(*args, **kwargs)
        except ImgragError as e:
            render.error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            render.error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        raise typer.Exit(code or EXIT_OK)

    return wrapper


def _settings(**flags):
    from .config import api_key_for, load_settings

    settings = load_settings()
    if flags.get("provider") and flags["provider"] != settings.provider:
        flags.setdefault("api_key", api_key_for(flags["provider"]))
    return settings.with_flags(**flags)


def _describe(photos: Path, index: Optional[Path], **kwargs) -> int:
    from . import render
    from .describe import EST_TOKENS_PER_PHOTO, DescribeOptions, run_describe

    options = DescribeOptions(**{k: kwargs.pop(k) for k in ("jobs", "limit", "force", "refresh", "dry_run", "wait")})
    settings = _settings(**kwargs)
    if options.jobs is None:
        options.jobs = settings.jobs
    summary = run_describe(photos, settings, options, render.DescribeProgress(), index=index)
    render.describe_summary(summary, options.dry_run, EST_TOKENS_PER_PHOTO, settings.price_input, settings.price_output)
    return summary.exit_code


def _embed(photos: Optional[Path], index: Optional[Path], model: Optional[str], rebuild: bool, wait: bool) -> int:
    from . import render
    from .embed_job import run_embed

    settings = _settings(embed_model=model)
    summary = run_embed(photos, settings.embed_model, rebuild=rebuild, wait=wait, index=index,
                        show_progress=render.is_terminal(sys.stderr))
    render.embed_summary(summary)
    return EXIT_OK


ProviderOpt = Annotated[Optional[str], typer.Option("--provider", help="groq (default) or openai (any OpenAI-compatible server). Env: IMGRAG_PROVIDER.", show_default=False)]
ModelOpt = Annotated[Optional[str], typer.Option("--model", help="Vision model id. Env: IMGRAG_MODEL.", show_default=False)]
BaseUrlOpt = Annotated[Optional[str], typer.Option("--base-url", help="Server URL, e.g. http://localhost:11434/v1 for Ollama. Env: IMGRAG_BASE_URL.", show_default=False)]
JobsOpt = Annotated[Optional[int], typer.Option("--jobs", "-j", min=1, max=64, help="Requests in flight at once. Env: IMGRAG_JOBS (default 4).", show_default=False)]
LimitOpt = Annotated[Optional[int], typer.Option("--limit", min=0, help="Describe at most N photos this run.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Describe again even photos already described.")]
RefreshOpt = Annotated[bool, typer.Option("--refresh", help="Re-describe photos described by another model or prompt version.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Say what would be sent (count, tokens, cost); send nothing.")]


@app.command(epilog="Example: imgrag describe ~/Pictures/2024 --jobs 4")
@_exits
def describe(
    photos: PhotosArg,
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    jobs: JobsOpt = None,
    limit: LimitOpt = None,
    force: ForceOpt = False,
    refresh: RefreshOpt = False,
    dry_run: DryRunOpt = False,
    index: IndexOpt = None,
    wait: WaitOpt = False,
) -> int:
    """Describe new photos with the vision model into .imgrag/descriptions.jsonl (resumable)."""
    return _describe(photos, index, provider=provider, model=model, base_url=base_url, jobs=jobs, limit=limit,
                     force=force, refresh=refresh, dry_run=dry_run, wait=wait)


EmbedModelOpt = Annotated[Optional[str], typer.Option("--model", help="Sentence-transformers model. Env: IMGRAG_EMBED_MODEL (default all-MiniLM-L6-v2, works offline).", show_default=False)]
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Rebuild the index from scratch (e.g. after changing the embedding model).")]


@app.command(epilog="Example: imgrag embed ~/Pictures/2024")
@_exits
def embed(
    photos: Annotated[Optional[Path], typer.Argument(help="Photo folder (default: every folder the index knows).", show_default=False)] = None,
    model: EmbedModelOpt = None,
    rebuild: RebuildOpt = False,
    index: IndexOpt = None,
    wait: WaitOpt = False,
) -> int:
    """Embed the descriptions and write the search index (only new texts are encoded)."""
    return _embed(photos, index, model, rebuild, wait)


@app.command("index", epilog="Example (crontab): 0 3 * * *  imgrag index ~/Pictures >> ~/imgrag.log 2>&1")
@_exits
def index_cmd(
    photos: PhotosArg,
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    jobs: JobsOpt = None,
    limit: LimitOpt = None,
    embed_model: Annotated[Optional[str], typer.Option("--embed-model", help="Env: IMGRAG_EMBED_MODEL.", show_default=False)] = None,
    index: IndexOpt = None,
    wait: WaitOpt = False,
) -> int:
    """Describe new photos, then embed: the one command for cron."""
    code = _describe(photos, index, provider=provider, model=model, base_url=base_url, jobs=jobs, limit=limit,
                     force=False, refresh=False, dry_run=False, wait=wait)
    if code in (EXIT_OK, EXIT_SOME) or code == 75:
        # Embed what was described, even when some photos failed or the quota ran out.
        _embed(photos, index, embed_model, False, wait)
    return code


@app.command(epilog='Examples:\n\n  imgrag search "dog on the beach"\n\n  imgrag search "receipt" --json --limit 3')
@_exits
def search(
    query: Annotated[str, typer.Argument(help="What to look for, in plain words.", show_default=False)],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many results.")] = 10,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document (for scripts).")] = False,
    min_score: Annotated[Optional[float], typer.Option("--min-score", help="Hide results scoring below this.", show_default=False)] = None,
    index: IndexOpt = None,
) -> int:
    """Search the index for photos matching QUERY; best first."""
    from . import render
    from .config import explicit_embed_model
    from .search import SearchOptions, run_search

    options = SearchOptions(limit=limit, min_score=min_score)
    hits = run_search(query, index=index, embed_model=explicit_embed_model(), options=options)
    if json_out:
        print(render.hits_json(query, hits))
    elif hits:
        render.hits_table(hits)
    else:
        render.info("imgrag: no matching photos")
    return EXIT_OK if hits else EXIT_SOME


def main() -> None:
    app()
