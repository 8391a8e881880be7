"""Writing SFT data for TRL and LLaMA-Factory, and the ``prepare`` stage.

Two formats of the same records:

- TRL: JSONL, one ``{"messages": [...], "role": ..., "id": ...}`` per line, loadable with
  ``datasets.load_dataset("json", data_files=...)`` and usable by ``SFTTrainer`` as a
  conversational dataset.
- LLaMA-Factory (the original's trainer): an alpaca-style JSON list
  ``{"instruction", "input", "output", "system"}`` plus the ``dataset_info.json`` entry that
  names its columns, so ``dataset_dir`` can point at the folder.

Example:
    >>> stats = prepare(read_labelled("labelled.jsonl"), "data/sft", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynamicrag.data import atomic_write_json, atomic_write_text
from dynamicrag.data.files import read_json
from dynamicrag.prompts import PromptStyle, load_style, reranker_target
from dynamicrag.schema import Example
from dynamicrag.train.trajectories import build_sft_records, reranker_target_ids, split_pools

logger = logging.getLogger(__name__)

LLAMAFACTORY_NAME = "dynamicrag_sft"
# LLaMA-Factory's alpaca columns (data/README.md of hiyouga/LLaMA-Factory).
_ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "system": "system"}


def jsonl_text(records: Sequence[dict[str, Any]]) -> str:
    """Records as JSONL text (UTF-8 kept readable), for an atomic write."""
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def add_dataset_info(out_dir: str | Path, name: str, entry: dict[str, Any]) -> None:
    """Set ``name``'s entry in ``out_dir/dataset_info.json`` (LLaMA-Factory's dataset registry),
    keeping the other datasets' entries; written atomically.

    Raises:
        ValueError: The existing file is not a JSON object.
    """
    info_path = Path(out_dir) / "dataset_info.json"
    info = read_json(info_path) if info_path.exists() else {}
    if not isinstance(info, dict):
        raise ValueError(f"{info_path}: expected a JSON object of dataset entries")
    info[name] = entry
    atomic_write_json(info_path, info)


def write_trl_jsonl(records: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write records as JSONL (atomically), one object with ``messages`` per line.

    Raises:
        ValueError: A record without a ``messages`` list (naming its index).
    """
    for i, r in enumerate(records):
        if not isinstance(r.get("messages"), list):
            raise ValueError(f"record {i} (id {r.get('id')!r}) has no 'messages' list")
    atomic_write_text(path, jsonl_text(records))


def to_alpaca(record: dict[str, Any]) -> dict[str, str]:
    """One ``[system, user, assistant]`` record as LLaMA-Factory alpaca fields.

    Raises:
        ValueError: The messages are not exactly system, user, assistant.
    """
    roles = [m.get("role") for m in record.get("messages", [])]
    if roles != ["system", "user", "assistant"]:
        raise ValueError(
            f"record {record.get('id')!r}: alpaca export needs messages [system, user, assistant], got {roles}"
        )
    system, user, assistant = (m["content"] for m in record["messages"])
    return {"instruction": user, "input": "", "output": assistant, "system": system}


def write_llamafactory(records: Sequence[dict[str, Any]], out_dir: str | Path, name: str = LLAMAFACTORY_NAME) -> Path:
    """Write ``out_dir/{name}.json`` (alpaca) and its entry in ``out_dir/dataset_info.json``.

    Entries of other datasets already in ``dataset_info.json`` are kept. Both files are
    written atomically.

    Returns:
        The path of the data file.
    """
    out_dir = Path(out_dir)
    data_file = out_dir / f"{name}.json"
    atomic_write_json(data_file, [to_alpaca(r) for r in records])
    add_dataset_info(out_dir, name, {"file_name": data_file.name, "formatting": "alpaca", "columns": dict(_ALPACA_COLUMNS)})
    return data_file


