"""Generate the reference pages at build time (mkdocs-gen-files runs this on `mkdocs build`).

- reference/cli.md            from the Typer app (`imgrag.cli.app`): the same text as `--help`
- reference/http-api.md       the page's hand-written part, then every route of the OpenAPI schema
- reference/configuration.md  the page's hand-written part, then every setting of `.env.example`

No network, GPU or API key: the Typer app is only introspected, and the FastAPI app is made
for an empty temporary folder and asked for its schema, never started.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

import mkdocs_gen_files
import typer.main

ROOT = Path(__file__).resolve().parent.parent


def cell(text: object) -> str:
    """Text fit for one cell of a Markdown table."""
    return " ".join(str(text).split()).replace("|", "\\|")


def code_cell(text: object) -> str:
    """`text` as code in a table cell (a pipe inside a code span does not split the cell)."""
    return "`" + " ".join(str(text).split()) + "`"


# -- the commands --------------------------------------------------------------------


def command_page() -> str:
    from imgrag.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("imgrag", [], resilient_parsing=True)
    out = [
        "# Commands\n",
        "Generated from the `imgrag` command itself: each flag's text is what `imgrag COMMAND --help` prints.",
        "Every command also takes `-h`/`--help`. Exit codes: see [Exit codes](exit-codes.md).\n",
        # "\b" on a line of its own is Click's "keep these lines as they are", not text.
        "```text\n" + (group.help or "").replace("\b\n", "").strip() + "\n```\n",
        "| command | what it does |", "|---|---|",
    ]
    names = group.list_commands(ctx)
    for name in names:
        out.append(f"| [`imgrag {name}`](#imgrag-{name}) | {cell(group.get_command(ctx, name).help)} |")
    for name in names:
        out.append(command_section(group.get_command(ctx, name), ctx))
    return "\n".join(out) + "\n"


def command_section(command, parent) -> str:
    ctx = command.make_context(command.name, [], parent=parent, resilient_parsing=True)
    usage = " ".join(["imgrag", command.name, *command.collect_usage_pieces(ctx)])
    out = [f"\n## imgrag {command.name}\n", (command.help or "").strip() + "\n", f"```text\n{usage}\n```\n"]
    records = [r for r in (p.get_help_record(ctx) for p in command.get_params(ctx)) if r is not None]
    if records:  # Click's own (name, help) pair of each argument and option, as --help shows it
        out += ["| argument or option | what it does |", "|---|---|"]
        out += [f"| {code_cell(name)} | {cell(text)} |" for name, text in records]
    if command.epilog:
        out.append("\n```text\n" + command.epilog.strip().replace("\n\n", "\n") + "\n```")
    return "\n".join(out)


# -- the HTTP API ----------------------------------------------------------------------


def schema_type(schema: dict, spec: dict) -> str:
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    if "anyOf" in schema:  # Optional[X] is anyOf [X, null]: "X or null"
        return " or ".join(schema_type(s, spec) for s in schema["anyOf"])
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    if schema.get("type") == "array":
        return f"array of {schema_type(schema.get('items', {}), spec)}"
    return schema.get("type", "any")


def number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:g}"


def limits(schema: dict) -> str:
    found = {**schema, **next((s for s in schema.get("anyOf", []) if s.get("type") != "null"), {})}
    words = {"minimum": "≥", "maximum": "≤", "minLength": "length ≥", "maxLength": "length ≤"}
    parts = [f"{words[k]} {number(found[k])}" for k in words if k in found]
    if "default" in schema:
        parts.insert(0, f"default `{json.dumps(schema['default'])}`")
    return ", ".join(parts)


def body_rows(schema: dict, spec: dict) -> list[str]:
    if "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    required = set(schema.get("required", []))
    rows = ["| field | type | required | limits | description |", "|---|---|---|---|---|"]
    for name, prop in schema.get("properties", {}).items():
        rows.append(f"| `{name}` | {schema_type(prop, spec)} | {'yes' if name in required else ''} | "
                    f"{cell(limits(prop))} | {cell(prop.get('description', ''))} |")
    return rows


def http_page() -> str:
    from imgrag.store.workspace import Workspace
    from imgrag.web.app import create_app
    from imgrag.web.server import ServeConfig, Server

    with tempfile.TemporaryDirectory() as tmp:
        spec = create_app(Server(ServeConfig(ws=Workspace(Path(tmp) / ".imgrag")))).openapi()
    title = f"{spec['info']['title']} {spec['info']['version']}"
    out = ["\n## Routes\n",
           (f"Generated from the server's OpenAPI schema (`/openapi.json`, {title}). Bad parameters are "
            "answered `400 {\"error\": ...}` (see [Conventions](#conventions)), not with the 422 FastAPI "
            "lists by default, so 422 is left out here.")]
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            out.append(f"\n### {method.upper()} `{path}`\n")
            out.append(op.get("summary", "") + ("\n\n" + op["description"] if op.get("description") else "") + "\n")
            params = op.get("parameters", [])
            if params:
                out += ["| parameter | in | type | required | limits | description |", "|---|---|---|---|---|---|"]
                out += [f"| `{p['name']}` | {p['in']} | {schema_type(p['schema'], spec)} | "
                        f"{'yes' if p.get('required') else ''} | {cell(limits(p['schema']))} | "
                        f"{cell(p.get('description', ''))} |" for p in params]
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                out += ["JSON body:\n", *body_rows(body["schema"], spec), ""]
            codes = [f"`{code}`" for code in op["responses"] if code != "422"]
            out.append("Success: " + ", ".join(codes) + ".")
    return "\n".join(out) + "\n"


# -- configuration -------------------------------------------------------------------

SETTING = re.compile(r"^(#\s*)?([A-Z][A-Z0-9_]*)=(.*)$")


def config_page() -> str:
    """Each setting of .env.example with the comment lines above it (settings on adjacent
    lines share them); a setting that is commented out there has no default value and shows
    an example instead."""
    rows = ["\n## Every setting\n", "Generated from [`.env.example`](#env-example), which lists every setting.\n",
            "| setting | in .env.example | what it does |", "|---|---|---|"]
    comment: list[str] = []
    after_setting = False
    lines = (ROOT / ".env.example").read_text(encoding="utf-8").splitlines()
    for line in lines[2:]:  # the first two lines are about the file itself
        found = SETTING.match(line)
        if found:
            commented, name, value = found.groups()
            shown = f"unset, e.g. `{value}`" if commented else (f"`{value}`" if value else "empty")
            rows.append(f"| `{name}` | {shown} | {cell(' '.join(comment))} |")
        elif line.startswith("#"):
            comment = [] if after_setting else comment
            comment.append(line.lstrip("# "))
        after_setting = bool(found)
    rows += ["\n### .env.example {#env-example}\n", "```sh\n" + "\n".join(lines) + "\n```"]
    return "\n".join(rows) + "\n"


# -- the MCP server ----------------------------------------------------------------------


def mcp_page() -> str:
    """Every tool of `imgrag mcp --allow-index` with the description and arguments the
    assistant reads, from the server made for an empty temporary folder (never started)."""
    import anyio

    from imgrag.config import Settings
    from imgrag.mcp_server.library import Library
    from imgrag.mcp_server.server import build_server
    from imgrag.store.workspace import Workspace

    with tempfile.TemporaryDirectory() as tmp:
        server = build_server(Library(Workspace(Path(tmp) / ".imgrag"), None, Settings(), allow_index=True))
        tools = anyio.run(server.list_tools)
    out = ["\n## Tools\n", ("Generated from the server's own tool list (`tools/list`). `index` is listed only "
                            "with `--allow-index`.")]
    for tool in tools:
        out.append(f"\n### {tool.name}\n")
        out.append("```text\n" + (tool.description or "").strip() + "\n```\n")
        schema = tool.input_schema
        required = set(schema.get("required", []))
        props = schema.get("properties", {})
        if props:
            out += ["| argument | type | required | limits | description |", "|---|---|---|---|---|"]
            out += [f"| `{name}` | {schema_type(prop, {})} | {'yes' if name in required else ''} | "
                    f"{cell(limits(prop))} | {cell(prop.get('description', ''))} |" for name, prop in props.items()]
        else:
            out.append("No arguments.")
    return "\n".join(out) + "\n"


# Each page's hand-written part (in docs/) comes first; the generated part is appended.
with mkdocs_gen_files.open("reference/cli.md", "w") as f:
    f.write(command_page())
with mkdocs_gen_files.open("reference/http-api.md", "a") as f:
    f.write(http_page())
with mkdocs_gen_files.open("reference/configuration.md", "a") as f:
    f.write(config_page())
with mkdocs_gen_files.open("reference/mcp.md", "a") as f:
    f.write(mcp_page())
