"""Model resolution: the bundled GGUF is converted once, atomically, and reused."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dynamicrag.llm.models import DEFAULT_MODEL, bundled_gguf_path, cache_dir, resolve_model

# Each process logs its conversion line to stderr and prints the resolved path.
_RESOLVE = (
    "import logging, sys; logging.basicConfig(level=logging.INFO, stream=sys.stderr);"
    "from dynamicrag.llm.models import resolve_model; print(resolve_model(None))"
)


def test_bundled_gguf_is_found():
    path = bundled_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DYNAMICRAG_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("DYNAMICRAG_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "dynamicrag"


def test_resolve_local_folder_hub_id_and_bad_paths(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path.resolve())
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(FileNotFoundError, match="missing-model"):
        resolve_model(str(tmp_path / "missing-model"))
    with pytest.raises(FileNotFoundError, match="nothere.gguf"):
        resolve_model("nothere.gguf")
    notes = tmp_path / "notes.txt"
    notes.write_text("x")
    with pytest.raises(ValueError, match="notes.txt"):
        resolve_model(str(notes))


@pytest.mark.slow
def test_two_processes_convert_once_then_reuse(tmp_path, monkeypatch, caplog):
    env = {**os.environ, "DYNAMICRAG_CACHE": str(tmp_path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", _RESOLVE], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in outs]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    checkpoint = Path(paths.pop())
    assert checkpoint.parent == tmp_path / "models"
    # Both asked at once; the lock let exactly one of them convert.
    assert sum(err.count("into a transformers checkpoint") for _, err in outs) == 1
    assert [p.name for p in checkpoint.parent.iterdir() if ".tmp-" in p.name] == []

    config = checkpoint / "config.json"
    mtime = config.stat().st_mtime_ns
    monkeypatch.setenv("DYNAMICRAG_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="dynamicrag.llm.models"):
        assert resolve_model(DEFAULT_MODEL) == str(checkpoint)
        assert resolve_model(None) == str(checkpoint)
    assert "into a transformers checkpoint" not in caplog.text
    assert config.stat().st_mtime_ns == mtime

    # The converted checkpoint is an ordinary one: fp32 weights, tied embeddings, ChatML template.
    assert json.loads(config.read_text())["tie_word_embeddings"] is True
    assert (checkpoint / "model.safetensors").stat().st_size > 400_000_000  # 135M params in fp32
    template = (checkpoint / "chat_template.jinja").read_text()
    assert "<|im_start|>" in template and "add_generation_prompt" in template
    shutil.rmtree(checkpoint)  # 540 MB: do not leave it in pytest's kept temporary folders
