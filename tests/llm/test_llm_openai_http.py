"""The OpenAI-compatible HTTP backend against the project's own server on loopback.

The server runs the real transformers backend (the bundled SmolLM2), so these tests check the
whole path: client -> HTTP -> batcher -> model -> JSON -> Completion.
"""

from __future__ import annotations

import socket
import time

import openai
import pytest

from dynamicrag.llm import SamplingParams, load_backend
from dynamicrag.llm.base import loop_frequency_penalty, snap_to_choice
from dynamicrag.llm.constrain import id_list_gbnf, id_list_regex, is_complete
from dynamicrag.llm.openai_backend import OpenAIBackend, guided_extra_body
from dynamicrag.serve import BackgroundServer, create_openai_app


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


CHATS = [user("What is the capital of France?"), user("Hi"), user("What is 2+2?"),
         user("Name a fruit that is yellow.")]


@pytest.fixture(scope="module")
def server(smollm):
    with BackgroundServer(create_openai_app(smollm, model_name="smollm2")) as running:
        yield running


@pytest.fixture(scope="module")
def http(server):
    return OpenAIBackend(server.base_url, "smollm2", guided_decoding="dynamicrag", timeout=60)


@pytest.mark.slow
def test_http_greedy_matches_direct_and_keeps_order(smollm, http):
    params = SamplingParams(max_new_tokens=10)
    direct = smollm.generate(CHATS, params)
    remote = http.generate(CHATS, params)
    assert [c[0].text for c in remote] == [c[0].text for c in direct]
    assert len({c[0].text for c in remote}) == len(CHATS)  # distinct answers: order is checkable
    for r, d in zip(remote, direct):
        assert (r[0].prompt_tokens, r[0].completion_tokens, r[0].finish_reason) == (
            d[0].prompt_tokens, d[0].completion_tokens, d[0].finish_reason)


@pytest.mark.slow
def test_http_n_samples_and_usage(http):
    [completions] = http.generate([user("Say something about cats.")],
                                  SamplingParams(max_new_tokens=8, temperature=1.0, n=3, seed=7))
    assert len(completions) == 3
    assert all(c.text and c.prompt_tokens > 0 for c in completions)
    assert all(1 <= c.completion_tokens <= 8 for c in completions)


@pytest.mark.slow
def test_http_constrained_decoding_and_stop(http):
    [[ids]] = http.generate([user("Copy this list exactly: [3], [3], [9], [1]")],
                            SamplingParams(max_new_tokens=12, id_list_max=3))
    assert is_complete(ids.text, 3), ids.text
    [[cut]] = http.generate([user("Name three colors of the rainbow, please, in a list.")],
                            SamplingParams(max_new_tokens=12, stop=("\n",)))
    assert cut.text and "\n" not in cut.text and cut.finish_reason == "stop"


@pytest.mark.slow
def test_http_labels_and_answer_only_ngram_ban(smollm, server, http):
    labels = ("SUPPORTS", "REFUTES", "NEI")
    claim = [user('Claim: the sun is cold. Answer "SUPPORTS", "REFUTES" or "NEI".')]
    # dynamicrag's server constrains (guided_choice) exactly like the in-process backend.
    [[remote]] = http.generate(claim, SamplingParams(max_new_tokens=8, choices=labels))
    [[direct]] = smollm.generate(claim, SamplingParams(max_new_tokens=8, choices=labels))
    assert remote.text == direct.text and remote.text in labels and "snapped_from" not in remote.extra
    # A server asked for no constraint: the free answer is snapped to a label, the raw text kept.
    free = OpenAIBackend(server.base_url, "smollm2", guided_decoding="none")
    [[snapped]] = free.generate(claim, SamplingParams(max_new_tokens=24, choices=labels))
    raw = snapped.extra["snapped_from"]
    assert raw and snapped.text == (snap_to_choice(raw, labels) or raw)
    assert snapped.extra["snapped"] == (snapped.text in labels)
    # The n-gram ban reaches the server as is: same text as in process.
    loop = [user("Repeat the words 'red blue green' ten times.")]
    params = SamplingParams(max_new_tokens=24, no_repeat_ngram_size=3)
    assert http.generate(loop, params)[0][0].text == smollm.generate(loop, params)[0][0].text


