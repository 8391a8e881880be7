"""The benchmark with separate roles on the resumable runner and the answer cache:
a row's reranker adapter, the generator role's adapter in the cache fingerprint, and run files
refused when a role changes. A scripted backend stands in for both roles' LLMs; the adapter
folders are only resolved (config + manifest), never loaded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamicrag.evaluate.benchmark import BenchmarkConfig, run_benchmark
from dynamicrag.executors import ResumeError
from dynamicrag.llm import adapters
from fakes import ScriptedBackend
from tiny_lora import write_manifest_json


@pytest.fixture
def data(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {})  # adapter auto: the base model
    rows = [
        {"id": f"q{i}", "question": f"question {i}", "answers": [f"t{i}"],
         "ctxs": [{"title": f"t{i + p}", "text": f"text {p} GOLD-1" if p == 1 else f"text {p}"} for p in range(3)]}
        for i in range(3)
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


@pytest.fixture
def adapter(tmp_path: Path) -> Path:
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    write_manifest_json(folder, passage_words=1, constrained=True, top_n=3)
    return folder


def config(rows, **overrides) -> BenchmarkConfig:
    return BenchmarkConfig(**{
        "batch_size": 2, "answer_max_tokens": 8,
        "benchmarks": [{"name": "qa", "file": "qa.jsonl", "task": "nq", "top_n": 3}],
        "rerankers": rows, **overrides,
    })


ROWS = [{"name": "top-1", "kind": "topk", "k": 1}, {"name": "dynamic", "kind": "dynamic"}]


def test_a_row_runs_its_own_reranker_adapter_with_the_manifests_settings(data, adapter):
    rows = [*ROWS, {"name": "dynamic-adapter", "kind": "dynamic", "adapter": str(adapter)}]
    backend = ScriptedBackend()
    comparison = run_benchmark(config(rows), data, data / "out", backend=backend)
    base, tuned = comparison["settings"]["qa/dynamic"]["reranker"], comparison["settings"]["qa/dynamic-adapter"]["reranker"]
    assert base["adapter"] is None and (base["constrained"], base["passage_words"]) == (False, None)
    assert tuned["adapter"] == str(adapter.resolve()) and (tuned["constrained"], tuned["passage_words"]) == (True, 1)
    # the manifest's 1 word per passage: the adapter row's reranker prompts show "text", never "text 1"
    prompts = [c[-1]["content"] for c in backend.calls if "document identifiers" in c[0]["content"]]
    assert len(prompts) == 6 and sum("text 1 GOLD-1" in p for p in prompts) == 3  # the base row's 3 questions
    for row in ("dynamic", "dynamic-adapter"):
        records = [json.loads(line) for line in (data / "out" / "runs" / "qa" / f"{row}.jsonl").read_text().splitlines()]
        assert [r["selected"] for r in records] == ([[2]] * 3 if row == "dynamic" else [[]] * 3)
        assert all(r["generator_calls"] + r["generator_reused"] == 1 for r in records)
    saved = json.loads((data / "out" / "runs" / "qa" / "dynamic-adapter.jsonl.settings.json").read_text())
    assert saved["reranker_role"]["adapter"] == str(adapter.resolve())
    assert saved["reranker_role"]["adapter_files"] is not None  # a retrained adapter is another setting


def test_another_reranker_adapter_refuses_only_the_llm_rows_run_file(data, adapter):
    out = data / "out"
    run_benchmark(config(ROWS), data, out, backend=ScriptedBackend())
    before = (out / "runs" / "qa" / "dynamic.jsonl").read_bytes()
    again = ScriptedBackend()
    with pytest.raises(ResumeError, match=r"dynamic\.jsonl: 3 records written with other settings.*reranker_role\.adapter"):
        run_benchmark(config(ROWS, reranker={"adapter": str(adapter)}), data, out, backend=again)
    assert again.calls == []  # top-1 resumed (its reranker runs no LLM): nothing asked
    assert (out / "runs" / "qa" / "dynamic.jsonl").read_bytes() == before


def test_the_generator_roles_adapter_is_part_of_the_answer_cache_key(data, adapter):
    out = data / "out"
    run_benchmark(config(ROWS[:1]), data, out, backend=ScriptedBackend())
    tuned = config(ROWS[:1], generator={"adapter": str(adapter)})
    with pytest.raises(ResumeError, match=r"top-1\.jsonl.*generator\.adapter: \(unset\) -> .*adapter"):
        run_benchmark(tuned, data, out, backend=ScriptedBackend())
    (out / "runs" / "qa" / "top-1.jsonl").unlink()
    backend = ScriptedBackend()
    comparison = run_benchmark(tuned, data, out, backend=backend)
    assert len(backend.calls) == 3  # the base model's cached answers are not the adapter's
    assert comparison["generator"]["qa/top-1"] == {"calls": 3, "reused": 0}
    assert comparison["settings"]["qa/top-1"]["generator"]["adapter"] == str(adapter.resolve())
