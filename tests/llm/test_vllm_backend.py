"""VLLMBackend without a GPU: what it hands to the vLLM engine and how it reads vLLM's outputs.

vLLM needs a CUDA GPU, so a stand-in ``vllm`` package (the boundary) records the engine's
arguments and answers ``LLM.chat``; the backend itself runs unchanged. The pure sampling
mapping is tested in test_llm_registry.py.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest

from dynamicrag.llm import SamplingParams
from dynamicrag.llm.base import LOOP_FREQUENCY_PENALTY
from dynamicrag.llm.constrain import id_list_regex
from dynamicrag.llm.vllm_backend import VLLMBackend


class Recorded:
    """A vLLM parameter class that keeps its keyword arguments."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


def fake_vllm(structured_outputs: bool = True) -> types.ModuleType:
    """The parts of the ``vllm`` package the backend uses; ``structured_outputs=False`` is a
    vLLM before 0.10.2 (``GuidedDecodingParams`` only)."""
    vllm = types.ModuleType("vllm")
    sp = types.ModuleType("vllm.sampling_params")
    sp.GuidedDecodingParams = type("GuidedDecodingParams", (Recorded,), {})
    if structured_outputs:
        sp.StructuredOutputsParams = type("StructuredOutputsParams", (Recorded,), {})
    vllm.sampling_params = sp
    vllm.SamplingParams = type("SamplingParams", (Recorded,), {})
    vllm.calls = []

    class LLM:
        def __init__(self, **kwargs):
            vllm.engine = kwargs

        def get_tokenizer(self):
            return None

        def chat(self, messages, sampling_params, use_tqdm=True, **kwargs):
            vllm.calls.append((messages, sampling_params, kwargs))
            n = sampling_params.kwargs["n"]
            return [
                SimpleNamespace(
                    prompt_token_ids=list(range(10 + i)),
                    outputs=[SimpleNamespace(text=f"[{j + 1}]", token_ids=[7] * (j + 2), finish_reason="stop")
                             for j in range(n)],
                )
                for i in range(len(messages))
            ]

    vllm.LLM = LLM
    return vllm


@pytest.fixture
def vllm(monkeypatch):
    module = fake_vllm()
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", module.sampling_params)
    return module


def test_engine_gets_parallelism_prefix_caching_and_context_cap(vllm):
    VLLMBackend("gasolsun/DynamicRAG-8B", tensor_parallel_size=2, data_parallel_size=4, max_model_len=8192,
                dtype="bfloat16")
    assert vllm.engine == {
        "model": "gasolsun/DynamicRAG-8B", "tensor_parallel_size": 2, "data_parallel_size": 4,
        "enable_prefix_caching": True, "gpu_memory_utilization": 0.9, "max_model_len": 8192,
        "dtype": "bfloat16",  # anything else goes to vllm.LLM unchanged
    }
    VLLMBackend("m", enable_prefix_caching=False)
    # One replica is vLLM's default: the key is left out, so a vLLM without it still starts.
    assert vllm.engine == {"model": "m", "tensor_parallel_size": 1, "enable_prefix_caching": False,
                           "gpu_memory_utilization": 0.9}


def test_generate_sends_the_chats_to_the_models_template_and_reads_n_completions(vllm):
    backend = VLLMBackend("m")
    chats = [[{"role": "user", "content": "Query: a?"}], [{"role": "user", "content": "Query: b?"}]]
    out = backend.generate(chats, SamplingParams(temperature=0.4, max_new_tokens=100, n=3, seed=1))
    [(messages, params, extra)] = vllm.calls
    # The chats go as messages; no chat_template argument, so vLLM applies the model's own.
    assert messages == chats and extra == {}
    assert params.kwargs == {"temperature": 0.4, "top_p": 1.0, "max_tokens": 100, "n": 3, "seed": 1}
    assert [[c.text for c in row] for row in out] == [["[1]", "[2]", "[3]"]] * 2
    assert [row[0].prompt_tokens for row in out] == [10, 11] and [c.completion_tokens for c in out[0]] == [2, 3, 4]
    assert out[0][0].finish_reason == "stop" and backend.generate([], SamplingParams()) == []


@pytest.mark.parametrize("new_vllm", [True, False])
def test_id_grammar_uses_the_structured_outputs_class_of_the_installed_vllm(monkeypatch, new_vllm):
    module = fake_vllm(structured_outputs=new_vllm)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", module.sampling_params)
    params = VLLMBackend("m").sampling_params(SamplingParams(id_list_max=40))
    key = "structured_outputs" if new_vllm else "guided_decoding"  # renamed in vLLM 0.10.2
    constraint = params.kwargs.pop(key)
    assert type(constraint).__name__ == ("StructuredOutputsParams" if new_vllm else "GuidedDecodingParams")
    assert constraint.kwargs == {"regex": id_list_regex(40)}
    assert params.kwargs == {"temperature": 0.0, "top_p": 1.0, "max_tokens": 200, "n": 1}


@pytest.mark.parametrize("new_vllm", [True, False])
def test_labels_are_a_guided_choice_and_the_ngram_ban_a_frequency_penalty(monkeypatch, new_vllm):
    module = fake_vllm(structured_outputs=new_vllm)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.sampling_params", module.sampling_params)
    backend = VLLMBackend("m")
    labels = backend.sampling_params(SamplingParams(max_new_tokens=8, choices=("SUPPORTS", "REFUTES", "NEI")))
    constraint = labels.kwargs.pop("structured_outputs" if new_vllm else "guided_decoding")
    assert constraint.kwargs == {"choice": ["SUPPORTS", "REFUTES", "NEI"]}
    loops = backend.sampling_params(SamplingParams(no_repeat_ngram_size=8))
    assert loops.kwargs["frequency_penalty"] == LOOP_FREQUENCY_PENALTY  # vLLM has no n-gram ban
    explicit = backend.sampling_params(SamplingParams(no_repeat_ngram_size=8, frequency_penalty=0.2))
    assert explicit.kwargs["frequency_penalty"] == 0.2
