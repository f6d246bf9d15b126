"""The `imgrag` command: parse, call one function, render. No logic lives here.

Only Typer, the settings and the errors are imported up here: every other module (the
pipeline, search, the renderers, and through them numpy, faiss, torch, PIL, rich, the SDKs)
is imported inside the command that needs it, so `imgrag --help` answers at once."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer

from imgrag.cli.help_format import App, typed
from imgrag.config import DEFAULT_GROQ_MODEL, VISION_SETTINGS, Settings, load_settings
from imgrag.errors import EXIT_INTERRUPTED, EXIT_NOTHING_FOUND, EXIT_OK, ImgragError, UsageError

app = App(
    name="imgrag",
    help=(
        "Find photos by what is in them.\n\n"
        "A vision model describes each photo once; the descriptions are embedded into a local index "
        "in .imgrag/ beside your photo folder.\n\n"
        # \b: click keeps these lines as they are (one example a line, within 80 columns).
        "\b\n"
        "  imgrag demo                       # sample photos: no key, no network\n"
        "  imgrag index ~/Pictures/2024      # describe + embed (fine from cron)\n"
        "  imgrag search \"dog on the beach\"  # from anywhere under ~/Pictures"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)

PhotosArg = Annotated[Path, typer.Argument(help="Folder of photos (searched recursively).", show_default=False, metavar="PHOTOS")]
IndexOpt = Annotated[
    Path | None,
    typer.Option("--index", envvar="IMGRAG_INDEX", help="The .imgrag/ folder to use (or the folder holding it).", show_default=False),
]
NewIndexOpt = Annotated[bool, typer.Option("--new-index", help=(
    "Make (or use) an index of PHOTOS' own, in PHOTOS/../.imgrag, even when an index in a parent folder "
    "already covers PHOTOS (by default that one is used, as git finds .git)."))]
LibraryOpt = Annotated[str | None, typer.Option(
    "--library", help="With --store: the name this machine's copies are recorded under (its library; 1 to 64 letters, "
    "digits, '.', '_', '-'). Default: the host name. Env: IMGRAG_STORE_LIBRARY.", show_default=False, metavar="NAME")]
LibraryFilterOpt = Annotated[str | None, typer.Option(
    "--library", help="With --store: only photos with a copy in this library (machine), shown at that copy.",
    show_default=False, metavar="NAME")]
FoundPhotosArg = Annotated[Path | None, typer.Argument(
    help="Photo folder (default: the index found from here).", show_default=False, metavar="PHOTOS")]
# search and ask: the same filters (imgrag.search.request.make_filters)
InFolderOpt = Annotated[Path | None, typer.Option("--in", help="Only photos inside this folder.", show_default=False, metavar="FOLDER")]
AfterOpt = Annotated[str | None, typer.Option(
    "--after", help="Only photos taken on or after DATE (YYYY-MM-DD; EXIF date, else file time).", show_default=False,
    metavar="DATE")]
BeforeOpt = Annotated[str | None, typer.Option("--before", help="Only photos taken before DATE (YYYY-MM-DD).", show_default=False, metavar="DATE")]
WaitOpt = Annotated[bool, typer.Option("--wait", help="If another imgrag is writing the index, wait for it instead of exiting.")]
StoreOpt = Annotated[str | None, typer.Option(
    "--store", help="A photo library in PostgreSQL + pgvector instead of .imgrag/: postgresql://[user@]host[:port]/db "
    "(password from PGPASSWORD or ~/.pgpass, never printed). Env: IMGRAG_STORE.", show_default=False, metavar="URL")]


def _exits(fn: Callable) -> Callable:
    """Turn our errors and Ctrl-C into one line on stderr and the documented exit code."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        from imgrag.cli import render

        try:
            code = fn(*args, **kwargs)
        except ImgragError as e:
            render.error(str(e))
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            render.error("interrupted")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except OSError as e:
            # A full or read-only disk anywhere under .imgrag/: one line, not a traceback.
            from imgrag.store.files import as_storage_error

            storage = as_storage_error(e)
            if storage is None:
                raise
            render.error(str(storage))
            raise typer.Exit(storage.exit_code) from None
        raise typer.Exit(code or EXIT_OK)

    return wrapper


