"""Ceiling rows (gold, oracle-k, oracle-single) and the answer cache, on a scripted backend
whose answers are the titles of the passages it is shown (``"in Paris now|in Rome now"``, or
``"no passages"``), so every oracle below is worked out by hand. (The words around the city
keep it a whole token once ``|`` is dropped by the answer normalisation.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dynamicrag.evaluate.benchmark import BenchmarkConfig, run_benchmark
from fakes import ScriptedBackend

# Passages about Paris, Rome, Oslo (in retrieval order); per question: the gold answer, gold flags.
CITIES = ["Paris", "Rome", "Oslo"]
QUESTIONS = [
    ("Rome", [False, True, False]),       # k=2 needed; single [2]; gold [2]
    ("Paris", [True, False, False]),      # k=1; single [1]; gold [1]
    ("passages", [False, False, False]),  # answered with no passage ("no passages"): k=0; no single
    ("Zurich", [False, False, True]),     # nothing answers it
]
ROWS = [
    {"name": "none", "kind": "none"},
    {"name": "top-1", "kind": "topk", "k": 1},
    {"name": "top-2", "kind": "topk", "k": 2},
    {"name": "oracle-k", "kind": "oracle-k"},
    {"name": "oracle-single", "kind": "oracle-single"},
    {"name": "gold", "kind": "gold"},
]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    rows = [
        {"id": f"q{i}", "question": f"question {i}", "answers": [answer],
         "ctxs": [{"title": f"in {c} now", "text": f"about {c}", "isgold": g} for c, g in zip(CITIES, gold)]}
        for i, (answer, gold) in enumerate(QUESTIONS)
    ]
    (tmp_path / "qa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return tmp_path


def config(rows=ROWS, **overrides) -> BenchmarkConfig:
    return BenchmarkConfig(**{
        "batch_size": 2, "answer_max_tokens": 8,
        "benchmarks": [{"name": "qa", "file": "qa.jsonl", "task": "nq", "top_n": 3}],
        "rerankers": rows, **overrides,
    })


def two_benchmarks() -> BenchmarkConfig:
    """qa (3 passages) and qa2 (2 passages, 2 questions); gold-own is limited to qa."""
    rows = [{"name": "top-1", "kind": "topk", "k": 1},
            {"name": "gold-own", "kind": "gold", "own_passages": True, "benchmarks": ["qa"]}]
    return config(rows=rows, benchmarks=[
        {"name": "qa", "file": "qa.jsonl", "task": "nq", "top_n": 3},
        {"name": "qa2", "file": "qa.jsonl", "task": "nq", "top_n": 2, "limit": 2},
    ])


def records(out: Path, row: str) -> list[dict]:
    return [json.loads(line) for line in (out / "runs" / "qa" / f"{row}.jsonl").read_text().splitlines()]


def test_oracle_and_gold_rows_match_the_hand_computed_ceilings(data):
    out = data / "out"
    backend = ScriptedBackend()
    comparison = run_benchmark(config(), data, out, backend=backend)
    score = {run.split("/")[1]: s["main_score"] for run, s in comparison["runs"].items()}
    assert score == {"none": 0.25, "top-1": 0.25, "top-2": 0.5, "oracle-k": 0.75, "oracle-single": 0.5, "gold": 0.75}

    oracle_k = records(out, "oracle-k")
    assert [r["selected"] for r in oracle_k] == [[1, 2], [1], [], []]  # q3: nothing answers, first best k=0
    assert [r["answer"] for r in oracle_k] == ["in Paris now|in Rome now", "in Paris now", "no passages", "no passages"]
    assert oracle_k[3]["oracle"]["candidates"] == [[], [1], [1, 2], [1, 2, 3]]  # all asked
    assert oracle_k[3]["oracle"]["scores"] == [0.0, 0.0, 0.0, 0.0]
    assert oracle_k[0]["oracle"]["candidates"] == [[], [1], [1, 2]]  # stopped at the first answer
    ceilings = comparison["ceilings"]
    assert ceilings["qa/oracle-k"] == {"n": 4, "score": 0.75, "answered": 3, "unanswerable": 1,
                                       "k_needed": {0: 1, 1: 1, 2: 1}}
    single = records(out, "oracle-single")
    assert [r["selected"] for r in single] == [[2], [1], [1], [1]]
    assert [r["oracle"]["no_passage"]["score"] for r in single] == [0.0, 0.0, 1.0, 0.0]
    assert ceilings["qa/oracle-single"] == {"n": 4, "score": 0.5, "answered": 2, "unanswerable": 2,
                                            "k_needed": {1: 2}, "or_no_passage": 0.75}
    assert [r["selected"] for r in records(out, "gold")] == [[2], [1], [], [3]]

    # Generator calls: the plain rows ask 4 each; the ceilings reuse what they asked.
    #  oracle-k: q0 k=0,1,2 / q1 k=0,1 / q2 k=0 reused; q3 k=0,1,2 reused, k=3 asked
    #  oracle-single: no-passage answers reused; q0 [1] reused, [2] asked; q1 [1] reused;
    #  q2 and q3 [1] reused, [2] and [3] asked; gold: every prompt asked by a row before
    assert comparison["generator"] == {
        "qa/none": {"calls": 4, "reused": 0}, "qa/top-1": {"calls": 4, "reused": 0},
        "qa/top-2": {"calls": 4, "reused": 0}, "qa/oracle-k": {"calls": 1, "reused": 9},
        "qa/oracle-single": {"calls": 5, "reused": 8}, "qa/gold": {"calls": 0, "reused": 4},
    }
    assert len(backend.calls) == 18  # every distinct prompt once
    assert comparison["best_fixed_k"] == {"qa": "qa/top-2"}
    table = (out / "comparison.md").read_text()
    assert "| qa/oracle-k | 0.750 | 3 | 1 | 0: 1, 1: 1, 2: 1 | - |" in table
    assert "| qa/oracle-single | 0.500 | 2 | 2 | 1: 2 | 0.750 |" in table
    assert "| qa/oracle-single | oracle-single | 5 | 8 |" in table


def test_a_rerun_asks_nothing_and_a_lost_run_file_is_rebuilt_from_the_cache(data):
    out = data / "out"
    run_benchmark(config(), data, out, backend=ScriptedBackend())
    again = ScriptedBackend()
    table = (out / "comparison.md").read_text()
    run_benchmark(config(), data, out, backend=again)
    assert again.calls == []  # every run file complete: nothing asked
    assert (out / "comparison.md").read_text() == table  # the costs of the first run are kept
    before = (out / "runs" / "qa" / "oracle-k.jsonl").read_bytes()
    (out / "runs" / "qa" / "oracle-k.jsonl").unlink()
    (out / "runs" / "qa" / "top-2.jsonl").unlink()
    rebuilt = ScriptedBackend()
    comparison = run_benchmark(config(), data, out, backend=rebuilt)
    assert rebuilt.calls == []  # every prompt in the answer cache
    assert comparison["generator"]["qa/oracle-k"] == {"calls": 0, "reused": 10}
    rebuilt_records = [json.loads(line) for line in (out / "runs" / "qa" / "oracle-k.jsonl").read_text().splitlines()]
    old_records = [json.loads(line) for line in before.decode().splitlines()]
    strip = lambda r: {k: v for k, v in r.items() if not k.startswith("generator_")}  # noqa: E731
    assert [strip(r) for r in rebuilt_records] == [strip(r) for r in old_records]


def test_other_generator_settings_never_reuse_cached_answers(data):
    out = data / "out"
    run_benchmark(config(rows=ROWS[:3]), data, out, backend=ScriptedBackend())
    for row in ("none", "top-1", "top-2"):  # keep the cache, drop the runs
        (out / "runs" / "qa" / f"{row}.jsonl").unlink()
    backend = ScriptedBackend()
    comparison = run_benchmark(config(rows=ROWS[:3], answer_max_tokens=16), data, out, backend=backend)
    assert len(backend.calls) == 12  # another answer cap: every prompt asked again
    assert all(c == {"calls": 4, "reused": 0} for c in comparison["generator"].values())


def test_a_run_file_of_another_generator_setting_is_not_resumed(data):
    out = data / "out"
    run_benchmark(config(rows=ROWS[:2]), data, out, backend=ScriptedBackend())
    with pytest.raises(ValueError, match=r"none\.jsonl: 4 records written with other settings \(generator\.generation\.overrides\.max_new_tokens: 8 -> 16;.*generator\.max_new_tokens: 8 -> 16\)"):
        run_benchmark(config(rows=ROWS[:2], answer_max_tokens=16), data, out, backend=ScriptedBackend())


def test_rows_can_be_limited_to_some_benchmarks_and_read_own_passages(data):
    cfg = two_benchmarks()
    comparison = run_benchmark(cfg, data, data / "out", backend=ScriptedBackend())
    assert set(comparison["runs"]) == {"qa/top-1", "qa/gold-own", "qa2/top-1"}


def test_a_benchmark_run_in_parts_runs_and_compares_the_part_asked_for(data):
    cfg = two_benchmarks()
    out = data / "out"
    comparison = run_benchmark(cfg.with_overrides(only=["qa2"]), data, out, backend=ScriptedBackend())
    assert set(comparison["runs"]) == {"qa2/top-1"}  # gold-own, limited to qa, is dropped
    assert not (out / "runs" / "qa").exists()
    assert "qa2/top-1" in (out / "comparison.md").read_text()
    with pytest.raises(ValueError, match=r"benchmarks \['hotpotqa'\] are not in the config \(\['qa', 'qa2'\]\)"):
        cfg.with_overrides(only=["hotpotqa"])


def test_every_row_is_compared_with_the_best_fixed_k_question_by_question(data):
    rows = [*ROWS[:3], {"name": "top-2-again", "kind": "topk", "k": 2}, ROWS[3]]
    out = data / "out"
    comparison = run_benchmark(config(rows=rows), data, out, backend=ScriptedBackend())
    assert comparison["best_fixed_k"] == {"qa": "qa/top-2"}  # the first of the equal top-2 rows
    paired = comparison["paired"]["qa"]
    assert paired["baseline"] == "qa/top-2" and set(paired["runs"]) == {"qa/none", "qa/top-1", "qa/top-2-again", "qa/oracle-k"}
    stats = {run: r["metrics"]["main"] for run, r in paired["runs"].items()}
    # Per question (q0..q3), match of top-2: 1 1 0 0; none: 0 0 1 0; top-1: 0 1 0 0; oracle-k: 1 1 1 0.
    assert stats["qa/top-2-again"]["diff"] == 0 and stats["qa/top-2-again"]["ci"] == [0.0, 0.0]
    assert (stats["qa/none"]["diff"], stats["qa/none"]["wins"], stats["qa/none"]["losses"]) == (-0.25, 1, 2)
    assert (stats["qa/top-1"]["diff"], stats["qa/top-1"]["wins"], stats["qa/top-1"]["losses"]) == (-0.25, 0, 1)
    assert (stats["qa/oracle-k"]["diff"], stats["qa/oracle-k"]["wins"], stats["qa/oracle-k"]["losses"]) == (0.25, 1, 0)
    assert all(s["ci"][0] <= s["diff"] <= s["ci"][1] and s["test"] == "mcnemar_exact" for s in stats.values())
    assert stats["qa/none"]["p"] == 1.0  # exact McNemar: 1 win, 2 losses

    table = (out / "comparison.md").read_text()
    header = table.splitlines()[0]
    assert header.endswith("| Δ vs best fixed k [95 % CI] | p | p Holm |")
    row = {line.split(" | ")[0].strip("| "): line for line in table.split("\n###")[0].splitlines()}
    assert row["qa/top-2-again"].endswith("| +0.000 [+0.000, +0.000] | 1.000 | 1.000 |")
    assert row["qa/top-2"].endswith("| (baseline) | - | - |")
    assert "| -0.250 [" in row["qa/none"] and "| +0.250 [" in row["qa/oracle-k"]
    assert "best fixed-k run (`qa/top-2`)" in table and "`paired_comparison_qa.png`" in table
    assert json.loads((out / "comparison.json").read_text())["paired"]["qa"]["runs"]["qa/none"]["metrics"]["main"]["diff"] == -0.25
    assert (out / "paired_comparison_qa.png").stat().st_size > 5000
    assert str(out / "paired_comparison_qa.png") in comparison["plots"]
