"""What a run was made with, written beside its output as ``<output>.settings.json``.

One file per output, one mechanism (:func:`dynamicrag.executors.run_resumable` writes and checks
it for every resumable stage and benchmark run). It holds two kinds of settings:

* the settings that decide the records (model, dtype, adapter, prompts, decoding, the
  reranker's and the generator's settings, the stage's own config): resuming an output with
  other values is refused, as the records would mix two runs;
* the settings that are recorded only (:data:`RECORDED_ONLY` at the top level and
  :data:`SPEED_KEYS` inside a backend's ``describe()``): the package and library versions, the
  command line, the date, threads, batch size, caches and other speed options. They change how
  fast a run goes, not its records (up to floating-point rounding: in bf16 a batch layout can
  flip a near-tie greedy token, as the thread count can in any dtype). A resumed run may change
  them; the file then holds the latest run's, and the change is logged.

:func:`compared_settings` is the first kind, the part :func:`~dynamicrag.executors.run_resumable` compares.

To record more, add keys to a backend's ``describe()`` (add the key to :data:`SPEED_KEYS` if
it only changes speed) or pass another section to :func:`run_settings` (``**sections``):
every section is a plain JSON object under its own name.

Example:
    >>> settings = run_settings(backends={"reranker": r, "generator": g}, reranker=pipeline.reranker)
    >>> run_resumable(items, "out/results.jsonl", 8, fn_factory, settings=settings)  # + out/results.jsonl.settings.json
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SUFFIX = ".settings.json"

RECORDED_ONLY = frozenset({"dynamicrag", "command", "date", "python", "threads", "run"})
"""Top-level sections recorded but never compared on resume (``run``: a stage's batch size,
executor and workers)."""

SPEED_KEYS = frozenset({
    # transformers (TransformersBackend.describe)
    "dtype_reason", "device", "batch_size", "threads", "thread_env", "attention", "prefix_cache", "prefill",
    "kv_cache", "share_prefill", "adapter_name", "torch", "transformers",
    # OpenAI-compatible client, vLLM engine, llama.cpp
    "max_concurrency", "timeout", "max_retries", "vllm", "gpu_memory_utilization", "tensor_parallel_size",
    "enforce_eager", "max_num_seqs", "llama_cpp", "n_threads", "n_batch", "verbose",
    # the note on a backend that was not loaded in this process (Ray)
    "described",
})
"""Keys of a backend's ``describe()`` (or spec) that change its speed, not its outputs.
``dtype`` is not one of them: it is the precision the outputs are computed in; nor is
``decode_weights`` (int8 weights for decoding round each weight to 7 bits, which moves greedy
answers as much as bf16 does against fp32)."""


def settings_path(output: str | os.PathLike) -> Path:
    """The settings file of ``output``: ``<output>.settings.json`` beside it
    (``runs/nq.jsonl`` -> ``runs/nq.jsonl.settings.json``)."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def legacy_settings_path(output: str | os.PathLike) -> Path:
    """Where benchmark runs kept their settings before this module: ``runs/top-3.jsonl`` ->
    ``runs/top-3.settings.json`` (read when resuming such a run, never written)."""
    output = Path(output)
    return output.with_name(output.stem + SUFFIX)


def compared_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """The settings that decide a run's records: ``settings`` without :data:`RECORDED_ONLY`
    sections and without the :data:`SPEED_KEYS` of its ``backend`` and of each of its
    ``backends`` (one per role)."""
    out = {k: v for k, v in settings.items() if k not in RECORDED_ONLY}

    def fast(described: Any) -> Any:
        return {k: v for k, v in described.items() if k not in SPEED_KEYS} if isinstance(described, dict) else described

    if "backend" in out:
        out["backend"] = fast(out["backend"])
    if isinstance(out.get("backends"), dict):
        out["backends"] = {role: fast(described) for role, described in out["backends"].items()}
    return out


def describe_backend(backend: Any) -> dict[str, Any]:
    """``backend.describe()``, or its name and model for a backend without one (a fake, a
    wrapper); a dict (an unloaded backend's spec) is returned as it is."""
    if isinstance(backend, dict):
        return dict(backend)
    describe = getattr(backend, "describe", None)
    if callable(describe):
        return describe()
    return {"name": getattr(backend, "name", type(backend).__name__), "model": getattr(backend, "model", None)}


