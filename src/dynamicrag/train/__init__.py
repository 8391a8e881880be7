"""Training DynamicRAG: behaviour cloning, then DPO from the generator's feedback.

Stage one: :func:`~dynamicrag.train.label.label_examples` (``dynamicrag label``) marks the
relevant passages; :func:`~dynamicrag.train.export.prepare` (``dynamicrag prepare``) splits the
SFT and DPO pools and writes the SFT data for TRL and LLaMA-Factory; :mod:`~dynamicrag.train.sft`
(``dynamicrag train sft``). Stage two: :func:`~dynamicrag.train.sample.sample_trajectories`
(``dynamicrag sample``), :func:`~dynamicrag.train.reward.score_samples` (``dynamicrag reward``),
:func:`~dynamicrag.train.pairs.export_pairs` (``dynamicrag pairs``), :mod:`~dynamicrag.train.dpo`
(``dynamicrag train dpo``). The trainers import trl lazily (the ``train`` extra).

:class:`~dynamicrag.train.utility.UtilityTeacher` (``label --scorer utility``) labels passages by
what they do for the generator's likelihood of the gold answer; :mod:`~dynamicrag.train.recipe`
(``dynamicrag train recipe``) runs every stage, resumably, into a shippable adapter.
"""

from dynamicrag.train.export import LLAMAFACTORY_NAME, prepare, to_alpaca, write_llamafactory, write_trl_jsonl
from dynamicrag.train.label import (
    LABEL_TASKS,
    TEACHER_DEFAULTS,
    LabelConfig,
    LabelRule,
    label_example,
    label_examples,
    make_teacher,
    read_labelled,
)
from dynamicrag.train.pairs import build_generator_pairs, build_reranker_pairs, export_pairs, reranker_pair_stats
from dynamicrag.train.recipe import RecipeConfig, load_recipe_config, run_recipe
from dynamicrag.train.reward import RewardConfig, reward_parts, reweight_samples, score_samples
from dynamicrag.train.sample import SampleConfig, sample_trajectories
from dynamicrag.train.trajectories import build_sft_records, generator_passages, reranker_target_ids, split_pools
from dynamicrag.train.utility import ExpertSearch, UtilityTeacher, build_expert, tie_order

__all__ = [
    "LABEL_TASKS",
    "LLAMAFACTORY_NAME",
    "LabelConfig",
    "LabelRule",
    "ExpertSearch",
    "RecipeConfig",
    "RewardConfig",
    "SampleConfig",
    "TEACHER_DEFAULTS",
    "UtilityTeacher",
    "build_expert",
    "build_generator_pairs",
    "build_reranker_pairs",
    "build_sft_records",
    "export_pairs",
    "generator_passages",
    "label_example",
    "label_examples",
    "load_recipe_config",
    "make_teacher",
    "prepare",
    "read_labelled",
    "reranker_pair_stats",
    "reward_parts",
    "reweight_samples",
    "run_recipe",
    "sample_trajectories",
    "score_samples",
    "reranker_target_ids",
    "split_pools",
    "tie_order",
    "to_alpaca",
    "write_llamafactory",
    "write_trl_jsonl",
]
