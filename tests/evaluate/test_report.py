import json
import math

import pytest

from dynamicrag.data import ResumableJsonlWriter, load_examples
from dynamicrag.evaluate.report import (
    evaluate_command,
    evaluate_files,
    evaluate_records,
    load_runs,
    plot_reports,
    render_table,
    to_markdown,
)
from dynamicrag.schema import Selection, to_record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
NDCG_RANK2 = 1 / math.log2(3)  # one gold passage, found at rank 2


def passages(n=5, **labels):
    """``n`` passages; ``labels`` maps a field to the 1-based positions where it is True."""
    out = [{"id": str(i), "title": f"T{i}", "text": f"text {i}"} for i in range(1, n + 1)]
    for field, positions in labels.items():
        for i, p in enumerate(out, start=1):
            p[field] = i in positions
    return out


def record(id, task, answers, answer, selected, ps, well_formed=True, error=None, **extra):
    return {
        **extra,
        "id": id,
        "question": f"question {id}",
        "answers": answers,
        "task": task,
        "passages": ps,
        "selected": selected,
        "reranker_output": ", ".join(f"[{i}]" for i in selected) or "None",
        "well_formed": well_formed,
        "answer": answer,
        "error": error,
    }


@pytest.fixture
def records():
    gold2 = dict(isgold={2})
    return [
        # NQ: gold passage 2. Right answer, chose [1], [2] (gold second).
        record("nq1", "nq", ["Paris"], "Paris", [1, 2], passages(**gold2)),
        # NQ: the reranker said None, the generator guessed wrong.
        record("nq2", "nq", ["Paris"], "London", [], passages(**gold2)),
        # NQ: the backend failed; the record must count as wrong, not vanish.
        record("nq3", "nq", ["Paris"], None, [], passages(**gold2), well_formed=None, error="backend timeout"),
        # NQ: malformed reranker output read as [3]; answer contains the gold (match, not em).
        record("nq4", "nq", ["Paris"], "It is Paris.", [3], passages(**gold2), well_formed=False),
        # FEVER: answers are labels; no passage labels, so no reranker metric.
        record("fv1", "fever", ["SUPPORTS"], "Supports.", [1], passages(3)),
        # HotpotQA: supporting paragraphs 1 and 3, both chosen.
        record("hp1", "hotpotqa", ["yes"], "yes", [3, 1], passages(supporting={1, 3})),
    ]


def test_one_group_counts_failed_records_as_wrong(records):
    nq = [r for r in records if r["task"] == "nq"]
    summary = evaluate_records(nq)
    assert list(summary["groups"]) == ["all"]
    group = summary["groups"]["all"]
    assert (group["n"], group["failed"]) == (4, 1)
    # The failed record scores 0: em 1/4, match 2/4 (nq1, nq4), f1 (1 + 0 + 0 + 0.5) / 4.
    assert group["answer"] == pytest.approx({"em": 0.25, "match": 0.5, "f1": 0.375})
    assert summary["main_metric"] == "match" and summary["main_score"] == pytest.approx(0.5)
    sel = group["selection"]
    assert sel["mean_k"] == pytest.approx(1.0)  # k = 2, 0, 1 over the three without error
    assert sel["k_distribution"] == {0: 1, 1: 1, 2: 1}
    assert (sel["none"], sel["malformed"], sel["failed"]) == (0.25, 0.25, 0.25)
    rerank = group["rerank"]
    assert rerank["scored"] == 4  # the failed record scores as choosing nothing
    assert rerank["f1"] == pytest.approx((2 / 3) / 4)
    assert rerank["recall@5"] == pytest.approx(0.25)
    assert rerank["ndcg@10"] == pytest.approx(NDCG_RANK2 / 4)
    assert group["gold_source"] == {"isgold": 4}
    assert summary["top_n"] == 5


