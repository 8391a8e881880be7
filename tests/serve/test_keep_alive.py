"""``ask`` keeps its models loaded in a background process for the next ``ask`` (``--keep-alive``).

The real command, the real bundled model and a real background process, as a user runs them;
the project cache is a temporary folder (its converted model linked from the session's cache),
so no kept process of the user's is seen or stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.serve.keep_alive import format_keep_alive, kept_dir, parse_keep_alive

runner = CliRunner()
FAST = ["--reranker-max-tokens", "24", "--max-new-tokens", "24"]
STARTED = "the models stay loaded in process"


def test_keep_alive_takes_seconds_or_a_duration():
    assert [parse_keep_alive(t) for t in ("0", "300", "90s", "5m", "1.5h", " 2 m ")] == [0, 300, 90, 300, 5400, 120]
    for bad in ("-1", "5 minutes", "m", ""):
        with pytest.raises(ValueError, match="90s, 5m or 1h"):
            parse_keep_alive(bad)
    assert [format_keep_alive(s) for s in (300, 90, 3600, 5400)] == ["5 min", "90 s", "1 h", "90 min"]
    result = runner.invoke(app, ["ask", "anything?", "--keep-alive", "soon"])
    assert result.exit_code != 0 and "--keep-alive" in result.output


def _gone(pid: int) -> bool:
    """The process ended (reaped here when it is this process's child)."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not a child of this process, or reaped already
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False


def _wait_gone(pid: int, limit_s: float = 30.0) -> bool:
    deadline = time.monotonic() + limit_s
    while not _gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _kept_pids() -> list[int]:
    return sorted(json.loads(p.read_text())["pid"] for p in kept_dir().glob("*.json")) if kept_dir().is_dir() else []


@pytest.mark.slow
def test_ask_keeps_the_models_loaded_answers_as_in_process_and_leaves_when_idle_or_stopped(
        smollm, tmp_path, monkeypatch):
    from dynamicrag.llm.models import cache_dir

    models = cache_dir() / "models"  # converted by the session's model fixture
    assert models.is_dir()
    monkeypatch.setenv("DYNAMICRAG_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(models)
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text("# Rivers\n\nThe Nile flows north through Egypt into the Mediterranean Sea.\n\n"
                                    "The Amazon carries more water than any other river.\n")
    (docs / "peaks.md").write_text("# Mountains\n\nMount Everest, in the Himalaya, is the highest mountain above sea level.\n")

    def ask(question: str, keep_alive: str) -> tuple[dict, str]:
        result = runner.invoke(app, ["ask", question, "--corpus", str(docs), "--json", "--keep-alive", keep_alive, *FAST])
        assert result.exit_code == 0, result.output + repr(result.exception)
        record = json.loads(result.stdout)
        assert record["error"] is None and record["answer"]
        return record, " ".join(result.stderr.split())

    first, said = ask("Where does the Nile flow?", "60")
    assert STARTED in said and "transformers backend:" in said  # the kept process's dtype line, shown here
    [pid] = _kept_pids()
    assert not _gone(pid)
    again, said = ask("Which mountain is the highest?", "60")
    assert STARTED not in said and _kept_pids() == [pid]  # the same process answered

    # Answered in the asking process instead (a process of its own, as a user runs it: a model
    # loaded here would stay in this test process's backend cache): the same record.
    done = subprocess.run([sys.executable, "-c", "from dynamicrag.cli import app; app()", "ask", "Where does the Nile flow?",
                           "--corpus", str(docs), "--json", "--keep-alive", "0", *FAST],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    here = json.loads(done.stdout)
    assert STARTED not in done.stderr and _kept_pids() == [pid]
    assert {k: v for k, v in here.items() if k != "timings"} == {k: v for k, v in first.items() if k != "timings"}

    # Killed (its state file left behind): the next ask starts another and answers as before.
    os.kill(pid, signal.SIGKILL)
    assert _wait_gone(pid)
    replaced, said = ask("Which mountain is the highest?", "2s")
    [second] = _kept_pids()
    assert STARTED in said and second != pid
    assert replaced["answer"] == again["answer"] and replaced["selected"] == again["selected"]
    # Two idle seconds later it has left, and removed its state file.
    assert _wait_gone(second) and _kept_pids() == []
    [log] = kept_dir().glob("*.log")
    assert "exiting" in log.read_text()

    ask("Where does the Nile flow?", "60")
    [third] = _kept_pids()
    result = runner.invoke(app, ["stop"])
    assert result.exit_code == 0 and "stopped 1 kept process" in " ".join(result.output.split())
    assert _wait_gone(third) and _kept_pids() == []
