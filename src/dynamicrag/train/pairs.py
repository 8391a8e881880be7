"""DPO preference pairs from scored trajectories, written for TRL and LLaMA-Factory.

Input: records of :func:`~dynamicrag.train.reward.score_samples` (an example, its
``prompt_style`` and its ``samples``, each with a ``reward``). Two kinds of pairs (the paper's
DPO data, arXiv 2505.07233 section 3.3):

- Reranker: the reranker prompt of the example (the candidates it saw); chosen = the id list
  of the sample with the highest total reward, rejected = the one with the lowest (the first
  sample in order on equal totals). A rejected sample whose output was malformed is written as
  the model wrote it (its ``raw`` text), since that is the behaviour to unlearn; every other
  side is the canonical target ``[3], [1]`` / ``None``.
- Generator: the generator prompt over the chosen list's passages, in its order; chosen = the
  first gold answer, rejected = a sampled answer that is wrong (``em`` part 0): the chosen
  sample's own answer when it is wrong (on-policy for this very prompt), else the wrong answer
  with the lowest total. Examples without gold answers have no reward and give no pair (a
  model's own answer is never promoted to "chosen" without a gold answer to check it).

Skipped examples are counted by reason (:data:`SKIP_REASONS`): ``no_samples``,
``too_few_samples`` (fewer than 2), ``no_gold`` (no gold answer, so no reward), ``tie`` (all
totals equal: the paper skips such items for both kinds), ``same_ids`` (the chosen and rejected
reranker outputs would be the same text), ``none_wrong`` (no wrong usable answer to reject).

Prompts come from :func:`~dynamicrag.prompts.reranker_chat` /
:func:`~dynamicrag.prompts.generator_chat`, the functions inference uses, so DPO and inference
prompts cannot drift apart.

Formats (one pair = one row):

- TRL conversational preference: ``{"prompt": [system, user], "chosen": [assistant],
  "rejected": [assistant]}`` plus ``id``, ``role``, ``chosen_ids``, ``rejected_ids``,
  ``chosen_reward``, ``rejected_reward`` (``DPOTrainer`` reads only the first three).
- LLaMA-Factory alpaca preference: ``{"instruction", "input", "chosen", "rejected", "system"}``
  with a ``dataset_info.json`` entry carrying ``"ranking": true``.

Example:
    >>> stats = export_pairs(scored_records, "data/dpo")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from dynamicrag.data import atomic_write_json, atomic_write_text
from dynamicrag.prompts import PromptStyle, generator_chat, load_style, reranker_chat, reranker_target
from dynamicrag.schema import Example
from dynamicrag.train.export import add_dataset_info, jsonl_text, to_alpaca

logger = logging.getLogger(__name__)

LLAMAFACTORY_DPO_NAME = "dynamicrag_dpo"
# LLaMA-Factory's alpaca preference columns (data/README.md of hiyouga/LLaMA-Factory).
_ALPACA_PAIR_COLUMNS = {
    "prompt": "instruction", "query": "input", "chosen": "chosen", "rejected": "rejected", "system": "system",
}
SKIP_REASONS = ("no_samples", "too_few_samples", "no_gold", "tie", "same_ids", "none_wrong")
_TIE_TOL = 1e-9  # totals closer than this are equal (float noise of the weighted mean)


# ---------------------------------------------------------------- reading records


def _example(record: dict[str, Any], index: int) -> Example:
    try:
        return Example.model_validate({k: record[k] for k in Example.model_fields if k in record})
    except ValidationError as err:
        raise ValueError(f"record {index} (id {record.get('id')!r}) is not a valid example: {err}") from None


def _style(record: dict[str, Any], style: PromptStyle | str | None, index: int) -> PromptStyle:
    """The style to build prompts with; a record sampled under another style is an error."""
    recorded = record.get("prompt_style")
    if style is None:
        return load_style(recorded or "default")
    loaded = load_style(style) if isinstance(style, str) else style
    if recorded and recorded not in {loaded.name, style if isinstance(style, str) else loaded.name}:
        raise ValueError(
            f"record {index} (id {record.get('id')!r}) was sampled with prompt style {recorded!r}, "
            f"but pairs are being built with {loaded.name!r}: DPO prompts must be the ones the model saw"
        )
    return loaded


def _rewards(record: dict[str, Any], index: int) -> list[dict[str, Any] | None]:
    """The samples' reward dicts (None: no gold answer); unscored samples are an error."""
    out = []
    for s, sample in enumerate(record.get("samples") or []):
        if "reward" not in sample:
            raise ValueError(
                f"record {index} (id {record.get('id')!r}), sample {s}: no 'reward'; "
                "score the samples first (dynamicrag.train.reward.score_samples)"
            )
        out.append(sample["reward"])
    return out


