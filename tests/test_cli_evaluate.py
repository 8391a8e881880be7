"""`dynamicrag evaluate --baseline / --diff / --qrels` and summary tables in a pipe, through the CLI."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.console import show_stats
from dynamicrag.data import ResumableJsonlWriter, read_jsonl
from dynamicrag.pipeline import infer_summary

runner = CliRunner()


def rec(i, right, selected):
    passages = [{"id": f"p{i}-{j}", "title": f"Title {j}", "text": f"text {j}", "isgold": j == 2} for j in range(1, 6)]
    return {
        "id": f"q{i}", "question": f"question {i}?", "answers": ["Paris"], "task": "nq", "passages": passages,
        "selected": selected, "reranker_output": "x", "well_formed": True,
        "answer": "It is Paris." if right else "London.", "error": None,
    }


def write(path, records):
    with ResumableJsonlWriter(path) as writer:
        for r in records:
            writer.write(r)
    return path


@pytest.fixture
def runs(tmp_path):
    base = [rec(i, i % 2 == 0, [1]) for i in range(30)]  # right on even questions
    better = [rec(i, i % 2 == 0 or i < 20, [2, 1]) for i in range(30)]  # + odd ones below 20
    better.reverse()  # another order: questions are matched by id
    return {
        "base": write(tmp_path / "base.jsonl", base),
        "better": write(tmp_path / "better.jsonl", better),
        "same": write(tmp_path / "same.jsonl", base[:25]),  # 5 questions fewer
    }


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def table_rows(text, first_header):
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for line in lines[start + 2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(header) or cells == header:
            break
        rows.append(dict(zip(header, cells)))
    return rows


def test_baseline_adds_the_paired_comparison(runs, tmp_path):
    out = tmp_path / "eval"
    result = invoke("evaluate", runs["better"], runs["same"], "--baseline", runs["base"], "--out", out, "--metric", "match")
    summary = json.loads((out / "evaluation.json").read_text())
    assert list(summary) == ["base", "better", "same"]  # the baseline is evaluated too
    comparison = json.loads((out / "paired_comparison.json").read_text())
    better = comparison["runs"]["better"]["metrics"]["match"]
    # 10 odd questions below 20 flip from wrong to right, nothing the other way: McNemar p = 2 / 2^10.
    assert (better["wins"], better["ties"], better["losses"]) == (10, 20, 0)
    assert better["p"] == pytest.approx(2 / 1024) and better["ci"][0] > 0
    assert comparison["runs"]["same"]["only_in_baseline"] == ["q25", "q26", "q27", "q28", "q29"]
    for name in ("paired_comparison.md", "paired_comparison.png", "evaluation.md"):
        assert (out / name).exists()
    assert "## Paired comparison against base" in (out / "evaluation.md").read_text()
    # Printed as markdown (no terminal here), every number whole.
    rows = table_rows(result.output, "run | metric")
    assert [(r["run"], r["metric"]) for r in rows] == [("better", "match"), ("same", "match")]
    assert (rows[0]["diff"], rows[0]["W/T/L"], rows[0]["p"]) == ("+0.333", "10/20/0", "0.002")
    assert (rows[1]["diff"], rows[1]["95% CI"], rows[1]["p"]) == ("+0.000", "[+0.000, +0.000]", "1.000")


def test_evaluate_table_in_a_pipe_keeps_headers_and_numbers_whole(runs, tmp_path):
    result = invoke("evaluate", runs["base"], "--out", tmp_path / "eval")
    assert "…" not in result.output
    row = table_rows(result.output, "run | group")[0]
    assert {k: row[k] for k in ("run", "n", "match", "mean k", "malformed %", "selection F1", "NDCG@10")} == {
        "run": "base", "n": "30", "match": "0.500", "mean k": "1.00", "malformed %": "0.0",
        "selection F1": "0.000", "NDCG@10": "0.000",
    }


def test_infer_summary_in_a_pipe_keeps_numbers_whole(runs, capsys):
    stats = infer_summary([r for _, r in read_jsonl(runs["base"])])
    assert stats == {"records": 30, "answered": 30, "failed": 0, "malformed": 0, "mean_k": 1.0}
    show_stats("infer: base", stats, s_per_question="0.41")
    text = capsys.readouterr().err
    row = table_rows(text, "records")[0]
    assert row == {"records": "30", "answered": "30", "failed": "0", "malformed": "0", "mean k": "1.000",
                   "s per question": "0.41"}


def test_diff_prints_both_directions_and_writes_them(runs, tmp_path):
    result = invoke("evaluate", "--diff", runs["better"], runs["base"])
    assert "30 questions in both: 10 right in better only, 0 right in base only, 20 the same." in result.output
    assert "### `q19` question 19?" in result.output
    assert "- **better** (match 1): It is Paris.\n  - selected: [2] Title 2 (`p19-2`), [1] Title 1 (`p19-1`)" in result.output
    assert not (tmp_path / "diff.md").exists()  # no --out: printed only
    out = tmp_path / "d"
    invoke("evaluate", "--diff", runs["better"], runs["base"], "--out", out, "--metric", "em")
    diff = json.loads((out / "diff.json").read_text())
    assert diff["metric"] == "em" and diff["a_better"] == diff["b_better"] == []  # em: never exact
    assert (out / "diff.md").read_text().startswith("# better vs base on em")


def test_qrels_option_is_the_source_of_relevance(runs, tmp_path):
    qrels = tmp_path / "run.qrels"
    qrels.write_text("".join(f"q{i} 0 p{i}-1 1\n" for i in range(10)))  # passage 1 relevant, q0..q9 only
    invoke("evaluate", runs["base"], "--qrels", qrels, "--out", tmp_path / "eval")
    group = json.loads((tmp_path / "eval" / "evaluation.json").read_text())["base"]["groups"]["all"]
    assert group["gold_source"] == {"none": 20, "qrels": 10}
    assert group["rerank"]["scored"] == 10 and group["rerank"]["mrr"] == 1.0  # selected [1] every time
    bad = tmp_path / "bad.qrels"
    bad.write_text("q0 0 p0-1\n")
    result = runner.invoke(app, ["evaluate", str(runs["base"]), "--qrels", str(bad), "--out", str(tmp_path / "e2")])
    assert result.exit_code == 2 and re.search(r"bad\.qrels:1: expected 4 fields", " ".join(result.output.split()))


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give RUN files to evaluate, or --diff A B"),
        (["--diff", "{base}", "{better}", "--metric", "em", "--metric", "f1"], "--diff compares one metric"),
        (["{base}", "--baseline", "{base}"], "at least one other run"),
        (["{base}", "{better}", "--baseline", "{base}", "--metric", "bleu"], "unknown metric 'bleu'"),
    ],
)
def test_bad_evaluate_options_are_clear_errors(runs, tmp_path, args, message):
    args = [a.format(**runs) for a in args]
    result = runner.invoke(app, ["evaluate", *args, "--out", str(tmp_path / "e")])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_duplicate_question_ids_name_the_run(runs, tmp_path):
    dup = write(tmp_path / "dup.jsonl", [rec(0, True, [1]), rec(0, False, [1])])
    result = runner.invoke(app, ["evaluate", str(dup), "--baseline", str(runs["base"]), "--out", str(tmp_path / "e")])
    assert result.exit_code == 2
    assert "run 'dup': question id 'q0' appears more than once" in " ".join(result.output.split())


def test_a_baseline_among_the_runs_is_evaluated_once(runs, tmp_path):
    out = tmp_path / "eval"
    invoke("evaluate", runs["base"], runs["better"], "--baseline", runs["base"], "--out", out)
    assert list(json.loads((out / "evaluation.json").read_text())) == ["base", "better"]
    comparison = json.loads((out / "paired_comparison.json").read_text())
    assert comparison["baseline"] == "base" and list(comparison["runs"]) == ["better"]
    assert comparison["metrics"] == ["match", "em", "f1"]  # default: every metric the task reports