def _settings(**flags) -> Settings:
    """The command's settings: the environment's (and .env's), then its flags; the renderer
    is told what the terminal can show. A value the environment set wrong is raised only
    where its setting is used (Settings.checked)."""
    from imgrag.cli import render
    settings = load_settings().with_flags(**flags)
    render.configure(settings)
    return settings


def _store(settings: Settings, flag: str | None, **folder_only: Any) -> str | None:
    """The store the command works on (--store, else IMGRAG_STORE), or None for a .imgrag/
    folder. With a store, the `folder_only` flags given (they mean something only for a
    .imgrag/ folder) are refused in one line."""
    from imgrag.library.run import store_url

    url = store_url(settings, flag)
    named = [name for name, value in folder_only.items() if value not in (None, False)]
    if url is not None and named:
        flags = ", ".join("PHOTOS" if n == "photos" else "--" + n.replace("_", "-") for n in named)
        raise UsageError(f"{flags} cannot be combined with --store (IMGRAG_STORE)")
    return url


def _library_needs_store(library: str | None) -> None:
    if library is not None:
        raise UsageError("--library names a library in a store: give --store URL (or set IMGRAG_STORE)")


def _run_store(url: str, photos: Path | None, settings: Settings, **steps: Any) -> int:
    """describe, embed and index with --store: imgrag.library.run, one summary line per stage."""
    from imgrag.cli import render
    from imgrag.library.run import run_store_pipeline

    result = run_store_pipeline(url, photos, settings, progress=None, **steps)
    d, e = result.described, result.embedded
    if d is not None:
        render.info(f"imgrag: described {d.described} photo(s) into {d.store} ({d.found} found, {d.already} described "
                    f"before, {d.failed} failed, {d.requests} requests)")
        if d.vanished:
            render.info(f"imgrag: forgot {d.vanished} copy(ies) gone from {photos} (deleted, renamed or moved)")
    if e is not None:
        render.info(f"imgrag: embedded {e.embedded} photo(s) ({e.encoded} texts encoded); {e.searchable} photo(s) "
                    f"searchable in {e.store}")
    return result.exit_code


def _describe_embed(photos: Path | None, settings: Settings, store: str | None, *, library: str | None = None,
                    index: Path | None, new_index: bool, folder_only: dict[str, Any], store_steps: dict[str, Any],
                    **steps: Any) -> int:
    """describe and/or embed (imgrag describe, embed, index): into the store with `store_steps`
    (the `folder_only` flags given are refused), else into a .imgrag/ folder with imgrag.pipeline
    and `steps`, its progress and summaries on stderr. A process of its own: it steps back in
    CPU priority when unattended (cron)."""
    url = _store(settings, store, **folder_only)
    if url is not None:
        return _run_store(url, photos, settings, **store_steps)
    _library_needs_store(library)
    from imgrag.cli.report import PipelineProgress, which_index
    from imgrag.pipeline import Steps, run_pipeline

    index = which_index(photos, index, new_index)
    return run_pipeline(photos, settings, Steps(background=True, **steps), PipelineProgress(), index=index).exit_code


ProviderOpt = Annotated[str | None, typer.Option("--provider", help="groq (default) or openai (any OpenAI-compatible server). Env: IMGRAG_PROVIDER.", show_default=False)]
ModelOpt = Annotated[str | None, typer.Option("--model", help=f"Vision model id (default on groq: {DEFAULT_GROQ_MODEL}). Env: IMGRAG_MODEL.", show_default=False)]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="Server URL, e.g. http://localhost:11434/v1 for Ollama. Env: IMGRAG_BASE_URL.", show_default=False)]
JobsOpt = Annotated[int | None, typer.Option("--jobs", "-j", min=1, max=64, help="Requests in flight at once. Env: IMGRAG_JOBS (default 4).", show_default=False)]
LimitOpt = Annotated[int | None, typer.Option("--limit", min=0, help="Describe at most N photos this run.", show_default=False)]
ForceOpt = Annotated[bool, typer.Option("--force", help="Describe again even photos already described.")]
RefreshOpt = Annotated[bool, typer.Option("--refresh", help="Re-describe photos described by another model or prompt version.")]
RetryFailedOpt = Annotated[bool, typer.Option("--retry-failed", help="Try quarantined photos again too (those that failed 3 times in a row for a reason no retry cures).")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help=(
    "Say what would be sent (count, tokens, time at the known limits, cost); send nothing. Cost at "
    f"${Settings.price_input:.2f} input / ${Settings.price_output:.2f} output per million tokens "
    "(IMGRAG_PRICE_INPUT, IMGRAG_PRICE_OUTPUT)."))]
