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

from dynamicrag.lazy import lazy_exports

_EXPORTS = {
    "ExpertSearch": "dynamicrag.train.utility",
    "LABEL_TASKS": "dynamicrag.train.label",
    "LLAMAFACTORY_NAME": "dynamicrag.train.export",
    "LabelConfig": "dynamicrag.train.label",
    "LabelRule": "dynamicrag.train.label",
    "RecipeConfig": "dynamicrag.train.recipe",
    "RewardConfig": "dynamicrag.train.reward",
    "SampleConfig": "dynamicrag.train.sample",
    "TEACHER_DEFAULTS": "dynamicrag.train.label",
    "UtilityTeacher": "dynamicrag.train.utility",
    "build_expert": "dynamicrag.train.utility",
    "build_generator_pairs": "dynamicrag.train.pairs",
    "build_reranker_pairs": "dynamicrag.train.pairs",
    "build_sft_records": "dynamicrag.train.trajectories",
    "export_pairs": "dynamicrag.train.pairs",
    "generator_passages": "dynamicrag.train.trajectories",
    "label_example": "dynamicrag.train.label",
    "label_examples": "dynamicrag.train.label",
    "load_recipe_config": "dynamicrag.train.recipe",
    "make_teacher": "dynamicrag.train.label",
    "prepare": "dynamicrag.train.export",
    "read_labelled": "dynamicrag.train.label",
    "reranker_pair_stats": "dynamicrag.train.pairs",
    "reranker_target_ids": "dynamicrag.train.trajectories",
    "reward_parts": "dynamicrag.train.reward",
    "reweight_samples": "dynamicrag.train.reward",
    "run_recipe": "dynamicrag.train.recipe",
    "sample_trajectories": "dynamicrag.train.sample",
    "score_samples": "dynamicrag.train.reward",
    "split_pools": "dynamicrag.train.trajectories",
    "tie_order": "dynamicrag.train.utility",
    "to_alpaca": "dynamicrag.train.export",
    "write_llamafactory": "dynamicrag.train.export",
    "write_trl_jsonl": "dynamicrag.train.export",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