def test_mixed_tasks_average_each_metric_over_its_own_tasks(records):
    group = evaluate_records(records)["groups"]["all"]
    assert group["n"] == 6 and group["failed"] == 1
    assert group["answer"]["em"] == pytest.approx(2 / 5)  # nq1 and hp1 of the five QA records
    assert group["answer"]["accuracy"] == 1.0
    assert group["answer_counts"] == {"em": 5, "match": 5, "f1": 5, "accuracy": 1}
    assert group["selection"]["mean_k"] == pytest.approx(6 / 5)
    assert group["selection"]["none"] == pytest.approx(1 / 6)
    # FEVER labels say nothing about passages: left out of the reranker metrics.
    assert group["rerank"]["scored"] == 5
    assert group["gold_source"] == {"isgold": 4, "none": 1, "supporting": 1}


def test_group_by_task(records):
    summary = evaluate_records(records, by="task")
    groups = summary["groups"]
    assert list(groups) == ["fever", "hotpotqa", "nq"]
    assert {k: (g["n"], g["failed"]) for k, g in groups.items()} == {"fever": (1, 0), "hotpotqa": (1, 0), "nq": (4, 1)}
    assert groups["fever"]["answer"] == {"accuracy": 1.0}
    assert groups["fever"]["rerank"] is None
    assert groups["hotpotqa"]["rerank"]["f1"] == 1.0
    assert groups["hotpotqa"]["rerank"]["ndcg@10"] == pytest.approx(1.0)
    assert groups["nq"]["answer"]["match"] == 0.5
    # The run's headline: match for QA, accuracy for FEVER, per record: (1 + 0 + 0 + 1 + 1 + 1) / 6.
    assert summary["main_metric"] == "accuracy/match" and summary["main_score"] == pytest.approx(4 / 6)


def test_records_without_the_group_field_are_kept(records):
    records[0]["split"] = "dev"
    groups = evaluate_records(records, by="split")["groups"]
    assert {k: g["n"] for k, g in groups.items()} == {"(missing)": 5, "dev": 1}


def test_no_records_is_an_error():
    with pytest.raises(ValueError, match="no records"):
        evaluate_records([])


def _markdown_rows(markdown):
    lines = [line.strip("|").split("|") for line in markdown.strip().splitlines()]
    header = [c.strip() for c in lines[0]]
    return header, [dict(zip(header, (c.strip() for c in line))) for line in lines[2:]]


def test_markdown_has_one_row_per_group_with_its_values(records):
    summary = {"run": evaluate_records(records, by="task")}
    header, rows = _markdown_rows(to_markdown(summary))
    assert header[:4] == ["run", "group", "n", "failed"]
    assert header[-6:] == ["mean k", "None %", "malformed %", "selection F1", "recall@5", "NDCG@10"]
    assert {"em", "match", "f1", "accuracy"} <= set(header)
    assert [r["group"] for r in rows] == ["fever", "hotpotqa", "nq"]
    nq = rows[2]
    assert (nq["run"], nq["n"], nq["failed"]) == ("run", "4", "1")
    assert (nq["em"], nq["match"], nq["f1"], nq["accuracy"]) == ("0.250", "0.500", "0.375", "-")
    assert (nq["mean k"], nq["None %"], nq["malformed %"]) == ("1.00", "25.0", "25.0")
    assert (nq["selection F1"], nq["recall@5"], nq["NDCG@10"]) == ("0.167", "0.250", f"{NDCG_RANK2 / 4:.3f}")
    fever = rows[0]
    assert (fever["accuracy"], fever["em"], fever["selection F1"]) == ("1.000", "-", "-")


def test_rich_table_matches_markdown(records):
    summary = {"a": evaluate_records(records), "b": evaluate_records(records, by="task")}
    table = render_table(summary)
    header, rows = _markdown_rows(to_markdown(summary))
    assert [c.header for c in table.columns] == header
    assert table.row_count == len(rows) == 4
    assert list(table.columns[1].cells) == ["all", "fever", "hotpotqa", "nq"]


def write_run(path, records):
    with ResumableJsonlWriter(path) as writer:
        for r in records:
            writer.write(r)
    return path


