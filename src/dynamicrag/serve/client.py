"""``dynamicrag ask --server URL``: one question to a running ``dynamicrag serve``.

A fresh ``ask`` process spends ~4 s on imports and loading before any work
(``benchmarks/cold_start.py``); a server keeps the models and the index loaded, so asking it
costs the question alone. The client is the standard library's urllib: one JSON POST needs
nothing more, and it keeps torch and the web stack out of the asking process.

Example:
    >>> answer = ask_server("http://127.0.0.1:8000", "who wrote hamlet?")  # doctest: +SKIP
    >>> answer.text, [p.id for p in answer.passages]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from dynamicrag.api import Answer
from dynamicrag.llm.base import Completion
from dynamicrag.pipeline import Outcome
from dynamicrag.schema import Example, Passage, Selection


class ServerError(RuntimeError):
    """The server could not be reached, or refused the question (the message names the URL and why)."""


def ask_server(url: str, question: str, *, task: str = "qa", top_n: int | None = None, api_key: str | None = None,
               timeout_s: float = 300.0) -> Answer:
    """Ask ``POST {url}/v1/answer`` to answer ``question`` from its index.

    Args:
        url: The server's address, e.g. ``http://127.0.0.1:8000``.
        question: The question.
        task: Decides the answer's form, as for :meth:`~dynamicrag.DynamicRAG.ask`.
        top_n: Passages retrieved for the reranker (None: the server's default).
        api_key: Sent as a bearer token when the server requires one.
        timeout_s: Seconds to wait for the answer.

    Returns:
        The :class:`~dynamicrag.api.Answer` a local ``ask`` would return (its record is the
        ``infer`` record of the server's candidates, selection and answer; passage scores are
        not sent, so they are None).

    Raises:
        ServerError: Nothing answers at ``url``, the request timed out, or the server answered
            with an HTTP error (its message included).
    """
    start = time.perf_counter()
    endpoint = url.rstrip("/") + "/v1/answer"
    body = {"question": question, "task": task, **({"top_n": top_n} if top_n else {})}
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
    request = urllib.request.Request(endpoint, data=json.dumps(body).encode(), headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            reply = json.load(response)
    except urllib.error.HTTPError as err:
        raise ServerError(f"{endpoint} answered HTTP {err.code}: {_error_message(err)}") from None
    except (urllib.error.URLError, OSError) as err:  # refused, unknown host, timed out
        reason = getattr(err, "reason", err)
        raise ServerError(f"no answer from {endpoint}: {reason} (is `dynamicrag serve` running there?)") from None
    return answer_of_reply(question, task, reply, time.perf_counter() - start)


def answer_of_reply(question: str, task: str, reply: dict[str, Any], total_s: float) -> Answer:
    """The :class:`~dynamicrag.api.Answer` of a ``/v1/answer`` reply (built as a local one is,
    from the pipeline's outcome, so its record, attribution and display are the same)."""
    candidates = [Passage(id=p["id"], title=p["title"], text=p["text"]) for p in reply["candidates"]]
    example = Example(id="ask", question=question, task=task, passages=candidates)
    selection = Selection(ids=reply["positions"], raw=reply["raw"], well_formed=reply["well_formed"],
                          error=reply["error"])
    completion = Completion(reply["answer"]) if reply["answer"] is not None else None
    ms = reply["timings"]
    timings = {"retrieve": ms["retrieve_ms"] / 1000, "rerank": ms["rerank_ms"] / 1000, "generate": ms["generate_ms"] / 1000}
    return Answer.of(Outcome(example, selection, completion, timings=timings), total_s)


def _error_message(err: urllib.error.HTTPError) -> str:
    """The server's JSON error message (``{"error": {"message": ...}}``), else the raw body."""
    raw = err.read().decode("utf-8", "replace")
    try:
        return json.loads(raw)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return raw.strip()[:300] or str(err.reason)
