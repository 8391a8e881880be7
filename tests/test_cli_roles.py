"""Separate roles through the CLI: each role's model, adapter and backend; the shipped default."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.data import read_jsonl
from dynamicrag.llm import adapters
from fakes import ScriptedBackend
from tiny_lora import linked_copy

runner = CliRunner()
FAST = ["--reranker-max-tokens", "16", "--max-new-tokens", "8"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def flat(result) -> str:
    return " ".join(result.output.split())  # rich wraps long messages


def unwrapped(text: str) -> str:
    """``text`` without any whitespace: rich may also break a long path off the word after it."""
    return "".join(text.split())


@pytest.fixture
def hotpot(shared_data):
    return shared_data / "hotpotqa" / "hotpotqa_train.json"  # 10 passages per question


@pytest.fixture
def fake_adapter(tmp_path):
    """An adapter folder as far as the option checks look (config + manifest)."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "manifest.json").write_text('{"name": "a", "base_model": "smollm2-135m-instruct", "role": "reranker"}')
    return folder


def test_a_bad_adapter_path_is_a_clear_error_before_anything_runs(hotpot, tmp_path):
    out = tmp_path / "o.jsonl"
    result = run("infer", "--input", hotpot, "--output", out, "--reranker-adapter", tmp_path / "no-such-adapter")
    assert result.exit_code == 2
    assert unwrapped(f"reranker adapter '{tmp_path / 'no-such-adapter'}': no such folder") in unwrapped(result.output)
    assert not out.exists()
    result = run("ask", "why?", "--generator-adapter", tmp_path)
    assert result.exit_code == 2 and unwrapped(f"{tmp_path} is not a LoRA adapter folder") in unwrapped(result.output)


def test_an_adapter_of_another_base_model_is_refused_naming_both(hotpot, tmp_path, fake_adapter):
    other = linked_copy(fake_adapter, tmp_path / "other", base_model="HuggingFaceTB/SmolLM2-360M-Instruct")
    result = run("infer", "--input", hotpot, "--output", tmp_path / "o.jsonl", "--reranker-adapter", other)
    assert result.exit_code == 2
    message = flat(result)
    assert f"reranker adapter {other}" in message and "'HuggingFaceTB/SmolLM2-360M-Instruct'" in message
    assert "--reranker-model" in message
    for command in (["serve"], ["ask", "why?"], ["chat"], ["sample", "--input", hotpot, "--output", tmp_path / "s.jsonl"]):
        result = run(*command, "--reranker-adapter", other)
        assert result.exit_code == 2 and "was trained on base model" in flat(result), command


def test_a_remote_generator_needs_its_served_model_name(hotpot, tmp_path):
    result = run("infer", "--input", hotpot, "--output", tmp_path / "o.jsonl",
                 "--generator-backend", "openai", "--generator-base-url", "http://127.0.0.1:1/v1")
    assert result.exit_code == 2 and "backend 'openai' needs the served model's name" in flat(result)
    result = run("ask", "why?", "--generator-backend", "openai", "--generator-model", "m",
                 "--generator-adapter", str(tmp_path))
    assert result.exit_code == 2 and "adapters run on the transformers backend, not 'openai'" in flat(result)


def test_benchmark_config_takes_one_section_per_role(tmp_path, fake_adapter, monkeypatch, shared_data):
    from dynamicrag.evaluate.benchmark import load_config

    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {"a": fake_adapter})
    path = tmp_path / "bench.yaml"
    config = {
        "model": None,
        "generator": {"backend": "openai", "model": "served", "base_url": "http://127.0.0.1:1/v1"},
        "benchmarks": [{"name": "hp", "file": "hotpotqa/hotpotqa_train.json", "limit": 1}],
        "rerankers": [{"name": "shipped", "kind": "dynamic"}, {"name": "base", "kind": "dynamic", "adapter": "none",
                                                               "constrained": True}],
    }
    path.write_text(yaml.safe_dump(config))
    cfg = load_config(path)
    shipped, base = (cfg.pipeline_config(spec, cfg.benchmarks[0]) for spec in cfg.rerankers)
    assert shipped.reranker.adapter == str(fake_adapter.resolve()) and base.reranker.adapter == "none"
    assert (shipped.constrained, base.constrained) == (False, True)
    assert shipped.generator.backend == base.generator.backend == "openai" and shipped.generator.model == "served"
    config["reranker"] = {"adapter": str(tmp_path / "missing")}
    path.write_text(yaml.safe_dump(config))
    result = run("benchmark", "--data", shared_data, "--out", tmp_path / "out", "--config", path)
    assert result.exit_code == 2 and "reranker adapter" in flat(result) and "missing" in flat(result)
    assert not (tmp_path / "out").exists()


