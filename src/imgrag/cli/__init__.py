"""The `imgrag` command: parse the flags, call one function below, render what it returns.

`commands` holds the Typer app; `render` (search results, status) and `render_ask` (answers,
verdicts) are everything a person or a script sees, `report` what describe and embed show
while they run; `help_format` is how help and usage errors read; `terminal` is what the
terminal can show. No stage logic lives here: the web routes call the same functions
(`imgrag.pipeline` for describe/embed/index, `imgrag.search` for search).
"""

from imgrag.cli.commands import app, main

__all__ = ["app", "main"]