def _ids(record: dict[str, Any], sample_index: int, n_passages: int, index: int) -> list[int]:
    ids = record["samples"][sample_index].get("ids")
    if not isinstance(ids, list) or not all(isinstance(i, int) and 1 <= i <= n_passages for i in ids):
        raise ValueError(
            f"record {index} (id {record.get('id')!r}), sample {sample_index}: ids {ids!r} must be "
            f"1-based positions into its {n_passages} passages"
        )
    return ids


def _best_worst(record: dict[str, Any], index: int) -> tuple[int, int] | str:
    """(index of the best sample, index of the worst), or the reason to skip the example."""
    samples = record.get("samples") or []
    if not samples:
        return "no_samples"
    if len(samples) < 2:
        return "too_few_samples"
    rewards = _rewards(record, index)
    if any(r is None for r in rewards):
        return "no_gold"
    totals = [float(r["total"]) for r in rewards]  # type: ignore[index]
    best = max(range(len(totals)), key=totals.__getitem__)  # max/min keep the first of equals
    worst = min(range(len(totals)), key=totals.__getitem__)
    if totals[best] - totals[worst] <= _TIE_TOL:
        return "tie"
    return best, worst


def _usable_answer(sample: dict[str, Any]) -> str | None:
    answer = sample.get("answer")
    return answer if sample.get("error") is None and isinstance(answer, str) and answer.strip() else None


def _assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


# ---------------------------------------------------------------- building pairs


