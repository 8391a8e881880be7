"""The backend registry, and the optional backends' mappings and install hints (no vllm here)."""

from __future__ import annotations

import importlib.util

import pytest

from dynamicrag.llm import BACKENDS, Backend, SamplingParams, load_backend
from dynamicrag.llm.constrain import id_list_regex
from dynamicrag.llm.vllm_backend import to_vllm_sampling_kwargs


def test_unknown_backend_lists_the_names():
    with pytest.raises(ValueError, match=r"'gpt'.*\['llamacpp', 'openai', 'transformers', 'vllm'\]"):
        load_backend("gpt")
    assert sorted(BACKENDS) == ["llamacpp", "openai", "transformers", "vllm"]


def test_http_backend_satisfies_the_protocol():
    backend = load_backend("openai", model="m", base_url="http://127.0.0.1:1/v1")
    assert isinstance(backend, Backend)


def test_vllm_sampling_kwargs_greedy_defaults():
    assert to_vllm_sampling_kwargs(SamplingParams()) == {
        "temperature": 0.0, "top_p": 1.0, "max_tokens": 200, "n": 1}


def test_vllm_sampling_kwargs_trajectory_sampling():
    # The method's DPO trajectory sampling: temperature 0.4, n = 8, 100 tokens, constrained ids.
    kwargs = to_vllm_sampling_kwargs(SamplingParams(temperature=0.4, top_p=0.95, max_new_tokens=100, n=8,
                                                    seed=11, stop=("\n\n", "###"), id_list_max=40))
    assert kwargs == {
        "temperature": 0.4, "top_p": 0.95, "max_tokens": 100, "n": 8, "seed": 11,
        "stop": ["\n\n", "###"], "structured_outputs": {"regex": id_list_regex(40)},
    }


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_backend_without_vllm_gives_install_hint():
    with pytest.raises(ImportError, match=r"pip install dynamicrag\[vllm\]"):
        load_backend("vllm", "some/model")


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is not None, reason="llama-cpp-python is installed")
def test_llamacpp_backend_without_llama_cpp_gives_install_hint():
    with pytest.raises(ImportError, match=r"pip install dynamicrag\[llamacpp\]"):
        load_backend("llamacpp")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed (optional extra)")
def test_llamacpp_backend_runs_the_bundled_gguf_like_transformers(smollm):
    from dynamicrag.llm import SamplingParams
    from dynamicrag.llm.constrain import is_complete

    import gc

    from dynamicrag.llm.llamacpp_backend import LlamaCppBackend

    # Built directly, not through load_backend's process-wide cache, so it is freed here: a
    # llama.cpp model left for interpreter shutdown raises in its __del__.
    llama = LlamaCppBackend()
    chat = [{"role": "user", "content": "Copy exactly: [3], [3], [9], [1]"}]
    greedy = SamplingParams(max_new_tokens=12)
    # Same Q4_1 weights (transformers de-quantises them): the same greedy text.
    assert llama.generate([chat], greedy)[0][0].text == smollm.generate([chat], greedy)[0][0].text
    [[constrained]] = llama.generate([chat], SamplingParams(max_new_tokens=16, id_list_max=5))
    assert is_complete(constrained.text, 5), constrained.text
    labels = ("SUPPORTS", "REFUTES", "NEI")
    [[label]] = llama.generate([chat], SamplingParams(max_new_tokens=8, choices=labels))
    assert label.text in labels  # the GBNF alternation of the labels
    # A large continue bias on the continue tokens ("],") makes the list go on after its first id.
    [[going]] = llama.generate([[{"role": "user", "content": "Copy exactly: [3]"}]],
                               SamplingParams(max_new_tokens=8, id_list_max=5, continue_bias=100))
    assert "]," in going.text, going.text
    del llama
    gc.collect()