BatchOpt = Annotated[bool, typer.Option("--batch", help="Use the Batch API: half the price, results within the window. Each run collects finished batches and submits what is left.")]
WindowOpt = Annotated[str, typer.Option("--window", help="Batch completion window, 24h to 7d.")]
CancelOpt = Annotated[bool, typer.Option("--cancel", help="With --batch: cancel the open batches (what they finished is collected next run).")]


@app.command(epilog="Examples: imgrag describe ~/Pictures/2024 --jobs 4\n\n  imgrag describe ~/Pictures --batch --window 48h")
@_exits
def describe(
    ctx: typer.Context,
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
    retry_failed: RetryFailedOpt = False,
    batch: BatchOpt = False,
    window: WindowOpt = "24h",
    cancel: CancelOpt = False,
    store: StoreOpt = None,
    library: LibraryOpt = None,
    new_index: NewIndexOpt = False,
) -> int:
    """Describe new photos with the vision model into .imgrag/descriptions.jsonl (resumable)."""
    if cancel and not batch:
        raise UsageError("--cancel cancels the open batches: give it with --batch")
    settings = _settings(provider=provider, model=model, base_url=base_url, store_library=library)
    return _describe_embed(
        photos, settings, store, library=library, index=index, new_index=new_index,
        folder_only={"force": force, "refresh": refresh, "dry_run": dry_run, "index": index, "wait": wait,
                     "retry_failed": retry_failed, "batch": batch, "window": typed(ctx, "window"), "new_index": new_index},
        store_steps={"describe": True, "embed": False, "jobs": jobs, "limit": limit},
        embed=False, jobs=jobs, limit=limit, force=force, refresh=refresh, retry_failed=retry_failed, dry_run=dry_run,
        batch=batch, window=window, cancel_batches=cancel, wait=wait)


EmbedModelOpt = Annotated[str | None, typer.Option("--model", help="Sentence-transformers model: a hub name or a model folder. Env: IMGRAG_EMBED_MODEL (default: the index's own model; all-MiniLM-L6-v2 for a new index, works offline).", show_default=False)]
RebuildOpt = Annotated[bool, typer.Option("--rebuild", help="Rebuild the index from scratch (e.g. after changing the embedding model).")]


@app.command(epilog="Example: imgrag embed ~/Pictures/2024")
@_exits
def embed(
    photos: Annotated[Path | None, typer.Argument(help="Photo folder (default: every folder the index knows).", show_default=False, metavar="PHOTOS")] = None,
    model: EmbedModelOpt = None,
    rebuild: RebuildOpt = False,
    index: IndexOpt = None,
    wait: WaitOpt = False,
    store: StoreOpt = None,
    new_index: NewIndexOpt = False,
) -> int:
    """Embed the descriptions and write the search index (only new texts are encoded)."""
    # The store's embed step embeds every described photo, whichever machine described it.
    # No --model and no IMGRAG_EMBED_MODEL: the index keeps the model it was built with.
    return _describe_embed(photos, _settings(), store, index=index, new_index=new_index,
                           folder_only={"photos": photos, "rebuild": rebuild, "index": index, "wait": wait,
                                        "new_index": new_index},
                           store_steps={"describe": False, "embed": True, "embed_model": model},
                           describe=False, embed_model=model, rebuild=rebuild, wait=wait)


@app.command("index", epilog=("Example (crontab): 0 3 * * *  imgrag index ~/Pictures >> ~/imgrag.log 2>&1\n\n"
                              "  with the Batch API (half the price): 0 3 * * *  imgrag index ~/Pictures --batch"))
