"""Describing on today's Groq: the default model, its request, and retired models.

Through the command (in process) and the real groq SDK against the stand-in, which refuses
Groq's retired vision models with Groq's own 400 body and thinks before it answers unless
the request sends reasoning_effort "none" (tests/unit/test_standin.py checks that it does)."""

from __future__ import annotations

import json

import pytest

from conftest import SCENES, invoke
from imgrag.config import DEFAULT_GROQ_MODEL, thinks_by_default
from imgrag.store.files import read_jsonl


def descriptions(root) -> list[dict]:
    return list(read_jsonl(root / ".imgrag" / "descriptions.jsonl"))


@pytest.mark.parametrize("retired", ["meta-llama/llama-4-scout-17b-16e-instruct", "qwen/qwen3.6-27b"])
def test_a_retired_model_in_dotenv_gives_one_line_naming_the_setting_and_the_current_model(home, standin, retired):
    root, photos, env = home
    (root / ".env").write_text(f"IMGRAG_MODEL={retired}\n")
    result = invoke("describe", photos, cwd=root, env=env)
    assert result.code == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("imgrag: error: ") and retired in lines[0]
    assert "IMGRAG_MODEL" in lines[0] and DEFAULT_GROQ_MODEL in lines[0]
    assert result.stdout == ""
    assert standin.stats()["by_status"] == {"400": 1}, "stopped at the first refusal"
    failures = root / ".imgrag" / "failures.jsonl"
    assert not failures.exists() or failures.read_text() == "", "no photo is blamed for a setting"
    assert descriptions(root) == []

    (root / ".env").write_text("")  # the user follows the advice: the default works
    result = invoke("describe", photos, cwd=root, env=env)
    assert result.code == 0 and f"described {len(SCENES)}" in result.stderr, result.stderr


def test_the_default_model_is_asked_not_to_think_and_a_think_block_still_validates(home, standin):
    root, photos, env = home
    standin.enqueue("think")  # a reply wrapped in <think>...</think> anyway, with a draft JSON inside
    result = invoke("describe", photos, "--jobs", "1", cwd=root, env=env)
    assert result.code == 0 and "failed 0" in result.stderr, result.stderr
    bodies = [r["body"] for r in standin.requests]
    assert len(bodies) == len(SCENES), "no retry was needed"
    assert all(b["model"] == DEFAULT_GROQ_MODEL and b["reasoning_effort"] == "none" for b in bodies)
    captions = {r["paths"][0]: r["description"]["caption"] for r in descriptions(root)}
    assert "draft" not in captions.values()
    assert captions["photos/beach_dog.jpg"].startswith("A brown dog")


def test_a_model_that_does_not_think_gets_no_reasoning_effort(home, standin):
    root, photos, env = home
    result = invoke("describe", photos, "--model", "standin-vision", cwd=root, env=env)
    assert result.code == 0, result.stderr
    assert all("reasoning_effort" not in r["body"] for r in standin.requests)
    assert thinks_by_default("qwen/qwen3.8-27b") and not thinks_by_default("meta-llama/llama-4-scout-17b-16e-instruct")


def test_dry_run_prices_and_help_name_the_default_model(home):
    root, photos, env = home
    result = invoke("describe", photos, "--dry-run", cwd=root, env=env)
    assert result.code == 0, result.stderr
    # 4 photos x (2,048 image + 300 prompt tokens) in, x 250 out, at $0.80 / $4.00 a million
    assert f"~{4 * 2348:,} input + ~{4 * 250:,} output tokens, ~$0.01" in result.stderr
    helptext = invoke("describe", "--help", cwd=root, env=env).stdout
    assert DEFAULT_GROQ_MODEL in helptext and "$0.80" in helptext and "$4.00" in helptext
    status = json.loads(invoke("status", photos, "--json", cwd=root, env=env).stdout)
    assert status["next_describe"] == len(SCENES)


