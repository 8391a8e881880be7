"""End to end through the CLI with the real bundled models on shared NQ data."""

from __future__ import annotations

import gzip
import json

import pytest
import torch
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.data import read_jsonl
from dynamicrag.llm.transformers_backend import choose_dtype

runner = CliRunner()
RECORD_FIELDS = {"id", "question", "answers", "task", "passages", "selected", "reranker_output", "answer", "error"}


# Short caps keep the end-to-end runs inside the suite's time budget.
FAST = ["--reranker-max-tokens", "24", "--max-new-tokens", "24"]


def invoke(*args: str):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.fixture(scope="module")
def nq_index(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "nq-wiki"
    nq = shared_data / "nq"
    result = invoke("index", nq / "nq-open-oracle.jsonl.gz", nq / "flashrag_wiki_sample.jsonl", "--out", out)
    assert "indexed 3600 passages (bm25)" in result.output
    return out


@pytest.mark.slow
def test_infer_writes_one_well_formed_record_per_question_and_resumes(shared_data, nq_index, tmp_path, smollm):
    questions = shared_data / "nq" / "flashrag_nq_test.jsonl"  # no passages of their own
    out = tmp_path / "results.jsonl"
    args = ["infer", "--input", questions, "--output", out, "--index", nq_index, "--top-n", "5", "--batch-size", "2", *FAST]
    started = invoke(*args, "--limit", "2")
    first = [r for _, r in read_jsonl(out)]
    # The backend's dtype is printed once and recorded with the rest of the run's settings.
    dtype, reason = choose_dtype("auto", "cpu")
    assert " ".join(started.output.split()).count(f"transformers backend: {reason}") == 1
    settings = json.loads((tmp_path / "results.jsonl.settings.json").read_text())
    for role in ("reranker", "generator"):  # one base model, both roles on it
        described = settings["backends"][role]
        assert described["dtype"] == str(dtype).removeprefix("torch.") and described["batch_size"] == 8
        assert described["prefix_cache"] is True and described["adapter"] == settings["roles"][role]["adapter"]
    assert settings["threads"]["OMP_WAIT_POLICY"] and settings["run"]["batch_size"] == 2
    assert settings["reranker"]["class"] == "DynamicReranker" and settings["reranker"]["max_new_tokens"] == 24
    assert settings["generator"]["config"]["max_new_tokens"] == 24 and settings["generator"]["style"] == "default"
    assert settings["roles"]["generator"]["decoding"]["tasks"]["default"]["no_repeat_ngram_size"] == 8  # the task default
    assert settings["pipeline"]["top_n"] == 5 and settings["dynamicrag"] and settings["command"]
    # Another backend batch size changes speed, not records: resumed, and recorded.
    result = invoke(*args, "--limit", "3", "--backend-option", "batch_size=4")
    assert "resuming: 2 of 3" in result.output and "error" not in result.output
    records = [r for _, r in read_jsonl(out)]
    assert records[:2] == first and len(records) == 3
    assert json.loads((tmp_path / "results.jsonl.settings.json").read_text())["backends"]["generator"]["batch_size"] == 4
    # Another dtype decides the records: refused, the records kept.
    if dtype is not torch.float32:
        before = out.read_bytes()
        changed = runner.invoke(app, [str(a) for a in (*args, "--limit", "4", "--backend-option", "dtype=float32")])
        message = " ".join(changed.output.split())
        assert changed.exit_code == 2 and "transformers backend: fp32 (dtype=float32)" in message
        assert "3 records written with other settings (" in message
        assert f"backends.generator.dtype: {str(dtype)[6:]} -> float32" in message
        # fp32 decodes with its own weights; bf16 on CPU read an int8 copy (decode_weights)
        assert "backends.generator.decode_weights: int8 -> model" in message
        assert out.read_bytes() == before
    records = records[:3]
    src = [json.loads(line) for line in questions.read_text().splitlines()[:3]]
    for record, source in zip(records, src):
        assert RECORD_FIELDS <= set(record)
        assert record["id"] == source["id"] and record["question"] == source["question"]
        assert record["answers"] == source["golden_answers"]
        assert len(record["passages"]) == 5  # from the index
        assert all(1 <= i <= 5 for i in record["selected"])
        assert (record["answer"] is None) == (record["error"] is not None)
        assert isinstance(record["reranker_output"], str)


def test_resuming_onto_another_inputs_records_is_refused_and_keeps_them(shared_data, tmp_path):
    questions = shared_data / "nq" / "flashrag_nq_test.jsonl"
    ids = [json.loads(line)["id"] for line in questions.read_text().splitlines()[:2]]
    out = tmp_path / "results.jsonl"
    out.write_text("".join(json.dumps({"id": i, "answer": "kept"}) + "\n" for i in ids))
    before = out.read_bytes()
    # --skip 1 shifts the input by one: the file's first record is not this run's first question.
    result = runner.invoke(app, ["infer", "--input", str(questions), "--output", str(out), "--skip", "1", "--limit", "3"])
    assert result.exit_code == 2
    message = " ".join(result.output.split())
    assert f"line 1: record id '{ids[0]}', but input record 1 of this run is '{ids[1]}'" in message
    assert out.read_bytes() == before


def test_retrieve_writes_examples_with_their_passages_and_gold_marks(shared_data, nq_index, tmp_path):
    from dynamicrag.data import load_examples

    questions = shared_data / "nq" / "nq-open-oracle.jsonl.gz"  # each with its gold passage
    out = tmp_path / "retrieved.jsonl"
    result = invoke("retrieve", "--input", questions, "--index", nq_index, "--output", out, "--top-n", "20",
                    "--limit", "30", "--batch-size", "8")
    assert "retrieved top 20 for 30 questions" in " ".join(result.output.split())
    examples = load_examples(out)  # the output is an examples file later stages read
    source = load_examples(questions, limit=30)
    assert [ex.id for ex in examples] == [ex.id for ex in source]
    assert all(len(ex.passages) == 20 for ex in examples)
    # The gold passage is in the index: retrieved in the top 20 for most questions, and marked.
    found = sum(any(p.extra.get("isgold") for p in ex.passages) for ex in examples)
    assert found >= 24
    again = invoke("retrieve", "--input", questions, "--index", nq_index, "--output", out, "--top-n", "20", "--limit", "30")
    assert "retrieved top 20 for 0 questions" in " ".join(again.output.split())  # nothing redone


@pytest.mark.slow
def test_infer_uses_the_examples_own_passages(shared_data, tmp_path, smollm):
    src = tmp_path / "nq-oracle-3.jsonl"
    with gzip.open(shared_data / "nq" / "nq-open-oracle.jsonl.gz", "rt") as f:
        src.write_text("".join(next(f) for _ in range(3)))
    out = tmp_path / "out.jsonl"
    invoke("infer", "--input", src, "--output", out, "--constrained", "--batch-size", "3", *FAST)
    records = [r for _, r in read_jsonl(out)]
    assert len(records) == 3 and all(r["task"] == "nq" for r in records)
    assert all(len(r["passages"]) == 1 and r["passages"][0]["isgold"] for r in records)
    # constrained decoding: every output is well formed, none fails
    assert all(r["well_formed"] and r["error"] is None and r["answer"] for r in records)


@pytest.mark.slow
def test_ask_answers_from_the_embedded_corpus(smollm):
    result = invoke("ask", "How does DynamicRAG choose the number of passages?", "--json", *FAST)
    record = json.loads(result.stdout)
    assert record["error"] is None and record["answer"]
    assert len(record["passages"]) == 10
    titles = {p["title"] for p in record["passages"]}
    assert any("DynamicRAG" in t or "passages" in t.lower() for t in titles)
    assert all(1 <= i <= 10 for i in record["selected"]) and record["well_formed"]
    assert "✓ loading the model" in result.stderr  # the model load reports itself and its time


def test_bad_input_file_names_file_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q1", "answers": ["a"]}\n{"question": "q2", "answers": 3}\n')
    result = runner.invoke(app, ["infer", "--input", str(bad), "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 2
    assert "bad.jsonl:2" in result.output and "answers" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_evaluate_reports_failed_records_and_writes_json_and_plots(shared_data, tmp_path):
    from dynamicrag.data import ResumableJsonlWriter, load_examples
    from dynamicrag.generate import Generator
    from dynamicrag.pipeline import Pipeline
    from dynamicrag.rerank import DynamicReranker
    from fakes import ScriptedBackend

    examples = load_examples(shared_data / "hotpotqa" / "hotpotqa_train.json", limit=4)
    backend = ScriptedBackend(outputs={0: "gibberish"})  # the first reranker call is unusable
    records = Pipeline(DynamicReranker(backend), Generator(backend)).run(examples)
    path = tmp_path / "run.jsonl"
    with ResumableJsonlWriter(path) as writer:
        for r in records:
            writer.write(r)
    result = invoke("evaluate", path, "--out", tmp_path / "eval")
    summary = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    group = summary["run"]["groups"]["all"]
    assert group["n"] == 4 and group["failed"] == 1  # reported, not excluded
    assert group["selection"]["malformed"] == 0.25
    assert (tmp_path / "eval" / "k_hist.png").exists()
    assert "run" in result.output


@pytest.mark.parametrize(
    "option, message",
    [("batch_size", "KEY=VALUE"), ("no_such_option=1", "backend 'transformers'"),
     ("dtype=float8", "dtype must be 'auto' or one of")],
)
def test_bad_backend_options_are_clear_errors(shared_data, tmp_path, option, message):
    result = runner.invoke(app, [
        "infer", "--input", str(shared_data / "nq" / "flashrag_nq_test.jsonl"), "--output", str(tmp_path / "o.jsonl"),
        "--backend-option", option,
    ])
    assert result.exit_code == 2 and message in result.output


@pytest.mark.slow
def test_infer_cuts_k_by_the_retrievers_scores_with_adaptive_k_and_threshold(shared_data, nq_index, tmp_path, smollm):
    questions = shared_data / "nq" / "flashrag_nq_test.jsonl"
    common = ["--input", questions, "--index", nq_index, "--top-n", "6", "--limit", "3", "--max-new-tokens", "8"]
    invoke("infer", *common, "--output", tmp_path / "adaptive.jsonl", "--reranker", "adaptive-k",
           "--scorer", "retriever", "--buffer", "1")
    for record in (r for _, r in read_jsonl(tmp_path / "adaptive.jsonl")):
        scores = [p["score"] for p in record["passages"]]
        gaps = [scores[i] - scores[i + 1] for i in range(len(scores) - 1)]
        cut = gaps.index(max(gaps)) + 1  # BM25 order is score order: the largest gap, plus the buffer of 1
        assert record["selected"] == list(range(1, cut + 2)) and record["answer"] and record["error"] is None
    invoke("infer", *common, "--output", tmp_path / "drop.jsonl", "--reranker", "threshold",
           "--scorer", "retriever", "--max-drop", "0.1")
    for record in (r for _, r in read_jsonl(tmp_path / "drop.jsonl")):
        scores = [p["score"] for p in record["passages"]]
        assert record["selected"] == [i for i, s in enumerate(scores, 1) if scores[0] - s <= 0.1 * abs(scores[0])]
    result = runner.invoke(app, ["infer", *map(str, common), "--output", str(tmp_path / "x.jsonl"), "--reranker", "threshold"])
    assert result.exit_code == 2 and "--reranker threshold needs --threshold, --max-drop or both" in result.output


@pytest.mark.slow
def test_ask_ends_the_process_without_the_teardown_and_other_commands_exit_normally(smollm, monkeypatch, capsys,
                                                                                   tmp_path):
    """The console script: after `ask` the whole JSON is printed and the process ends at once
    with the command's exit status (os._exit, the process boundary, is the one thing replaced
    here), also when it fails; a command that writes files (`index`) exits the normal way."""
    import sys

    from dynamicrag import cli

    class Ended(Exception):
        pass

    def end(code: int) -> None:
        raise Ended(code)

    def run(*args: str) -> None:
        monkeypatch.setattr(sys, "argv", ["dynamicrag", *args])
        cli.run()

    monkeypatch.setattr(cli.os, "_exit", end)
    monkeypatch.setattr(cli, "_SKIP_TEARDOWN", False)
    with pytest.raises(Ended) as ended:
        run("ask", "How does DynamicRAG choose the number of passages?", "--json", *FAST)
    assert ended.value.args == (0,)
    record = json.loads(capsys.readouterr().out)
    assert record["error"] is None and record["answer"]

    with pytest.raises(Ended) as ended:
        run("ask", "Anything?", "--corpus", str(tmp_path / "missing"))
    assert ended.value.args[0] not in (0, None)
    assert "missing" in " ".join(capsys.readouterr().err.split())

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("# Rivers\nThe Nile is a river in Africa.\n")
    monkeypatch.setattr(cli, "_SKIP_TEARDOWN", False)
    with pytest.raises(SystemExit) as done:
        run("index", str(docs), "--out", str(tmp_path / "index"))
    assert done.value.code == 0 and (tmp_path / "index").is_dir()
