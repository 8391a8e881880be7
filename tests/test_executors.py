"""Executors: batches in input order, one model build per worker, errors where they happened.

The CLI's Ray runs, compared with local ones record for record, are in tests/test_cli_ray.py.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dynamicrag.executors import InProcessExecutor, RayExecutor, batched, make_executor

TESTS = str(Path(__file__).resolve().parent)


def counting_factory(calls: list[int]):
    def factory():
        calls.append(1)
        return lambda batch: [x * 10 for x in batch]

    return factory


def test_in_process_yields_batches_in_order_and_builds_once():
    calls: list[int] = []
    out = list(InProcessExecutor().map_batches(counting_factory(calls), range(7), 3))
    assert out == [[0, 10, 20], [30, 40, 50], [60]]
    assert len(calls) == 1
    assert list(InProcessExecutor().map_batches(counting_factory(calls), [], 3)) == []
    assert len(calls) == 1  # an empty input (a finished run, resumed) loads no model


def test_batched_and_registry_errors():
    assert list(batched("abcde", 2)) == [["a", "b"], ["c", "d"], ["e"]]
    with pytest.raises(ValueError, match="batch_size must be a positive integer, got 0"):
        list(batched([1], 0))
    assert isinstance(make_executor("local"), InProcessExecutor)
    ray_executor = make_executor("ray", address=None, num_workers=3)
    assert isinstance(ray_executor, RayExecutor) and ray_executor.num_workers == 3
    with pytest.raises(ValueError, match=r"unknown executor 'spark'; choose from \['local', 'ray'\]"):
        make_executor("spark")
    with pytest.raises(TypeError, match="executor 'local'"):
        make_executor("local", num_workers=2)
    with pytest.raises(ValueError, match="num_workers must be a positive integer, got 0"):
        RayExecutor(num_workers=0)


# Factories the Ray workers unpickle by reference: they import this module, found through
# the PYTHONPATH given in the executor's runtime_env.
def slow_first_factory():
    def run(batch):
        if "bad" in batch:
            raise ValueError(f"cannot process {batch}")
        time.sleep(1.0 if batch[0] == 0 else 0.01)  # the first batch finishes last
        return [(x, os.getpid()) for x in batch]

    return run


def broken_factory():
    raise FileNotFoundError("no model at /nowhere")


@pytest.mark.slow
def test_ray_keeps_input_order_across_workers_and_raises_where_it_failed():
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    with RayExecutor(num_workers=2, runtime_env={"env_vars": {"PYTHONPATH": TESTS}}) as executor:
        out = []
        with pytest.raises(ValueError, match="cannot process"):  # the worker's own exception class
            for batch in executor.map_batches(slow_first_factory, [0, 1, 2, 3, 4, 5, "bad", 7], 1):
                out.append(batch)
        assert ray.is_initialized()  # started here, for this executor
        # Everything before the failure, in input order, though batch 0 finished last.
        assert [[x for x, _ in batch] for batch in out] == [[i] for i in range(6)]
        pids = {pid for batch in out for _, pid in batch}
        assert len(pids) == 2 and os.getpid() not in pids  # both workers took batches

        # A factory that fails on the workers fails the first batch, as it does in-process.
        for ex in (InProcessExecutor(), executor):
            with pytest.raises(FileNotFoundError, match="no model at /nowhere"):
                next(ex.map_batches(broken_factory, ["a"], 1))
    assert not ray.is_initialized()  # the executor that started Ray shut it down


def records_factory():
    return lambda batch: [{"id": item["id"], "double": item["n"] * 2} for item in batch]


def test_run_resumable_appends_only_the_items_not_yet_written_and_reports_progress(tmp_path):
    from dynamicrag.executors import run_resumable

    items = [{"id": f"i{n}", "n": n} for n in range(5)]
    out = tmp_path / "out.jsonl"
    assert run_resumable(items[:2], out, 2, records_factory) == 2
    progress: list[tuple[int, int]] = []
    assert run_resumable(items, out, 2, records_factory, on_progress=lambda *p: progress.append(p)) == 3
    assert progress == [(2, 5), (4, 5), (5, 5)]  # before the first batch, then after each
    assert [json.loads(line)["double"] for line in out.read_text().splitlines()] == [0, 2, 4, 6, 8]


def test_run_resumable_refuses_other_input_other_settings_and_unknown_settings(tmp_path):
    from dynamicrag.executors import ResumeError, run_resumable, settings_path

    items = [{"id": f"i{n}", "n": n} for n in range(3)]
    out = tmp_path / "out.jsonl"
    run_resumable(items[:2], out, 2, records_factory, settings={"model": "a", "k": [1, 2]})
    assert settings_path(out) == tmp_path / "out.jsonl.settings.json" and settings_path(out).exists()
    before = out.read_bytes()
    with pytest.raises(ResumeError, match=r"out.jsonl, line 1: record id 'i0', but input record 1 of this run is 'i1'"):
        run_resumable(items[1:], out, 2, records_factory, settings={"model": "a", "k": [1, 2]})
    with pytest.raises(ResumeError, match=r"2 records written with other settings \(k: \[1, 2\] -> \[1, 3\]; model: a -> b\)"):
        run_resumable(items, out, 2, records_factory, settings={"model": "b", "k": (1, 3)})
    assert run_resumable(items, out, 2, records_factory, settings={"k": (1, 2), "model": "a"}) == 1  # tuples = lists
    settings_path(out).unlink()  # a file from before settings were kept
    with pytest.raises(ResumeError, match="3 records written without out.jsonl.settings.json, so their settings are unknown"):
        run_resumable(items, out, 2, records_factory, settings={"model": "a", "k": [1, 2]})
    assert out.read_bytes().startswith(before)


def test_resuming_compares_the_settings_that_decide_records_and_records_the_rest(tmp_path, caplog):
    """One settings file per output: model, dtype or a section's values must match; the
    version, command line, date, threads and a backend's speed options may change."""
    from dynamicrag.executors import ResumeError, run_resumable, settings_path
    from dynamicrag.run_settings import run_settings

    items = [{"id": f"i{n}", "n": n} for n in range(4)]
    out = tmp_path / "out.jsonl"
    backend = {"name": "transformers", "model": "m", "dtype": "float32", "batch_size": 8, "threads": 2,
               "prefix_cache": True, "torch": "2.0"}

    def settings(command, **backend_changes):
        return run_settings(backends={"generator": {**backend, **backend_changes}}, command=command,
                            run={"batch_size": 2}, generator={"max_new_tokens": 8})

    run_resumable(items[:2], out, 2, records_factory, settings=settings(["first"]))
    # Other threads, batch size, caches, library version and command line: resumed, and recorded.
    faster = settings(["second"], batch_size=1, threads=1, prefix_cache=False, torch="2.1")
    assert run_resumable(items[:3], out, 2, records_factory, settings=faster) == 1
    assert "batch_size: 8 -> 1" in caplog.text and "command" not in caplog.text
    stored = json.loads(settings_path(out).read_text())
    assert stored["command"] == ["second"] and stored["backends"]["generator"]["threads"] == 1
    before = out.read_bytes()
    # Another dtype or decoding setting decides the records: refused, whatever the command line.
    with pytest.raises(ResumeError, match=r"other settings \(backends\.generator\.dtype: float32 -> bfloat16\)"):
        run_resumable(items, out, 2, records_factory, settings=settings(["first"], dtype="bfloat16"))
    with pytest.raises(ResumeError, match=r"generator\.max_new_tokens: 8 -> 16"):
        run_resumable(items, out, 2, records_factory, settings={**settings(["first"]), "generator": {"max_new_tokens": 16}})
    assert out.read_bytes() == before
    # Settings given as a callable are built only when there is work left (they may load a model).
    built = []
    assert run_resumable(items[:3], out, 2, records_factory, settings=lambda: built.append(1)) == 0 and built == []


def test_a_benchmark_run_whose_settings_file_predates_the_output_named_file_resumes(tmp_path):
    """Benchmark runs kept ``NAME.settings.json`` before the one settings file per output:
    it is read when resuming them, and the new file is written beside it."""
    from dynamicrag.executors import ResumeError, run_resumable, settings_path

    items = [{"id": f"i{n}", "n": n} for n in range(3)]
    out = tmp_path / "top-3.jsonl"
    run_resumable(items[:2], out, 2, records_factory, settings={"k": 3})
    settings_path(out).rename(tmp_path / "top-3.settings.json")
    with pytest.raises(ResumeError, match=r"k: 3 -> 4"):
        run_resumable(items, out, 2, records_factory, settings={"k": 4})
    assert run_resumable(items, out, 2, records_factory, settings={"k": 3}) == 1
    assert json.loads(settings_path(out).read_text()) == {"k": 3}
