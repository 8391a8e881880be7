"""Expert trajectories: target order, cap, None, one target per prompt, split, SFT records."""

from __future__ import annotations

import pytest

from dynamicrag.prompts import generator_chat, load_style, reranker_chat
from dynamicrag.schema import Example, Passage
from dynamicrag.train.trajectories import build_sft_records, generator_passages, reranker_target_ids, split_pools


def labelled(ex_id: str, cells, answers=("gold",), task="nq") -> Example:
    """An example whose passage i is labelled by cells[i] = (teacher score, relevant)."""
    return Example(
        id=ex_id,
        question=f"question {ex_id}?",
        answers=list(answers),
        task=task,
        passages=[
            Passage(id=f"{ex_id}-{i}", title=f"T{i}", text=f"text {i}", score=s, extra={"relevant": r})
            for i, (s, r) in enumerate(cells, 1)
        ],
    )


def test_target_orders_relevant_passages_by_teacher_score():
    ex = labelled("x", [(0.1, True), (0.9, False), (0.7, True), (0.8, True)])
    assert reranker_target_ids(ex, max_k=5) == [4, 3, 1]


def test_ties_keep_retrieval_order_and_missing_scores_go_last():
    ex = labelled("x", [(None, True), (0.5, True), (0.5, True)])
    assert reranker_target_ids(ex, max_k=5) == [2, 3, 1]


def test_target_is_cut_at_max_k():
    ex = labelled("x", [(s / 10, True) for s in range(10)])
    assert reranker_target_ids(ex, max_k=3) == [10, 9, 8]


def test_nothing_relevant_gives_none():
    ex = labelled("x", [(0.9, False), (0.8, False)])
    assert reranker_target_ids(ex, max_k=5) == []
    [rr, _] = build_sft_records([ex], "default")
    assert rr["messages"][-1] == {"role": "assistant", "content": "None"}


def test_unlabelled_passages_are_an_error():
    ex = Example(id="raw", question="q", passages=[Passage(id="p", text="t")])
    with pytest.raises(ValueError, match="'raw', passage 1.*no 'relevant' label"):
        reranker_target_ids(ex, 5)


def test_generator_gets_relevant_passages_in_target_order_and_first_answer():
    ex = labelled("x", [(0.1, True), (0.9, False), (0.7, True)], answers=("", "Paris", "paris city"))
    passages, target = generator_passages(ex, max_passages=15)
    assert [p.id for p in passages] == ["x-3", "x-1"]
    assert target == "Paris"
    assert generator_passages(ex, max_passages=1)[0] == [ex.passages[2]]
    assert generator_passages(labelled("y", [(1.0, True)], answers=()))[1] is None


def test_split_is_deterministic_by_seed():
    examples = [labelled(str(i), [(1.0, True)]) for i in range(20)]
    sft, dpo = split_pools(examples, 0.7, seed=3)
    assert (len(sft), len(dpo)) == (14, 6)
    assert sorted(e.id for e in sft + dpo) == sorted(e.id for e in examples)
    assert split_pools(examples, 0.7, seed=3) == (sft, dpo)
    assert [e.id for e in split_pools(examples, 0.7, seed=4)[0]] != [e.id for e in sft]
    with pytest.raises(ValueError, match="sft_fraction"):
        split_pools(examples, 1.5, seed=0)


@pytest.mark.parametrize("style_name", ["default", "official"])
def test_sft_records_use_the_inference_prompts_exactly(style_name):
    style = load_style(style_name)
    ex = labelled("x", [(0.2, True), (0.9, False), (0.6, True)], answers=("gold answer",), task="hotpotqa")
    reranker, generator = build_sft_records([ex], style, max_k=5, max_generator_passages=15)

    assert reranker["role"] == "reranker" and reranker["id"] == "x"
    assert reranker["messages"][:2] == reranker_chat(style, ex.question, ex.passages)
    assert reranker["messages"][2] == {"role": "assistant", "content": "[3], [1]"}

    assert generator["role"] == "generator"
    chosen = [ex.passages[2], ex.passages[0]]  # renumbered 1, 2 by the prompt
    assert generator["messages"][:2] == generator_chat(style, ex.question, chosen, "hotpotqa")
    assert generator["messages"][2] == {"role": "assistant", "content": "gold answer"}


def test_one_target_per_prompt():
    examples = [labelled(str(i), [(0.5, i % 2 == 0), (0.4, True)]) for i in range(6)]
    records = build_sft_records(examples, "default", max_k=5)
    prompts = [r["messages"][1]["content"] for r in records if r["role"] == "reranker"]
    assert len(prompts) == len(set(prompts)) == 6


def test_no_generator_record_without_a_gold_answer():
    records = build_sft_records([labelled("x", [(0.5, True)], answers=())], "default")
    assert [r["role"] for r in records] == ["reranker"]


def test_fever_generator_gets_the_fever_task_line():
    style = load_style("default")
    ex = labelled("f", [(0.5, True)], answers=("SUPPORTS",), task="fever")
    _, generator = build_sft_records([ex], style)
    assert style.task_line("fever") in generator["messages"][1]["content"]
    assert generator["messages"][2]["content"] == "SUPPORTS"


def test_oversampling_repeats_every_target_but_top1_and_leaves_generator_records_alone():
    top1 = labelled("a", [(0.9, True), (0.1, False)])
    second = labelled("b", [(0.1, False), (0.9, True)])
    none = labelled("c", [(0.1, False), (0.2, False)])
    records = build_sft_records([top1, second, none], "default", oversample_not_top1=3)
    targets = [(r["id"], r["messages"][-1]["content"]) for r in records if r["role"] == "reranker"]
    assert targets == [("a", "[1]")] + [("b", "[2]")] * 3 + [("c", "None")] * 3
    assert [r["id"] for r in records if r["role"] == "generator"] == ["a", "b", "c"]
    with pytest.raises(ValueError, match="oversample_not_top1"):
        build_sft_records([top1], "default", oversample_not_top1=0)
