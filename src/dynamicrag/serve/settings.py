"""The server's limits and batching (:class:`ServeSettings`), without the web framework: the
command line builds its ``serve`` options from these fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

API_KEY_ENV = "DYNAMICRAG_API_KEY"
MAX_ID_CHARS = 256


@dataclass
class ServeSettings:
    """Limits and batching of the server (the same fields back the CLI flags).

    Args:
        model_name: Shown by ``/health``; default the generator backend's model.
        api_key: Required from clients when set.
        max_passages: Most passages per request.
        max_text_chars: Longest query, question, passage text or title, in characters.
        max_body_bytes: Largest request body; default: what the largest valid request can
            take (``max_passages`` passages of ``max_text_chars``, JSON-escaped).
        max_queue: Most requests waiting for the model.
        timeout_s: Per-request deadline, queue wait included.
        max_batch: Most requests per model call.
        batch_wait_ms: Longest wait for a batch to fill.
        top_n: Passages retrieved from the index when ``/v1/answer`` gets none; None: 10, or
            ``max_passages`` if smaller.
    """

    model_name: str | None = field(default=None, metadata={"help": "Model name shown by /health (default: the backend's)"})
    api_key: str | None = field(
        default=None,
        repr=False,  # never in logs
        metadata={"help": f"Require this key (header 'Authorization: Bearer KEY' or 'X-API-Key'); "
                          f"default: ${API_KEY_ENV} if set, else no key"},
    )
    max_passages: int = field(default=50, metadata={"help": "Most passages per request (more: 413)"})
    max_text_chars: int = field(
        default=4000, metadata={"help": "Longest query, question, passage text or title in characters (more: 422)"}
    )
    max_body_bytes: int | None = field(
        default=None, metadata={"help": "Largest request body in bytes (more: 413); default: fits the largest valid request"}
    )
    max_queue: int = field(default=64, metadata={"help": "Most requests waiting for the model; more get 503 + Retry-After"})
    timeout_s: float = field(default=120.0, metadata={"help": "Seconds a request may take, queue wait included (then 504)"})
    max_batch: int = field(default=8, metadata={"help": "Most requests gathered into one model call"})
    batch_wait_ms: float = field(default=10.0, metadata={"help": "Longest wait in ms for a batch to fill"})
    top_n: int | None = field(
        default=None, metadata={"help": "Passages retrieved from --index when /v1/answer gets none; default 10 (at most max_passages)"}
    )

    def __post_init__(self) -> None:
        if self.top_n is None:
            self.top_n = min(10, self.max_passages)  # `ask`'s default
        for name in ("max_passages", "max_text_chars", "max_queue", "max_batch", "top_n"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.timeout_s <= 0 or self.batch_wait_ms < 0:
            raise ValueError(f"timeout_s must be > 0 and batch_wait_ms >= 0, got {self.timeout_s}, {self.batch_wait_ms}")
        if self.top_n > self.max_passages:
            raise ValueError(f"top_n ({self.top_n}) cannot exceed max_passages ({self.max_passages})")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("api_key is empty; leave it unset to serve without a key")
        if self.max_body_bytes is None:
            # JSON escapes a character in at most 6 bytes (\uXXXX); 64 KiB for the rest.
            per_passage = (2 * self.max_text_chars + MAX_ID_CHARS) * 6 + 64
            self.max_body_bytes = 65536 + self.max_text_chars * 6 + self.max_passages * per_passage
        elif self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes must be >= 1024, got {self.max_body_bytes}")



SERVE_DEFAULTS: dict[str, Any] = {"top_n": None, "constrained": True}
"""The server's defaults for what neither the options nor the reranker adapter's manifest set
(:func:`dynamicrag.build.resolve_config`): constrained decoding, as the base model is not
trained as a reranker; ``top_n`` left to :class:`ServeSettings`."""
