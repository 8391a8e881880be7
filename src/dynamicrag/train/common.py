"""What the SFT and DPO stages share: one run-config base (:class:`RunConfig`), config files,
chat-message checks, the trainable model, LoRA, and training then saving.

:class:`~dynamicrag.train.sft.SFTRunConfig` and :class:`~dynamicrag.train.dpo.DPORunConfig`
extend :class:`RunConfig`; each adds its trainer's own fields and the pass-through mapping of
other trl fields (``sft_args``, ``dpo_args``). Every field documents itself in
``metadata["help"]``, which the command line shows.

Example:
    >>> config = read_config_file(SFTRunConfig, "src/dynamicrag/train/configs/sft_smollm2_lora.yaml", {})  # doctest: +SKIP
    >>> train_and_save(build_sft_trainer(config), config, "SFT")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from dynamicrag.data import read_jsonl

logger = logging.getLogger(__name__)

SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
"""Learning-rate schedules a run may name (transformers' ``SchedulerType`` values used here)."""
CHAT_ROLES = ("system", "user", "assistant")
TRAINED_ROLES = ("reranker", "generator")
"""Roles a training record can teach (the ``role`` of the prepare and pairs stages' rows)."""
SAVE_CHOICES = ("both", "adapter", "merged")
# The trainer arguments a run config sets itself: a pass-through mapping may not set them again.
OWN_TRAINER_FIELDS = frozenset({
    "output_dir", "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "max_length", "warmup_steps", "lr_scheduler_type", "seed", "logging_steps",
    "save_steps", "save_total_limit", "bf16", "gradient_checkpointing",
})
_C = TypeVar("_C")


@dataclass
class RunConfig:
    """Settings every training run has: data, base model, LoRA, optimisation, checkpoints, output.

    The defaults are the paper's SFT recipe where it gives one (arXiv 2505.07233, training
    details: lr 1e-5, 3 epochs, cosine schedule, warm-up 0.1, batch 32, cutoff 8192 tokens); a
    subclass changes what its stage's recipe changes.
    """

    TRAIN_FILE: ClassVar[str] = "the training JSONL"
    PASSTHROUGH: ClassVar[str] = ""  # the field holding extra trainer arguments, e.g. "sft_args"
    PASSTHROUGH_OWN: ClassVar[frozenset[str]] = OWN_TRAINER_FIELDS

    train_file: str = field(
        default="",
        metadata={"help": "Training JSONL (optionally .gz), one row per line."},
    )
    output_dir: str = field(
        default="runs/train",
        metadata={"help": "Run folder: checkpoints in <output_dir>/checkpoints, the merged model in <output_dir>/merged."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Model to start from: a checkpoint folder, .gguf or hub id; null = the bundled SmolLM2-135M-Instruct."},
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
    lora_layers: int | None = field(
        default=None,
        metadata={"help": "LoRA on the last N decoder layers only; null = every layer. The layers below get no "
                  "gradient, so the backward pass stops at layer L-N (benchmarks/lora_layers.py: 1.9x faster per sequence "
                  "with 8 of SmolLM2's 30 layers)."},
    )
    learning_rate: float = field(
        default=1e-5,
        metadata={"help": "Peak learning rate (paper: 1e-5 for full FT; LoRA usually needs ~1e-4 to 2e-4)."},
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the training file (paper: 3)."})
    max_steps: int = field(default=-1, metadata={"help": "Stop after this many optimizer steps; -1 = run all epochs."})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "Rows (SFT: sequences, DPO: pairs) per device per forward pass."})
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
        default="cosine", metadata={"help": f"Learning-rate schedule, one of {list(SCHEDULERS)} (paper: cosine)."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of data order, LoRA initialisation and dropout."})
    logging_steps: int = field(default=10, metadata={"help": "Log loss and learning rate every this many steps."})
    save_steps: int = field(
        default=200, metadata={"help": "Checkpoint every this many steps (and at the end); a rerun resumes from the last."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Keep at most this many checkpoints; null = all."})
    bf16: bool = field(
        default=False, metadata={"help": "bf16 mixed precision (paper: true, on GPUs); on a CPU, faster only where it has bf16 units (AVX-512 BF16, AMX)."}
    )
    gradient_checkpointing: bool = field(
        default=False,
        metadata={"help": "Recompute activations in the backward pass: less memory, ~30% more compute (for long cutoffs)."},
    )
    roles: list[str] = field(
        default_factory=lambda: list(TRAINED_ROLES),
        metadata={"help": "Rows trained on, by their 'role': [reranker] | [generator] | [reranker, generator] "
                  "(the paper's mix)."},
    )
    save: str = field(
        default="both",
        metadata={"help": "What a LoRA run writes: adapter (<output_dir>/adapter) | merged (<output_dir>/merged) "
                  "| both; a full fine-tune writes merged."},
    )

    def __post_init__(self) -> None:
        if not self.train_file:
            raise ValueError(f"train_file: required ({self.TRAIN_FILE})")
        if not self.output_dir:
            raise ValueError("output_dir: required")
        check_training_fields(self)
        self.roles = check_roles_and_save(self)
        if self.PASSTHROUGH:
            extra = getattr(self, self.PASSTHROUGH)
            if not isinstance(extra, dict):
                raise ValueError(f"{self.PASSTHROUGH}: must be a mapping of trainer config fields, got {type(extra).__name__}")
            clash = sorted(self.PASSTHROUGH_OWN & set(extra))
            if clash:
                raise ValueError(f"{self.PASSTHROUGH}: {clash} are fields of this config; set them at the top level")

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
        config: A :class:`RunConfig`.

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
    if config.lr_scheduler_type not in SCHEDULERS:
        raise ValueError(f"lr_scheduler_type: must be one of {sorted(SCHEDULERS)}, got {config.lr_scheduler_type!r}")
    if not (config.target_modules == "all-linear"
            or (isinstance(config.target_modules, list) and config.target_modules
                and all(isinstance(m, str) for m in config.target_modules))):
        raise ValueError(f"target_modules: 'all-linear' or a non-empty list of module names, got {config.target_modules!r}")
    if config.lora_layers is not None and (isinstance(config.lora_layers, bool) or not isinstance(config.lora_layers, int)
                                           or config.lora_layers < 1):
        raise ValueError(f"lora_layers: a positive number of layers or null (every layer), got {config.lora_layers!r}")


def read_config_file(cls: type[_C], path: str | os.PathLike, overrides: dict[str, Any], what: str) -> _C:
    """Build the run-config dataclass ``cls`` from a YAML or TOML file plus overrides.

    Used by the SFT, DPO, reward and recipe stages.

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


def training_rows(path: str | os.PathLike, what: str) -> list[tuple[str, dict[str, Any]]]:
    """``("<file>:<line>", row)`` for each row of a training JSONL (``.gz`` too).

    Raises:
        FileNotFoundError: No such file (``what`` names it: "SFT training file").
        DataError: A line that is not a JSON object (file and line named).
    """
    if not Path(path).is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    return [(f"{path}:{line}", row) for line, row in read_jsonl(path)]


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
        if not isinstance(msg, dict) or msg.get("role") not in CHAT_ROLES or not isinstance(msg.get("content"), str):
            raise ValueError(f"{where}: {name}[{i}] must be {{'role': one of {list(CHAT_ROLES)}, 'content': str}}")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


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


def lora_config(config: Any, model: Any = None) -> Any:
    """The ``peft.LoraConfig`` of a run config's LoRA fields, or None when ``lora`` is off.

    Args:
        config: The run config.
        model: The model the adapter goes on; needed when ``lora_layers`` is set, to count its
            decoder layers and to name its linear modules.

    Raises:
        ValueError: ``lora_layers`` exceeds the model's number of layers.
    """
    if not config.lora:
        return None
    from peft import LoraConfig

    target_modules, layers = config.target_modules, None
    if config.lora_layers is not None:
        if model is None:
            raise ValueError("lora_layers: the model is needed to choose its last layers")
        total = model.config.num_hidden_layers
        if config.lora_layers > total:
            raise ValueError(f"lora_layers: {config.lora_layers} is more than the model's {total} layers")
        layers = list(range(total - config.lora_layers, total))
        if target_modules == "all-linear":  # peft takes a layer range only with named modules
            target_modules = linear_module_names(model)
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=target_modules,
        layers_to_transform=layers,
        task_type="CAUSAL_LM",
    )


def linear_module_names(model: Any) -> list[str]:
    """The names (last part) of a model's linear layers except its output head: what peft's
    ``"all-linear"`` selects, as a list that ``layers_to_transform`` accepts."""
    import torch

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and module is not head})


def train_and_save(trainer: Any, config: Any, what: str) -> Path:
    """Train (resuming from the last checkpoint), then write the adapter and/or the merged model.

    Used by :func:`~dynamicrag.train.sft.train_sft` and :func:`~dynamicrag.train.dpo.train_dpo`.

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
        save_sharded(trainer, config)
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


def save_sharded(trainer: Any, config: Any) -> None:
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


