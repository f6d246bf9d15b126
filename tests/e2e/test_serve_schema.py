"""schemathesis over `imgrag serve`'s own OpenAPI schema, against a real server (uvicorn in
its own process) serving an indexed library: its CLI (`schemathesis run`, in its own process
too) sends valid and invalid requests to every operation, in each of its phases (the
schema's examples, coverage of each parameter's edges, random fuzzing, stateful sequences).
No answer may be a server error, and every answer must be what the schema says (status,
content type, headers, body, Allow).

Bounded: MAX_EXAMPLES per operation and at most MAX_SECONDS in all. schemathesis.toml beside
this file says which answers count as a rejection and leaves one check out, and why.
(schemathesis's pytest plugin is not used: it needs pytest's `item._nodeid`, which pytest 9
no longer has.)"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import copy_tree
from serving import start_server
from standin_vlm import StandinVLM

SCHEMATHESIS = Path(sys.executable).parent / "schemathesis"
MAX_EXAMPLES = 25
MAX_SECONDS = 90


@pytest.fixture(scope="module")
def served(library, tmp_path_factory):
    root = tmp_path_factory.mktemp("schema")
    base = copy_tree(library.base, root / "lib")
    standin = StandinVLM().start()  # ask and verify=1 reach the answer model here
    env = {**library.env, "IMGRAG_BASE_URL": standin.url}
    server = start_server(str(base / "photos"), cwd=base, env=env, log=root / "serve.log")
    try:
        yield server, root
    finally:
        server.stop()
        standin.stop()


def test_every_answer_is_what_the_schema_says(served):
    server, root = served
    config = Path(__file__).with_name("schemathesis.toml")
    run = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(config), "run", server.url + "openapi.json",
         "--checks", "all", "--exclude-checks", "positive_data_acceptance", "--max-examples", str(MAX_EXAMPLES),
         "--max-time", str(MAX_SECONDS), "--request-timeout", "60", "--workers", "1", "--no-color",
         "--suppress-health-check", "all"],
        check=False, cwd=root, capture_output=True, text=True, timeout=MAX_SECONDS + 120)
    failures = run.stdout.split("= FAILURES =")[-1].split("= WARNINGS =")[0] if "= FAILURES =" in run.stdout else ""
    assert run.returncode == 0, (failures or run.stdout)[:12000] + run.stderr[-2000:]
    assert "Tested: " in run.stdout and " failed" not in run.stdout.split("SUMMARY")[-1], run.stdout[-4000:]
    assert "internal error" not in server.stderr and "Traceback" not in server.stderr, server.stderr[-4000:]
