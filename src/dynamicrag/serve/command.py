"""``dynamicrag serve``: load the models (and the index), then serve until interrupted."""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dynamicrag.serve.settings import API_KEY_ENV, SERVE_DEFAULTS, ServeSettings

logger = logging.getLogger(__name__)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve_command(
    config: Any = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    index_dir: str | Path | None = None,
    loading: Callable[[str], contextlib.AbstractContextManager] = lambda what: contextlib.nullcontext(),
    **settings: Any,
) -> None:
    """Load the models (and the index), then serve until interrupted (Ctrl-C).

    Args:
        config: What plays each role, a :class:`~dynamicrag.build.PipelineConfig` (None: every
            default), resolved with :data:`~dynamicrag.serve.settings.SERVE_DEFAULTS`.
        host: Interface to bind; loopback by default (another one serves other machines: set
            an API key).
        port: TCP port.
        index_dir: Index searched when ``/v1/answer`` gets no passages (None: passages required).
        loading: Entered around each loading step with what loads (the CLI shows a status line).
        **settings: Fields of :class:`~dynamicrag.serve.settings.ServeSettings`; ``api_key``
            falls back to ``$DYNAMICRAG_API_KEY`` (which keeps the key out of the process
            list), ``top_n`` to the config's.

    Raises:
        ValueError: A bad option (unknown backend, adapter, prompt style, limits).
        NotAnIndexError: ``index_dir`` is not an index.
    """
    import uvicorn

    from dynamicrag.build import PipelineConfig, build_pipeline, models_label, resolve_config
    from dynamicrag.retrieve import load_index
    from dynamicrag.serve.app import create_app

    config = resolve_config(config or PipelineConfig(), **SERVE_DEFAULTS)
    served = ServeSettings(**{**settings, "api_key": settings.get("api_key") or os.environ.get(API_KEY_ENV) or None,
                              "top_n": settings.get("top_n") or config.top_n})
    if not _is_loopback(host) and served.api_key is None:
        logger.warning("serving on %s without an API key: anyone who can reach it can use the model", host)
    retriever = None
    if index_dir:
        with loading(f"loading the index {index_dir}"):
            retriever = load_index(index_dir)
    with loading(f"loading {models_label(config)}"):
        pipeline = build_pipeline(config)
    app = create_app(pipeline.reranker, pipeline.generator, retriever, served)
    # After Ctrl-C, running requests get up to one timeout to finish; then the rest get 503.
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=int(served.timeout_s) + 1)