@pytest.mark.slow
def test_models_endpoint_and_errors(server):
    client = openai.OpenAI(base_url=server.base_url, api_key="EMPTY", max_retries=0)
    assert [m.id for m in client.models.list().data] == ["smollm2"]
    wrong = OpenAIBackend(server.base_url, "gpt-4o", max_retries=0)
    with pytest.raises(RuntimeError, match="404.*smollm2"):
        wrong.generate(CHATS[:1], SamplingParams(max_new_tokens=2))
    # vLLM-style constraints cannot be honoured by this server: refused, not ignored.
    vllm_style = OpenAIBackend(server.base_url, "smollm2", max_retries=0)
    with pytest.raises(RuntimeError, match="400.*id_list_max"):
        vllm_style.generate(CHATS[:1], SamplingParams(max_new_tokens=2, id_list_max=3))


def test_unreachable_server_fails_fast_with_a_clear_error():
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=5)
    start = time.monotonic()
    with pytest.raises(ConnectionError, match=f"127.0.0.1:{port}.*(refused|connect)"):
        backend.generate(CHATS[:2], SamplingParams(max_new_tokens=2))
    assert time.monotonic() - start < 15  # two retries with back-off, not a hang


def test_silent_server_times_out():
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        backend = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", timeout=1, max_retries=0)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="within 1s"):
            backend.generate(CHATS[:1], SamplingParams(max_new_tokens=2))
        assert time.monotonic() - start < 10


def test_request_mapping_and_guided_decoding_dialects():
    backend = OpenAIBackend("http://127.0.0.1:1/v1", "m")
    kwargs = backend.request_kwargs(SamplingParams(temperature=0.4, top_p=0.9, max_new_tokens=100, n=8,
                                                   seed=3, stop=("\n",), id_list_max=20))
    assert kwargs == {"model": "m", "n": 8, "temperature": 0.4, "top_p": 0.9, "max_tokens": 100, "seed": 3,
                      "stop": ["\n"], "extra_body": {"structured_outputs": {"regex": id_list_regex(20)}}}
    assert "seed" not in backend.request_kwargs(SamplingParams())
    assert guided_extra_body("guided_regex", 5) == {"guided_regex": id_list_regex(5)}
    assert guided_extra_body("grammar", 5) == {"grammar": id_list_gbnf(5)}
    assert guided_extra_body("dynamicrag", 5) == {"id_list_max": 5}
    with pytest.raises(ValueError, match="guided_decoding='none'"):
        guided_extra_body("none", 5)
    # Loop control and labels per dialect.
    loops = SamplingParams(no_repeat_ngram_size=8)
    assert backend.request_kwargs(loops)["frequency_penalty"] == loop_frequency_penalty(loops) > 0
    assert "extra_body" not in backend.request_kwargs(loops)
    ours = OpenAIBackend("http://127.0.0.1:1/v1", "m", guided_decoding="dynamicrag")
    assert ours.request_kwargs(loops)["extra_body"] == {"no_repeat_ngram_size": 8}
    assert "frequency_penalty" not in ours.request_kwargs(loops)
    labels = SamplingParams(choices=("A", "B"))
    assert backend.request_kwargs(labels)["extra_body"] == {"structured_outputs": {"choice": ["A", "B"]}}
    assert ours.request_kwargs(labels)["extra_body"] == {"guided_choice": ["A", "B"]}
    assert "extra_body" not in OpenAIBackend("http://127.0.0.1:1/v1", "m", guided_decoding="none").request_kwargs(labels)
    names = r"\['dynamicrag', 'grammar', 'guided_regex', 'none', 'structured_outputs'\]"
    with pytest.raises(ValueError, match=names):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", guided_decoding="xgrammar")


@pytest.mark.slow
def test_count_tokens_estimate_and_exact(smollm):
    chat = user("What is the capital of France? " * 4)
    assert OpenAIBackend("http://127.0.0.1:1/v1", "m").count_tokens(chat) == round(len(chat[0]["content"]) / 4)
    exact = OpenAIBackend("http://127.0.0.1:1/v1", "m", tokenizer="smollm2-135m-instruct")
    assert exact.count_tokens(chat) == smollm.count_tokens(chat)


@pytest.mark.slow
def test_load_backend_builds_the_http_backend_once(server):
    a = load_backend("openai", model="smollm2", base_url=server.base_url)
    assert a is load_backend("openai", model="smollm2", base_url=server.base_url)
    assert a is not load_backend("openai", model="smollm2", base_url=server.base_url, timeout=5)
    assert a.name == "openai" and a.model == "smollm2"
