"""Supervised fine-tuning (behaviour cloning + generator SFT) with TRL's ``SFTTrainer``.

The prepare stage writes TRL JSONL rows ``{"messages": [system, user, assistant], "role":
"reranker" | "generator", "id": ...}``. Each row is turned into TRL's conversational
prompt/completion format (``prompt`` = every message before the last, ``completion`` = the last,
assistant, message), so the loss falls on the assistant turn only, as in the paper's LLaMA-Factory
run (``train_on_prompt=False``). ``assistant_only_loss=True`` on the raw ``messages`` would do the
same, but it needs ``{% generation %}`` markers that SmolLM2's ChatML template lacks and TRL
cannot patch in ("patching is not supported for this template").

``roles`` selects the records trained on: the reranker's only, the generator's only, or both
(the paper's mix; every row of the prepare stage carries its ``role``). ``save`` selects what
a LoRA run writes: the adapter alone (``<output_dir>/adapter``: peft's ``save_pretrained``, a
few MB, applied to the base model at inference), the merged checkpoint (LoRA folded into the
base weights, with tokenizer and chat template, which every backend loads like any other
model folder), or both.

Example:
    >>> from dynamicrag.train.sft import load_sft_config, train_sft
    >>> merged = train_sft(load_sft_config("src/dynamicrag/train/configs/sft_smollm2_lora.yaml"))
    >>> from dynamicrag.llm import load_backend
    >>> llm = load_backend("transformers", model=str(merged))

References:
    Sun et al., DynamicRAG (arXiv 2505.07233), section 3 and appendix (training details).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dynamicrag.train.common import (
    RunConfig,
    check_messages,
    load_trainable,
    lora_config,
    read_config_file,
    role_kept,
    train_and_save,
    training_rows,
)

logger = logging.getLogger(__name__)


@dataclass
class SFTRunConfig(RunConfig):
    """Settings of one SFT run; the defaults are the paper's full fine-tuning recipe.

    The paper (arXiv 2505.07233, training details) fine-tunes all weights with LLaMA-Factory: lr 1e-5,
    3 epochs, cosine schedule, warm-up 0.1, batch 32, cutoff 8192 tokens, bf16. Here ``lora`` is on by
    default (a CPU or one-GPU user cannot hold an 8B model's optimizer state); a full fine-tune is
    ``lora: false``. Any other ``trl.SFTConfig`` field goes through ``sft_args`` unchanged.
    """

    TRAIN_FILE: ClassVar[str] = "the TRL JSONL written by the prepare stage"
    PASSTHROUGH: ClassVar[str] = "sft_args"

    train_file: str = field(
        default="",
        metadata={"help": "TRL JSONL (optionally .gz) written by the prepare stage: one {\"messages\": [...]} row per line."},
    )
    output_dir: str = field(
        default="runs/sft",
        metadata={"help": "Run folder: checkpoints in <output_dir>/checkpoints, the merged model in <output_dir>/merged."},
    )
    sft_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Extra trl.SFTConfig fields passed through unchanged (e.g. {report_to: wandb})."},
    )


def load_sft_config(path: str | os.PathLike, **overrides: Any) -> SFTRunConfig:
    """Read an :class:`SFTRunConfig` from a YAML or TOML file.

    Args:
        path: ``.yaml``/``.yml`` or ``.toml`` file whose top-level keys are config fields.
        **overrides: Fields that replace the file's values (e.g. from command-line flags);
            ``None`` values are ignored.

    Returns:
        The validated config.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unparsable file, unknown field or invalid value (the message names the
            file and the field).
    """
    return read_config_file(SFTRunConfig, path, overrides, what="SFT")


def load_sft_records(
    path: str | os.PathLike, roles: list[str] | None = None
) -> list[dict[str, list[dict[str, str]]]]:
    """Read TRL ``messages`` JSONL rows into TRL's conversational prompt/completion records.

    Args:
        path: JSONL (or ``.jsonl.gz``) file; each line holds ``{"messages": [...]}`` ending
            with the assistant message to learn (other keys such as ``id`` are ignored).
        roles: Keep only rows whose ``role`` is one of these (None: every row).

    Returns:
        ``[{"prompt": messages[:-1], "completion": [messages[-1]]}, ...]`` in file order.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A line that is not JSON, has no ``messages`` list, an unknown role, a
            non-string content, or does not end with an assistant message (file and line named).
    """
    records = []
    for where, row in training_rows(path, "SFT training file"):
        messages = row.get("messages")
        if not isinstance(messages, list) or len(messages) < 2:
            raise ValueError(f"{where}: 'messages' must be a list of at least a user and an assistant message")
        messages = check_messages(where, messages)
        if messages[-1]["role"] != "assistant":
            raise ValueError(f"{where}: the last message must be the assistant's (the target), got {messages[-1]['role']!r}")
        if role_kept(where, row, roles):
            records.append({"prompt": messages[:-1], "completion": messages[-1:]})
    if not records:
        raise ValueError(f"{path}: no training rows" + (f" of roles {roles}" if roles else ""))
    return records


def build_sft_trainer(config: SFTRunConfig) -> Any:
    """Build the ``trl.SFTTrainer`` of a run on a fresh, trainable copy of the base model.

    Args:
        config: The run's settings.

    Returns:
        The trainer (with its tokenised dataset), not yet trained.
    """
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    records = load_sft_records(config.train_file, config.roles)
    # The training arguments come before the model: under `accelerate launch` with ZeRO-3 they
    # register the DeepSpeed config, so from_pretrained builds the model already sharded
    # (zero3_init_flag) instead of a full fp32 copy in every process.
    args = SFTConfig(
        output_dir=str(config.checkpoint_dir),
        learning_rate=config.learning_rate,
        num_train_epochs=config.num_train_epochs,
        max_steps=config.max_steps,
        per_device_train_batch_size=config.per_device_train_batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        # transformers 5 dropped warmup_ratio: a warmup_steps below 1 is read as the ratio.
        warmup_steps=config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type,
        seed=config.seed,
        logging_steps=config.logging_steps,
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        bf16=config.bf16,
        gradient_checkpointing=config.gradient_checkpointing,
        completion_only_loss=True,  # the prompt (system + user) is context, not a target
        report_to="none",  # no tracker unless asked for through sft_args
        # bf16 autocast on a CPU (faster where it has bf16 units) needs use_cpu: without it
        # transformers refuses bf16 when there is no GPU.
        **{"dataloader_pin_memory": torch.cuda.is_available(),  # pinning needs a GPU
           "use_cpu": config.bf16 and not torch.cuda.is_available(), **config.sft_args},
    )
    model, tokenizer = load_trainable(config.model)
    logger.info("SFT on %d rows (roles %s) of %s from %s (%s)", len(records), config.roles, config.train_file,
                model.name_or_path, "LoRA" if config.lora else "full fine-tuning")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=lora_config(config, model),
    )


def train_sft(config: SFTRunConfig) -> Path:
    """Fine-tune, then write the adapter (``<output_dir>/adapter``) and/or the merged model
    (``<output_dir>/merged``), as ``config.save`` says.

    A rerun with the same ``output_dir`` resumes from the last checkpoint in
    ``<output_dir>/checkpoints`` (raise ``max_steps`` or the epochs to train further).

    Args:
        config: The run's settings.

    Returns:
        The merged checkpoint folder (model, tokenizer, chat template), loadable with
        ``load_backend("transformers", model=str(path))``; the adapter folder when only the
        adapter is saved.

    Raises:
        FloatingPointError: The training loss became NaN or infinite.
    """
    return train_and_save(build_sft_trainer(config), config, "SFT")
