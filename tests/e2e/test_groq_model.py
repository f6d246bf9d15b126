"""Describing on today's Groq: the default model, its request, and retired models.

Through the real CLI and the real groq SDK against the stand-in, which refuses Groq's
retired vision models with Groq's own 400 body and thinks before it answers unless
the request sends reasoning_effort "none"."""

from __future__ import annotations

import json

import pytest

from conftest import SCENES, run_imgrag
from imgrag.config import DEFAULT_GROQ_MODEL, thinks_by_default
from imgrag.store.files import read_jsonl
from standin_vlm import RETIRED_MODELS


def descriptions(root) -> list[dict]:
    return list(read_jsonl(root / ".imgrag" / "descriptions.jsonl"))


@pytest.mark.parametrize("retired", ["meta-llama/llama-4-scout-17b-16e-instruct", "qwen/qwen3.6-27b"])
def test_a_retired_model_in_dotenv_gives_one_line_naming_the_setting_and_the_current_model(home, standin, retired):
    root, photos, env = home
    (root / ".env").write_text(f"IMGRAG_MODEL={retired}\n")
    result = run_imgrag("describe", photos, cwd=root, env=env)
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
    result = run_imgrag("describe", photos, cwd=root, env=env)
    assert result.code == 0 and f"described {len(SCENES)}" in result.stderr, result.stderr


def test_the_stand_in_refuses_every_retired_vision_model_with_groqs_body(standin):
    import groq

    client = groq.Groq(api_key="k", base_url=standin.url, max_retries=0)
    for model in sorted(RETIRED_MODELS):
        with pytest.raises(groq.BadRequestError) as info:
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
        error = info.value.response.json()["error"]
        assert error["code"] == "model_decommissioned" and error["type"] == "invalid_request_error"
        assert error["message"].startswith(f"The model `{model}` has been decommissioned and is no longer supported.")
        assert "https://console.groq.com/docs/deprecations" in error["message"]


def test_the_default_model_is_asked_not_to_think_and_a_think_block_still_validates(home, standin):
    root, photos, env = home
    standin.enqueue("think")  # a reply wrapped in <think>...</think> anyway, with a draft JSON inside
    result = run_imgrag("describe", photos, "--jobs", "1", cwd=root, env=env)
    assert result.code == 0 and "failed 0" in result.stderr, result.stderr
    bodies = [r["body"] for r in standin.requests]
    assert len(bodies) == len(SCENES), "no retry was needed"
    assert all(b["model"] == DEFAULT_GROQ_MODEL and b["reasoning_effort"] == "none" for b in bodies)
    captions = {r["paths"][0]: r["description"]["caption"] for r in descriptions(root)}
    assert "draft" not in captions.values()
    assert captions["photos/beach_dog.jpg"].startswith("A brown dog")


def test_a_model_that_does_not_think_gets_no_reasoning_effort(home, standin):
    root, photos, env = home
    result = run_imgrag("describe", photos, "--model", "standin-vision", cwd=root, env=env)
    assert result.code == 0, result.stderr
    assert all("reasoning_effort" not in r["body"] for r in standin.requests)
    assert thinks_by_default("qwen/qwen3.8-27b") and not thinks_by_default("meta-llama/llama-4-scout-17b-16e-instruct")


def test_dry_run_prices_and_help_name_the_default_model(home):
    root, photos, env = home
    result = run_imgrag("describe", photos, "--dry-run", cwd=root, env=env)
    assert result.code == 0, result.stderr
    # 4 photos x (2,048 image + 300 prompt tokens) in, x 250 out, at $0.80 / $4.00 a million
    assert f"~{4 * 2348:,} input + ~{4 * 250:,} output tokens, ~$0.01" in result.stderr
    helptext = run_imgrag("describe", "--help", cwd=root, env=env).stdout
    assert DEFAULT_GROQ_MODEL in helptext and "$0.80" in helptext and "$4.00" in helptext
    status = json.loads(run_imgrag("status", photos, "--json", cwd=root, env=env).stdout)
    assert status["next_describe"] == len(SCENES)


def test_the_stand_in_thinks_first_unless_asked_not_to(standin):
    import base64
    import io

    import groq
    from PIL import Image

    png = io.BytesIO()
    Image.new("RGB", (64, 48), "blue").save(png, "PNG")
    content = [{"type": "text", "text": "Describe."},
               {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()}}]
    client = groq.Groq(api_key="k", base_url=standin.url, max_retries=0)

    def reply(**extra) -> str:
        completion = client.chat.completions.create(model=DEFAULT_GROQ_MODEL, messages=[{"role": "user", "content": content}], **extra)
        return completion.choices[0].message.content

    assert reply().startswith("<think>")
    assert reply(reasoning_effort="none").startswith("{")
    with pytest.raises(groq.BadRequestError):
        client.chat.completions.with_raw_response.create(model=DEFAULT_GROQ_MODEL, messages=[{"role": "user", "content": content}],
                                                         extra_body={"reasoning_effort": "maximal"})
