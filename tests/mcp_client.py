"""An MCP client of the `mcp` SDK's own (`Client`), driven from synchronous tests through an
anyio portal: how test_mcp and test_store_libraries talk to a real `imgrag mcp`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal
from mcp import Client, StdioServerParameters

from conftest import IMGRAG


class Session:
    """One MCP client session; `call` answers as the server answered, `ok`/`error` check it."""

    def __init__(self, portal: BlockingPortal, client: Client) -> None:
        self.portal = portal
        self.client = client

    @property
    def instructions(self) -> str:
        """What the server told the assistant about itself when the session began."""
        return self.client.instructions or ""

    def call(self, tool: str, arguments: dict[str, Any] | None = None):
        return self.portal.call(lambda: self.client.call_tool(tool, arguments or {}))

    def ok(self, tool: str, arguments: dict[str, Any] | None = None) -> dict:
        result = self.call(tool, arguments)
        assert not result.is_error, result.content
        return result.structured_content

    def error(self, tool: str, arguments: dict[str, Any] | None = None) -> str:
        """The message of a call that must fail as a tool error (the model reads it and tries again)."""
        result = self.call(tool, arguments)
        assert result.is_error, result.structured_content
        return result.content[0].text

    def tools(self) -> dict:
        return {t.name: t for t in self.portal.call(self.client.list_tools).tools}

    def read(self, uri: str):
        return self.portal.call(lambda: self.client.read_resource(uri))


@contextmanager
def session(server) -> Iterator[Session]:
    """A session with `server`: stdio parameters (the client spawns it) or an MCP URL."""
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(Client(server)) as client:
        yield Session(portal, client)


def stdio_params(*args: str, env: dict, cwd: Path) -> StdioServerParameters:
    """`imgrag mcp ARGS` (the installed command), spawned by the client as an assistant spawns it."""
    return StdioServerParameters(command=str(IMGRAG), args=["mcp", *args], env=env, cwd=str(cwd))
