"""Serving: an OpenAI-compatible HTTP server around any LLM backend (extra ``[serve]``)."""

from __future__ import annotations

from dynamicrag.serve.openai_server import BackgroundServer, create_openai_app, run_openai_server

__all__ = ["BackgroundServer", "create_openai_app", "run_openai_server"]
