"""How the command line itself reads: help laid out to the terminal's width with whole
command summaries, and a bad flag or argument as one `imgrag: error: ...` line (exit 2)
instead of Click's three-line usage block, like every other error imgrag prints."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import typer
from typer.core import TyperCommand, TyperGroup

try:  # typer >= 0.22 carries its own copy of Click, whose errors all derive from TyperException
    from typer import TyperException as ClickError
except ImportError:  # older typer uses Click itself
    from click import ClickException as ClickError  # type: ignore[assignment]

from imgrag.errors import EXIT_USAGE

# Help fills the terminal up to this many columns (past it, lines get hard to read).
HELP_MAX_WIDTH = 120
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": HELP_MAX_WIDTH}


class Command(TyperCommand):
    """A command whose usage line spells a required argument PHOTOS, not {PHOTOS}."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [p[1:-1] if p.startswith("{") and p.endswith("}") else p for p in super().collect_usage_pieces(ctx)]


# The order `imgrag --help` (and the generated reference) lists commands in: the first run,
# the everyday ones, then the stages and the store. A command not named here comes last.
COMMAND_ORDER = ("demo", "index", "search", "ask", "serve", "watch", "mcp", "status", "describe", "embed", "push")


class Group(TyperGroup):
    """The `imgrag` group: whole command summaries in COMMAND_ORDER, and usage errors as one line."""

    def list_commands(self, ctx: Any) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(COMMAND_ORDER)}
        return sorted(names, key=lambda name: rank.get(name, len(rank)))

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if not args and self.no_args_is_help and not ctx.resilient_parsing:
            typer.echo(ctx.get_help(), err=True, color=ctx.color)  # plain `imgrag`: the help, as Click shows it
            ctx.exit(EXIT_USAGE)
        return super().parse_args(ctx, args)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [(name, cmd.get_short_help_str(limit=1_000)) for name in self.list_commands(ctx)
                if (cmd := self.get_command(ctx, name)) is not None and not cmd.hidden]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, windows_expand_args: bool = True, **extra: Any) -> Any:
        prog_name = prog_name or "imgrag"  # also under `python -m imgrag`: the name users type
        # .env before Click parses: options that read a variable (--index: IMGRAG_INDEX) see it there too.
        from imgrag.config import load_dotenv_once

        load_dotenv_once()
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False,
                                windows_expand_args=windows_expand_args, **extra)
        except ClickError as e:
            if e.exit_code == EXIT_USAGE:  # Click's usage errors: a bad flag, argument or command
                command = next((a for a in (sys.argv[1:] if args is None else args) if a in self.commands), None)
                where = f"{prog_name} {command}" if command else prog_name
                print(f"imgrag: error: {usage_error_line(e, where)}", file=sys.stderr, flush=True)
            else:  # any other error Click would show
                print(f"imgrag: error: {_sentence(e.format_message())}", file=sys.stderr, flush=True)
            sys.exit(e.exit_code)
        except typer.Abort:
            print("imgrag: error: aborted", file=sys.stderr, flush=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


def typed(ctx: typer.Context, option: str) -> bool:
    """Whether the command's `option` (its parameter name) was given, not defaulted."""
    source = ctx.get_parameter_source(option)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def usage_error_line(e: Any, command_path: str = "imgrag") -> str:
    """Click's usage error as one line: the flag, what it allows, and where help is
    (`command_path`'s, when the error does not say which command it came from)."""
    ctx = getattr(e, "ctx", None)
    help_hint = f" (see {ctx.command_path if ctx is not None else command_path} --help)"
    param = getattr(e, "param", None)
    # typer exports BadParameter; a MissingParameter is the BadParameter that names the kind of parameter missing.
    if isinstance(e, typer.BadParameter) and param is not None and hasattr(e, "param_type"):
        usage = " ".join([ctx.command_path, *ctx.command.collect_usage_pieces(ctx)]) if ctx else ""
        return f"missing {_param_name(param)}" + (f": {usage}" if usage else "")
    if isinstance(e, typer.BadParameter) and param is not None:
        given = _given(e)
        shown = "" if not given else f" {given}" if _is_number(given) else f" {given!r}"
        return f"{_param_name(param)}{shown}: {_allowed(param, e, given)}{help_hint}"
    text = _sentence(e.format_message())
    if text.startswith("no such command") and "did you mean" not in text.lower() and ctx is not None:
        return f"{text} (commands: {', '.join(ctx.command.list_commands(ctx))})"
    return text + help_hint


def _param_name(param: Any) -> str:
    opts = [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]
    if getattr(param, "param_type_name", "") == "argument" or not opts:
        return param.metavar or param.name.upper()
    return "/".join(sorted(opts, key=lambda o: (not o.startswith("--"), o)))


def _given(e: Any) -> str:
    """The value as typed, when the error carries it (Typer keeps pydantic's error as cause)."""
    try:
        value = e.__cause__.errors()[0]["input"]
    except (AttributeError, IndexError, KeyError, TypeError):
        return ""
    return value if isinstance(value, str) else str(value)


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _allowed(param: Any, e: Any, given: str) -> str:
    """What the flag takes: 'must be at least 1', 'must be a whole number from 1 to 64'."""
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    kind: Any = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    wanted = {int: "a whole number", float: "a number"}.get(kind)
    right_kind = given != "" and _is_number(given) and (kind is not int or given.lstrip("+-").isdigit())
    words = [] if right_kind or wanted is None else [wanted]
    if low is not None and high is not None:
        words.append(f"from {low} to {high}")
    elif low is not None:
        words.append(f"at least {low}")
    elif high is not None:
        words.append(f"at most {high}")
    if words:
        return "must be " + " ".join(words)
    return _sentence(getattr(e, "message", "") or e.format_message())


def _sentence(text: str) -> str:
    """Click's sentence as part of our line: one line, lower-case start, no final stop."""
    text = " ".join(text.split()).rstrip(".").replace(". Did you mean", "; did you mean")
    return text[:1].lower() + text[1:]


class App(typer.Typer):
    """typer.Typer with the group and command classes above (for commands added later too)."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("cls", Group)
        kwargs["context_settings"] = {**CONTEXT_SETTINGS, **kwargs.get("context_settings", {})}
        super().__init__(**kwargs)

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)