@_exits
def index_cmd(
    ctx: typer.Context,
    photos: PhotosArg,
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    jobs: JobsOpt = None,
    limit: LimitOpt = None,
    embed_model: Annotated[str | None, typer.Option("--embed-model", help="Env: IMGRAG_EMBED_MODEL.", show_default=False)] = None,
    index: IndexOpt = None,
    wait: WaitOpt = False,
    batch: BatchOpt = False,
    window: WindowOpt = "24h",
    store: StoreOpt = None,
    library: LibraryOpt = None,
    new_index: NewIndexOpt = False,
) -> int:
    """Describe new photos, then embed: the one command for cron."""
    settings = _settings(provider=provider, model=model, base_url=base_url, store_library=library)
    # Embeds what was described even when some photos failed or the quota ran out; exits as describe did.
    return _describe_embed(
        photos, settings, store, library=library, index=index, new_index=new_index,
        folder_only={"index": index, "wait": wait, "batch": batch, "window": typed(ctx, "window"), "new_index": new_index},
        store_steps={"describe": True, "embed": True, "jobs": jobs, "limit": limit, "embed_model": embed_model},
        jobs=jobs, limit=limit, batch=batch, window=window, embed_model=embed_model, wait=wait)


@app.command(epilog="Example: imgrag status ~/Pictures/2024 --json")
@_exits
def status(
    photos: FoundPhotosArg = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document (for scripts).")] = False,
    index: IndexOpt = None,
    store: StoreOpt = None,
) -> int:
    """Show photos found, described, failed, embedded, the index, and what a run would do next."""
    from imgrag.cli import render
    url = _store(_settings(), store, photos=photos, index=index)
    if url is not None:
        from imgrag.library.run import store_status

        counts = store_status(url, _settings())
        print(json.dumps(counts, ensure_ascii=False) if json_out else "\n".join(
            f"{k.replace('_', ' ')}: {v}" for k, v in counts.items()))
        return EXIT_OK
    from imgrag.index.build import workspace_for
    from imgrag.status import collect_status, next_step

    state = collect_status(workspace_for(photos, index), photos)
    if json_out:
        print(json.dumps({**state.as_dict(), "next": next_step(state)}, ensure_ascii=False))
    else:
        print(render.status_text(state))
    return EXIT_OK


@app.command(epilog="Example: imgrag push ~/Pictures --store postgresql://imgrag@db.lan/photos")
@_exits
def push(
    photos: Annotated[Path | None, typer.Argument(help="Photo folder whose .imgrag/ to upload (default: the index found from here).", show_default=False, metavar="PHOTOS")] = None,
    index: IndexOpt = None,
    store: StoreOpt = None,
    library: LibraryOpt = None,
) -> int:
    """Copy a .imgrag/ index into a store, with no vision request and no re-embedding."""
    from imgrag.cli import render
    from imgrag.library.run import push_to_store

    settings = _settings(store_library=library)
    url = _store(settings, store)
    if url is None:
        raise UsageError("push uploads into a store: give --store postgresql://... (or set IMGRAG_STORE)")
    s = push_to_store(url, photos, index, settings)
    render.info(f"imgrag: pushed {s.described} described photo(s) into {s.store}: {s.uploaded} new description(s), "
                f"{s.vectors} vector(s), {s.thumbnails} thumbnail(s); {s.searchable} photo(s) searchable")
    if s.without_vector:
        render.info(f"imgrag: {s.without_vector} photo(s) have no cached vector yet: run `imgrag embed --store ...`")
    if s.vanished:
        render.info(f"imgrag: forgot {s.vanished} copy(ies) gone from the folder (deleted, renamed or moved)")
    return EXIT_OK


