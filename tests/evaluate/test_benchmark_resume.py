"""The benchmark resumes through the stages' runner: an old output of other input or another
config is refused, never appended to. A scripted backend stands in for the LLM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamicrag.evaluate.benchmark import BenchmarkConfig, run_benchmark
from fakes import ScriptedBackend


def write_questions(data: Path, n: int) -> None:
    rows = [
        {"id": f"q{i}", "question": f"question {i}", "answers": [f"t{i}"],
         "ctxs": [{"title": f"t{i + p}", "text": f"text {p}"} for p in range(3)]}
        for i in range(n)
    ]
    (data / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def config(limit: int, skip: int = 0, k: int = 2) -> BenchmarkConfig:
    return BenchmarkConfig(
        batch_size=1,
        benchmarks=[{"name": "qa", "file": "qa.jsonl", "task": "nq", "limit": limit, "skip": skip, "top_n": 3}],
        rerankers=[{"name": "top", "kind": "topk", "k": k}],
    )


def run_file(out: Path) -> Path:
    return out / "runs" / "qa" / "top.jsonl"


def test_a_shifted_input_is_refused_and_the_old_records_kept(tmp_path):
    write_questions(tmp_path, 5)
    out = tmp_path / "out"
    run_benchmark(config(limit=2), tmp_path, out, backend=ScriptedBackend())
    before = run_file(out).read_bytes()
    # skip 1: the input is q1..q3, but the file holds q0, q1; the old runner appended q3 to them
    with pytest.raises(ValueError, match=r"line 1: record id 'q0', but input record 1 of this run is 'q1'"):
        run_benchmark(config(limit=3, skip=1), tmp_path, out, backend=ScriptedBackend())
    assert run_file(out).read_bytes() == before


def test_a_changed_reranker_config_is_refused_and_the_old_records_kept(tmp_path):
    write_questions(tmp_path, 5)
    out = tmp_path / "out"
    run_benchmark(config(limit=2, k=2), tmp_path, out, backend=ScriptedBackend())
    before = run_file(out).read_bytes()
    # Same name, same input, another k: the old runner appended k=3 records to the k=2 ones.
    with pytest.raises(ValueError, match=r"top\.jsonl.*written with other settings.*reranker\.k: 2 -> 3"):
        run_benchmark(config(limit=3, k=3), tmp_path, out, backend=ScriptedBackend())
    assert run_file(out).read_bytes() == before


def test_a_longer_limit_with_the_same_settings_resumes_after_the_records_written(tmp_path):
    write_questions(tmp_path, 5)
    out = tmp_path / "out"
    run_benchmark(config(limit=2), tmp_path, out, backend=ScriptedBackend())
    first = run_file(out).read_text().splitlines()
    backend = ScriptedBackend()
    run_benchmark(config(limit=4), tmp_path, out, backend=backend)
    records = [json.loads(line) for line in run_file(out).read_text().splitlines()]
    assert run_file(out).read_text().splitlines()[:2] == first
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "q3"]
    assert len(backend.calls) == 2  # only the two new questions were answered


@pytest.mark.slow
def test_the_cli_names_the_refused_run_file_and_keeps_it(tmp_path, smollm):
    import yaml
    from typer.testing import CliRunner

    from dynamicrag.cli import app

    write_questions(tmp_path, 3)
    run = run_file(tmp_path / "out")
    run.parent.mkdir(parents=True)
    run.write_text(json.dumps({"id": "other", "answer": "kept"}) + "\n")
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config(limit=3).model_dump(exclude_defaults=True)))
    result = CliRunner().invoke(app, ["benchmark", "--data", str(tmp_path), "--out", str(tmp_path / "out"),
                                      "--config", str(tmp_path / "bench.yaml")])
    assert result.exit_code == 2, result.output
    message = "top.jsonl, line 1: record id 'other', but input record 1 of this run is 'q0'"
    assert "".join(message.split()) in "".join(result.output.split())  # rich wraps the long path anywhere
    assert run.read_text() == json.dumps({"id": "other", "answer": "kept"}) + "\n"
