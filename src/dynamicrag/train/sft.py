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

import dataclasses
import gzip
import json
import logging
import math
import os
from dataclasses import dataclass, field
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
_ROLES = ("system", "user", "assistant")
TRAINED_ROLES = ("reranker", "generator")
"""Roles a training record can teach (the ``role`` of the prepare and pairs stages' rows)."""
SAVE_CHOICES = ("both", "adapter", "merged")
_C = TypeVar("_C")


@dataclass
class SFTRunConfig:
    """Settings of one SFT run; the defaults are the paper's full fine-tuning recipe.

    The paper (arXiv 2505.07233, training details) fine-tunes all weights with LLaMA-Factory: lr 1e-5,
    3 epochs, cosine schedule, warm-up 0.1, batch 32, cutoff 8192 tokens, bf16. Here ``lora`` is on by
    default (a CPU or one-GPU user cannot hold an 8B model's optimizer state); a full fine-tune is
    ``lora: false``. Any other ``trl.SFTConfig`` field goes through ``sft_args`` unchanged.
    """

    train_file: str = field(
        default="",
        metadata={"help": "TRL JSONL (optionally .gz) written by the prepare stage: one {\"messages\": [...]} row per line."},
    )
    output_dir: str = field(
        default="runs/sft",
        metadata={"help": "Run folder: checkpoints in <output_dir>/checkpoints, the merged model in <output_dir>/merged."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Base model: a checkpoint folder, .gguf or hub id; null = the bundled SmolLM2-135M-Instruct."},
    )
    lora: bool = field(
        default=True,
        metadata={"help": "Train LoRA adapters (merged into the weights at the end) instead of all weights (paper: full FT)."},
    )
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA input."})
    target_modules: str | list[str] = field(
        default="all-linear",
        metadata={"help": "Modules that get LoRA adapters: 'all-linear' or a list of module names (e.g. [q_proj, v_proj])."},
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "Peak learning rate (paper: 1e-5 for full FT; LoRA usually needs ~1e-4 to 2e-4)."},
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the training file (paper: 3)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps; -1 = run all epochs."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Sequences per device per forward pass."})
    gradient_accumulation_steps: int = field(
        default=8,
        metadata={"help": "Forward passes per optimizer step; batch = per_device x accumulation x devices (paper: 32)."},
    )
    max_length: int = field(
        default=8192,
        metadata={"help": "Cutoff in tokens; longer sequences are truncated at the end (paper: 8192)."},
    )
    warmup_ratio: float = field(default=0.1, metadata={"help": "Fraction of the steps spent warming up (paper: 0.1)."})
    lr_scheduler_type: str = field(
        default="cosine", metadata={"help": f"Learning-rate schedule, one of {list(_SCHEDULERS)} (paper: cosine)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of data order, LoRA initialisation and dropout."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss and learning rate every this many steps."})
    save_steps: int = field(
        default=200, metadata={"help": "Checkpoint every this many steps (and at the end); a rerun resumes from the last."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints; null = all."})
    bf16: bool = field(
        default=False, metadata={"help": "bf16 mixed precision (paper: true, on GPUs); keep false on CPU."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, ~30% more compute (for long cutoffs)."},
    )
    roles: list[str] = field(
        default_factory=lambda: list(TRAINED_ROLES),
        metadata={"help": "Records trained on, by their 'role': [reranker] | [generator] | [reranker, generator] "
                  "(the paper's mix)."},
    )
    save: str = field(
        default="both",
        metadata={"help": "What a LoRA run writes: adapter (<output_dir>/adapter) | merged (<output_dir>/merged) "
                  "| both; a full fine-tune writes merged."},
    )
    sft_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Extra trl.SFTConfig fields passed through unchanged (e.g. {report_to: wandb})."},
    )

    def __post_init__(self) -> None:
        if not self.train_file:
            raise ValueError("train_file: required (the TRL JSONL written by the prepare stage)")
        if not self.output_dir:
            raise ValueError("output_dir: required")
        check_training_fields(self)
        self.roles = check_roles_and_save(self)
        if not isinstance(self.sft_args, dict):
            raise ValueError(f"sft_args: must be a mapping of trl.SFTConfig fields, got {type(self.sft_args).__name__}")
        own = {"output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
               "gradient_accumulation_steps", "max_length", "warmup_steps", "lr_scheduler_type", "seed",
               "logging_steps", "save_steps", "save_total_limit", "bf16", "gradient_checkpointing"}
        clash = sorted(own & set(self.sft_args))
        if clash:
            raise ValueError(f"sft_args: {clash} are fields of this config; set them at the top level")

    @property
    def checkpoint_dir(self) -> Path:
        """Where the trainer writes ``checkpoint-<step>`` folders."""
        return Path(self.output_dir) / "checkpoints"

    @property
    def merged_dir(self) -> Path:
        """Where the merged model, tokenizer and chat template are written."""
        return Path(self.output_dir) / "merged"

    @property
    def adapter_dir(self) -> Path:
        """Where the LoRA adapter is written (peft's ``save_pretrained``)."""
        return Path(self.output_dir) / "adapter"


def check_roles_and_save(config: Any) -> list[str]:
    """Check ``roles`` (a list, or one role name) and ``save``; return the roles as a list.

    Raises:
        ValueError: An unknown or empty role list, an unknown ``save``, or ``save: adapter``
            without LoRA.
    """
    roles = [config.roles] if isinstance(config.roles, str) else config.roles
    if not isinstance(roles, list) or not roles or any(r not in TRAINED_ROLES for r in roles):
        raise ValueError(f"roles: a non-empty list of {list(TRAINED_ROLES)}, got {config.roles!r}")
    if config.save not in SAVE_CHOICES:
        raise ValueError(f"save: one of {list(SAVE_CHOICES)}, got {config.save!r}")
    if config.save == "adapter" and not config.lora:
        raise ValueError("save: 'adapter' needs lora: true (a full fine-tune has no adapter)")
    return list(dict.fromkeys(roles))


def role_kept(where: str, row: dict[str, Any], roles: list[str] | None) -> bool:
    """Whether a training row is of one of ``roles`` (None: every row).

    Raises:
        ValueError: Rows are filtered by role but this one has none (file and line named).
    """
    if roles is None or set(roles) >= set(TRAINED_ROLES):
        return True
    role = row.get("role")
    if role not in TRAINED_ROLES:
        raise ValueError(f"{where}: 'role' must be one of {list(TRAINED_ROLES)} to filter by roles {roles}, got {role!r}")
    return role in roles


def check_training_fields(config: Any) -> None:
    """Checks shared by the SFT and DPO run configs (LoRA, optimisation, schedule, logging).

    Args:
        config: A run config with the fields of :class:`SFTRunConfig` other than ``sft_args``.

    Raises:
        ValueError: An invalid value; the message names the field.
    """
    positive = {
        "lora_r": config.lora_r,
        "lora_alpha": config.lora_alpha,
        "learning_rate": config.learning_rate,
        "per_device_train_batch_size": config.per_device_train_batch_size,
        "gradient_accumulation_steps": config.gradient_accumulation_steps,
        "max_length": config.max_length,
        "logging_steps": config.logging_steps,
        "save_steps": config.save_steps,
    }
    for name, value in positive.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"{name}: must be a positive number, got {value!r}")
    if config.max_steps == 0 or config.max_steps < -1:
        raise ValueError(f"max_steps: must be -1 (all epochs) or positive, got {config.max_steps}")
    if config.max_steps == -1 and not config.num_train_epochs > 0:
        raise ValueError(f"num_train_epochs: must be positive when max_steps is -1, got {config.num_train_epochs}")
    if not 0 <= config.lora_dropout < 1:
        raise ValueError(f"lora_dropout: must be in [0, 1), got {config.lora_dropout}")
    if not 0 <= config.warmup_ratio < 1:
        raise ValueError(f"warmup_ratio: must be in [0, 1), got {config.warmup_ratio}")
    if config.lr_scheduler_type not in _SCHEDULERS:
        raise ValueError(f"lr_scheduler_type: must be one of {sorted(_SCHEDULERS)}, got {config.lr_scheduler_type!r}")
    if not (config.target_modules == "all-linear"
            or (isinstance(config.target_modules, list) and config.target_modules
                and all(isinstance(m, str) for m in config.target_modules))):
        raise ValueError(f"target_modules: 'all-linear' or a non-empty list of module names, got {config.target_modules!r}")


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
    return read_run_config(SFTRunConfig, path, overrides, what="SFT")


def read_run_config(cls: type[_C], path: str | os.PathLike, overrides: dict[str, Any], what: str) -> _C:
    """Build the run-config dataclass ``cls`` from a YAML or TOML file plus overrides.

    Shared by :func:`load_sft_config` and :func:`dynamicrag.train.dpo.load_dpo_config`.

    Args:
        cls: The config dataclass (its fields are the file's allowed keys).
        path: ``.yaml``/``.yml`` or ``.toml`` file.
        overrides: Fields that replace the file's values; ``None`` values are ignored.
        what: Name of the stage for messages (``"SFT"``, ``"DPO"``).

    Returns:
        The validated config.

    Raises:
        FileNotFoundError: No such file.
        ValueError: Unparsable file, unknown field or invalid value (file and field named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} config {path} does not exist")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        else:
            raise ValueError(f"{path}: unknown config format {suffix!r}; use .yaml, .yml or .toml")
    except ValueError:
        raise
    except Exception as err:  # yaml.YAMLError / tomllib.TOMLDecodeError carry the line number
        raise ValueError(f"{path}: cannot parse: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of config fields at the top level, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{path}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


def iter_jsonl(path: str | os.PathLike, what: str) -> Iterator[tuple[str, Any]]:
    """Yield ``("<file>:<line>", row)`` for each non-blank line of a JSONL (or ``.gz``) file.

    Args:
        path: The file.
        what: What the file is, for the missing-file message (``"SFT training file"``).

    Raises:
        FileNotFoundError: No such file.
        ValueError: A line that is not JSON (file and line named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not JSON ({err.msg})") from err
            yield where, row


def check_messages(where: str, messages: list[Any], name: str = "messages") -> list[dict[str, str]]:
    """Check a list of chat messages and return them with only ``role`` and ``content``.

    Args:
        where: ``"<file>:<line>"`` for messages.
        messages: The list to check.
        name: The field holding the list, for messages.

    Raises:
        ValueError: A message that is not ``{"role": system|user|assistant, "content": str}``.
    """
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or msg.get("role") not in _ROLES or not isinstance(msg.get("content"), str):
            raise ValueError(f"{where}: {name}[{i}] must be {{'role': one of {list(_ROLES)}, 'content': str}}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


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
    for where, row in iter_jsonl(path, "SFT training file"):
        messages = row.get("messages") if isinstance(row, dict) else None
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


def load_trainable(model: str | None) -> tuple[Any, Any]:
    """A fresh, trainable fp32 copy of a model and its tokenizer (padding on the right).

    The model is loaded with ``from_pretrained`` here, never taken from the inference
    backends' shared cache (training it would change every loaded backend).

    Args:
        model: Anything :func:`~dynamicrag.llm.models.resolve_model` accepts (None = bundled).

    Returns:
        ``(model, tokenizer)``.

    Raises:
        ValueError: The tokenizer has no chat template.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dynamicrag.llm.models import resolve_model

    path = resolve_model(model)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if not tokenizer.chat_template:
        raise ValueError(f"tokenizer of {path} has no chat template; training needs an instruct model's template")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"  # training pads on the right; the backend sets left for generation
    # fp32 master weights even with bf16: autocast runs the matmuls in bf16, Adam updates stay exact.
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), tokenizer


def lora_config(config: Any) -> Any:
    """The ``peft.LoraConfig`` of a run config's LoRA fields, or None when ``lora`` is off."""
    if not config.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )


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
        **{"dataloader_pin_memory": torch.cuda.is_available(), **config.sft_args},  # pinning needs a GPU
    )
    model, tokenizer = load_trainable(config.model)
    logger.info("SFT on %d rows (roles %s) of %s from %s (%s)", len(records), config.roles, config.train_file,
                model.name_or_path, "LoRA" if config.lora else "full fine-tuning")
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=lora_config(config),
    )


def train_and_save(trainer: Any, config: Any, what: str) -> Path:
    """Train (resuming from the last checkpoint), then write the adapter and/or the merged model.

    Shared by :func:`train_sft` and :func:`dynamicrag.train.dpo.train_dpo`.

    Args:
        trainer: A ``transformers.Trainer`` writing to ``config.checkpoint_dir``.
        config: The run config (``checkpoint_dir``, ``merged_dir``, ``adapter_dir``, ``lora``,
            ``save``, ``model``, ``train_file``).
        what: Name of the stage for messages (``"SFT"``, ``"DPO"``).

    Returns:
        ``config.merged_dir`` (model with LoRA folded in, tokenizer, chat template) when it is
        written, else ``config.adapter_dir``.

    Raises:
        FloatingPointError: The training loss became NaN or infinite.
    """
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(config.checkpoint_dir)) if config.checkpoint_dir.is_dir() else None
    if last:
        logger.info("Resuming from %s", last)
    result = trainer.train(resume_from_checkpoint=last)
    trainer.save_metrics("train", result.metrics)  # <output_dir>/checkpoints/train_results.json
    trainer.save_state()
    if not math.isfinite(result.training_loss):
        raise FloatingPointError(f"{what} loss is {result.training_loss}; lower learning_rate or check {config.train_file}")

    merged = config.merged_dir
    write_merged = not config.lora or config.save in ("both", "merged")
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        # ZeRO-3 / FSDP shard the parameters over the processes: save_model gathers them (a
        # collective every process must call) and writes on the main process only.
        _save_sharded(trainer, config)
    elif trainer.is_world_process_zero():  # under `accelerate launch` every process gets here
        model = trainer.model
        if config.lora:
            if "ref" in model.peft_config:  # DPO's frozen copy of the starting adapter
                model.delete_adapter("ref")
            if config.save in ("both", "adapter"):
                save_adapter(model, config)
        if write_merged:
            if config.lora:
                model = model.merge_and_unload()  # W + (alpha/r) B A, a plain transformers model again
            merged.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(merged)
            trainer.processing_class.save_pretrained(merged)  # tokenizer + chat_template.jinja
    trainer.accelerator.wait_for_everyone()  # no process returns before the model exists
    out = merged if write_merged else config.adapter_dir
    if trainer.is_world_process_zero():
        logger.info("%s written to %s (train loss %.4f)", "Merged model" if write_merged else "Adapter", out,
                    result.training_loss)
    return out


def save_adapter(model: Any, config: Any) -> Path:
    """Write the trained LoRA adapter to ``config.adapter_dir`` (peft's ``save_pretrained``).

    The adapter names its base model by what the config gave (``model``; the bundled model's
    alias when null) rather than this machine's cache path, so the folder can ship.
    """
    from dynamicrag.llm.models import DEFAULT_MODEL

    out = config.adapter_dir
    model.save_pretrained(str(out), selected_adapters=["default"])
    path = out / "adapter_config.json"
    adapter_config = json.loads(path.read_text("utf-8"))
    adapter_config["base_model_name_or_path"] = config.model or DEFAULT_MODEL
    path.write_text(json.dumps(adapter_config, indent=2), "utf-8")
    return out


def _save_sharded(trainer: Any, config: Any) -> None:
    """Write the merged model of a DeepSpeed ZeRO-3 or FSDP run (parameters sharded).

    Full fine-tuning: ``save_model`` writes the gathered weights straight to ``merged_dir``.
    LoRA: it writes the gathered adapter to ``<output_dir>/adapter``; the main process then
    folds it into a fresh copy of the base model (the sharded one cannot be merged in place).
    """
    if not config.lora:
        trainer.save_model(str(config.merged_dir))  # the gathered weights and config
    else:
        adapter = Path(config.output_dir) / "adapter"
        trainer.save_model(str(adapter))
        if config.save == "adapter":
            return
        if trainer.is_world_process_zero():
            from peft import PeftModel
            from transformers.integrations.deepspeed import unset_hf_deepspeed_config

            # This process alone loads the base: a ZeRO-3 config still registered would make
            # from_pretrained partition it (zero.Init), a collective the others never join.
            unset_hf_deepspeed_config()
            base, _ = load_trainable(config.model)
            model = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
            config.merged_dir.mkdir(parents=True, exist_ok=True)
            model.save_pretrained(config.merged_dir)
    if trainer.is_world_process_zero():
        trainer.processing_class.save_pretrained(config.merged_dir)  # tokenizer + chat template


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
