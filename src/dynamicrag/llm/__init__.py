"""LLM backends behind one protocol (:class:`Backend`): transformers, OpenAI-compatible HTTP,
vLLM and llama.cpp.

Example:
    >>> from dynamicrag.llm import SamplingParams, load_backend
    >>> llm = load_backend("transformers")  # the bundled SmolLM2-135M-Instruct, on CPU
    >>> [[completion]] = llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=8))
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from dynamicrag.llm.base import Backend, Chat, Completion, Message, SamplingParams, StreamingBackend, stream_text

BACKENDS: dict[str, str] = {
    "transformers": "dynamicrag.llm.transformers_backend:TransformersBackend",
    "openai": "dynamicrag.llm.openai_backend:OpenAIBackend",
    "vllm": "dynamicrag.llm.vllm_backend:VLLMBackend",
    "llamacpp": "dynamicrag.llm.llamacpp_backend:LlamaCppBackend",
}
"""Backend name -> ``module:class``, imported only when used (vllm and llama_cpp are extras)."""

_LOADED: dict[tuple, Backend] = {}
_LOADED_LOCK = threading.Lock()


def backend_class(name: str) -> type:
    """The class registered under ``name`` in :data:`BACKENDS`.

    Raises:
        ValueError: Unknown name (the message lists the known ones).
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown LLM backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def load_backend(name: str = "transformers", model: str | None = None, **kwargs: Any) -> Backend:
    """Build a backend once per process and hand the same object to every later caller.

    Args:
        name: One of :data:`BACKENDS`.
        model: The model for that backend (``None``: the bundled SmolLM2 where the backend
            has a default; the HTTP backend needs the served model's name).
        **kwargs: Passed to the backend's constructor (e.g. ``base_url`` for ``"openai"``,
            ``device`` or ``batch_size`` for ``"transformers"``).

    Returns:
        The backend; calls with the same ``(name, model, kwargs)`` return the same object.

    Raises:
        ValueError: Unknown ``name``.
    """
    cls = backend_class(name)
    key = (name, model, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _LOADED_LOCK:
        if key not in _LOADED:
            _LOADED[key] = cls(model, **kwargs) if name != "openai" else cls(model=model, **kwargs)
        return _LOADED[key]


__all__ = [
    "BACKENDS", "Backend", "Chat", "Completion", "Message", "SamplingParams", "StreamingBackend", "backend_class",
    "load_backend", "stream_text",
]