@app.command(epilog=(
    'Examples:\n\n'
    '  imgrag search "dog on the beach"\n\n'
    '  imgrag search "receipt" --json --limit 3\n\n'
    '  imgrag search giraffe --all --limit 30\n\n'
    '  imgrag search "birthday cake" --in photos/2024 --after 2024-06-01 --paths\n\n'
    '  imgrag search --like photos/beach.jpg -0 | xargs -0 ls -l\n\n'
    '  imgrag search --queries-from queries.txt > results.jsonl\n\n'
    'Exit status: 0 found, 1 nothing matched (or scored --min-score), 2 error.'
))
@_exits
def search(
    ctx: typer.Context,
    query: Annotated[str | None, typer.Argument(help="What to look for, in plain words.", show_default=False, metavar="QUERY")] = None,
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1, help="Show at most N results (per query; default 10).", show_default=False)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document (for scripts).")] = False,
    paths_out: Annotated[bool, typer.Option("--paths", help="Print one absolute path per line.")] = False,
    null: Annotated[bool, typer.Option("-0", "--null", help="Print paths ended by NUL, for xargs -0.")] = False,
    min_score: Annotated[float | None, typer.Option(
        "--min-score", help="Show the results scoring this or more (default: those that stand out as matches for this query; 0 shows the nearest anyway).",
        show_default=False)] = None,
    show_all: Annotated[bool, typer.Option("--all", help="Show every photo, best first, however weak the match (with --limit N: the best N).")] = False,
    in_folder: InFolderOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    like: Annotated[Path | None, typer.Option("--like", help="Find photos similar to this one (it must be indexed) instead of QUERY.", show_default=False, metavar="PHOTO")] = None,
    queries_from: Annotated[str | None, typer.Option("--queries-from", help="Run one query per line of FILE (- for stdin); print one JSON line per query.", show_default=False, metavar="FILE|-")] = None,
    thumbnails: Annotated[bool | None, typer.Option("--thumbnails/--no-thumbnails", help="Show a thumbnail per result (default: in a terminal, unless NO_COLOR is set). Env: IMGRAG_THUMBNAILS (auto, kitty, sixel, halfblock or off).", show_default=False)] = None,
    index: IndexOpt = None,
    verify: Annotated[bool, typer.Option("--verify", help="Have the answer model read the results with the query and keep only real matches (one request; verdicts cached in .imgrag/). Env: IMGRAG_ANSWER_MODEL.")] = False,
    store: StoreOpt = None,
    library: LibraryFilterOpt = None,
) -> int:
    """Search the index for photos matching QUERY (or like PHOTO); best first."""
    from imgrag.cli import render
    from imgrag.library.run import open_library
    from imgrag.search.request import make_filters, make_options, why_nothing
    from imgrag.search.searcher import clean_query

    settings = _settings()
    _check_search_flags(query, like, queries_from, json_out, paths_out, null)
    shown_query = clean_query(query) if query is not None else None
    filters = make_filters(in_folder, after, before, library=library)
    options = make_options(limit, min_score, show_all)
    table = not (json_out or paths_out or null or queries_from is not None)
    kind = render.thumbnail_kind(thumbnails) if table else None
    if verify and _store(settings, store) is not None:
        raise UsageError("--verify cannot be combined with --store (IMGRAG_STORE) yet: its verdicts are cached in .imgrag/")
    searcher = open_library(settings, index=index, store=store, filters=filters)
    if verify:
        return _search_verified(searcher, settings, shown_query, like, queries_from, options, json_out, paths_out,
                                null, kind)
    if queries_from is not None:
        return _search_many(searcher, queries_from, options)
    like_path = os.path.abspath(like.expanduser()) if like is not None else None
    hits = searcher.like(like, options) if like is not None else searcher.search(shown_query or "", options)
    if json_out:
        print(render.hits_json(shown_query, hits, like=like_path))
    elif paths_out or null:
        render.hits_paths(hits, nul=null)
    elif hits:
        # a store's photos may be on other machines: their thumbnails come from the store
        render.hits_table(hits, kind, fit_screen=not typed(ctx, "limit"), stored=getattr(searcher, "stored_thumbnail", None))
    _warn_stale(searcher)
    if not hits:
        render.info(f"imgrag: no matching photos{why_nothing(searcher, options)}")
    return EXIT_OK if hits else EXIT_NOTHING_FOUND


