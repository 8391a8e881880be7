"""Shared fixtures: the shared data folder and the bundled model, loaded once per session."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

# Tests never reach a model hub: everything they load ships in a package or is built here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# `ask` answers in its own process (tests/serve/test_keep_alive.py tests the kept models).
os.environ.setdefault("DYNAMICRAG_KEEP_ALIVE", "0")

ROOT = Path(__file__).resolve().parents[1]
# The shared data sits beside the checkout (../shared/data); DYNAMICRAG_SHARED_DATA overrides.
SHARED_DATA = Path(os.environ.get("DYNAMICRAG_SHARED_DATA", ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data not found at {SHARED_DATA} (set DYNAMICRAG_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm():
    """The transformers backend on the bundled SmolLM2-135M-Instruct (loaded once), in fp32.

    fp32, not the default dtype (bf16 on CPUs with native bf16): the tests that compare
    outputs exactly (batched == one by one, padding, prefix cache) test the code, and in bf16
    rounding alone changes a few greedy tokens between batch layouts. The default dtype's
    tolerance has its own test (tests/llm/test_llm_transformers.py).
    """
    from dynamicrag.llm import load_backend

    return load_backend("transformers", dtype="float32")


@dataclass
class NQCorpus:
    passages: list  # gold passages first (position i = question i's gold), then the wiki sample
    questions: list[str]
    gold_ids: list[str]  # id of each question's gold passage


@pytest.fixture(scope="session")
def nq(shared_data: Path) -> NQCorpus:
    """The NQ retrieval corpus of the shared data: 2655 gold passages + 1000 Wikipedia passages."""
    from dynamicrag.data import load_corpus, load_examples

    examples = load_examples(shared_data / "nq" / "nq-open-oracle.jsonl.gz")
    gold = [ex.passages[0] for ex in examples]
    wiki = load_corpus(shared_data / "nq" / "flashrag_wiki_sample.jsonl")
    return NQCorpus(gold + wiki, [ex.question for ex in examples], [p.id for p in gold])


@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    """A LoRA adapter of the bundled model (rank 16 on every linear layer, random non-zero
    weights) with a reranker manifest: base smollm2-135m-instruct, 30 words per passage,
    constrained decoding, top 5 candidates."""
    from tiny_lora import write_manifest_json, write_tiny_adapter

    folder = write_tiny_adapter(tmp_path_factory.mktemp("adapters") / "tiny-reranker")
    write_manifest_json(folder, passage_words=30, constrained=True, top_n=5, prompt_style="default")
    return folder
