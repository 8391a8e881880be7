"""Kill -9 and resume, for real: each long stage (infer, sample, label, reward) run through the
CLI in a subprocess, SIGKILLed once some records are on disk, run again with the same command;
the output must equal that of an uninterrupted run (same ids, same order, no duplicates, same
content; no record carries a timing field, so whole records are compared).

The LLM stages use the bundled SmolLM2 as an untrained reranker (``--reranker-adapter none``)
on three shared-data questions with short passages and 8-token caps; free decoding makes it
write prose instead of ids for some questions, so those runs also check that an unusable
output is written with its error and the stage goes on. The fast stages (label, reward) get
40-60 records so the kill lands mid-run.

Find them with ``pytest tests/test_kill_resume.py`` (one test per stage, ``-k infer`` etc.).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from dynamicrag.data import read_jsonl
from dynamicrag.schema import Example, Passage
from dynamicrag.train.sample import SampleConfig, sample_trajectories
from fakes import ScriptedBackend

# One torch thread per run: the reference run goes side by side with the killed one, and
# OpenMP threads spin badly when a 2-core machine is oversubscribed (8x slower here).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TIMEOUT = 1800  # seconds per run: a run takes seconds, but a starved CI machine may need minutes


def oracle_rows(shared_data: Path, n: int) -> list[dict]:
    with gzip.open(shared_data / "nq" / "nq-open-oracle.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(next(f)) for _ in range(n)]


def nq_questions(shared_data: Path, tmp: Path, n: int, without_passages: tuple[int, ...] = ()) -> Path:
    """``n`` NQ-open questions, each with three gold passages (its own and the next two), cut
    to 30 words so a CPU run stays short; the questions in ``without_passages`` get none."""
    rows = oracle_rows(shared_data, n + 2)
    out = []
    for i in range(n):
        ctxs = [{**rows[j]["ctxs"][0], "text": " ".join(rows[j]["ctxs"][0]["text"].split()[:30])} for j in (i, i + 1, i + 2)]
        out.append({"id": f"nq-{i}", "question": rows[i]["question"], "answers": rows[i]["answers"],
                    "ctxs": [] if i in without_passages else ctxs})
    path = tmp / "questions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out), encoding="utf-8")
    return path


def sampled_records(shared_data: Path, tmp: Path, n: int) -> Path:
    """Sampled trajectories (the input of ``reward``) for ``n`` NQ-open questions: a right
    answer, a wrong one, and an unusable reranker output with no answer."""
    rows = oracle_rows(shared_data, n)
    records = []
    for i, row in enumerate(rows):
        gold = row["ctxs"][0]
        passages = [{"id": f"g{i}", "title": gold["title"], "text": gold["text"], "extra": {}}]
        records.append({
            "id": f"nq-{i}", "question": row["question"], "answers": row["answers"], "task": "nq",
            "passages": passages, "extra": {}, "prompt_style": "default",
            "samples": [
                {"ids": [1], "raw": "[1]", "well_formed": True, "error": None, "answer": row["answers"][0]},
                {"ids": [], "raw": "None", "well_formed": True, "error": None, "answer": gold["title"]},
                {"ids": [], "raw": "The answer is", "well_formed": False, "answer": None,
                 "error": "unusable reranker output: no passage ids and no 'None' in the output"},
            ],
        })
    path = tmp / "samples.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


@dataclass
class Stage:
    args: Callable[[Path, Path], list]  # (shared_data, tmp) -> CLI arguments before --output
    total: int  # records the run writes
    kill_after: int  # complete records on disk when the run is killed


# The untrained base model as reranker (not the shipped adapter, which writes ids for all three).
LLM = ["--top-n", "3", "--batch-size", "1", "--reranker-max-tokens", "8", "--max-new-tokens", "8", "--reranker-adapter", "none"]
STAGES = {
    # The second question has no passages: answered without a reranker call, between the
    # others' unusable outputs (free decoding), so the run shows errors and answers side by side.
    "infer": Stage(lambda d, t: ["infer", "--input", nq_questions(d, t, 3, without_passages=(1,)), *LLM], 3, 1),
    "sample": Stage(lambda d, t: ["sample", "--input", nq_questions(d, t, 3), "--n", "2", "--temperature", "0.7",
                                  "--seed", "42", *LLM], 3, 1),
    "label": Stage(lambda d, t: ["label", "--input", d / "nq" / "nq-open-oracle.jsonl.gz", "--limit", "40",
                                 "--batch-size", "1"], 40, 8),
    "reward": Stage(lambda d, t: ["reward", "--input", sampled_records(d, t, 60), "--batch-size", "1"], 60, 10),
}


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "dynamicrag.cli", *map(str, args)]


def complete_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def run_and_kill(args: list[str], output: Path, kill_after: int, log: Path) -> int:
    """Start the run, SIGKILL it once ``kill_after`` records are on disk; return how many were."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(cli(*args, "--output", output), stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        deadline = time.monotonic() + TIMEOUT
        try:
            while complete_lines(output) < kill_after and proc.poll() is None:
                assert time.monotonic() < deadline, f"fewer than {kill_after} records after {TIMEOUT} s"
                time.sleep(0.005)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        finally:
            proc.kill()  # a no-op after the SIGKILL; stops the run if an assertion fired first
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run ended before it could be killed:\n{log.read_text()[-3000:]}"
    return complete_lines(output)


