"""Paired comparisons and per-question diffs, checked against cases computed by hand."""

import json
import math
import random

import pytest

from dynamicrag.evaluate.compare import (
    compare_runs,
    comparison_markdown,
    default_metrics,
    diff_markdown,
    diff_runs,
    holm,
    paired_stats,
    per_question,
    write_comparison,
    write_diff,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(id, answer, answers=("Paris",), task="nq", selected=(1,), error=None, titles=("Paris", "London", "Rome")):
    passages = [{"id": f"doc-{t.lower()}", "title": t, "text": f"About {t}."} for t in titles]
    return {
        "id": id, "question": f"where is {id}?", "answers": list(answers), "task": task, "passages": passages,
        "selected": list(selected), "reranker_output": "x", "well_formed": True,
        "answer": answer if error is None else None, "error": error,
    }


def run_from(correct, prefix="q"):
    """Records whose match is the 0/1 in ``correct``, question ``q{i}`` for position i."""
    return [rec(f"{prefix}{i}", "It is Paris." if ok else "London.") for i, ok in enumerate(correct)]


def test_per_question_scores_by_id_and_failed_records_score_zero():
    records = [rec("a", "Paris"), rec("b", "London"), rec("c", "Paris", error="backend timeout")]
    assert per_question(records, "match") == {"a": 1.0, "b": 0.0, "c": 0.0}
    assert per_question(records, "main") == {"a": 1.0, "b": 0.0, "c": 0.0}  # nq's headline: match
    with pytest.raises(ValueError, match="unknown metric 'bleu'"):
        per_question(records, "bleu")


@pytest.mark.parametrize("metric", ["match", "f1"])
def test_identical_runs_give_a_zero_interval_and_p_one(metric):
    random.seed(0)
    records = [rec(f"q{i}", random.choice(["Paris", "Paris, France", "London", "in Paris or Rome"])) for i in range(40)]
    result = compare_runs(records, {"copy": [dict(r) for r in records]}, [metric])
    s = result["runs"]["copy"]["metrics"][metric]
    assert s["ci"] == [0.0, 0.0] and s["diff"] == 0.0
    assert s["p"] == 1.0 and s["p_holm"] == 1.0
    assert (s["wins"], s["ties"], s["losses"], s["n"]) == (0, 40, 0, 40)
    assert s["test"] == ("mcnemar_exact" if metric == "match" else "permutation")


def test_mcnemar_matches_the_hand_computation():
    # 20 questions: 8 both right, 5 both wrong, 1 only the run right (b), 6 only the baseline right (c).
    base = [1] * 8 + [0] * 5 + [0] + [1] * 6
    run = [1] * 8 + [0] * 5 + [1] + [0] * 6
    # Exact McNemar: under H0 the b = 1 of the 7 discordant pairs is Binomial(7, 1/2);
    # two-sided p = 2 * P(X <= 1) = 2 * (C(7,0) + C(7,1)) / 2^7 = 2 * 8 / 128 = 0.125.
    result = compare_runs(run_from(base), {"run": run_from(run)}, ["match"])
    s = result["runs"]["run"]["metrics"]["match"]
    assert s["test"] == "mcnemar_exact"
    assert s["p"] == pytest.approx(0.125)
    assert (s["wins"], s["ties"], s["losses"]) == (1, 13, 6)
    assert (s["baseline"], s["run"], s["diff"]) == pytest.approx((14 / 20, 9 / 20, -5 / 20))
    assert s["ci"][0] < s["diff"] < s["ci"][1]


def test_a_run_better_on_every_question_has_an_interval_above_zero():
    base = [0.1 * (i % 5) for i in range(10)]
    run = [b + 0.05 + 0.01 * i for i, b in enumerate(base)]
    s = paired_stats(base, run)
    assert s["ci"][0] > 0 and s["ci"][1] > s["ci"][0]
    assert s["test"] == "permutation" and s["wins"] == 10
    # 10 questions: scipy enumerates all 2^10 sign flips; only "no flip" and "flip all" reach
    # the observed |mean|, so the exact two-sided p is 2 / 1024.
    assert s["p"] == pytest.approx(2 / 1024)
    # 0/1 scores, right on every question the baseline missed: every difference is 1.
    s01 = paired_stats([0] * 12, [1] * 12)
    assert s01["ci"] == [1.0, 1.0] and s01["ci_method"] == "constant"
    assert s01["p"] == pytest.approx(2 * 0.5**12)  # McNemar, 12 discordant pairs all one way


def test_bootstrap_is_seeded_and_uses_the_resamples_given():
    random.seed(1)
    base = [random.random() for _ in range(30)]
    run = [min(1.0, b + random.uniform(-0.2, 0.3)) for b in base]
    first, again = paired_stats(base, run, seed=3), paired_stats(base, run, seed=3)
    assert first == again
    other = paired_stats(base, run, seed=4)
    assert other["ci"] != first["ci"]  # the seed decides the resamples
    assert other["ci"] == pytest.approx(first["ci"], abs=0.03)  # but 2000 of them agree closely


def test_questions_are_matched_by_id_and_unmatched_ones_named():
    base = run_from([1, 0, 1, 0, 1])  # q0..q4
    run = list(reversed(run_from([1, 1, 1, 1, 1, 1])))  # q0..q5, in reverse order
    del run[-1]  # drop q0
    result = compare_runs(base, {"run": run}, ["match"])
    r = result["runs"]["run"]
    assert (r["only_in_baseline"], r["only_in_run"], r["n"]) == (["q0"], ["q5"], 4)
    s = r["metrics"]["match"]
    # q1..q4: baseline 0, 1, 0, 1; run all right -> two wins, two ties (position would pair q0 with q5).
    assert (s["wins"], s["ties"], s["losses"]) == (2, 2, 0)
    assert (s["baseline"], s["run"]) == (0.5, 1.0)
    text = comparison_markdown(result)
    assert "1 only in the baseline (`q0`)" in text and "1 only in the run (`q5`)" in text


def test_duplicate_ids_and_disjoint_runs_are_errors_naming_the_run():
    base = run_from([1, 0, 1])
    with pytest.raises(ValueError, match=r"run 'twice': question id 'q1' appears more than once"):
        compare_runs(base, {"twice": base + [base[1]]})
    with pytest.raises(ValueError, match=r"run 'other' shares no question id with the baseline 'base'"):
        compare_runs(base, {"other": run_from([1, 1], prefix="x")}, baseline_name="base")
    with pytest.raises(ValueError, match="record 2 has no 'id'"):
        compare_runs(base, {"anon": [base[0], {k: v for k, v in base[1].items() if k != "id"}]})


def test_holm_on_known_p_values():
    # sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03, 0.03 * 2 = 0.06, 0.04 * 1 = 0.04 -> kept at 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == []


def test_holm_is_applied_across_runs_per_metric():
    base = run_from([0] * 10 + [1] * 10)
    runs = {
        "much": run_from([1] * 10 + [1] * 10),
        "some": run_from([1] * 4 + [0] * 6 + [1] * 10),
        "none": run_from([0] * 10 + [1] * 10),
    }
    result = compare_runs(base, runs, ["match", "em"])
    for metric in ("match", "em"):
        ps = [result["runs"][n]["metrics"][metric]["p"] for n in runs]
        assert [result["runs"][n]["metrics"][metric]["p_holm"] for n in runs] == pytest.approx(holm(ps))
    match = {n: result["runs"][n]["metrics"]["match"] for n in runs}
    assert match["much"]["p"] == pytest.approx(2 * 0.5**10)
    assert match["much"]["p_holm"] == pytest.approx(3 * 2 * 0.5**10)  # the smallest of 3, times 3


def test_default_metrics_are_those_every_record_reports():
    assert default_metrics(run_from([1, 0])) == ["match", "em", "f1"]
    mixed = run_from([1]) + [rec("f", "Supports", answers=["SUPPORTS"], task="fever")]
    assert default_metrics(mixed) == ["main"]
    result = compare_runs(mixed, {"same": mixed})
    assert result["metrics"] == ["main"] and result["labels"] == {"main": "accuracy/match"}


def test_write_comparison_markdown_json_and_forest_plot(tmp_path):
    base = run_from([1, 0, 1, 0, 1, 0, 0, 1])
    runs = {"a": run_from([1, 1, 1, 0, 1, 1, 0, 1]), "b": run_from([0, 0, 1, 0, 1, 0, 0, 0])}
    result = compare_runs(base, runs, baseline_name="base")
    files = write_comparison(result, tmp_path)
    assert [f.name for f in files] == ["paired_comparison.json", "paired_comparison.md", "paired_comparison.png"]
    assert json.loads(files[0].read_text()) == json.loads(json.dumps(result))
    lines = [line for line in files[1].read_text().splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run", "metric", "baseline", "run mean", "diff", "95% CI", "p", "p Holm", "test", "W/T/L", "n"]
    rows = [dict(zip(header, (c.strip() for c in line.strip("|").split("|")))) for line in lines[2:]]
    assert [(r["run"], r["metric"]) for r in rows] == [(n, m) for n in ("a", "b") for m in ("match", "em", "f1")]
    a_match = rows[0]
    assert (a_match["baseline"], a_match["run mean"], a_match["diff"]) == ("0.500", "0.750", "+0.250")
    assert (a_match["W/T/L"], a_match["n"], a_match["test"]) == ("2/6/0", "8", "McNemar")
    # 2 discordant pairs, both wins: p = 2 * (1/2)^2 = 0.5
    assert a_match["p"] == "0.500"
    assert "![paired_comparison](paired_comparison.png)" in files[1].read_text()
    png = files[2].read_bytes()
    assert png[:8] == PNG_MAGIC and len(png) > 5_000


def test_diff_lists_both_directions_with_answers_and_selections(tmp_path):
    a = [
        rec("q1", "Paris", selected=(1,)),
        rec("q2", "London", selected=(2, 3)),
        rec("q3", "Paris", selected=()),
        rec("q4", None, error="backend timeout", selected=()),
        rec("only-a", "Paris"),
    ]
    b = [
        rec("q4", "Paris it is", selected=(1, 2)),
        rec("q3", "Paris", selected=(1,)),
        rec("q2", "Paris", selected=(1,)),
        rec("q1", "Rome", selected=(3,)),
        rec("only-b", "Paris"),
    ]
    diff = diff_runs(a, b, "match", a_name="old", b_name="new")
    assert diff["binary"] and diff["n"] == 4 and diff["ties"] == 1
    assert (diff["only_in_a"], diff["only_in_b"]) == (["only-a"], ["only-b"])
    assert [e["id"] for e in diff["a_better"]] == ["q1"]
    assert [e["id"] for e in diff["b_better"]] == ["q2", "q4"]  # in A's order
    q1 = diff["a_better"][0]
    assert (q1["a"]["answer"], q1["b"]["answer"]) == ("Paris", "Rome")
    assert q1["a"]["selected"] == [{"position": 1, "id": "doc-paris", "title": "Paris"}]
    assert q1["b"]["selected"] == [{"position": 3, "id": "doc-rome", "title": "Rome"}]
    q4 = diff["b_better"][1]
    assert q4["a"]["error"] == "backend timeout" and q4["a"]["score"] == 0.0

    text = diff_markdown(diff)
    assert "4 questions in both: 1 right in old only, 2 right in new only, 1 the same." in text
    assert "## Right in old, wrong in new (1)" in text and "## Right in new, wrong in old (2)" in text
    assert "- **old** (match 1): Paris\n  - selected: [1] Paris (`doc-paris`)" in text
    assert "- **new** (match 0): Rome\n  - selected: [3] Rome (`doc-rome`)" in text
    assert "- **old** (match 0): *failed: backend timeout*\n  - selected: None" in text
    assert "1 only in old (`only-a`)" in text
    json_path, md_path = write_diff(diff, tmp_path)
    assert json.loads(json_path.read_text())["b_better"][0]["id"] == "q2"
    assert md_path.read_text() == text


def test_diff_of_a_continuous_metric_says_higher_and_lower():
    a = [rec("q1", "Paris France"), rec("q2", "Paris")]
    b = [rec("q1", "Paris"), rec("q2", "Paris")]
    diff = diff_runs(a, b, "f1")
    assert not diff["binary"]
    assert [e["id"] for e in diff["b_better"]] == ["q1"] and diff["ties"] == 1
    assert math.isclose(diff["b_better"][0]["a"]["score"], 2 / 3)
    assert "## Higher in B, lower in A (1)" in diff_markdown(diff)
