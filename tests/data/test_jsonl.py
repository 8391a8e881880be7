"""read_jsonl, the resumable writer, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from dynamicrag.data import DataError, ResumableJsonlWriter, atomic_write_json, atomic_write_text, read_jsonl


def test_read_jsonl_skips_blank_lines_and_counts_them(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"a": 1}\n\n  \n{"a": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (4, {"a": 2})]
    path.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(DataError, match=r"a\.jsonl:2: expected a JSON object, got list"):
        list(read_jsonl(path))


def test_writer_resumes_after_a_kill_mid_write(tmp_path):
    path = tmp_path / "out" / "deep" / "infer.jsonl"  # parent folders created
    with ResumableJsonlWriter(path) as writer:
        assert writer.done == 0
        for i in range(3):
            writer.write({"id": f"q{i}", "answer": "Röntgen"})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"id": "q3", "answ')  # the run was killed half-way through a line

    with ResumableJsonlWriter(path) as writer:
        assert writer.done == 3
        assert writer.done_ids == {"q0", "q1", "q2"}
        assert not path.read_text(encoding="utf-8").endswith("answ")  # partial line gone
        writer.write({"id": "q3", "answer": "x"})
        assert writer.done == 4
        assert [r["id"] for r in writer.records()] == ["q0", "q1", "q2", "q3"]

    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 4 and json.loads(lines[3]) == {"id": "q3", "answer": "x"}
    assert '"Röntgen"' in lines[0]  # ensure_ascii=False: text stays readable


def test_writer_on_a_file_that_is_not_jsonl(tmp_path):
    path = tmp_path / "notes.jsonl"
    path.write_text('{"id": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"notes\.jsonl:2: invalid JSON in a complete line"):
        ResumableJsonlWriter(path)
    with pytest.raises(ValueError, match="plain .jsonl"):
        ResumableJsonlWriter(tmp_path / "x.jsonl.gz")


def test_writer_fsyncs_on_schedule(tmp_path, monkeypatch):
    calls = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd)))
    with ResumableJsonlWriter(tmp_path / "a.jsonl", fsync_every=3600) as writer:
        for i in range(50):
            writer.write({"i": i})
        assert calls == []  # flushed, not fsynced per record
    assert len(calls) == 1  # once at close
    with ResumableJsonlWriter(tmp_path / "b.jsonl", fsync_every=0) as writer:
        writer.write({"i": 0})
        writer.write({"i": 1})
    assert len(calls) == 1 + 3


def test_atomic_write_json(tmp_path):
    path = tmp_path / "sub" / "meta.json"
    atomic_write_json(path, {"name": "é", "n": 1})
    assert json.loads(path.read_text(encoding="utf-8")) == {"name": "é", "n": 1}
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8"))["n"] == 1  # old file intact
    atomic_write_text(path, "replaced\n")
    assert path.read_text() == "replaced\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["meta.json"]  # no temp files left
