"""``dynamicrag ask --server``: a question to a running ``dynamicrag serve``.

The server is the real app, pipeline and index over the scripted backend (the model is the only
thing faked); the client is the real command, run as a user runs it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.generate import Generator
from dynamicrag.rerank import DynamicReranker
from dynamicrag.retrieve import build_index
from dynamicrag.schema import Passage
from dynamicrag.serve import BackgroundServer
from dynamicrag.serve.app import create_app
from dynamicrag.serve.settings import ServeSettings
from fakes import ScriptedBackend

runner = CliRunner()
QUESTION = "who wrote hamlet"
CORPUS = [
    Passage(id="gold", title="hamlet", text="GOLD-1 Hamlet was written by William Shakespeare around 1600."),
    Passage(id="near", title="macbeth", text="Shakespeare wrote Macbeth, another tragedy."),
    Passage(id="far", title="rivers", text="The Nile is a river in Africa."),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    retriever = build_index(CORPUS, tmp_path_factory.mktemp("idx") / "bm25", kind="bm25", show_progress=False)
    backend = ScriptedBackend()
    app_ = create_app(DynamicReranker(backend), Generator(backend), retriever, ServeSettings(api_key="sesame"))
    with BackgroundServer(app_) as running:
        yield f"http://{running.host}:{running.port}"


def ask(*args: str):
    return runner.invoke(app, ["ask", QUESTION, *args], env={"DYNAMICRAG_API_KEY": "sesame"})


def test_ask_through_a_server_prints_the_record_a_local_ask_prints(server):
    result = ask("--server", server, "--json", "--top-n", "2")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert [p["id"] for p in record["passages"]] == ["gold", "near"]  # the server's index, cut to --top-n
    assert record["selected"] == [1] and record["reranker_output"] == "[1]" and record["well_formed"] is True
    assert record["answer"] == "hamlet"  # the scripted generator names the titles it was shown
    assert record["question"] == QUESTION and record["error"] is None and "attribution" in record


def test_ask_through_a_server_shows_the_answer_and_the_chosen_passages(server):
    result = ask("--server", server)
    assert result.exit_code == 0, result.output
    assert result.output.startswith("hamlet\n")
    assert "k = 1 of 3 retrieved" in result.output and "reranker output: '[1]'" in result.output


def test_the_asking_process_loads_no_model_library(server):
    # What makes `ask --server` fast: nothing of torch or transformers is imported to ask.
    code = ("import sys\nfrom dynamicrag.cli import app\n"
            f"app(['ask', {QUESTION!r}, '--server', {server!r}, '--api-key', 'sesame'], standalone_mode=False)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("hamlet") and out.stdout.rstrip().endswith("[]")


def test_a_wrong_key_and_a_missing_server_are_named(server):
    refused = runner.invoke(app, ["ask", QUESTION, "--server", server, "--api-key", "wrong"])
    assert refused.exit_code == 2
    flat = " ".join(refused.output.split())
    assert f"{server}/v1/answer answered HTTP 401" in flat and "API key" in flat
    missing = runner.invoke(app, ["ask", QUESTION, "--server", "http://127.0.0.1:9"])
    assert missing.exit_code == 2
    assert "no answer from http://127.0.0.1:9/v1/answer" in " ".join(missing.output.split())


def test_options_only_a_local_ask_reads_are_refused(server, tmp_path):
    result = ask("--server", server, "--corpus", str(tmp_path), "--max-new-tokens", "8")
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert "--corpus, --max-new-tokens would be ignored" in flat and "dynamicrag serve" in flat