def test_evaluate_files_reads_writer_output_of_real_examples(tmp_path, shared_data):
    """Records built by to_record from real HotpotQA examples, written by the resumable writer."""
    examples = load_examples(shared_data / "hotpotqa" / "hotpotqa_train.json", limit=6)
    runs = {}
    for top_n in (5, 10):
        out = []
        for i, ex in enumerate(examples):
            ex = ex.model_copy(update={"passages": ex.passages[:top_n], "extra": {**ex.extra, "reranker": "dynamic"}})
            gold = [j for j, p in enumerate(ex.passages, 1) if p.extra.get("supporting")]
            if i == 0:  # a failed call
                out.append(to_record(ex, Selection(raw="", error="parse error"), None, error="parse error"))
            else:
                out.append(to_record(ex, Selection(ids=gold, raw="x", calls=1), ex.answers[0]))
        runs[top_n] = write_run(tmp_path / f"top{top_n}" / "infer.jsonl", out)

    summary = evaluate_files([runs[5], runs[10]])
    assert list(summary) == ["top5/infer", "top10/infer"]  # same stem: made unique by folder
    for name, top_n in (("top5/infer", 5), ("top10/infer", 10)):
        run = summary[name]
        assert (run["top_n"], run["reranker"], run["n"]) == (top_n, "dynamic", 6)
        group = run["groups"]["all"]
        assert group["failed"] == 1
        assert group["answer"]["em"] == pytest.approx(5 / 6)  # the gold answer, but one failed
        assert group["gold_source"] == {"supporting": 6}
    # With the top 10, every choice is exactly the supporting paragraphs.
    assert summary["top10/infer"]["groups"]["all"]["rerank"]["f1"] == pytest.approx(5 / 6)


def test_run_names_without_a_reranker_field_label_themselves(tmp_path, records):
    a = write_run(tmp_path / "a.jsonl", records)
    b = write_run(tmp_path / "b.jsonl", records[:2])
    summary = evaluate_files([a, b])
    assert {name: run["reranker"] for name, run in summary.items()} == {"a": "a", "b": "b"}
    assert summary["a"]["path"] == str(a)


def test_file_errors_name_the_file(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="empty.jsonl"):
        evaluate_files([empty])
    asqa = write_run(tmp_path / "asqa.jsonl", [record("q", "asqa", ["x"], "x", [], passages(2))])
    with pytest.raises(ValueError, match=r"asqa\.jsonl.*qa_pairs"):
        evaluate_files([asqa])


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 5_000, f"{path}: only {len(data)} bytes"


def test_evaluate_command_writes_report_and_plots(tmp_path, records):
    small = [dict(r, passages=r["passages"][:3], reranker="dynamic") for r in records]
    large = [dict(r, reranker="dynamic") for r in records]
    paths = [write_run(tmp_path / "runs" / "top3.jsonl", small), write_run(tmp_path / "runs" / "top5.jsonl", large)]
    out = tmp_path / "report"
    summary = evaluate_command(paths, "task", out)

    assert [summary[r]["top_n"] for r in ("top3", "top5")] == [3, 5]
    assert json.loads((out / "evaluation.json").read_text())["top5"]["groups"]["nq"]["failed"] == 1
    _, rows = _markdown_rows((out / "evaluation.md").read_text().split("\n\n")[1])
    assert [(r["run"], r["group"]) for r in rows] == [
        (run, task) for run in ("top3", "top5") for task in ("fever", "hotpotqa", "nq")
    ]
    for name in ("k_hist.png", "quality_by_k.png", "quality_vs_top_n.png"):
        assert_png(out / name)
        assert f"({name})" in (out / "evaluation.md").read_text()
    assert not list(out.glob("*.tmp"))  # atomic writes leave no temp files behind


def test_single_run_has_no_top_n_plot(tmp_path, records):
    runs = {"only": records}
    summary = {"only": evaluate_records(records)}
    written = plot_reports(summary, runs, tmp_path)
    assert [p.name for p in written] == ["k_hist.png", "quality_by_k.png"]
    for p in written:
        assert_png(p)


def test_load_runs_keeps_records_in_order(tmp_path, records):
    path = write_run(tmp_path / "x.jsonl", records)
    assert [r["id"] for r in load_runs([path])["x"]] == [r["id"] for r in records]
