"""Direct preference optimisation of the SFT model with TRL's ``DPOTrainer`` (stage two).

The training file holds TRL conversational preference rows, one pair per line::

    {"prompt": [{"role": "system", ...}, {"role": "user", ...}],
     "chosen": [{"role": "assistant", "content": "[3], [1]"}],
     "rejected": [{"role": "assistant", "content": "[5], [2], [4]"}]}

(reranker pairs: the id list with the highest reward against the lowest; generator pairs: the
gold answer against a wrong sampled answer; arXiv 2505.07233 section 3.3). Other keys (``id``,
``role``, rewards) are ignored.

The policy starts from the SFT model, in one of two ways:

- ``adapter`` (the recipe's way): the base ``model`` plus the SFT run's LoRA adapter, loaded
  trainable, so DPO continues that adapter and the result is again one small adapter on the
  base model. The reference is the SFT model: trl's ``DPOTrainer`` (1.16) copies the starting
  adapter into a frozen adapter named ``ref`` and computes the reference log-probabilities
  with it switched on, so no second copy of the base weights is held in memory.
- ``model`` = the SFT run's merged folder, and a new LoRA adapter on top (``lora``); the
  reference is the same network with the adapter switched off, i.e. the SFT model.

``ref_model`` names another reference explicitly (a frozen copy, loaded from that path). The loss is TRL's: for the
paper's ``sigmoid`` loss, ``-log σ(β [(log π(y_w|x) - log π_ref(y_w|x)) - (log π(y_l|x) -
log π_ref(y_l|x))])`` (Eq. 7 of arXiv 2305.18290), summed log-probabilities over the
completion tokens only.

The result is a merged checkpoint (LoRA folded in) with tokenizer and chat template, loadable by
every backend like any other model folder.

Example:
    >>> from dynamicrag.train.dpo import load_dpo_config, train_dpo
    >>> merged = train_dpo(load_dpo_config("src/dynamicrag/train/configs/dpo_smollm2_lora.yaml"))
    >>> from dynamicrag.llm import load_backend
    >>> llm = load_backend("transformers", model=str(merged))

References:
    Sun et al., DynamicRAG (arXiv 2505.07233), section 3.3 and appendix (training details).
    Rafailov et al., Direct Preference Optimization (arXiv 2305.18290).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from dynamicrag.train.common import (
    OWN_TRAINER_FIELDS,
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

# Loss types of trl.DPOConfig.loss_type (trl 1.x); checked here so a typo fails at config load.
LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
              "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


@dataclass
class DPORunConfig(RunConfig):
    """Settings of one DPO run; the defaults are the paper's recipe where it gives one.

    The paper (arXiv 2505.07233, training details) runs LLaMA-Factory's DPO: lr 5e-6, 1 epoch,
    batch 32, beta 0.1, sigmoid loss, all weights trained. Here ``lora`` is on by default (as in
    SFT: an 8B model's optimizer state does not fit a CPU or one GPU); ``lora: false`` trains all
    weights against a frozen copy of the starting model. The schedule and cutoff are not given
    by the paper: cosine with warm-up 0.1 and 8192 tokens follow its SFT run. Any other
    ``trl.DPOConfig`` field goes through ``dpo_args`` unchanged.
    """

    TRAIN_FILE: ClassVar[str] = "the TRL preference JSONL of the reward stage"
    PASSTHROUGH: ClassVar[str] = "dpo_args"
    PASSTHROUGH_OWN: ClassVar[frozenset[str]] = OWN_TRAINER_FIELDS | {"beta", "loss_type"}

    train_file: str = field(
        default="",
        metadata={"help": "TRL preference JSONL (optionally .gz): one {\"prompt\", \"chosen\", \"rejected\"} row per line."},
    )
    output_dir: str = field(
        default="runs/dpo",
        metadata={"help": "Run folder: checkpoints in <output_dir>/checkpoints, the merged model in <output_dir>/merged."},
    )
    model: str | None = field(
        default=None,
        metadata={"help": "Starting policy, normally the SFT run's merged folder (or a hub id, .gguf); null = bundled SmolLM2."},
    )
    lora_dropout: float = field(
        default=0.0,
        metadata={"help": "Dropout on the LoRA input; trl's disable_dropout (on by default) turns all dropout off in DPO."},
    )
    learning_rate: float = field(
        default=5e-6, metadata={"help": "Peak learning rate (paper: 5e-6 for full DPO; LoRA usually needs ~10x more)."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the pairs (paper: 1)."})
    max_length: int = field(
        default=8192,
        metadata={"help": "Cutoff of prompt + completion in tokens; the end is cut, a pair whose prompt alone fills it is dropped."},
    )
    adapter: str | None = field(
        default=None,
        metadata={"help": "SFT LoRA adapter folder to continue (policy = model + adapter, trainable; reference = the "
                  "same adapter, frozen); the lora_* fields are then the adapter's own. null: a new adapter on model."},
    )
    ref_model: str | None = field(
        default=None,
        metadata={"help": "Reference model; null = the starting policy (LoRA: the starting adapter frozen, or adapters "
                  "off; no second copy of the base in memory)."},
    )
    beta: float = field(
        default=0.1, metadata={"help": "DPO beta: how far the policy may move from the reference (paper: 0.1)."}
    )
    loss_type: str = field(
        default="sigmoid", metadata={"help": f"trl DPO loss, one of {list(LOSS_TYPES)} (paper: sigmoid, the DPO loss)."}
    )
    dpo_args: dict[str, Any] = field(
        default_factory=dict,
        metadata={"help": "Extra trl.DPOConfig fields passed through unchanged (e.g. {precompute_ref_log_probs: true})."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.adapter is not None:
            if not self.lora:
                raise ValueError("adapter: continuing a LoRA adapter needs lora: true")
            if not (Path(self.adapter) / "adapter_config.json").is_file():
                raise ValueError(f"adapter: {self.adapter} holds no adapter_config.json (an SFT run's <output_dir>/adapter)")
        if isinstance(self.beta, bool) or not isinstance(self.beta, (int, float)) or not self.beta > 0:
            raise ValueError(f"beta: must be a positive number, got {self.beta!r}")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: must be one of {sorted(LOSS_TYPES)}, got {self.loss_type!r}")


def load_dpo_config(path: str | os.PathLike, **overrides: Any) -> DPORunConfig:
    """Read a :class:`DPORunConfig` from a YAML or TOML file.

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
    return read_config_file(DPORunConfig, path, overrides, what="DPO")


def load_dpo_records(
    path: str | os.PathLike, roles: list[str] | None = None
) -> list[dict[str, list[dict[str, str]]]]:
    """Read TRL conversational preference rows.

    Args:
        path: JSONL (or ``.jsonl.gz``) file; each line holds ``prompt`` (messages ending with a
            user turn), ``chosen`` and ``rejected`` (one assistant message each).
        roles: Keep only pairs whose ``role`` is one of these (None: every pair).

    Returns:
        ``[{"prompt": [...], "chosen": [...], "rejected": [...]}, ...]`` in file order, with
        only ``role`` and ``content`` kept in each message.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A line that is not JSON, misses a field, has a malformed message, a prompt
            not ending with the user, a completion that is not one assistant message, or
            identical chosen and rejected completions (file and line named).
    """
    records = []
    for where, row in training_rows(path, "DPO training file"):
        missing = [k for k in ("prompt", "chosen", "rejected") if not isinstance(row.get(k), list) or not row[k]]
        if missing:
            raise ValueError(f"{where}: {missing} must be non-empty lists of messages (TRL conversational preference format)")
        prompt = check_messages(where, row["prompt"], "prompt")
        if prompt[-1]["role"] != "user":
            raise ValueError(f"{where}: the prompt must end with the user's message, got {prompt[-1]['role']!r}")
        pair = {"prompt": prompt}
        for key in ("chosen", "rejected"):
            completion = check_messages(where, row[key], key)
            if len(completion) != 1 or completion[0]["role"] != "assistant":
                raise ValueError(f"{where}: {key} must be exactly one assistant message")
            pair[key] = completion
        if pair["chosen"] == pair["rejected"]:
            raise ValueError(f"{where}: chosen and rejected are identical (no preference to learn)")
        if role_kept(where, row, roles):
            records.append(pair)
    if not records:
        raise ValueError(f"{path}: no preference pairs" + (f" of roles {roles}" if roles else ""))
    return records


def build_dpo_trainer(config: DPORunConfig) -> Any:
    """Build the ``trl.DPOTrainer`` of a run on a fresh, trainable copy of the starting model.

    Args:
        config: The run's settings.

    Returns:
        The trainer (with its tokenised pairs), not yet trained.

    Raises:
        ValueError: Every pair's prompt alone fills ``max_length``.
    """
    import torch
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    records = load_dpo_records(config.train_file, config.roles)
    # The arguments come before the models, as in build_sft_trainer: under ZeRO-3 they make
    # from_pretrained build the models sharded instead of a full copy in every process.
    args = DPOConfig(
        output_dir=str(config.checkpoint_dir),
        beta=config.beta,
        loss_type=[config.loss_type],
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
        bf16=config.bf16,  # DPOConfig would default to bf16 on, which CPUs run slowly
        gradient_checkpointing=config.gradient_checkpointing,  # DPOConfig would default to on
        report_to="none",  # no tracker unless asked for through dpo_args
        # bf16 autocast on a CPU (faster where it has bf16 units) needs use_cpu: without it
        # transformers refuses bf16 when there is no GPU.
        **{"dataloader_pin_memory": torch.cuda.is_available(),  # pinning needs a GPU
           "use_cpu": config.bf16 and not torch.cuda.is_available(), **config.dpo_args},
    )
    model, tokenizer = load_trainable(config.model)
    peft_config = lora_config(config, model)
    if config.adapter is not None:
        from peft import PeftModel

        # The SFT adapter, trainable: DPOTrainer then copies it into a frozen "ref" adapter
        # (the reference = the SFT model) instead of adding a new one.
        model = PeftModel.from_pretrained(model, config.adapter, is_trainable=True)
        # The shipped name of the base (an alias) means nothing to peft, which would look it
        # up on the hub when saving: point it at the loaded base. save_adapter restores the alias.
        model.peft_config["default"].base_model_name_or_path = model.get_base_model().name_or_path
        peft_config = None
    ref_model = None
    if config.ref_model is not None:
        ref_model, _ = load_trainable(config.ref_model)
        ref_model.eval().requires_grad_(False)
    logger.info("DPO on %d pairs (roles %s) of %s from %s%s (%s, reference: %s)", len(records), config.roles,
                config.train_file, config.model or "the bundled model",
                f" + adapter {config.adapter}" if config.adapter else "",
                "LoRA" if config.lora else "full fine-tuning",
                config.ref_model or "the starting model")
    trainer = DPOTrainer(
        model=model,
        ref_model=ref_model,
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    _report_truncation(trainer.train_dataset, len(records), config)
    return trainer


def _report_truncation(dataset: Any, n_pairs: int, config: DPORunConfig) -> None:
    """Count the pairs TRL dropped (prompt alone fills ``max_length``) or will cut at the end.

    TRL 1.x has no ``max_prompt_length``: it keeps the start of prompt + completion and silently
    drops a pair whose prompt leaves no room for the completion, so the counts are logged here.
    """
    dropped = n_pairs - len(dataset)
    if dropped == n_pairs:
        raise ValueError(
            f"max_length: all {n_pairs} pairs of {config.train_file} have prompts of {config.max_length} tokens or "
            "more; raise max_length or show fewer passages"
        )
    if dropped:
        logger.warning("%d of %d pairs dropped: their prompt alone fills max_length=%d", dropped, n_pairs,
                       config.max_length)
    prompt, chosen, rejected = dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]
    cut = sum(len(p) + max(len(c), len(r)) > config.max_length for p, c, r in zip(prompt, chosen, rejected))
    if cut:
        logger.warning("%d of %d pairs exceed max_length=%d: their completions are cut at the end", cut,
                       len(dataset), config.max_length)


def train_dpo(config: DPORunConfig) -> Path:
    """Run DPO, then write the adapter (``<output_dir>/adapter``) and/or the merged model
    (``<output_dir>/merged``), as ``config.save`` says.

    A rerun with the same ``output_dir`` resumes from the last checkpoint in
    ``<output_dir>/checkpoints`` (raise ``max_steps`` or the epochs to train further).
    ``<output_dir>/checkpoints/trainer_state.json`` logs the loss, the implicit rewards of
    chosen and rejected completions and their margin at every ``logging_steps``.

    Args:
        config: The run's settings.

    Returns:
        The merged checkpoint folder (model, tokenizer, chat template), loadable with
        ``load_backend("transformers", model=str(path))``; the adapter folder when only the
        adapter is saved.

    Raises:
        FloatingPointError: The training loss became NaN or infinite.
    """
    return train_and_save(build_dpo_trainer(config), config, "DPO")