@dataclass
class PrepareConfig:
    """Options of ``dynamicrag prepare`` (the keyword arguments of :func:`prepare`)."""

    prompt_style: str = field(default="default", metadata={"help": "default | official (released checkpoints) | a YAML path"})
    max_k: int = field(default=5, metadata={"help": "Most ids in a reranker target"})
    max_generator_passages: int = field(default=15, metadata={"help": "Most passages in a generator prompt (original: 15)"})
    sft_fraction: float = field(default=0.7, metadata={"help": "Share of examples for SFT; the rest is the DPO pool"})
    seed: int = field(default=0, metadata={"help": "Split seed (same seed, same files)"})
    passage_words: int | None = field(
        default=None,
        metadata={"help": "Words shown of each passage in the reranker prompt (default: all); use the same cap in "
                  "sample and at inference"},
    )
    oversample_not_top1: int = field(
        default=1, metadata={"help": "Copies of each reranker target other than [1] (1: as labelled; counters the "
                             "retriever's top-1 prior in the labels)"},
    )

    def __post_init__(self) -> None:
        if self.max_k < 1 or self.max_generator_passages < 1:
            raise ValueError(f"max_k and max_generator_passages must be >= 1, got {self.max_k}, {self.max_generator_passages}")
        if not 0 <= self.sft_fraction <= 1:
            raise ValueError(f"sft_fraction must be in [0, 1], got {self.sft_fraction}")
        if self.passage_words is not None and self.passage_words < 1:
            raise ValueError(f"passage_words must be >= 1 (or unset: all), got {self.passage_words}")
        if self.oversample_not_top1 < 1:
            raise ValueError(f"oversample_not_top1 must be >= 1, got {self.oversample_not_top1}")

    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`prepare`."""
        out = dataclasses.asdict(self)
        out["style"] = out.pop("prompt_style")
        return out


def prepare(
    labelled_examples: Sequence[Example],
    out_dir: str | Path,
    *,
    style: PromptStyle | str = "default",
    max_k: int = 5,
    max_generator_passages: int = 15,
    sft_fraction: float = 0.7,
    seed: int = 0,
    passage_words: int | None = None,
    oversample_not_top1: int = 1,
) -> dict[str, Any]:
    """Split labelled examples into the SFT and DPO pools and write the SFT data.

    Writes ``out_dir/sft.jsonl`` (TRL), ``out_dir/dpo_pool.jsonl`` (the DPO pool's examples,
    ``Example.model_dump`` per line), ``out_dir/llamafactory/{dynamicrag_sft.json,
    dataset_info.json}`` and ``out_dir/prepare_stats.json``. The output depends only on the
    inputs and the arguments (same seed, same files).

    Args:
        labelled_examples: Output of :func:`~dynamicrag.train.label.label_examples`.
        out_dir: Output folder (created).
        style: Prompt style of the records (must be the one used at inference).
        max_k: Most ids in a reranker target.
        max_generator_passages: Most passages in a generator prompt.
        sft_fraction: Share of examples for SFT; the rest is the DPO pool.
        seed: Split seed.
        passage_words: Words shown of each passage in the reranker prompts (None: all); use
            the same cap in ``sample`` and at inference.
        oversample_not_top1: Copies of each reranker record whose target is not ``[1]``.

    Returns:
        The statistics written to ``prepare_stats.json``: example and record counts, None
        targets, the distribution of target sizes k (per example, before oversampling) and
        the share of reranker records whose target is not ``[1]`` (after it).
    """
    out_dir = Path(out_dir)
    style = load_style(style) if isinstance(style, str) else style
    sft, dpo = split_pools(labelled_examples, sft_fraction, seed)
    records = build_sft_records(sft, style, max_k, max_generator_passages, passage_words, oversample_not_top1)
    write_trl_jsonl(records, out_dir / "sft.jsonl")
    atomic_write_text(out_dir / "dpo_pool.jsonl", jsonl_text([ex.model_dump(mode="json") for ex in dpo]))
    write_llamafactory(records, out_dir / "llamafactory", LLAMAFACTORY_NAME)

    ks = Counter(len(reranker_target_ids(ex, max_k)) for ex in sft)
    reranker_records = [r for r in records if r["role"] == "reranker"]
    top1_target = reranker_target(style, [1])
    stats = {
        "examples": len(labelled_examples),
        "sft_examples": len(sft),
        "dpo_examples": len(dpo),
        "reranker_records": len(reranker_records),
        "reranker_not_top1_share": (sum(r["messages"][-1]["content"] != top1_target for r in reranker_records)
                                    / len(reranker_records) if reranker_records else 0.0),
        "oversample_not_top1": oversample_not_top1,
        "generator_records": sum(r["role"] == "generator" for r in records),
        "none_targets": ks.get(0, 0),
        "k_distribution": {str(k): ks[k] for k in sorted(ks)},
        "mean_k": sum(k * n for k, n in ks.items()) / len(sft) if sft else 0.0,
        "style": style.name,
        "max_k": max_k,
        "max_generator_passages": max_generator_passages,
        "passage_words": passage_words,
        "sft_fraction": sft_fraction,
        "seed": seed,
    }
    atomic_write_json(out_dir / "prepare_stats.json", stats)
    logger.info("prepare: %d SFT records from %d examples, %d in the DPO pool", len(records), len(sft), len(dpo))
    return stats


__all__ = ["LLAMAFACTORY_NAME", "prepare", "to_alpaca", "write_llamafactory", "write_trl_jsonl"]
