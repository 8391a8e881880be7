"""A generator answer cache for the benchmark: one answer per (generator, exact prompt).

The benchmark's rows ask the same generator the same prompts again and again: the top-1 prompt
of a question is also the oracle-k prompt for k = 1, a single-passage oracle prompt, and often
the gold prompt. The cache answers each prompt once and reuses it across rows and reruns.

The key is a hash of the generator's fingerprint (backend, model and its files, LoRA adapter
and its files, dtype, decoding settings of every task, backend options) and the exact chat
sent to it, so a change of any generator setting never reuses an answer made under another.
Entries go to an append-only JSONL file (one line per answer, flushed as written); a run killed
mid-write loses at most the partial last line.

Example:
    >>> cache = AnswerCache(out_dir / "answer_cache.jsonl")  # doctest: +SKIP
    >>> generator = CachedGenerator(backend, style, max_new_tokens=48, cache=cache)
    >>> generator.answer(examples, selections)  # asks the backend only for prompts never seen
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamicrag.data import ResumableJsonlWriter, read_jsonl
from dynamicrag.generate import Generator
from dynamicrag.llm.base import Backend, Chat, Completion, SamplingParams
from dynamicrag.schema import Example, Selection

logger = logging.getLogger(__name__)


def local_files(model: str) -> list[list[Any]] | None:
    """(relative path, size, mtime_ns) of a local checkpoint's files; None for a hub id or a
    server's model name. A retrained, copied or re-converted checkpoint counts as another model."""
    path = Path(model)
    if not path.exists():
        return None
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return [[str(p.relative_to(path)) if p != path else p.name, p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def generator_fingerprint(
    backend: Backend,
    max_new_tokens: int | None,
    temperature: float = 0.0,
    options: Mapping[str, Any] | None = None,
    adapter: str | None = None,
    generation: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """What, besides the prompt, decides a generator's answer.

    Args:
        backend: The generator's backend (its ``name``, ``model`` and LoRA ``adapter`` folder,
            if it runs one).
        max_new_tokens: The answer cap.
        temperature: Sampling temperature (0: greedy).
        options: Backend options (``base_url``, ``batch_size``, ...).
        adapter: The LoRA adapter folder the generator runs (default: the backend's ``adapter``).
        generation: The generator's decoding settings per task
            (:meth:`~dynamicrag.generate.GenerationConfig.to_dict`: stop strings, n-gram ban,
            frequency penalty, label choices, caps), so that answers made under other decoding
            are never reused.

    Returns:
        A JSON-serialisable dict: backend, model, the model's local files (see above), decoding
        settings and options; with an adapter, also its folder and files (left out without
        one, so that caches and run settings written before adapters existed stay valid); the
        dtype the backend computes in, unless fp32 (left out for the same reason).
    """
    model = str(getattr(backend, "model", ""))
    out = {
        "backend": getattr(backend, "name", type(backend).__name__),
        "model": model,
        "model_files": local_files(model),
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "options": dict(sorted((options or {}).items())),
    }
    if generation is not None:
        out["generation"] = json.loads(json.dumps(generation))  # plain JSON (tuples -> lists), as hashed
    adapter = adapter or getattr(backend, "adapter", None)
    if adapter:
        out.update(adapter=str(adapter), adapter_files=local_files(str(adapter)))
    # The precision the answers are computed in: "auto" is bf16 on CPUs with native bf16
    # (transformers backend), so the configured option does not tell. Left out for fp32, as caches written
    # before it was recorded were all fp32 on CPU.
    describe = getattr(backend, "describe", None)
    dtype = describe().get("dtype") if callable(describe) else None
    if dtype and dtype != "float32":
        out["dtype"] = dtype
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class AnswerCache:
    """Answers by key, read from and appended to a JSONL file (``{"key", "answer"}`` lines).

    Args:
        path: The cache file (created if missing; a partial last line is dropped).

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer = ResumableJsonlWriter(self.path)  # cuts a partial line left by a kill
        self._answers: dict[str, str] = {}
        for line, entry in read_jsonl(self.path):
            if not isinstance(entry.get("key"), str) or not isinstance(entry.get("answer"), str):
                raise ValueError(f"{self.path}, line {line}: not an answer cache entry (needs string 'key' and 'answer')")
            self._answers[entry["key"]] = entry["answer"]
        logger.info("%s: %d cached answers", self.path, len(self._answers))

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, key: str) -> bool:
        return key in self._answers

    def get(self, key: str) -> str | None:
        return self._answers.get(key)

    def put(self, key: str, answer: str) -> None:
        """Store an answer (written and flushed at once); a key already held is left as it is."""
        if key not in self._answers:
            self._answers[key] = answer
            self._writer.write({"key": key, "answer": answer})

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class CachedGenerator(Generator):
    """A :class:`~dynamicrag.generate.Generator` that asks its backend only for prompts the
    cache has no answer to (once each, also within a batch), and remembers what it did.

    Args:
        cache: Where answers are kept (may be shared by generators of other settings: the
            keys differ).
        backend_options: Backend options, part of the fingerprint.
        adapter: The LoRA adapter folder the generator role runs, part of the fingerprint
            (default: the backend's ``adapter``).

    Attributes:
        log: ``(example id, generated)`` per answer given, in order: ``generated`` is False
            when the answer came from the cache. :meth:`take_log` empties it.
    """

    cache: AnswerCache | None = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    adapter: str | None = None
    log: list[tuple[str, bool]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        super().__post_init__()  # max_new_tokens / temperature shorthands into the decoding config
        if self.cache is None:
            raise ValueError("CachedGenerator needs a cache")
        self.fingerprint = generator_fingerprint(
            self.backend, self.config.max_new_tokens, self.config.temperature, self.backend_options, self.adapter,
            generation=self.settings(),
        )
        self._fingerprint_digest = _digest(self.fingerprint)

    def key(self, chat: Chat) -> str:
        """The cache key of ``chat`` under this generator's settings."""
        return _digest([self._fingerprint_digest, chat])

    def complete(self, examples: Sequence[Example], selections: Sequence[Selection]) -> list[Completion]:
        """Completions in input order (the text only: a cached answer keeps no token counts or
        ``extra``); only prompts never answered before reach the backend, each with its
        example's task's decoding settings."""
        if not examples:
            return []
        assert self.cache is not None
        chats = [self.chat(ex, sel) for ex, sel in zip(examples, selections)]
        keys = [self.key(chat) for chat in chats]
        todo: dict[str, tuple[Chat, SamplingParams]] = {}  # first-seen order; a prompt twice is asked once
        for ex, key, chat in zip(examples, keys, chats):
            if key not in self.cache and key not in todo:
                todo[key] = (chat, self.params(ex.task))
        by_params: dict[SamplingParams, list[str]] = {}
        for key, (_, params) in todo.items():
            by_params.setdefault(params, []).append(key)
        for params, batch in by_params.items():
            for key, completion in zip(batch, self.backend.generate([todo[k][0] for k in batch], params)):
                self.cache.put(key, completion[0].text.strip())
        generated = set(todo)
        for ex, key in zip(examples, keys):
            self.log.append((ex.id, key in generated))
            generated.discard(key)  # a second ask of the same prompt is a reuse
        return [Completion(text=self.cache.get(key)) for key in keys]  # type: ignore[arg-type]

    def take_log(self) -> list[tuple[str, bool]]:
        """The log so far, emptied."""
        log, self.log = self.log, []
        return log


__all__ = ["AnswerCache", "CachedGenerator", "generator_fingerprint", "local_files"]