RECORDED_WHEN_SET = "recorded_when_set"
"""Dataclass field metadata key: the field is left out of a component's settings while it holds
its default (a setting added later, so that runs written before it existed still resume)."""


def component_settings(component: Any) -> dict[str, Any] | None:
    """The settings of a reranker, generator or config object, as plain JSON values.

    Dataclass and pydantic fields are read; a field holding a backend is left out (it is
    described once, under ``backend``), as is a dataclass field marked :data:`RECORDED_WHEN_SET`
    at its default; a prompt style is given by its name, a nested component (a pointwise scorer)
    by its own settings.
    """
    if component is None:
        return None
    if isinstance(component, dict):
        return {k: _plain(v) for k, v in component.items()}
    if dataclasses.is_dataclass(component) and not isinstance(component, type):
        values = {f.name: getattr(component, f.name) for f in dataclasses.fields(component)
                  if not (f.metadata.get(RECORDED_WHEN_SET) and getattr(component, f.name) == f.default)}
    elif hasattr(component, "model_dump"):  # pydantic
        values = component.model_dump()
    else:
        return _plain(component)
    out: dict[str, Any] = {"class": type(component).__name__}
    for key, value in values.items():
        if key == "backend" or _is_backend(value):
            continue
        out[key] = _plain(value)
    return out


def run_settings(
    backend: Any = None, *, backends: Mapping[str, Any] | None = None, command: list[str] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """The settings of one run.

    Args:
        backend: The LLM backend (its ``describe()``), or the spec of one not loaded here.
        backends: One backend (or spec) per role, e.g. ``{"reranker": ..., "generator": ...}``,
            for stages whose roles may run different models or adapters.
        command: The command line; default ``sys.argv``.
        **sections: More named parts, e.g. ``reranker=``, ``generator=``, ``retriever=``,
            ``sample=``: components or configs (see :func:`component_settings`) or plain dicts;
            ``run=`` for settings that are recorded only (batch size, executor).

    Returns:
        A JSON-serialisable dict: ``dynamicrag`` (version), ``command``, ``date``,
        ``threads``, ``backend`` / ``backends`` and each section.
    """
    from dynamicrag import __version__
    from dynamicrag.runtime import thread_settings

    settings: dict[str, Any] = {
        "dynamicrag": __version__,
        "command": list(sys.argv if command is None else command),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "threads": thread_settings(),
    }
    if backend is not None:
        settings["backend"] = describe_backend(backend)
    if backends is not None:
        settings["backends"] = {role: describe_backend(b) for role, b in backends.items()}
    for name, value in sections.items():
        settings[name] = component_settings(value)
    return settings


def changed_settings(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Every setting whose value differs, as ``"section.key: old -> new"`` (the command and
    the date excepted, which differ on every run)."""
    a, b = _flatten(dict(old)), _flatten(dict(new))
    keys = [k for k in sorted(set(a) | set(b)) if k.split(".")[0] not in ("command", "date") and a.get(k) != b.get(k)]
    return [f"{k}: {a.get(k, '(unset)')} -> {b.get(k, '(unset)')}" for k in keys]


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flatten(sub, f"{prefix}{key}.").items()}
    return {prefix.rstrip("."): value}


def write_run_settings(output: str | os.PathLike, settings: dict[str, Any]) -> Path:
    """Write ``settings`` to ``<output>.settings.json`` atomically.

    Returns:
        The path written.
    """
    from dynamicrag.data import atomic_write_json

    path = settings_path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)
    return path


def _is_backend(value: Any) -> bool:
    return hasattr(value, "generate") and hasattr(value, "count_tokens")


def _plain(value: Any) -> Any:
    """A JSON value for ``value`` (styles by name, components by their settings)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if type(value).__name__ == "PromptStyle":
        return getattr(value, "name", None)
    if dataclasses.is_dataclass(value) or hasattr(value, "model_dump"):
        return component_settings(value)
    # Any other object (a scorer holding a model): its class and its plain attributes only.
    simple = (bool, int, float, str, type(None))
    attrs = {k: v for k, v in getattr(value, "__dict__", {}).items() if not k.startswith("_") and isinstance(v, simple)}
    return {"class": type(value).__name__, **attrs}
