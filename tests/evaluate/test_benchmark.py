"""The benchmark runner: config validation, runs per (benchmark, reranker), resumable, one table."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.evaluate.benchmark import default_config_path, load_config

CONFIG = {
    "answer_max_tokens": 8,
    "batch_size": 4,
    "benchmarks": [
        {"name": "nq", "file": "nq/nq-open-oracle.jsonl.gz", "task": "nq", "limit": 3, "passages": "corpus",
         "corpus": ["nq/nq-open-oracle.jsonl.gz"], "top_n": 4},
        {"name": "hotpotqa", "file": "hotpotqa/hotpotqa_train.json", "limit": 2, "top_n": 10, "metrics": ["match", "f1"]},
    ],
    "rerankers": [
        {"name": "none", "kind": "none"},
        {"name": "top-2", "kind": "topk", "k": 2},
        {"name": "pointwise-1", "kind": "pointwise", "k": 1},
        {"name": "adaptive-k", "kind": "adaptive-k", "scorer": "retriever", "benchmarks": ["nq"]},
        {"name": "oracle-k", "kind": "oracle-k", "benchmarks": ["nq"]},
    ],
}


def test_the_shipped_config_covers_every_baseline():
    config = load_config(default_config_path())
    assert [(b.name, b.limit) for b in config.benchmarks] == [("nq", 200), ("hotpotqa", 100)]
    kinds = {r.kind for r in config.rerankers}
    assert kinds == {"none", "topk", "pointwise", "listwise", "dynamic", "adaptive-k", "threshold", "gold",
                     "oracle-k", "oracle-single"}
    assert sorted(r.k for r in config.rerankers if r.kind == "topk") == [1, 3, 5, 10]
    names = [r.name for r in config.rerankers]
    # the ceilings come after the fixed-k rows, so their prompts are in the answer cache first
    assert max(names.index(f"top-{k}") for k in (1, 3, 5, 10)) < names.index("oracle-k") < names.index("gold")


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text(yaml.safe_dump({**CONFIG, "benchmarks": [{"name": "x", "file": "f", "top_n": 0}]}))
    with pytest.raises(ValueError, match=r"b.yaml: field 'benchmarks.0.top_n'"):
        load_config(bad)
    bad.write_text(yaml.safe_dump({**CONFIG, "rerankers": [{"name": "r", "kind": "rankgpt"}]}))
    with pytest.raises(ValueError, match="kind 'rankgpt' is not one of"):
        load_config(bad)



def test_the_cli_names_a_benchmark_the_config_lacks(tmp_path):
    config = tmp_path / "b.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    result = CliRunner().invoke(app, ["benchmark", "--config", str(config), "--data", str(tmp_path),
                                      "--out", str(tmp_path / "out"), "--benchmark", "hotpot"])
    assert result.exit_code != 0
    assert "benchmarks ['hotpot'] are not in the config (['nq', 'hotpotqa'])" in result.output
    assert not (tmp_path / "out").exists()  # refused before anything is written


@pytest.mark.slow
def test_benchmark_runs_every_pair_and_writes_one_comparison(shared_data, tmp_path, smollm):
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["benchmark", "--data", str(shared_data), "--out", str(out), "--config", str(config)])
    assert result.exit_code == 0, result.output
    comparison = json.loads((out / "comparison.json").read_text())
    assert set(comparison["runs"]) == {f"{b}/{r}" for b in ("nq", "hotpotqa") for r in ("none", "top-2", "pointwise-1")} | {
        "nq/adaptive-k", "nq/oracle-k"}
    assert comparison["generation"]["tasks"]["default"]["max_new_tokens"] == 8  # the decoding used is recorded
    nq_top2 = [json.loads(line) for line in (out / "runs" / "nq" / "top-2.jsonl").read_text().splitlines()]
    assert len(nq_top2) == 3 and all(r["selected"] == [1, 2] and len(r["passages"]) == 4 for r in nq_top2)
    assert all(r["reranker"] == "top-2" and r["benchmark"] == "nq" for r in nq_top2)
    # retrieved passages are gold only when they are the question's own gold passage
    from dynamicrag.data import load_examples

    own = load_examples(shared_data / "nq" / "nq-open-oracle.jsonl.gz", limit=3)
    for record, example in zip(nq_top2, own):
        gold = (example.passages[0].title, example.passages[0].text)
        assert [p["isgold"] for p in record["passages"]] == [(p["title"], p["text"]) == gold for p in record["passages"]]
    assert any(p["isgold"] for r in nq_top2 for p in r["passages"])
    hp = comparison["runs"]["hotpotqa/pointwise-1"]["groups"]["all"]
    assert set(hp["answer"]) == {"match", "f1"}  # the config's metrics, not the task's
    assert hp["selection"]["mean_k"] == 1.0 and hp["rerank"]["precision"] >= 0.5  # 1 of 2 supporting found
    # adaptive-k on BM25 scores: a prefix of the retrieved list (BM25 order), cut before the last passage
    for record in (json.loads(line) for line in (out / "runs" / "nq" / "adaptive-k.jsonl").read_text().splitlines()):
        assert record["error"] is None and 1 <= len(record["selected"]) <= 3
        assert record["selected"] == list(range(1, len(record["selected"]) + 1))
    # the oracle is at least as good as every fixed k it chooses among, and reused their answers
    runs = comparison["runs"]
    assert runs["nq/oracle-k"]["main_score"] >= max(runs[f"nq/{r}"]["main_score"] for r in ("none", "top-2"))
    assert comparison["generator"]["nq/oracle-k"]["reused"] >= 3  # k = 0 of each question: the none row asked it
    assert comparison["ceilings"]["nq/oracle-k"]["n"] == 3
    table = (out / "comparison.md").read_text()
    main_table = table.split("\n###")[0]
    assert main_table.count("\n| nq/") == 5 and "hotpotqa/none" in main_table
    assert "### Oracle ceilings" in table and "| nq/oracle-k | oracle-k |" in table
    assert all((out / name).stat().st_size > 5000 for name in ("k_hist.png", "quality_by_k.png"))
    # A second run finds every record written and redoes nothing.
    mtime = (out / "runs" / "nq" / "top-2.jsonl").stat().st_mtime_ns
    again = CliRunner().invoke(app, ["benchmark", "--data", str(shared_data), "--out", str(out), "--config", str(config)])
    assert again.exit_code == 0 and (out / "runs" / "nq" / "top-2.jsonl").stat().st_mtime_ns == mtime
