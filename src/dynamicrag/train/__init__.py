"""Training data for DynamicRAG: teacher labels, expert trajectories (behaviour cloning), SFT export.

Stages: :func:`~dynamicrag.train.label.label_examples` (``dynamicrag label``) marks the relevant
passages; :func:`~dynamicrag.train.export.prepare` (``dynamicrag prepare``) splits the SFT and
DPO pools and writes the SFT data for TRL and LLaMA-Factory.
"""

from dynamicrag.train.export import LLAMAFACTORY_NAME, prepare, to_alpaca, write_llamafactory, write_trl_jsonl
from dynamicrag.train.label import (
    LABEL_TASKS,
    TEACHER_DEFAULTS,
    LabelConfig,
    LabelRule,
    label_example,
    label_examples,
    read_labelled,
)
from dynamicrag.train.trajectories import build_sft_records, generator_passages, reranker_target_ids, split_pools

__all__ = [
    "LABEL_TASKS",
    "LLAMAFACTORY_NAME",
    "LabelConfig",
    "LabelRule",
    "TEACHER_DEFAULTS",
    "build_sft_records",
    "generator_passages",
    "label_example",
    "label_examples",
    "prepare",
    "read_labelled",
    "reranker_target_ids",
    "split_pools",
    "to_alpaca",
    "write_llamafactory",
    "write_trl_jsonl",
]
