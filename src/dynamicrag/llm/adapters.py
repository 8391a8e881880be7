"""LoRA adapters with a manifest: what a trained role needs besides its weights.

An adapter folder is what ``peft``'s ``save_pretrained`` writes (``adapter_config.json``,
``adapter_model.safetensors``) plus ``manifest.json``: the base model it was trained on, the
role it plays, and every prompt setting that must be the same at inference as in training
(prompt style, passage cap, candidates shown). The shipped reranker adapter lives inside the
package (``dynamicrag/adapters/<name>/``), so loading it needs no network.

Example:
    >>> manifest = read_manifest("runs/recipe/adapter")  # doctest: +SKIP
    >>> manifest.passage_words, manifest.role
    (60, 'reranker')
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamicrag.data import atomic_write_json

MANIFEST = "manifest.json"
SHIPPED_PACKAGE = "dynamicrag.adapters"


class AdapterManifest(BaseModel):
    """What an adapter was trained for, and how it must be run."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Short name, e.g. smollm2-135m-reranker")
    base_model: str = Field(description="Base model the adapter applies to (alias, path or hub id)")
    role: Literal["reranker", "generator", "both"] = Field(description="Role(s) the adapter was trained for")
    prompt_style: str = Field("default", description="Prompt style used in training")
    passage_words: int | None = Field(None, ge=1, description="Words shown per passage in the reranker prompt")
    top_n: int | None = Field(None, ge=1, description="Candidates per question in training")
    constrained: bool = Field(False, description="Decode the reranker under the id grammar by default")
    order_by: str | None = Field(
        None, description="Scorer that orders the candidates before the reranker reads them (None: retrieval order)"
    )
    continue_bias: float = Field(
        0.0, ge=-100, le=100,
        description="Reranker: logit bias on going on after an id (`],`), calibrated on the training prompts",
    )
    training: dict[str, Any] = Field(default_factory=dict, description="Slices, recipe command, configs")
    evaluation: dict[str, Any] = Field(default_factory=dict, description="Held-apart results")
    created: str | None = None
    dynamicrag_version: str | None = None


def read_manifest(folder: str | Path) -> AdapterManifest:
    """Read ``folder/manifest.json``; errors name the file and the field."""
    path = Path(folder) / MANIFEST
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no adapter manifest (an adapter folder needs {MANIFEST})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}, line {err.lineno}: invalid JSON: {err.msg}") from None
    try:
        return AdapterManifest.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{path}: field '{where}': {first['msg']}") from None


def write_manifest(folder: str | Path, manifest: AdapterManifest) -> Path:
    """Write ``folder/manifest.json`` atomically; returns its path."""
    path = Path(folder) / MANIFEST
    atomic_write_json(path, manifest.model_dump(mode="json"))
    return path


def shipped_adapters() -> dict[str, Path]:
    """Adapters shipped inside the package: name -> folder (empty when none ships)."""
    try:
        root = Path(str(resources.files(SHIPPED_PACKAGE)))
    except ModuleNotFoundError:
        return {}
    return {p.name: p for p in sorted(root.iterdir()) if (p / MANIFEST).is_file()}