def _check_search_flags(query: str | None, like: Path | None, queries_from: str | None,
                        json_out: bool, paths_out: bool, null: bool) -> None:
    given = [name for name, value in (("QUERY", query), ("--like", like), ("--queries-from", queries_from)) if value is not None]
    if not given:
        raise UsageError('say what to look for: imgrag search "dog on beach" (or --like PHOTO, or --queries-from FILE)')
    if len(given) > 1:
        raise UsageError(f"{' and '.join(given)} cannot be combined: give one of QUERY, --like PHOTO, --queries-from FILE")
    if json_out and (paths_out or null):
        raise UsageError("--json and --paths/-0 cannot be combined: choose one output")
    if queries_from is not None and (paths_out or null):
        raise UsageError("--queries-from prints one JSON line per query; it cannot be combined with --paths or -0")


def _search_many(searcher, source: str, options) -> int:
    """--queries-from: one JSON line per query, flushed at once; found is any query finding anything."""
    from imgrag.cli import render
    from imgrag.search.request import queries_from

    found = False
    for query in queries_from(source):
        hits = searcher.search(query, options)
        found = found or bool(hits)
        print(render.hits_json(query, hits), flush=True)
    _warn_stale(searcher)
    if not found:
        render.info("imgrag: no query found a matching photo")
    return EXIT_OK if found else EXIT_NOTHING_FOUND


@app.command(epilog=(
    "Examples:\n\n"
    "  imgrag serve ~/Pictures            # then open http://127.0.0.1:8000/\n\n"
    "  IMGRAG_SERVE_TOKEN=... imgrag serve ~/Pictures --host 0.0.0.0 --allow-host photos.lan\n\n"
    "  imgrag serve --read-only --port 8080\n\n"
    "  imgrag serve ~/Pictures --watch     # new photos become searchable on their own"
))
@_exits
def serve(
    photos: Annotated[Path | None, typer.Argument(help="Photo folder to serve (its index need not exist yet). Default: the index found from here.", show_default=False)] = None,
    index: IndexOpt = None,
    host: Annotated[str, typer.Option("--host", help="Address to listen on. Anything but loopback needs a token (IMGRAG_SERVE_TOKEN or --token-file).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8000,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help="Another name clients reach this server by (Host header); repeatable.", show_default=False, metavar="NAME")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the page in a browser.")] = False,
    read_only: Annotated[bool, typer.Option("--read-only", help="Search and browse only: no describe/embed jobs. Ask and search --verify still call the answer model (they spend, but write nothing).")] = False,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="Read the access token from FILE (else IMGRAG_SERVE_TOKEN).", show_default=False, metavar="FILE")] = None,
    cors: Annotated[str | None, typer.Option("--cors", help="Let pages from ORIGIN (e.g. https://app.example.org) call the API.", show_default=False, metavar="ORIGIN")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Index new, changed, moved and deleted photos as they appear, as `imgrag watch` does (in this process).")] = False,
    store: StoreOpt = None,
) -> int:
    """Serve your photos in a browser, and an HTTP API (OpenAPI at /docs)."""
    from imgrag.web.serve import run_serve

    url = _store(_settings(), store, photos=photos, index=index, watch=watch)
    if url is not None:
        from imgrag.web.store_serve import run_store_serve

        return run_store_serve(url, host=host, port=port, allow_hosts=allow_host or [], token_file=token_file, cors=cors,
                               open_browser=open_browser)
    return run_serve(photos, index=index, host=host, port=port, allow_hosts=allow_host or [], open_browser=open_browser,
                     read_only=read_only, token_file=token_file, cors=cors, watch=watch)


@app.command(epilog=(
    "Examples:\n\n"
    "  imgrag watch ~/Pictures\n\n"
    "  imgrag watch ~/Pictures /mnt/nas/photos --jobs 2\n\n"
    "Runs until stopped (Ctrl-C: exit 130; SIGTERM: exit 0). As a service: see the docs' how-to."
))
@_exits
def watch(
    photos: Annotated[list[Path], typer.Argument(help="Photo folders to watch (searched recursively).", show_default=False, metavar="PHOTOS...")],
    provider: ProviderOpt = None,
    model: ModelOpt = None,
    base_url: BaseUrlOpt = None,
    jobs: JobsOpt = None,
    index: IndexOpt = None,
    poll: Annotated[bool, typer.Option("--poll", help="Poll the folders instead of waiting for the system's change events (network filesystems are polled anyway).")] = False,
    poll_interval: Annotated[float, typer.Option("--poll-interval", min=0.1, help="Seconds between two scans of a polled folder.", metavar="SECONDS")] = 30.0,
) -> int:
    """Keep folders indexed: new, changed, moved and deleted photos are searchable (or gone) on their own."""
    from imgrag.watch.command import run_watch
    from imgrag.watch.watcher import WatchOptions

    settings = _settings(provider=provider, model=model, base_url=base_url)
    if settings.store is not None:
        raise UsageError("imgrag watch keeps a .imgrag/ folder up to date and cannot write into a store "
                         "(IMGRAG_STORE is set): index into the store with `imgrag index PHOTOS --store ...` "
                         "(from cron), or unset IMGRAG_STORE")
    return run_watch(photos, settings, WatchOptions(poll=poll, poll_interval=poll_interval, jobs=jobs), index=index)


