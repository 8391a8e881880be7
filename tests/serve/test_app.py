"""The HTTP server: endpoints, limits, API key, queue and timeout errors, micro-batching.

Logic tests run the real reranker, generator and server over a scripted backend (the model
is the only thing faked); the last test runs both endpoints on the bundled model.
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx2 as httpx
import pytest
from fastapi.testclient import TestClient

from dynamicrag.generate import Generator
from dynamicrag.rerank import DynamicReranker
from dynamicrag.retrieve import build_index
from dynamicrag.schema import Passage
from dynamicrag.serve import BackgroundServer
from dynamicrag.serve.app import create_app
from dynamicrag.serve.settings import ServeSettings
from fakes import ScriptedBackend


class SlowBackend(ScriptedBackend):
    """The scripted model, taking ``delay`` seconds per generate() CALL whatever the batch size."""

    def __init__(self, delay: float = 0.0, **kw) -> None:
        super().__init__(**kw)
        self.delay = delay
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def generate(self, chats, params):
        with self.lock:
            self.batch_sizes.append(len(chats))
        time.sleep(self.delay)
        return super().generate(chats, params)


def make_app(backend=None, retriever=None, **settings):
    backend = backend or ScriptedBackend()
    return create_app(DynamicReranker(backend), Generator(backend), retriever, ServeSettings(**settings))


def passages(gold: list[int], n: int = 4, tag: str = "") -> list[dict]:
    """``n`` passages; passage p (1-based) holds GOLD-r when it is the r-th of ``gold``."""
    return [
        {"id": f"p{p}{tag}", "title": f"t{p}", "text": f"GOLD-{gold.index(p) + 1}" if p in gold else "filler"}
        for p in range(1, n + 1)
    ]


@pytest.fixture
def client():
    with TestClient(make_app()) as c:
        yield c


def test_rerank_returns_chosen_ids_in_order(client):
    body = {"query": "q", "passages": passages([3, 1])}
    body["passages"][1].pop("id")  # no id: its 1-based position stands in
    r = client.post("/v1/rerank", json=body)
    assert r.status_code == 200
    assert r.json() == {"selected": ["p3", "p1"], "positions": [3, 1], "k": 2, "raw": "[3], [1]",
                        "well_formed": True, "error": None}
    none = client.post("/v1/rerank", json={"query": "q", "passages": passages([])}).json()
    assert none["selected"] == [] and none["k"] == 0 and none["raw"] == "None" and none["error"] is None


def test_answer_from_given_passages_in_the_chosen_order(client):
    r = client.post("/v1/answer", json={"question": "q", "passages": passages([4, 2])})
    assert r.status_code == 200
    out = r.json()
    assert out["answer"] == "t4|t2"  # the scripted generator echoes the titles it was shown
    assert [p["id"] for p in out["selected"]] == ["p4", "p2"] and out["k"] == 2
    assert out["retrieved"] is False and out["well_formed"] is True
    # top_n cuts the candidates: passage 4 is no longer shown
    cut = client.post("/v1/answer", json={"question": "q", "passages": passages([4, 2]), "top_n": 3}).json()
    assert [p["id"] for p in cut["selected"]] == ["p2"]


def test_answer_reports_every_candidate_and_where_the_time_went():
    with TestClient(make_app(SlowBackend(delay=0.2))) as c:
        out = c.post("/v1/answer", json={"question": "q", "passages": passages([4, 2])}).json()
    assert [p["id"] for p in out["candidates"]] == ["p1", "p2", "p3", "p4"] and out["positions"] == [4, 2]
    assert [out["candidates"][i - 1] for i in out["positions"]] == out["selected"]
    t = out["timings"]
    assert t["rerank_ms"] >= 200 and t["generate_ms"] >= 200 and t["retrieve_ms"] < 200 and t["batch_size"] == 1
    assert t["total_ms"] >= t["queue_ms"] + t["rerank_ms"] + t["generate_ms"]


def test_unusable_reranker_output_is_reported_not_answered():
    with TestClient(make_app(ScriptedBackend(outputs={0: "1. Topic: t1"}))) as c:
        out = c.post("/v1/answer", json={"question": "q", "passages": passages([1])}).json()
    assert out["answer"] is None and out["error"].startswith("unusable reranker output")
    assert out["raw"] == "1. Topic: t1" and out["well_formed"] is False


def test_answer_searches_the_index_when_no_passages_are_given(tmp_path):
    corpus = [Passage(id=f"d{i}", title=f"doc{i}", text=f"cats and dogs {i}") for i in range(5)]
    corpus.append(Passage(id="gold", title="hamlet", text="Hamlet was written by Shakespeare GOLD-1"))
    retriever = build_index(corpus, tmp_path / "idx", kind="bm25", show_progress=False)
    with TestClient(make_app(retriever=retriever, top_n=3)) as c:
        out = c.post("/v1/answer", json={"question": "who wrote hamlet"}).json()
        assert c.get("/health").json()["index"] is True
    assert out["retrieved"] is True and out["answer"] == "hamlet"
    assert [p["id"] for p in out["selected"]] == ["gold"]


def test_answer_without_passages_or_index_is_422(client):
    r = client.post("/v1/answer", json={"question": "q"})
    assert r.status_code == 422
    assert "passages" in r.json()["error"]["message"] and "no index" in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"passages": passages([1])}, "body.query"),
        ({"query": "", "passages": passages([1])}, "body.query"),
        ({"query": "q", "passages": [{"text": "x" * 101}]}, "body.passages.0.text"),
        ({"query": "q", "passages": [{"title": 3, "text": "x"}]}, "body.passages.0.title"),
        ({"query": "q", "passages": []}, "body.passages"),
        ({"query": "q", "passages": "text"}, "body.passages"),
        ({"query": "q", "passages": passages([1]), "top_k": 3}, "body.top_k"),
        ({"query": "q", "passages": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, "duplicate id 'a'"),
    ],
)
def test_invalid_rerank_input_is_422_naming_the_field(body, field):
    with TestClient(make_app(max_text_chars=100)) as c:
        r = c.post("/v1/rerank", json=body)
    assert r.status_code == 422, r.text
    assert field in r.json()["error"]["message"]


def test_invalid_answer_input_and_broken_json_are_422(client):
    r = client.post("/v1/answer", json={"question": "q", "passages": passages([1]), "top_n": 0, "task": "poetry"})
    assert r.status_code == 422
    assert "body.top_n" in r.json()["error"]["message"] and "body.task" in r.json()["error"]["message"]
    r = client.post("/v1/answer", content=b'{"question": ', headers={"content-type": "application/json"})
    assert r.status_code == 422 and "JSON" in r.json()["error"]["message"]


def test_too_many_passages_or_too_large_a_body_is_413():
    with TestClient(make_app(max_passages=5, max_body_bytes=20_000)) as c:
        r = c.post("/v1/rerank", json={"query": "q", "passages": passages([1], n=6)})
        assert r.status_code == 413 and "6 passages" in r.json()["error"]["message"]
        r = c.post("/v1/answer", json={"question": "q", "passages": passages([1], n=6)})
        assert r.status_code == 413
        big = {"query": "q", "passages": [{"text": "x" * 30_000}]}
        assert c.post("/v1/rerank", json=big).status_code == 413  # refused by Content-Length
        chunks = (b"x" * 5_000 for _ in range(5))  # no Content-Length: counted as it streams
        r = c.post("/v1/rerank", content=chunks, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "20000 bytes" in r.json()["error"]["message"]


def test_api_key_is_required_when_set():
    body = {"query": "q", "passages": passages([1])}
    with TestClient(make_app(api_key="s3cret")) as c:
        missing = c.post("/v1/rerank", json=body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in missing.json()["error"]["message"]
        for headers in ({"Authorization": "Bearer wrong"}, {"X-API-Key": "s3cre"}, {"Authorization": "Basic s3cret"}):
            assert c.post("/v1/rerank", json=body, headers=headers).status_code == 401
        # the key is checked before the body: bad input without a key is still 401
        assert c.post("/v1/answer", json={"nonsense": 1}).status_code == 401
        assert c.post("/v1/rerank", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/v1/answer", json={"question": "q", "passages": passages([1])},
                      headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/health").status_code == 200  # health stays open for probes


def test_health_and_docs(client):
    client.post("/v1/rerank", json={"query": "q", "passages": passages([1])})
    health = client.get("/health").json()
    assert health["ok"] is True and health["model"] == "scripted" and health["index"] is False
    assert health["queue_depth"] == 0 and health["max_queue"] == 64 and health["batches"]["items"] == 1
    assert client.get("/docs").status_code == 200
    assert {"/v1/rerank", "/v1/answer", "/health"} <= set(client.get("/openapi.json").json()["paths"])


def test_timeout_is_504():
    with TestClient(make_app(SlowBackend(delay=1.0), timeout_s=0.2)) as c:
        start = time.monotonic()
        r = c.post("/v1/rerank", json={"query": "q", "passages": passages([1])})
        assert r.status_code == 504 and "timed out" in r.json()["error"]["message"]
        assert time.monotonic() - start < 0.9


def test_after_shutdown_requests_get_503():
    c = TestClient(make_app())
    with c:
        pass  # lifespan ran: worker started, then stopped
    r = c.post("/v1/rerank", json={"query": "q", "passages": passages([1])})
    assert r.status_code == 503 and r.json()["error"]["type"] == "unavailable"


async def post_all(url: str, bodies: list[dict], path: str = "/v1/rerank") -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        return await asyncio.gather(*(http.post(path, json=b) for b in bodies))


def url(server: BackgroundServer) -> str:
    return f"http://{server.host}:{server.port}"


def test_full_queue_answers_503_with_retry_after():
    backend = SlowBackend(delay=0.5)
    app = make_app(backend, max_queue=1, max_batch=1, batch_wait_ms=0)
    with BackgroundServer(app) as server:
        responses = asyncio.run(post_all(url(server), [{"query": "q", "passages": passages([1])}] * 5))
    codes = [r.status_code for r in responses]
    assert set(codes) == {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1
    refused = next(r for r in responses if r.status_code == 503)
    assert int(refused.headers["retry-after"]) >= 1 and "queue is full" in refused.json()["error"]["message"]


def test_a_model_failure_fails_only_its_request():
    backend = SlowBackend(fail_on="BOOM")
    app = make_app(backend, max_batch=4, batch_wait_ms=300)
    bodies = [{"query": f"q{i}", "passages": passages([i + 1], tag=str(i))} for i in range(3)]
    bodies.append({"query": "q", "passages": passages([1], tag="x")})
    bodies[-1]["passages"][2]["text"] = "BOOM"  # same passage count: one model call for all four
    with BackgroundServer(app) as server:
        responses = asyncio.run(post_all(url(server), bodies))
        health = httpx.get(url(server) + "/health").json()
    assert [r.status_code for r in responses] == [200, 200, 200, 502]
    assert [r.json()["selected"] for r in responses[:3]] == [["p10"], ["p21"], ["p32"]]
    assert "RuntimeError: scripted failure" in responses[3].json()["error"]["message"]
    assert backend.batch_sizes[0] == 4  # tried as one batch, then one by one
    assert health["ok"] is True and health["batches"]["failed_items"] == 1


def test_micro_batching_raises_throughput():
    delay = 0.3
    backend = SlowBackend(delay=delay)
    app = make_app(backend, max_batch=16, batch_wait_ms=20)
    bodies = [{"query": f"q{i}", "passages": passages([i % 4 + 1], tag=str(i))} for i in range(16)]
    with BackgroundServer(app) as server:
        start = time.monotonic()
        [single] = asyncio.run(post_all(url(server), bodies[:1]))
        one = time.monotonic() - start
        start = time.monotonic()
        responses = asyncio.run(post_all(url(server), bodies))
        sixteen = time.monotonic() - start
    assert single.status_code == 200 and [r.status_code for r in responses] == [200] * 16
    # each request got its own selection back, not a neighbour's
    assert [r.json()["selected"] for r in responses] == [[f"p{i % 4 + 1}{i}"] for i in range(16)]
    assert max(backend.batch_sizes) > 1
    assert sixteen < 4 * one, (one, sixteen, backend.batch_sizes)  # one after another: 16 x


@pytest.mark.slow
def test_real_model_end_to_end(smollm):
    # The two requests arrive together, so their reranker prompts share one batched call.
    app = create_app(DynamicReranker(smollm, constrained=True, max_new_tokens=20),
                     Generator(smollm, max_new_tokens=8), settings=ServeSettings(batch_wait_ms=500))
    docs = [
        {"id": "paris", "title": "Paris", "text": "Paris is the capital and largest city of France."},
        {"id": "tokyo", "title": "Tokyo", "text": "Tokyo is the capital of Japan."},
        {"id": "nile", "title": "Nile", "text": "The Nile is a river in Africa."},
    ]
    question = "What is the capital of France?"

    async def both(base: str) -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=base, timeout=300) as http:
            return await asyncio.gather(http.post("/v1/rerank", json={"query": question, "passages": docs}),
                                        http.post("/v1/answer", json={"question": question, "passages": docs}))

    with BackgroundServer(app) as server:
        rerank, answer = asyncio.run(both(url(server)))
    assert rerank.status_code == 200 and answer.status_code == 200
    sel = rerank.json()
    assert sel["well_formed"] is True and sel["error"] is None  # constrained decoding
    assert set(sel["selected"]) <= {"paris", "tokyo", "nile"} and sel["k"] == len(sel["positions"])
    out = answer.json()
    assert out["error"] is None and isinstance(out["answer"], str) and out["answer"]
    assert [p["id"] for p in out["selected"]] == sel["selected"]  # same prompt, same greedy choice
