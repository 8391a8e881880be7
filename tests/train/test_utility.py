"""The utility teacher: expert lists from hand-made utilities, and the real generator on NQ."""

from __future__ import annotations

import math

import pytest

from dynamicrag.schema import Example, Passage
from dynamicrag.train.label import LabelConfig, label_examples, make_teacher
from dynamicrag.train.trajectories import reranker_target_ids
from dynamicrag.train.utility import (
    ExpertSearch,
    UtilityTeacher,
    answer_texts,
    build_expert,
    prefix_expert,
    tie_order,
)


def joint(table: dict[tuple[int, ...], float]):
    """LL of a passage list, from a table; a list missing from it is a test error."""
    def ll(passages: list[int]) -> float:
        return table[tuple(passages)]
    return ll


def test_tie_order_breaks_near_ties_toward_retrieval_order():
    # 2 is best by 0.05 over 0: within the margin, so 0 (retrieved first) goes first.
    assert tie_order([1.00, 0.2, 1.05, 0.9], tie_margin=0.1) == [0, 2, 3, 1]
    assert tie_order([1.00, 0.2, 1.05, 0.9], tie_margin=0.0) == [2, 0, 3, 1]
    assert tie_order([0.5, float("nan"), 0.7], tie_margin=0.1) == [2, 0, 1]  # NaN last
    with pytest.raises(ValueError, match="tie_margin"):
        tie_order([1.0], -1)


def test_expert_is_none_when_no_passage_beats_no_passage():
    # The best passage adds 0.3 nats over none: not more than the 0.5 margin.
    assert build_expert(-5.0, [-4.7, -6.0, -9.0], joint({}), margin=0.5) == []
    search = ExpertSearch(-5.0, [-4.7, -6.0], margin=0.5)
    assert search.pending is None and search.ll == -5.0


def test_expert_grows_while_the_next_passage_helps_then_stops():
    single = [-3.0, -1.0, -4.0, -2.0]  # utilities over none (-5): 2, 4, 1, 3 -> order 1, 3, 0, 2
    table = {(1, 3): -0.2, (1, 3, 0): -0.1}  # +0.8 helps; then +0.1 does not (margin 0.5)
    assert build_expert(-5.0, single, joint(table), margin=0.5, tie_margin=0.0) == [1, 3]
    # A next passage that lowers the likelihood stops the list at once.
    assert build_expert(-5.0, single, joint({(1, 3): -1.5}), margin=0.5, tie_margin=0.0) == [1]
    # The stop rule asks only about the lists it needs, in order.
    asked = []
    build_expert(-5.0, single, lambda p: asked.append(p) or {(1, 3): -0.2, (1, 3, 0): -0.1}[tuple(p)], margin=0.5)
    assert asked == [[1, 3], [1, 3, 0]]


def test_expert_is_capped_at_max_k_and_near_ties_follow_retrieval():
    single = [-1.0, -1.02, -1.01]  # three passages within 0.1 nats of each other
    table = {(0, 1): 0.0, (0, 1, 2): 1.0}
    assert build_expert(-5.0, single, joint(table), margin=0.5, tie_margin=0.1, max_k=2) == [0, 1]
    assert build_expert(-5.0, single, joint(table), margin=0.5, tie_margin=0.1) == [0, 1, 2]
    search = ExpertSearch(-5.0, single, margin=0.5, tie_margin=0.1, max_k=1)
    assert search.expert == [0] and search.pending is None
    with pytest.raises(RuntimeError):
        search.feed(0.0)


def test_answer_texts_normalise_deduplicate_and_cap():
    assert answer_texts(["August\xa021,\xa02001", "August 21, 2001", "august 21, 2001", "2001"]) == [
        "August 21, 2001", "2001"]
    assert answer_texts(["a", "b", "c", "d"], max_answers=2) == ["a", "b"]
    assert answer_texts(["Paris"], form="sentence") == ["The answer is Paris."]
    with pytest.raises(ValueError, match="no gold answer"):
        answer_texts(["  "])
    with pytest.raises(ValueError, match="answer_form"):
        answer_texts(["x"], form="essay")


class TableBackend:
    """A generator whose log-likelihoods come from a table keyed by the passages in the prompt."""

    name = "table"

    def __init__(self, table: dict[tuple[str, ...], float]) -> None:
        self.table = table
        self.calls = 0

    def loglikelihood(self, chats, continuations, *, batch_size=None, groups=None, stats=None):
        self.calls += 1
        out = []
        for chat in chats:
            text = chat[-1]["content"]
            shown = tuple(sorted((t for t in ("alpha", "beta", "gamma") if f"] {t}" in text),
                                 key=text.index))  # passages in prompt order
            out.append(self.table[shown])
        if stats is not None:
            stats["forward_passes"] = stats.get("forward_passes", 0) + 1
            stats["tokens"] = stats.get("tokens", 0) + 10 * len(chats)
        return out


def example(qid: str = "q1") -> Example:
    return Example(id=qid, question="q?", answers=["ans"], task="nq", passages=[
        Passage(id=t, title=t, text=f"text of {t}") for t in ("alpha", "beta", "gamma")])


