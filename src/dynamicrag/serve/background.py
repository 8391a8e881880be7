"""Run an ASGI app with uvicorn in a background thread (tests, benchmarks, notebooks)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

try:
    import uvicorn
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("the dynamicrag servers need `pip install dynamicrag[serve]`") from e

logger = logging.getLogger(__name__)


class BackgroundServer:
    """Run an ASGI app with uvicorn in a background thread (for tests, benchmarks, notebooks).

    Args:
        app: The app, e.g. from :func:`~dynamicrag.serve.openai_server.create_openai_app`.
        host: Interface to bind; loopback by default.
        port: 0 picks a free port (read back after binding, so there is no race).
        startup_timeout: Seconds to wait for the server to accept connections.

    Example:
        >>> with BackgroundServer(app) as server:
        ...     OpenAIBackend(server.base_url, "model")
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, startup_timeout: float = 30) -> None:
        self.host = host
        self.port = port
        self.startup_timeout = startup_timeout
        self._server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """The OpenAI API root, ``http://host:port/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    def start(self) -> BackgroundServer:
        """Start serving and return once the port accepts connections.

        Raises:
            RuntimeError: The server did not start (e.g. the port is taken) within the timeout.
        """
        self._thread = threading.Thread(target=self._server.run, name="dynamicrag-uvicorn", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server on {self.host}:{self.port} did not start within {self.startup_timeout}s")
            time.sleep(0.02)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        logger.info("serving on %s", self.base_url)
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for its thread (runs the app's shutdown)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=30)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
