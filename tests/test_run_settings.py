"""Run settings: what a run was made with, written beside its output."""

from __future__ import annotations

import json

from dynamicrag.generate import Generator
from dynamicrag.prompts import load_style
from dynamicrag.rerank import DynamicReranker
from dynamicrag.rerank.pointwise import EmbeddingScorer, PointwiseReranker
from dynamicrag.run_settings import (
    changed_settings,
    compared_settings,
    run_settings,
    settings_path,
    write_run_settings,
)
from fakes import ScriptedBackend


def test_settings_hold_the_backend_reranker_and_generator_as_plain_json(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    backend = ScriptedBackend()
    reranker = DynamicReranker(backend, load_style("official"), window=20, constrained=True)
    settings = run_settings(backend, command=["dynamicrag", "infer"], reranker=reranker,
                            generator=Generator(backend, max_new_tokens=50), pipeline={"top_n": 10, "index": tmp_path})
    assert settings["backend"] == {"name": "scripted", "model": "scripted"}
    assert settings["reranker"] == {"class": "DynamicReranker", "style": "official", "window": 20, "max_new_tokens": 100,
                                    "temperature": 0.0, "constrained": True, "passage_words": None, "order_by": None}
    # A setting added later is recorded only when set, so runs written before it resume.
    biased = DynamicReranker(backend, load_style("official"), window=20, constrained=True, continue_bias=0.49)
    assert run_settings(backend, reranker=biased)["reranker"]["continue_bias"] == 0.49
    assert settings["generator"]["max_new_tokens"] == 50 and "backend" not in settings["generator"]
    assert settings["pipeline"] == {"top_n": 10, "index": str(tmp_path)}
    assert settings["command"] == ["dynamicrag", "infer"] and settings["threads"]["OMP_WAIT_POLICY"] == "PASSIVE"
    path = write_run_settings(tmp_path / "out" / "results.jsonl", settings)
    assert path == settings_path(tmp_path / "out" / "results.jsonl") == tmp_path / "out" / "results.jsonl.settings.json"
    assert json.loads(path.read_text()) == settings


def test_a_component_holding_a_model_is_described_by_its_plain_fields():
    class Scorer(EmbeddingScorer):
        def __init__(self):  # no model loaded: only what settings would read
            self.model_name, self.batch_size, self.model = "minilm", 32, object()

    described = run_settings(reranker=PointwiseReranker(Scorer(), k=3))["reranker"]
    assert described == {"class": "PointwiseReranker", "scorer": {"class": "Scorer", "model_name": "minilm", "batch_size": 32},
                         "k": 3}


def test_changed_settings_name_what_a_resumed_run_changed():
    old = {"command": ["a"], "date": "x", "backend": {"dtype": "float32", "batch_size": 8}, "generator": {"m": 1}}
    new = {"command": ["b"], "date": "y", "backend": {"dtype": "bfloat16", "batch_size": 8}, "generator": {"m": 1}}
    assert changed_settings(old, new) == ["backend.dtype: float32 -> bfloat16"]
    assert changed_settings(old, old) == []


def test_compared_settings_leave_out_what_changes_speed_only():
    settings = run_settings(
        {"name": "transformers", "model": "m", "dtype": "bfloat16", "dtype_reason": "bf16 (CPU has amx_bf16)",
         "batch_size": 8, "threads": 2, "prefix_cache": True, "prefill": "rows", "adapter": "/a"},
        backends={"reranker": {"name": "openai", "model": "m", "base_url": "http://x", "timeout": 60}},
        command=["dynamicrag", "infer"], run={"batch_size": 4}, generator={"max_new_tokens": 8},
    )
    assert compared_settings(settings) == {
        "backend": {"name": "transformers", "model": "m", "dtype": "bfloat16", "adapter": "/a"},
        "backends": {"reranker": {"name": "openai", "model": "m", "base_url": "http://x"}},
        "generator": {"max_new_tokens": 8},
    }
