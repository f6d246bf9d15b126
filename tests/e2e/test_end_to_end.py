"""describe -> embed -> search through the `imgrag` command, the real groq SDK and the
stand-in vision server: what a user sees, and what lands in .imgrag/. The first test is a
user's whole first session, each step the installed `imgrag` in a real process; the others
run in process."""

from __future__ import annotations

import json

from conftest import invoke, run_imgrag
from reliability_support import seed_query_encoder


def test_describe_embed_search(home, standin):
    cwd, photos, env = home
    r = run_imgrag("describe", photos, cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    assert "described 4" in r.stderr and r.stdout == ""
    records = [json.loads(line) for line in (cwd / ".imgrag" / "descriptions.jsonl").read_text().splitlines()]
    assert len(records) == 4
    by_path = {rec["paths"][0]: rec for rec in records}
    assert by_path["photos/beach_dog.jpg"]["description"]["caption"].startswith("A brown dog")
    rec = by_path["photos/kitchen.jpg"]
    assert rec["model"] and rec["provider"] == "groq" and rec["prompt_version"] >= 1
    assert rec["width"] == 640 and rec["height"] == 480 and len(rec["sha256"]) == 64
    # every request went through the groq SDK's path, with the key from the environment
    assert all(q["path"] == "/openai/v1/chat/completions" for q in standin.requests)
    assert all(q["headers"]["authorization"] == "Bearer test-key-123" for q in standin.requests)

    again = run_imgrag("describe", photos, cwd=cwd, env=env)
    assert again.code == 0 and "described 0" in again.stderr
    assert len(standin.requests) == 4, "already described photos cost no request"

    seed_query_encoder(cwd / ".imgrag")  # the query-encoder export takes seconds (test_query_encoder_cli.py makes one)
    r = run_imgrag("embed", photos, cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    assert "indexed 4 of 4" in r.stderr

    # search from inside the photo folder: .imgrag/ is found in a parent
    r = run_imgrag("search", "dog on the beach", "--json", "--limit", "2", "--min-score", "0", cwd=photos, env=env)
    assert r.code == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["results"][0]["path"].endswith("beach_dog.jpg")
    assert len(out["results"]) == 2
    assert out["results"][0]["score"] > out["results"][1]["score"]

    r = run_imgrag("search", "kettle on the stove", cwd=cwd, env=env)
    assert r.code == 0
    rank, _score, path, caption = r.stdout.splitlines()[0].split("\t")
    assert rank == "1" and path.endswith("kitchen.jpg") and "kettle" in caption


def test_openai_provider_path(home, standin):
    cwd, photos, env = home
    env = {**env, "IMGRAG_PROVIDER": "openai", "IMGRAG_BASE_URL": standin.openai_base_url, "IMGRAG_MODEL": "llava"}
    r = invoke("describe", photos, "--limit", "1", cwd=cwd, env=env)
    assert r.code == 0, r.stderr
    assert [q["path"] for q in standin.requests] == ["/v1/chat/completions"]
    assert standin.requests[0]["model"] == "llava"


def test_missing_key_no_photos_no_index(home, tmp_path):
    cwd, photos, env = home
    no_key = {k: v for k, v in env.items() if k != "GROQ_API_KEY"}
    r = invoke("describe", photos, cwd=cwd, env=no_key)
    assert r.code == 2 and "GROQ_API_KEY" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    empty = tmp_path / "empty"
    empty.mkdir()
    r = invoke("describe", empty, cwd=cwd, env=env)
    assert r.code == 2 and "no photos found" in r.stderr

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = invoke("search", "dog", cwd=elsewhere, env=env)
    assert r.code == 2 and "imgrag index" in r.stderr


def test_unknown_embedding_model(home):
    cwd, photos, env = home
    assert invoke("describe", photos, cwd=cwd, env=env).code == 0
    r = invoke("embed", photos, "--model", "no-such-org/no-such-model", cwd=cwd,
                   env={**env, "HF_HUB_OFFLINE": "1"})
    assert r.code == 2
    assert "no-such-org/no-such-model" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_help_explains_with_examples(home):
    cwd, _, env = home
    for cmd in ("describe", "embed", "index", "search"):
        r = invoke(cmd, "--help", cwd=cwd, env=env)
        assert r.code == 0 and "Example" in r.stdout
