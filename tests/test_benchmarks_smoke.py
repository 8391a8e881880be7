"""The benchmark helpers that decide what a figure means (benchmarks/_common.py), untimed.

The scripts themselves are smoke-run by hand (``--quick``); these checks pin the pieces whose
mistakes would silently change published numbers: the replay of the reranker's reduction, the
per-child memory measurement, and the quick/full separation of result files.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest

from dynamicrag.prompts import load_style
from dynamicrag.rerank import DynamicReranker
from dynamicrag.schema import Example, Passage
from fakes import ScriptedBackend

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import _common  # noqa: E402


def example(n: int, gold: dict[int, int]) -> Example:
    """n passages; the one at 1-based position p holds GOLD-r (the scripted reranker keeps it, rank r)."""
    passages = [Passage(id=f"p{p}", title=f"doc-{p}", text=f"GOLD-{gold[p]} evidence" if p in gold else "filler")
                for p in range(1, n + 1)]
    return Example(id="q", question="which passages?", passages=passages)


@pytest.mark.parametrize(
    ("n", "window", "gold", "rounds", "final"),
    [
        (10, 40, {3: 1}, [], 10),  # one window: no reduction, one call over all 10
        (100, 40, {5: 1, 50: 2, 99: 3}, [{"chunks": 3, "survivors": 3}], 3),
        (30, 4, {p: p for p in range(1, 31, 3)}, [{"chunks": 8, "survivors": 10}, {"chunks": 3, "survivors": 4}], 4),
        (50, 40, {}, [{"chunks": 2, "survivors": 0}], 0),  # nothing survives: no final call
    ],
)
def test_reduction_trace_replays_the_rerankers_calls(n, window, gold, rounds, final):
    backend = ScriptedBackend()
    style = load_style("default")
    sel = DynamicReranker(backend, style, window=window).select([example(n, gold)])[0]
    trace = _common.reduction_trace(sel, n, window, style)
    assert trace == {"rounds": rounds, "final_window": final}
    assert sum(r["chunks"] for r in rounds) + (1 if final else 0) == len(backend.calls)


def test_reduction_trace_refuses_raw_text_that_does_not_split_into_the_calls():
    style = load_style("default")
    sel = DynamicReranker(ScriptedBackend(), style, window=4).select([example(8, {1: 1})])[0]
    sel.raw = sel.raw.replace(" || ", " ")  # as if the outputs could not be told apart
    assert _common.reduction_trace(sel, 8, 4, style) is None


def test_run_child_reports_each_childs_own_peak_memory():
    big = _common.run_child([sys.executable, "-S", "-c", "x = b'x' * (300 * 2**20)"])
    small = _common.run_child([sys.executable, "-S", "-c", "pass"])
    assert big.returncode == small.returncode == 0
    assert big.peak_rss_mb > 300
    assert small.peak_rss_mb < 150  # not the maximum over all children so far


def test_quick_replaces_defaults_but_explicit_flags_win(monkeypatch):
    def parse(*argv: str) -> argparse.Namespace:
        ap = argparse.ArgumentParser()
        ap.add_argument("--questions", type=int, default=100)
        ap.add_argument("--sizes", default="20,40,100")
        monkeypatch.setattr(sys, "argv", ["bench.py", *argv])
        return _common.parse_args(ap, {"questions": 2, "sizes": "4,8"})

    assert (parse().questions, parse().sizes, parse().quick) == (100, "20,40,100", False)
    assert (parse("--quick").questions, parse("--quick").sizes) == (2, "4,8")
    assert parse("--quick", "--questions", "5").questions == 5


def test_quick_results_never_overwrite_full_ones(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    full = _common.write_result("bench", {"mean": float("nan")}, argparse.Namespace(json=None, quick=False))
    quick = _common.write_result("bench", {"mean": 1.0}, argparse.Namespace(json=None, quick=True))
    assert (full.name, quick.name) == ("bench.json", "bench.quick.json")
    record = json.loads(full.read_text())
    assert record["quick"] is False and record["mean"] is None  # strict JSON: NaN as null
    assert json.loads(quick.read_text())["quick"] is True


def test_finished_row_share_counts_the_steps_of_rows_already_done():
    calls = [_common.Call(chats=2, prompt_tokens=[9, 9], completion_tokens=[10, 2], seconds=1.0),
             _common.Call(chats=1, prompt_tokens=[9], completion_tokens=[5], seconds=1.0)]
    # 2 x 10 + 1 x 5 = 25 steps computed, 17 needed: 8 spent on the row that stopped at 2.
    assert _common.finished_row_share(calls) == pytest.approx(8 / 25)
    assert _common.finished_row_share([]) is None
    # A backend that dropped finished rows counts what it ran: 20 row-steps for the 17 kept.
    assert _common.finished_row_share(calls, decoded_row_steps=20) == pytest.approx(3 / 20)


def test_issue18_checks_compare_the_default_backend_with_the_old_one():
    import throughput

    rows = {name: {"seconds_per_question": s} for name, s in
            [("transformers-b1", 4.0), ("transformers-b8", 2.5), ("transformers-fp32-b1", 7.0), ("transformers-fp32-b8", 8.0)]}
    checks = throughput.issue18_checks(rows)
    assert checks["s_per_question"] == 2.5 and checks["s_per_question_met"]
    assert checks["batch_speedup"] == pytest.approx(1.6) and checks["batch_speedup_met"]
    assert checks["batch_speedup_old"] == pytest.approx(7 / 8)
    rows["transformers-b8"]["seconds_per_question"] = 3.5  # slower than the target, and < 1.3x b1
    checks = throughput.issue18_checks(rows)
    assert not checks["s_per_question_met"] and not checks["batch_speedup_met"]
    assert "NOT met" in checks["lines"][0] and "old backend: 8.00" in checks["lines"][0]
    assert not throughput.issue18_checks({})["s_per_question_met"]  # nothing measured: not met


def test_paired_ci_of_the_match_difference():
    import dtype_quality

    assert dtype_quality.paired_ci([1, 0, 1], [1, 0, 1]) == (0.0, 0.0, 0.0)
    a = [1.0] * 50 + [0.0] * 50
    b = [1.0] * 50 + [1.0] * 10 + [0.0] * 40  # 10 more right answers of 100
    diff, low, high = dtype_quality.paired_ci(a, b)
    assert diff == pytest.approx(0.10) and 0 < low < 0.10 < high < 0.2