def test_sample_answers_with_the_generator_roles_backend(shared_data):
    from dynamicrag.data import load_examples
    from dynamicrag.train.sample import SampleConfig, sample_trajectories

    examples = load_examples(shared_data / "hotpotqa" / "hotpotqa_train.json", limit=2)
    reranker, generator = ScriptedBackend(), ScriptedBackend()
    records = sample_trajectories(examples, reranker, "default", SampleConfig(n=2, top_n=4, passage_words=3),
                                  generator_backend=generator)
    assert len(records) == 2 and all(len(r["samples"]) == 2 for r in records)
    assert all("document identifiers" in chat[0]["content"] for chat in reranker.calls)
    assert generator.calls and all("document identifiers" not in chat[0]["content"] for chat in generator.calls)
    shown = reranker.calls[0][-1]["content"]
    words = examples[0].passages[0].text.split()
    assert f"\n{' '.join(words[:3])}\n" in shown and " ".join(words[:4]) not in shown  # 3 words per passage


@pytest.mark.slow
def test_infer_runs_the_shipped_reranker_adapter_by_default_and_none_gives_the_base(
    monkeypatch, hotpot, tmp_path, smollm, tiny_adapter
):
    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {"tiny-reranker": tiny_adapter})
    out = tmp_path / "shipped.jsonl"
    result = ok("infer", "--input", hotpot, "--output", out, "--limit", "2", *FAST)
    assert f"reranker: adapter {tiny_adapter}" in flat(result) and "generator: adapter" not in flat(result)
    records = [r for _, r in read_jsonl(out)]
    # The manifest's settings: 5 candidates, constrained decoding.
    assert all(len(r["passages"]) == 5 and r["well_formed"] for r in records)
    base = tmp_path / "base.jsonl"
    result = ok("infer", "--input", hotpot, "--output", base, "--limit", "2", "--reranker-adapter", "none", *FAST)
    assert "reranker: adapter" not in flat(result)
    base_records = [r for _, r in read_jsonl(base)]
    assert all(len(r["passages"]) == 10 for r in base_records)  # infer's own default, 40 (all 10 here)


@pytest.mark.slow
def test_the_generator_runs_on_an_openai_endpoint_while_the_reranker_runs_here(hotpot, tmp_path, smollm):
    from dynamicrag.serve import BackgroundServer, create_openai_app

    remote = ScriptedBackend()  # answers with the titles of the passages it is shown
    out = tmp_path / "o.jsonl"
    with BackgroundServer(create_openai_app(remote, model_name="remote")) as server:
        ok("infer", "--input", hotpot, "--output", out, "--limit", "2", "--top-n", "4", "--reranker-adapter", "none",
           "--constrained", "--generator-backend", "openai", "--generator-base-url", server.base_url,
           "--generator-model", "remote", *FAST)
    records = [r for _, r in read_jsonl(out)]
    assert len(records) == 2 and all(r["error"] is None for r in records)
    for r in records:  # each answer came from the server, from the passages the local reranker chose
        titles = [r["passages"][i - 1]["title"] for i in r["selected"]]
        assert r["answer"] == ("|".join(titles) or "no passages")
    assert len(remote.calls) == 2 and all("document identifiers" not in c[0]["content"] for c in remote.calls)


@pytest.mark.slow
def test_serve_builds_its_roles_with_the_one_builder(monkeypatch, smollm, tiny_adapter):
    import uvicorn
    from fastapi.testclient import TestClient

    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {"tiny-reranker": tiny_adapter})
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    result = ok("serve", "--port", "8123")
    assert f"reranker: adapter {tiny_adapter}" in flat(result) and served["port"] == 8123
    docs = [{"id": "paris", "text": "Paris is the capital of France."}, {"id": "nile", "text": "The Nile is a river."}]
    with TestClient(served["app"]) as client:
        out = client.post("/v1/rerank", json={"query": "capital of France?", "passages": docs}).json()
        health = client.get("/health").json()
    assert out["well_formed"] and out["error"] is None  # the manifest asks for constrained decoding
    assert health["ok"] and health["model"].endswith(smollm.model.rsplit("/", 1)[-1])
