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