def records(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), "a partial last line was left in the output"
    return [r for _, r in read_jsonl(path)]


@pytest.mark.slow
@pytest.mark.parametrize("stage", list(STAGES))
def test_kill_resume(stage, shared_data, tmp_path):
    spec = STAGES[stage]
    args = spec.args(shared_data, tmp_path)
    reference_out, out = tmp_path / "reference.jsonl", tmp_path / "resumed.jsonl"
    with open(tmp_path / "reference.log", "wb") as ref_log:
        reference = subprocess.Popen(cli(*args, "--output", reference_out), stdout=subprocess.DEVNULL,
                                     stderr=ref_log, env=ENV)
        try:
            on_disk = run_and_kill(args, out, spec.kill_after, tmp_path / "killed.log")
            assert spec.kill_after <= on_disk < spec.total, f"killed with {on_disk} of {spec.total} records on disk"

            resumed = subprocess.run(cli(*args, "--output", out), capture_output=True, text=True, env=ENV,
                                     timeout=TIMEOUT)
            assert resumed.returncode == 0, resumed.stderr[-3000:]
            assert f"resuming: {on_disk} of {spec.total} records" in " ".join(resumed.stderr.split())
            assert reference.wait(timeout=TIMEOUT) == 0, (tmp_path / "reference.log").read_text()[-3000:]
        finally:
            reference.kill()
            reference.wait()

    expected, got = records(reference_out), records(out)
    ids = [r["id"] for r in got]
    assert len(got) == spec.total and len(set(ids)) == len(ids), ids
    assert ids == [r["id"] for r in expected]
    for want, have in zip(expected, got):
        assert have == want, f"record {have['id']} differs from the uninterrupted run"
    check_errors_are_recorded(stage, got)


def check_errors_are_recorded(stage: str, out: list[dict]) -> None:
    """An unusable model output is written with its error, and the records after it still come."""
    if stage == "infer":
        failed = [r for r in out if r["error"]]
        assert failed, "the bundled model wrote ids for every question; pick inputs where it does not"
        assert all(r["answer"] is None and r["selected"] == [] and r["reranker_output"] for r in failed)
        assert out[1]["error"] is None and out[1]["answer"] and out[1]["passages"] == []  # answered after a failure
    elif stage == "sample":
        samples = [s for r in out for s in r["samples"]]
        assert all(len(r["samples"]) == 2 for r in out)
        failed = [s for s in samples if s["error"]]
        assert failed and all(s["answer"] is None and s["ids"] == [] and s["raw"] for s in failed)
        assert all(s["answer"] for s in samples if not s["error"])
    elif stage == "label":
        assert all(isinstance(p["extra"]["relevant"], bool) for r in out for p in r["passages"])
    elif stage == "reward":
        for r in out:
            right, _, unusable = r["samples"]
            assert unusable["reward"]["total"] == 0.0 and unusable["error"]  # scored, kept, lowest
            assert right["reward"]["em"] >= 1 / len(r["answers"])  # a mean over the gold answers


def test_sample_goes_on_past_an_example_the_backend_fails_on():
    """A backend exception on one example: that record carries the error on every sample, the rest are sampled.

    Without this a resumed ``sample`` would fail again on the same example forever.
    """
    examples = [
        Example(id=f"q{i}", question=f"question {i}", answers=["a"],
                passages=[Passage(id=f"{i}-{p}", title=f"t{p}", text=f"GOLD-1 text {p}" if p == 2 else "text")
                          for p in range(1, 4)])
        for i in range(3)
    ]
    backend = ScriptedBackend(fail_on="Query: question 1\n")
    records = sample_trajectories(examples, backend, "default", SampleConfig(n=2, temperature=0.5))
    assert [r["id"] for r in records] == ["q0", "q1", "q2"]
    for r in (records[0], records[2]):
        assert all(s["ids"] == [2] and s["error"] is None and s["answer"] == "t2" for s in r["samples"])
    failed = records[1]["samples"]
    assert len(failed) == 2 and all(
        s == {"ids": [], "raw": "", "well_formed": False, "error": "RuntimeError: scripted failure", "answer": None}
        for s in failed
    )
    assert [p["id"] for p in records[1]["passages"]] == ["1-1", "1-2", "1-3"] and records[1]["prompt_style"] == "default"
