"""Tiny LoRA adapters on the bundled model, made with peft as training would save them."""

from __future__ import annotations

import json
import os
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_tiny_adapter(folder: Path, *, rank: int = 16, seed: int = 0) -> Path:
    """Save a LoRA adapter of the bundled SmolLM2 into ``folder``, with random non-zero weights.

    peft initialises LoRA's B matrix to zero (the adapter starts as the identity); with
    ``init_lora_weights=False`` both matrices are random, so the adapter changes the outputs.
    The model is a fresh copy: the shared, cached one must not be modified.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from dynamicrag.llm.models import resolve_model

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(None))
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=TARGETS, init_lora_weights=False,
                        task_type="CAUSAL_LM")
    get_peft_model(model, config).save_pretrained(str(folder))
    return folder


def write_manifest_json(folder: Path, **fields) -> None:
    manifest = {"name": "tiny-reranker", "base_model": "smollm2-135m-instruct", "role": "reranker", **fields}
    (folder / "manifest.json").write_text(json.dumps(manifest), "utf-8")


def linked_copy(source: Path, folder: Path, **manifest) -> Path:
    """``folder`` holding ``source``'s weights (symlinked) and its own manifest."""
    folder.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        os.symlink(source / name, folder / name)
    write_manifest_json(folder, **manifest)
    return folder
