"""What a run was made with, written beside its output as ``<output>.settings.json``.

A record of the settings that change a run's outputs or its speed: the backend's own
``describe()`` (model, dtype, device, threads, batch size, caches, adapter), the reranker's
and the generator's settings, the thread environment, the package version and the command
line. ``dynamicrag infer`` and the benchmark scripts write it, so a figure or an output file can
always be traced back to what produced it.

To record more, add keys to a backend's ``describe()`` (backend settings such as decoding
options) or pass another section to :func:`run_settings` (``**sections``): every section is a
plain JSON object under its own name.

Example:
    >>> settings = run_settings(backend, reranker=pipeline.reranker, generator=pipeline.generator)
    >>> write_run_settings("out/results.jsonl", settings)   # out/results.jsonl.settings.json
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import os
import sys
from pathlib import Path
from typing import Any

SUFFIX = ".settings.json"


def settings_path(output: str | os.PathLike) -> Path:
    """The settings file of ``output``: ``<output>.settings.json`` beside it."""
    output = Path(output)
    return output.with_name(output.name + SUFFIX)


def describe_backend(backend: Any) -> dict[str, Any]:
    """``backend.describe()``, or its name and model for a backend without one (a fake, a
    wrapper); a dict (an unloaded backend's spec) is returned as it is."""
    if isinstance(backend, dict):
        return dict(backend)
    describe = getattr(backend, "describe", None)
    if callable(describe):
        return describe()
    return {"name": getattr(backend, "name", type(backend).__name__), "model": getattr(backend, "model", None)}


def component_settings(component: Any) -> dict[str, Any] | None:
    """The settings of a reranker, generator or config object, as plain JSON values.

    Dataclass and pydantic fields are read; a field holding a backend is left out (it is
    described once, under ``backend``), a prompt style is given by its name, a nested
    component (a pointwise scorer) by its own settings.
    """
    if component is None:
        return None
    if isinstance(component, dict):
        return {k: _plain(v) for k, v in component.items()}
    if dataclasses.is_dataclass(component) and not isinstance(component, type):
        values = {f.name: getattr(component, f.name) for f in dataclasses.fields(component)}
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


def run_settings(backend: Any = None, *, command: list[str] | None = None, **sections: Any) -> dict[str, Any]:
    """The settings of one run.

    Args:
        backend: The LLM backend (its ``describe()``), or the spec of one not loaded here.
        command: The command line; default ``sys.argv``.
        **sections: More named parts, e.g. ``reranker=``, ``generator=``, ``retriever=``,
            ``sample=``: components or configs (see :func:`component_settings`) or plain dicts.

    Returns:
        A JSON-serialisable dict: ``dynamicrag`` (version), ``command``, ``date``,
        ``threads``, ``backend`` and each section.
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
    for name, value in sections.items():
        settings[name] = component_settings(value)
    return settings


def changed_settings(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Top-level and backend keys whose values differ (the command and date excepted): what a
    resumed run changed against the run that started the output."""
    skip = {"command", "date"}
    keys = [k for k in sorted(set(old) | set(new)) if k not in skip and k != "backend" and old.get(k) != new.get(k)]
    ob, nb = old.get("backend") or {}, new.get("backend") or {}
    keys += [f"backend.{k}" for k in sorted(set(ob) | set(nb)) if ob.get(k) != nb.get(k)]
    return keys


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
