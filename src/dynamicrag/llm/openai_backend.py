"""A backend that calls any OpenAI-compatible ``/v1/chat/completions`` server.

vLLM (``vllm serve``), the llama.cpp server, Ollama, TGI and the project's own server
(:mod:`dynamicrag.serve.openai_server`) all speak this API, so one client covers them. Requests
run concurrently (servers batch them on their side) and come back in input order.

Constrained decoding is where the servers differ; ``guided_decoding`` picks the request field
sent when ``SamplingParams.id_list_max`` is set (see :data:`GUIDED_DECODING`):

* ``"structured_outputs"`` (default): ``{"structured_outputs": {"regex": id_list_regex(k)}}``,
  vLLM >= 0.10.2 (vLLM 0.12 removed the older field).
* ``"guided_regex"``: ``{"guided_regex": id_list_regex(k)}``, vLLM before 0.12.
* ``"grammar"``: a GBNF grammar in ``{"grammar": id_list_gbnf(k)}``, the llama.cpp server.
* ``"dynamicrag"``: ``{"id_list_max": k}``, the project's own server, which also enforces
  distinct ids (a regex cannot).
* ``"none"``: servers with no regex constraint (Ollama, the OpenAI API); a request with
  ``id_list_max`` then raises, as the :class:`~dynamicrag.llm.base.Backend` protocol says.

A regex or grammar holds the ids to 1..k; distinct ids are left to the reranker's parser.

A label set (``SamplingParams.choices``) goes the same way (:func:`choice_extra_body`):
``{"structured_outputs": {"choice": [...]}}``, ``{"guided_choice": [...]}`` (vLLM before
0.12, and dynamicrag's own server), or a GBNF alternation; with ``"none"`` the free answer is
snapped to the first label it names and the completion keeps the model's text in
``extra["snapped_from"]``. Loop control: OpenAI's ``frequency_penalty`` is sent as given;
``no_repeat_ngram_size`` reaches dynamicrag's own server as is, and every other server gets
the frequency-penalty stand-in of :func:`~dynamicrag.llm.base.loop_frequency_penalty`.
``continue_bias`` reaches dynamicrag's own server as is; other servers would need their
model's token ids for OpenAI's ``logit_bias``, so a request with it raises.

Example:
    >>> llm = OpenAIBackend("http://127.0.0.1:8000/v1", "Qwen/Qwen2.5-7B-Instruct")
    >>> llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=8))
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from dynamicrag.llm.base import Chat, Completion, SamplingParams, loop_frequency_penalty, snapped_completion
from dynamicrag.llm.constrain import id_list_gbnf, id_list_regex

logger = logging.getLogger(__name__)

GUIDED_DECODING: dict[str, str] = {
    "structured_outputs": "vLLM >= 0.10.2: structured_outputs.regex",
    "guided_regex": "vLLM < 0.12: guided_regex",
    "grammar": "llama.cpp server: GBNF grammar",
    "dynamicrag": "dynamicrag's own server: id_list_max (range and distinctness enforced too)",
    "none": "no constrained decoding (requests with id_list_max raise)",
}

CHARS_PER_TOKEN = 4  # the usual rough figure for English BPE vocabularies


def guided_extra_body(guided_decoding: str, id_list_max: int) -> dict[str, Any]:
    """The request fields that constrain a server to the reranker's id grammar.

    Args:
        guided_decoding: One of :data:`GUIDED_DECODING`.
        id_list_max: The largest passage id.

    Returns:
        Fields to merge into the request body.

    Raises:
        ValueError: Unknown ``guided_decoding``, or ``"none"`` (the server cannot constrain).
    """
    if guided_decoding == "structured_outputs":
        return {"structured_outputs": {"regex": id_list_regex(id_list_max)}}
    if guided_decoding == "guided_regex":
        return {"guided_regex": id_list_regex(id_list_max)}
    if guided_decoding == "grammar":
        return {"grammar": id_list_gbnf(id_list_max)}
    if guided_decoding == "dynamicrag":
        return {"id_list_max": id_list_max}
    if guided_decoding == "none":
        raise ValueError(
            "id_list_max needs constrained decoding, but guided_decoding='none'; "
            f"pick one of {sorted(GUIDED_DECODING)} that the server supports"
        )
    raise ValueError(f"unknown guided_decoding {guided_decoding!r}; choose one of {sorted(GUIDED_DECODING)}")


def choice_gbnf(choices: Sequence[str]) -> str:
    """A GBNF grammar (llama.cpp) whose language is exactly ``choices``."""
    return "root ::= " + " | ".join(json.dumps(c) for c in choices)


def choice_extra_body(guided_decoding: str, choices: Sequence[str]) -> dict[str, Any] | None:
    """The request fields that constrain a server to one of ``choices``, or None when it cannot
    (``"none"``: the caller snaps the free answer instead).

    Raises:
        ValueError: Unknown ``guided_decoding``.
    """
    if guided_decoding == "structured_outputs":
        return {"structured_outputs": {"choice": list(choices)}}
    if guided_decoding in ("guided_regex", "dynamicrag"):
        return {"guided_choice": list(choices)}
    if guided_decoding == "grammar":
        return {"grammar": choice_gbnf(choices)}
    if guided_decoding == "none":
        return None
    raise ValueError(f"unknown guided_decoding {guided_decoding!r}; choose one of {sorted(GUIDED_DECODING)}")


def _split(total: int, parts: int) -> list[int]:
    """Split ``total`` into ``parts`` near-equal integers that add up to it."""
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


class OpenAIBackend:
    """Generate through an OpenAI-compatible chat completions server.

    Args:
        base_url: The server's API root, e.g. ``"http://127.0.0.1:8000/v1"``.
        model: The model name the server serves.
        api_key: Sent as the bearer token; default ``$OPENAI_API_KEY``, else ``"EMPTY"``
            (local servers ignore it).
        timeout: Seconds per request.
        max_concurrency: Requests in flight at once.
        max_retries: Retries on connection errors, 408/409/429 and 5xx (the openai client's).
        guided_decoding: How ``id_list_max`` is sent; one of :data:`GUIDED_DECODING`.
        tokenizer: A local tokenizer (path, hub id or ``"smollm2-135m-instruct"``) for exact
            :meth:`count_tokens`; without it the count is an estimate of one token per
            :data:`CHARS_PER_TOKEN` characters.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120,
        max_concurrency: int = 8,
        max_retries: int = 2,
        guided_decoding: str = "structured_outputs",
        tokenizer: str | None = None,
    ) -> None:
        from openai import OpenAI

        if not model:
            raise ValueError("OpenAIBackend needs the served model's name (model=...)")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if guided_decoding not in GUIDED_DECODING:
            raise ValueError(f"unknown guided_decoding {guided_decoding!r}; choose one of {sorted(GUIDED_DECODING)}")
        self.base_url = base_url
        self.model = model
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.guided_decoding = guided_decoding
        self.tokenizer_name = tokenizer
        self.client = OpenAI(
            base_url=base_url,
            api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
            timeout=timeout,
            max_retries=max_retries,
        )
        self._tokenizer = None
        if tokenizer is not None:
            from transformers import AutoTokenizer

            from dynamicrag.llm.models import resolve_model

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_model(tokenizer))

    def describe(self) -> dict[str, Any]:
        """The client's settings (the server's own model settings are not visible from here)."""
        return {
            "name": self.name,
            "model": self.model,
            "base_url": self.base_url,
            "guided_decoding": self.guided_decoding,
            "max_concurrency": self.max_concurrency,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
            "tokenizer": self.tokenizer_name,
        }

    def count_tokens(self, chat: Chat) -> int:
        """Prompt tokens of ``chat``: exact with a local tokenizer, else ``chars / 4`` (estimate)."""
        if self._tokenizer is not None:
            text = self._tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
            return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])
        chars = sum(len(m["content"]) for m in chat)
        return max(1, round(chars / CHARS_PER_TOKEN))

    def request_kwargs(self, params: SamplingParams) -> dict[str, Any]:
        """The ``chat.completions.create`` arguments (besides ``messages``) for ``params``."""
        kwargs: dict[str, Any] = {
            "model": self.model,
            "n": params.n,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "max_tokens": params.max_new_tokens,
        }
        if params.seed is not None:
            kwargs["seed"] = params.seed
        if params.stop:
            kwargs["stop"] = list(params.stop)
        extra_body: dict[str, Any] = {}
        if params.id_list_max is not None:
            extra_body.update(guided_extra_body(self.guided_decoding, params.id_list_max))
        if params.choices is not None:
            extra_body.update(choice_extra_body(self.guided_decoding, params.choices) or {})
        if self.guided_decoding == "dynamicrag" and params.no_repeat_ngram_size:
            extra_body["no_repeat_ngram_size"] = params.no_repeat_ngram_size  # exact there
            if params.frequency_penalty:
                kwargs["frequency_penalty"] = params.frequency_penalty
        elif penalty := loop_frequency_penalty(params):
            kwargs["frequency_penalty"] = penalty
        if params.continue_bias:
            # OpenAI's logit_bias takes the server's token ids, which this client does not know.
            if self.guided_decoding != "dynamicrag":
                raise ValueError(
                    "continue_bias needs the server model's token ids; only dynamicrag's own server "
                    "(guided_decoding='dynamicrag') takes it: run the reranker there or set --continue-bias 0"
                )
            extra_body["continue_bias"] = params.continue_bias
        if extra_body:
            kwargs["extra_body"] = extra_body
        return kwargs

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[Completion]]:
        """Return ``params.n`` completions for each chat, in input order.

        Per-completion ``completion_tokens`` split the server's total evenly when ``n > 1``
        (the API reports one total per request); their sum is the server's figure.

        Raises:
            ConnectionError: The server cannot be reached (names the URL).
            RuntimeError: The server answered with an error status (names status and body).
        """
        kwargs = self.request_kwargs(params)
        if not chats:
            return []
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(chats))) as pool:
            results = list(pool.map(lambda chat: self._one(chat, kwargs, params), chats))
        if params.choices is not None and choice_extra_body(self.guided_decoding, params.choices) is None:
            results = [[snapped_completion(c, params.choices) for c in completions] for completions in results]
        return results

    def _one(self, chat: Chat, kwargs: dict[str, Any], params: SamplingParams) -> list[Completion]:
        import openai

        try:
            response = self.client.chat.completions.create(messages=chat, **kwargs)
        except openai.APITimeoutError as e:
            raise TimeoutError(f"no answer from {self.base_url} within {self.timeout}s") from e
        except openai.APIConnectionError as e:
            raise ConnectionError(f"cannot reach the LLM server at {self.base_url}: {e.__cause__ or e}") from e
        except openai.APIStatusError as e:
            raise RuntimeError(f"LLM server {self.base_url} answered {e.status_code}: {e.message}") from e
        choices = sorted(response.choices, key=lambda c: c.index)
        if len(choices) != params.n:
            raise RuntimeError(f"LLM server {self.base_url} returned {len(choices)} choices, asked for {params.n}")
        usage = response.usage
        extra: dict[str, Any] = {}
        if usage is not None:
            prompt_tokens, completion_total = usage.prompt_tokens, usage.completion_tokens
        else:  # some servers omit usage: estimate, and say so
            prompt_tokens = self.count_tokens(chat)
            completion_total = sum(round(len(c.message.content or "") / CHARS_PER_TOKEN) for c in choices)
            extra["estimated_usage"] = True
        counts = _split(completion_total, len(choices))
        return [
            Completion(
                text=choice.message.content or "",
                prompt_tokens=prompt_tokens,
                completion_tokens=count,
                finish_reason=choice.finish_reason,
                extra=dict(extra),
            )
            for choice, count in zip(choices, counts)
        ]