@app.command(epilog=(
    "Examples:\n\n"
    "  imgrag mcp ~/Pictures                       # an assistant starts it (stdio)\n\n"
    "  imgrag mcp ~/Pictures --allow-index         # ...and may index new photos (an estimate first)\n\n"
    "  imgrag mcp ~/Pictures --http --port 8765    # Streamable HTTP at http://127.0.0.1:8765/mcp\n\n"
    "  imgrag mcp --store postgresql://reader@db.lan/photos   # a library in PostgreSQL (read-only)\n\n"
    "Tools: search, ask, get_photo, status (and index with --allow-index). Resource: photo://{id}."
))
@_exits
def mcp(
    photos: FoundPhotosArg = None,
    index: IndexOpt = None,
    allow_index: Annotated[bool, typer.Option("--allow-index", help="Offer the index tool: the assistant may describe and embed new photos (a dry-run estimate first; it sends photos to your vision provider).")] = False,
    http: Annotated[bool, typer.Option("--http", help="Serve Streamable HTTP at /mcp instead of stdio.")] = False,
    host: Annotated[str, typer.Option("--host", help="With --http: address to listen on. Anything but loopback needs a token (IMGRAG_SERVE_TOKEN or --token-file).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="With --http: port to listen on (0: any free one).")] = 8765,
    allow_host: Annotated[list[str] | None, typer.Option("--allow-host", help="With --http: another name clients reach this server by (Host header); repeatable.", show_default=False, metavar="NAME")] = None,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="With --http: read the access token from FILE (else IMGRAG_SERVE_TOKEN); clients send Authorization: Bearer TOKEN.", show_default=False, metavar="FILE")] = None,
    store: StoreOpt = None,
) -> int:
    """Serve your photos to AI assistants over the Model Context Protocol (MCP)."""
    from imgrag.mcp_server.run import run_mcp

    return run_mcp(photos, index=index, allow_index=allow_index, http=http, host=host, port=port,
                   allow_hosts=allow_host or [], token_file=token_file, store=store)


def _warn_stale(searcher) -> None:
    from imgrag.cli import render

    warning = searcher.stale_warning()
    if warning:
        render.info(warning)


@app.command(epilog='Examples:\n\n  imgrag demo\n\n  imgrag demo "rocket at night"')
@_exits
def demo(
    query: Annotated[str | None, typer.Argument(help='What to look for in the sample photos (default "a cup of coffee").', show_default=False, metavar="QUERY")] = None,
) -> int:
    """Index six sample photos shipped with imgrag and search them: no API key, no network."""
    from imgrag.cli import render, report
    from imgrag.demo import next_steps, run_demo

    settings = _settings()
    result, query, hits = run_demo(query, progress=render.info, query_encoder=settings.query_encoder)
    report.embed_summary(result.embed)
    render.info(f'imgrag: demo: imgrag search "{query}" in {result.photos}:')
    if hits:
        render.hits_table(hits, render.thumbnail_kind(None))
    else:
        render.info("imgrag: no matching photos among the samples")
    render.info(next_steps(result.photos))
    return EXIT_OK if hits else EXIT_NOTHING_FOUND