def build_reranker_pairs(
    records: Sequence[dict[str, Any]], style: PromptStyle | str | None = None
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Reranker preference pairs: best id list (chosen) against the worst (rejected).

    Args:
        records: Scored records (:func:`~dynamicrag.train.reward.score_samples`).
        style: Prompt style; None uses each record's ``prompt_style``. A record sampled under
            another style raises.

    Returns:
        The pairs (TRL conversational rows, see the module docstring) and the number of
        skipped examples by reason.

    Raises:
        ValueError: An unscored sample, ids out of range, a record that is not an example, or
            a prompt-style mismatch (each naming the record).
    """
    pairs: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for index, record in enumerate(records):
        picked = _best_worst(record, index)
        if isinstance(picked, str):
            skipped[picked] += 1
            continue
        best, worst = picked
        example, prompts = _example(record, index), _style(record, style, index)
        n = len(example.passages)
        chosen_ids, rejected_ids = _ids(record, best, n, index), _ids(record, worst, n, index)
        chosen = reranker_target(prompts, chosen_ids)
        bad = record["samples"][worst]
        rejected = reranker_target(prompts, rejected_ids)
        if bad.get("error") is not None or bad.get("well_formed") is False:
            rejected = (bad.get("raw") or "").strip() or rejected  # what the model actually wrote
        if chosen == rejected:
            skipped["same_ids"] += 1
            continue
        rewards = _rewards(record, index)
        top = float(rewards[best]["total"])  # type: ignore[index]
        best_lists = {tuple(record["samples"][s].get("ids") or []) for s, r in enumerate(rewards)
                      if abs(float(r["total"]) - top) <= _TIE_TOL}  # type: ignore[index]
        pairs.append({
            "id": example.id,
            "role": "reranker",
            # The prompt the model saw when sampling: same style, same per-passage word cap.
            "prompt": reranker_chat(prompts, example.question, example.passages, record.get("passage_words")),
            "chosen": _assistant(chosen),
            "rejected": _assistant(rejected),
            "chosen_ids": chosen_ids,
            "rejected_ids": rejected_ids,
            "chosen_reward": rewards[best]["total"],  # type: ignore[index]
            "rejected_reward": rewards[worst]["total"],  # type: ignore[index]
            # Other id lists scored as well as the chosen one: the first in sample order won.
            "best_tied": len(best_lists) > 1,
        })
    return pairs, skipped


def build_generator_pairs(
    records: Sequence[dict[str, Any]],
    style: PromptStyle | str | None = None,
    *,
    skip_ties: bool = True,
) -> tuple[list[dict[str, Any]], Counter[str]]:
    """Generator preference pairs: the gold answer (chosen) against a wrong sampled answer.

    The prompt is the generator's over the passages of the best sample's id list, in its
    order (no passages when that list is empty: the ``None`` prompt).

    Args:
        records: Scored records (:func:`~dynamicrag.train.reward.score_samples`).
        style: Prompt style; None uses each record's ``prompt_style``.
        skip_ties: Skip examples whose totals are all equal, as the paper does for every
            pair; False keeps them (the best list is then the first sample's).

    Returns:
        The pairs and the number of skipped examples by reason.

    Raises:
        ValueError: As :func:`build_reranker_pairs`.
    """
    pairs: list[dict[str, Any]] = []
    skipped: Counter[str] = Counter()
    for index, record in enumerate(records):
        picked = _best_worst(record, index)
        if picked == "tie" and not skip_ties:
            picked = (0, 0)
        if isinstance(picked, str):
            skipped[picked] += 1
            continue
        best, _ = picked
        samples, rewards = record["samples"], _rewards(record, index)
        example, prompts = _example(record, index), _style(record, style, index)
        gold = next(a for a in example.answers if a.strip())  # rewards exist, so a gold answer does
        # Wrong usable answers; the best sample's own answer first (on-policy for this prompt),
        # then by increasing total (the first sample on equal totals).
        wrong = [
            s for s in range(len(samples))
            if _usable_answer(samples[s]) is not None and rewards[s]["em"] == 0  # type: ignore[index]
        ]
        if not wrong:
            skipped["none_wrong"] += 1
            continue
        reject = best if best in wrong else min(wrong, key=lambda s: rewards[s]["total"])  # type: ignore[index]
        chosen_ids = _ids(record, best, len(example.passages), index)
        passages = [example.passages[i - 1] for i in chosen_ids]
        pairs.append({
            "id": example.id,
            "role": "generator",
            "prompt": generator_chat(prompts, example.question, passages, example.task),
            "chosen": _assistant(gold),
            "rejected": _assistant(samples[reject]["answer"]),
            "chosen_ids": chosen_ids,
            "rejected_ids": _ids(record, reject, len(example.passages), index),
            "chosen_reward": None,  # the gold answer is not scored
            "rejected_reward": rewards[reject]["total"],  # type: ignore[index]
        })
    return pairs, skipped


# ---------------------------------------------------------------- writing


def _check_pair(pair: dict[str, Any], i: int) -> None:
    prompt, chosen, rejected = pair.get("prompt"), pair.get("chosen"), pair.get("rejected")
    if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt)):
        raise ValueError(f"pair {i} (id {pair.get('id')!r}) has no 'prompt' list of messages")
    for key, side in (("chosen", chosen), ("rejected", rejected)):
        if not (isinstance(side, list) and len(side) == 1 and side[0].get("role") == "assistant"):
            raise ValueError(f"pair {i} (id {pair.get('id')!r}): '{key}' must be one assistant message")


def write_trl_pairs(pairs: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Write pairs as TRL conversational preference JSONL (atomically).

    Raises:
        ValueError: A pair without a message-list ``prompt`` or a one-message
            ``chosen`` / ``rejected`` (naming its index).
    """
    for i, pair in enumerate(pairs):
        _check_pair(pair, i)
    atomic_write_text(path, jsonl_text(pairs))


def to_alpaca_pair(pair: dict[str, Any]) -> dict[str, str]:
    """One pair as LLaMA-Factory alpaca preference fields (instruction, input, chosen, rejected, system).

    Raises:
        ValueError: The prompt is not exactly [system, user].
    """
    _check_pair(pair, 0)
    fields = to_alpaca({"id": pair.get("id"), "messages": [*pair["prompt"], *pair["chosen"]]})
    return {
        "instruction": fields["instruction"],
        "input": fields["input"],
        "chosen": fields["output"],
        "rejected": pair["rejected"][0]["content"],
        "system": fields["system"],
    }


def write_llamafactory_pairs(
    pairs: Sequence[dict[str, Any]], out_dir: str | Path, name: str = LLAMAFACTORY_DPO_NAME
) -> Path:
    """Write ``out_dir/{name}.json`` (alpaca preference) and its ``dataset_info.json`` entry.

    The entry has ``"ranking": true`` (LLaMA-Factory's mark of a preference dataset); entries
    of other datasets already in ``dataset_info.json`` are kept. Both files are written
    atomically.

    Returns:
        The path of the data file.
    """
    out_dir = Path(out_dir)
    data_file = out_dir / f"{name}.json"
    atomic_write_json(data_file, [to_alpaca_pair(p) for p in pairs])
    add_dataset_info(out_dir, name, {
        "file_name": data_file.name,
        "formatting": "alpaca",
        "ranking": True,
        "columns": dict(_ALPACA_PAIR_COLUMNS),
    })
    return data_file


def reranker_pair_stats(pairs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What decided the reranker pairs: ties at the top, and how often the shorter list won.

    Args:
        pairs: Reranker pairs of :func:`build_reranker_pairs`.

    Returns:
        ``best_ties`` (pairs whose chosen list shared the best total with another list),
        ``chosen_none`` / ``rejected_none`` (pairs whose chosen / rejected list is ``None``)
        with their shares of the pairs, and ``chosen_shorter`` / ``chosen_longer`` /
        ``same_length`` (the chosen list against the rejected one, in passages).
    """
    n = len(pairs)
    chosen_none = sum(not p["chosen_ids"] for p in pairs)
    rejected_none = sum(not p["rejected_ids"] for p in pairs)
    shorter = sum(len(p["chosen_ids"]) < len(p["rejected_ids"]) for p in pairs)
    longer = sum(len(p["chosen_ids"]) > len(p["rejected_ids"]) for p in pairs)
    return {
        "best_ties": sum(bool(p.get("best_tied")) for p in pairs),
        "chosen_none": chosen_none,
        "chosen_none_share": chosen_none / n if n else 0.0,
        "rejected_none": rejected_none,
        "rejected_none_share": rejected_none / n if n else 0.0,
        "chosen_shorter": shorter,
        "chosen_longer": longer,
        "same_length": n - shorter - longer,
    }


def export_pairs(
    records: Sequence[dict[str, Any]],
    out_dir: str | Path,
    *,
    style: PromptStyle | str | None = None,
    skip_ties: bool = True,
) -> dict[str, Any]:
    """Build both kinds of pairs and write them for TRL and LLaMA-Factory.

    Writes ``out_dir/dpo.jsonl`` (TRL; reranker pairs, then generator pairs),
    ``out_dir/llamafactory/{dynamicrag_dpo.json, dataset_info.json}`` and
    ``out_dir/pairs_stats.json``.

    Args:
        records: Scored records (:func:`~dynamicrag.train.reward.score_samples`).
        out_dir: Output folder (created).
        style: Prompt style; None uses each record's ``prompt_style``.
        skip_ties: See :func:`build_generator_pairs`.

    Returns:
        The statistics written to ``pairs_stats.json``: pair counts, skipped examples by reason
        for each kind (``tie``: every sample scored the same), the mean reward gap of the
        reranker pairs, and :func:`reranker_pair_stats` (ties at the top, share of pairs whose
        chosen list is ``None``, shorter vs longer chosen lists).
    """
    out_dir = Path(out_dir)
    reranker, skipped_r = build_reranker_pairs(records, style)
    generator, skipped_g = build_generator_pairs(records, style, skip_ties=skip_ties)
    pairs = reranker + generator
    write_trl_pairs(pairs, out_dir / "dpo.jsonl")
    write_llamafactory_pairs(pairs, out_dir / "llamafactory", LLAMAFACTORY_DPO_NAME)
    gaps = [p["chosen_reward"] - p["rejected_reward"] for p in reranker]
    stats = {
        **reranker_pair_stats(reranker),
        "examples": len(records),
        "reranker_pairs": len(reranker),
        "generator_pairs": len(generator),
        "reranker_skipped": {r: skipped_r[r] for r in SKIP_REASONS if skipped_r[r]},
        "generator_skipped": {r: skipped_g[r] for r in SKIP_REASONS if skipped_g[r]},
        "mean_reranker_reward_gap": sum(gaps) / len(gaps) if gaps else 0.0,
        "skip_ties": skip_ties,
        # The weights the totals were computed with (the reward stage's, or a reweighting's).
        "reward_weights": next((r["reward_meta"].get("weights") for r in records if r.get("reward_meta")), None),
    }
    atomic_write_json(out_dir / "pairs_stats.json", stats)
    logger.info("pairs: %d reranker and %d generator pairs from %d examples (skipped: %s / %s)",
                len(reranker), len(generator), len(records), dict(skipped_r), dict(skipped_g))
    return stats


__all__ = [
    "LLAMAFACTORY_DPO_NAME",
    "SKIP_REASONS",
    "build_generator_pairs",
    "build_reranker_pairs",
    "export_pairs",
    "reranker_pair_stats",
    "to_alpaca_pair",
    "write_llamafactory_pairs",
    "write_trl_pairs",
]