def test_labels_carry_the_expert_order_and_prepare_follows_it():
    backend = TableBackend({(): -6.0, ("alpha",): -5.9, ("beta",): -2.0, ("gamma",): -3.0,
                            ("beta", "gamma"): -1.0, ("beta", "gamma", "alpha"): -0.9})
    teacher = UtilityTeacher(backend, margin=0.5, tie_margin=0.1, max_k=3)
    config = LabelConfig(scorer="utility", top_n=3)
    [labelled] = label_examples([example()], teacher, config)
    assert labelled.extra["expert"] == [2, 3]  # beta then gamma; alpha (+0.1) stops the list
    assert [p.extra["teacher_relevant"] for p in labelled.passages] == [False, True, True]
    assert [round(p.score, 6) for p in labelled.passages] == [0.1, 4.0, 3.0]
    assert labelled.extra["label_rule"] == "teacher"  # the utility teacher's default rule
    steps = labelled.extra["utility"]["steps"]
    assert [s["passage"] for s in steps] == [3, 1] and [s["kept"] for s in steps] == [True, False]
    assert labelled.extra["utility"]["cost"]["sequences"] == 4 + 2  # none + 3 singles, then 2 stop steps
    assert reranker_target_ids(labelled, max_k=5) == [2, 3]
    assert reranker_target_ids(labelled, max_k=1) == [2]


def test_prepare_honours_an_explicit_order_against_the_scores_and_none():
    [labelled] = label_examples([example()], UtilityTeacher(TableBackend(
        {(): -6.0, ("alpha",): -2.0, ("beta",): -2.05, ("gamma",): -9.0, ("alpha", "beta"): -2.2})),
        LabelConfig(scorer="utility", top_n=3))
    assert labelled.extra["expert"] == [1]  # alpha: first retrieved of a near-tie; beta adds nothing
    # An order that disagrees with the scores wins: the teacher's list is followed as written.
    flipped = labelled.model_copy(update={"extra": {**labelled.extra, "expert": [2, 1]}, "passages": [
        p.model_copy(update={"extra": {**p.extra, "relevant": True}}) for p in labelled.passages]})
    assert reranker_target_ids(flipped, max_k=5) == [2, 1, 3]  # then other relevant ones by score
    [none] = label_examples([example()], UtilityTeacher(TableBackend(
        {(): -1.0, ("alpha",): -1.2, ("beta",): -3.0, ("gamma",): -0.9})), LabelConfig(scorer="utility", top_n=3))
    assert none.extra["expert"] == [] and reranker_target_ids(none, max_k=5) == []
    bad = labelled.model_copy(update={"extra": {**labelled.extra, "expert": [4]}})
    with pytest.raises(ValueError, match="expert"):
        reranker_target_ids(bad, max_k=5)


def test_prefix_rule_keeps_as_many_shown_passages_as_pay_the_margin_each():
    # LL: none -6; prefixes of 1, 2, 3 passages: -5.9, -2.0, -1.8. Margin 0.5 per passage:
    # -6, -6.4, -3.0, -3.3 -> two passages, though the first alone adds only 0.1.
    assert prefix_expert(-6.0, [-5.9, -2.0, -1.8], margin=0.5) == 2
    assert prefix_expert(-6.0, [-5.9, -2.0, -1.8], margin=0.0) == 3
    assert prefix_expert(-1.0, [-1.2, -3.0], margin=0.5) == 0  # no prefix beats no passage: None
    assert prefix_expert(-6.0, [-5.0, -4.5], margin=0.5) == 1  # a tie (-5.5 both) goes to the shorter list
    assert prefix_expert(-6.0, [], margin=0.5) == 0
    with pytest.raises(ValueError, match="margin"):
        prefix_expert(-6.0, [-1.0], margin=-1)


def test_prefix_labels_keep_the_shown_order_and_stop_where_the_answer_is_reached():
    # alpha (shown first) barely helps alone, beta holds the answer, gamma only dilutes it.
    backend = TableBackend({(): -6.0, ("alpha",): -5.9, ("beta",): -2.0, ("gamma",): -6.5,
                            ("alpha", "beta"): -2.2, ("alpha", "beta", "gamma"): -2.4, ("beta", "alpha"): -2.1})
    config = LabelConfig(scorer="utility", top_n=3, threshold=0.5, expert="prefix")
    teacher = make_teacher(config, backend)
    [labelled] = label_examples([example()], teacher, config)
    # Best-first would write [2] (beta alone); the prefix rule keeps the shown order: [1], [2].
    assert labelled.extra["expert"] == [1, 2]
    assert [p.extra["teacher_relevant"] for p in labelled.passages] == [True, True, False]
    assert labelled.extra["utility"]["expert_rule"] == "prefix"
    assert labelled.extra["utility"]["expert_ll"] == pytest.approx(-2.2)
    steps = labelled.extra["utility"]["steps"]
    assert [s["passage"] for s in steps] == [1, 2, 3] and [s["kept"] for s in steps] == [True, True, False]
    assert reranker_target_ids(labelled, max_k=5) == [1, 2]
    # The first passage of the shown order alone is pass 1's single: no second call for it.
    assert backend.calls == 2
    # max_k caps the prefixes tried.
    capped = LabelConfig(scorer="utility", top_n=3, threshold=0.5, expert="prefix", top_m=1)
    [one] = label_examples([example()], make_teacher(capped, TableBackend(backend.table)), capped)
    assert one.extra["expert"] == []  # alpha alone adds 0.1 < 0.5
    best_first = LabelConfig(scorer="utility", top_n=3, threshold=0.5)
    [other] = label_examples([example()], make_teacher(best_first, TableBackend(backend.table)), best_first)
    assert other.extra["expert"] == [2]


