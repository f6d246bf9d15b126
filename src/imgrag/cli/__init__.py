"""The `imgrag` command: parse the flags, call one function below, render what it returns.

`commands` holds the Typer app; `render` and `render_ask` are everything a person or a script
sees; `help_format` is how help and usage errors read; `terminal` is what the terminal can show.
No stage logic lives here: the web routes call the same functions.
"""

from imgrag.cli.commands import app, main

__all__ = ["app", "main"]
