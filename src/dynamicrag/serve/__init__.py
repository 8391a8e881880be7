"""Serving: ``dynamicrag serve`` (rerank and answer over HTTP, micro-batched), its client
(``ask --server``), an OpenAI-compatible server around any LLM backend (extra ``[serve]``), and
the background process that keeps ``ask``'s models loaded (:mod:`.keep_alive`, no web framework).

Names are imported when first used, so ``import dynamicrag.serve`` (and the ``serve`` command's
options, from :mod:`.settings`) loads no web framework.
"""

from dynamicrag.lazy import lazy_exports

_EXPORTS = {
    "BackgroundServer": "dynamicrag.serve.background",
    "MicroBatcher": "dynamicrag.serve.batcher",
    "ServeSettings": "dynamicrag.serve.settings",
    "ServerError": "dynamicrag.serve.client",
    "ask_server": "dynamicrag.serve.client",
    "create_app": "dynamicrag.serve.app",
    "create_openai_app": "dynamicrag.serve.openai_server",
    "run_openai_server": "dynamicrag.serve.openai_server",
    "serve_command": "dynamicrag.serve.command",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