def test_utility_config_defaults_and_errors():
    config = LabelConfig(scorer="utility")
    assert (config.threshold, config.top_m, config.rule.value) == (1.0, 5, "teacher")
    assert LabelConfig().rule.value == "teacher_and_answer"
    with pytest.raises(ValueError, match="answer_form"):
        LabelConfig(scorer="utility", answer_form="essay")
    with pytest.raises(ValueError, match="scorer"):
        LabelConfig(scorer="oracle")
    with pytest.raises(ValueError, match="expert: unknown rule 'suffix'"):
        LabelConfig(scorer="utility", expert="suffix")
    with pytest.raises(ValueError, match="expert"):
        UtilityTeacher(TableBackend({}), expert="suffix")
    with pytest.raises(ValueError, match="cannot"):
        UtilityTeacher(object())
    with pytest.raises(ValueError, match="example 'q1': no gold answer"):
        UtilityTeacher(TableBackend({})).label([example().model_copy(update={"answers": []})])


@pytest.mark.slow
def test_the_real_generator_prefers_the_passage_holding_the_answer(shared_data, nq, smollm):
    """On real NQ training questions, the gold passage beats an unrelated one for SmolLM2."""
    from dynamicrag.data import load_examples
    from dynamicrag.llm.transformers_backend import choose_dtype

    questions = load_examples(shared_data / "nq" / "nq-open-oracle.jsonl.gz", skip=203, limit=4)
    unrelated = nq.passages[-1]  # a Wikipedia-sample passage about something else
    examples = [q.model_copy(update={"passages": [unrelated, q.passages[0]]}) for q in questions]
    teacher = make_teacher(LabelConfig(scorer="utility", top_n=2))
    # The bundled model in the default dtype (bf16 on CPUs with native bf16; the fixture is fp32).
    assert teacher.backend.model == smollm.model and teacher.backend.dtype is choose_dtype("auto", "cpu")[0]
    results = teacher.label(examples)
    for q, r in zip(questions, results):
        assert r.utilities[1] > r.utilities[0], (q.question, r.utilities)
        assert all(math.isfinite(u) for u in r.utilities)
    assert sum(r.expert[:1] == [1] for r in results) >= 3  # the gold passage heads most lists
    assert all(r.cost["sequences"] >= 3 and r.cost["tokens"] > 100 for r in results)


@pytest.mark.slow
def test_loglikelihood_matches_a_plain_forward_pass(smollm):
    import torch

    chats = [[{"role": "user", "content": q}] for q in
             ("Capital of France? Paris is old.", "Capital of France? Berlin.", "Who wrote Hamlet?")]
    conts = ["Paris", "The answer is Paris.", "Shakespeare"]
    expected = []
    for chat, cont in zip(chats, conts):
        prompt = smollm.encode(chat)
        ids = prompt + smollm.tokenizer(cont, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            logps = smollm.lm(torch.tensor([ids])).logits[0, :-1].float().log_softmax(-1)
        expected.append(float(logps.gather(1, torch.tensor(ids[1:])[:, None])[len(prompt) - 1:].sum()))
    for groups in (None, [0, 0, 1]):
        stats: dict = {}
        got = smollm.loglikelihood(chats, conts, batch_size=2, groups=groups, stats=stats)
        assert got == pytest.approx(expected, abs=1e-3)
        assert stats["forward_passes"] >= 2 and stats["tokens"] > 0
    assert expected[0] > expected[1]  # the bare answer is likelier than a sentence around it


@pytest.mark.slow
def test_label_command_with_the_utility_teacher(shared_data, tmp_path, smollm):
    import json

    from typer.testing import CliRunner

    from dynamicrag.cli import app

    out = tmp_path / "labelled.jsonl"
    result = CliRunner().invoke(app, [
        "label", "--input", str(shared_data / "hotpotqa" / "hotpotqa_train.json"), "--output", str(out),
        "--limit", "1", "--top-n", "3", "--scorer", "utility", "--max-answers", "1", "--tie-margin", "0.2",
        "--expert", "prefix",
    ])
    assert result.exit_code == 0, result.output
    assert "utility teacher" in result.output and "tokens run" in result.output
    [record] = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["extra"]["label_rule"] == "teacher" and record["extra"]["utility"]["tie_margin"] == 0.2
    expert = record["extra"]["expert"]
    assert [p["extra"]["teacher_relevant"] for p in record["passages"]] == [i + 1 in expert for i in range(3)]
    assert expert == list(range(1, len(expert) + 1)) and record["extra"]["utility"]["expert_rule"] == "prefix"
