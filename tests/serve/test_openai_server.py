"""The OpenAI-compatible server queues its requests in the package's micro-batcher: same-settings
requests share a generate call, a failing request fails alone, a full queue answers 503 and a slow
request 504, in OpenAI's error format. A scripted backend stands in for the model."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx2 as httpx

from dynamicrag.llm.base import Completion
from dynamicrag.serve import BackgroundServer, create_openai_app


class EchoBackend:
    """Answers each chat with its last message upper-cased; raises on "boom"; sleeps per call."""

    name = model = "echo"

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.batches: list[int] = []
        self.params = []  # the SamplingParams of each call
        self.lock = threading.Lock()

    def generate(self, chats, params):
        with self.lock:
            self.batches.append(len(chats))
            self.params.append(params)
        time.sleep(self.delay)
        if any("boom" in chat[-1]["content"] for chat in chats):
            raise RuntimeError("the model fell over")
        return [[Completion(chat[-1]["content"].upper(), 3, 2)] * params.n for chat in chats]


def body(text: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 4, **extra}


async def post_all(base: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        return await asyncio.gather(*(http.post("/chat/completions", json=b) for b in bodies))


def test_requests_share_a_batch_and_a_failing_one_fails_alone():
    backend = EchoBackend(delay=0.05)
    app = create_openai_app(backend, batch_wait_ms=100)
    with BackgroundServer(app) as server:
        responses = asyncio.run(post_all(server.base_url, [body("one"), body("boom"), body("three")]))
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert [responses[i].json()["choices"][0]["message"]["content"] for i in (0, 2)] == ["ONE", "THREE"]
    error = responses[1].json()["error"]
    assert error["code"] == 500 and "RuntimeError: the model fell over" in error["message"]
    assert backend.batches[0] == 3  # tried together first, then one by one


def test_a_full_queue_answers_503_and_a_slow_request_504():
    app = create_openai_app(EchoBackend(delay=0.5), max_batch=1, max_queue=1, batch_wait_ms=0)
    with BackgroundServer(app) as server:
        responses = asyncio.run(post_all(server.base_url, [body(f"q{i}") for i in range(6)]))
    codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 503 in codes
    assert all(r.headers.get("retry-after") for r in responses if r.status_code == 503)
    app = create_openai_app(EchoBackend(delay=1.0), timeout_s=0.2)
    with BackgroundServer(app) as server:
        [slow] = asyncio.run(post_all(server.base_url, [body("slow")]))
    assert slow.status_code == 504 and slow.json()["error"]["type"] == "timeout"


def test_bad_requests_are_named_in_openais_error_format():
    with BackgroundServer(create_openai_app(EchoBackend(), model_name="echo")) as server:
        wrong_model, bad = asyncio.run(post_all(server.base_url, [body("x", model="other"), body("x", n=0)]))
    assert wrong_model.status_code == 404 and "does not exist" in wrong_model.json()["error"]["message"]
    assert bad.status_code == 422 and "body.n" in bad.json()["error"]["message"]


def test_the_continue_bias_of_our_own_client_reaches_the_model():
    from dynamicrag.llm import SamplingParams
    from dynamicrag.llm.openai_backend import OpenAIBackend

    backend = EchoBackend()
    with BackgroundServer(create_openai_app(backend, model_name="echo")) as server:
        client = OpenAIBackend(server.base_url, "echo", guided_decoding="dynamicrag")
        [[completion]] = client.generate([[{"role": "user", "content": "[1"}]], SamplingParams(continue_bias=0.49))
        bad = asyncio.run(post_all(server.base_url, [body("x", continue_bias=101)]))[0]
    assert completion.text == "[1" and backend.params[-1].continue_bias == 0.49
    assert bad.status_code == 422 and "body.continue_bias" in bad.json()["error"]["message"]