def _search_verified(searcher, settings: Settings, query: str | None, like: Path | None, queries_from: str | None,
                     options, json_out: bool, paths_out: bool, null: bool, kind: str | None) -> int:
    """search --verify: the hits, then the answer model's verdict on each (imgrag.ask.verify)."""
    from imgrag.ask.verify import verify_hits
    from imgrag.cli import render, render_ask
    from imgrag.search.request import why_nothing

    if query is None:
        raise UsageError("--verify checks results against the words of a QUERY: it cannot be combined with "
                         f"{'--like' if like is not None else '--queries-from'}")
    hits = searcher.search(query, options)
    result = verify_hits(query, hits, searcher.ws, settings.checked(*VISION_SETTINGS))
    if json_out:
        render_ask.verified_json(query, hits, result)
    else:
        render_ask.verified_output(hits, result, paths=paths_out, nul=null, thumbnails=kind)
    if not hits:
        render.info(f"imgrag: no matching photos{why_nothing(searcher, options)}")
    else:
        render.info(render_ask.verify_summary(result))
    return EXIT_OK if result.kept else EXIT_NOTHING_FOUND


@app.command(epilog=(
    'Examples:\n\n'
    '  imgrag ask "when were we last at the beach?"\n\n'
    '  imgrag ask "what was the restaurant called?" --in photos/lisbon --json\n\n'
    '  imgrag ask "what colour is the kettle?" --look 2\n\n'
    '  imgrag ask "which photos show a receipt?" --dry-run\n\n'
    'Exit status: 0 answered, 1 no photo matched (nothing was sent), 2 error, 75 try again later.'
))
@_exits
def ask(
    question: Annotated[str, typer.Argument(help="A question about your photos, in plain words.", show_default=False, metavar="QUESTION")],
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=50, help="How many of the best-matching photos the model reads.")] = 8,
    json_out: Annotated[bool, typer.Option("--json", help='Print one JSON document: {"answer", "citations", "photos", "model", "usage"}.')] = False,
    min_score: Annotated[float | None, typer.Option(
        "--min-score", help="Send only photos scoring this or more (default: the photos search would show; 0 sends the nearest anyway).",
        show_default=False)] = None,
    look: Annotated[int, typer.Option("--look", min=0, max=10, help="Also send the N best photos themselves (downscaled, no metadata) to the vision model (IMGRAG_MODEL).", metavar="N")] = 0,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the exact prompt and its estimated tokens and cost; send nothing.")] = False,
    in_folder: InFolderOpt = None,
    after: AfterOpt = None,
    before: BeforeOpt = None,
    thumbnails: Annotated[bool | None, typer.Option("--thumbnails/--no-thumbnails", help="Thumbnails of the cited photos (default: in a terminal).", show_default=False)] = None,
    index: IndexOpt = None,
    store: StoreOpt = None,
    library: LibraryFilterOpt = None,
) -> int:
    """Answer a question from your photos: the best matches' descriptions go to a chat model, which cites them."""
    from imgrag.ask.answer import answer_plan, plan_ask
    from imgrag.cli import render, render_ask
    from imgrag.library.run import open_library
    from imgrag.search.request import make_filters, make_options, why_nothing

    filters = make_filters(in_folder, after, before, library=library)
    settings = _settings().checked(*VISION_SETTINGS)
    if not dry_run:
        settings.require_api_key()  # before retrieval loads anything
    if look and _store(settings, store) is not None:
        raise UsageError("--look cannot be combined with --store (IMGRAG_STORE): the photo files may be on other machines")
    searcher = open_library(settings, index=index, store=store, filters=filters)
    options = make_options(limit, min_score)  # search's default set, from where search takes it
    plan = plan_ask(question, searcher, settings, limit=limit, look=look, min_score=options.min_score)
    if dry_run:
        render_ask.dry_run(plan, json_out)
    else:
        kind = render.thumbnail_kind(thumbnails) if not json_out else None
        result = render_ask.answer(answer_plan(plan), json_out=json_out, thumbnails=kind,
                                   stored=getattr(searcher, "stored_thumbnail", None))
        if result.found:
            render.info(render_ask.usage_line(result))
    if not plan.hits:
        render.info(f"imgrag: no photo matches the question{why_nothing(searcher, options, all_flag=None)}; "
                    "nothing was sent to the model")
        return EXIT_NOTHING_FOUND
    return EXIT_OK


def main() -> None:
    app()
