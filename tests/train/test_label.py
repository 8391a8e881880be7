"""Teacher labelling: the rule on hand-built cases, the thresholds, and a real HotpotQA run."""

from __future__ import annotations

import json
import math

import pytest

from dynamicrag.data import DataError
from dynamicrag.schema import Example, Passage
from dynamicrag.train.label import LabelConfig, LabelRule, label_example, label_examples, make_teacher, read_labelled


class TableScorer:
    """The teacher as a table: passage id -> score (the model boundary, scripted)."""

    def __init__(self, scores: dict[str, float]):
        self.scores = scores
        self.calls = 0

    def score(self, query, passages):
        self.calls += 1
        return [self.scores[p.id] for p in passages]


MONOT5 = LabelConfig(scorer="monot5")  # threshold log(0.5), no cap
YES, NO = math.log(0.9), math.log(0.1)


def qa_example(task: str = "nq", answers=("Paris",)) -> Example:
    return Example(
        id="q1",
        question="What is the capital of France?",
        answers=list(answers),
        task=task,
        passages=[
            Passage(id="a", title="France", text="Its capital is Paris.", score=12.0),  # teacher yes, answer yes
            Passage(id="b", title="France", text="France is a country in Europe."),  # teacher yes, no answer
            Passage(id="c", title="Paris Hilton", text="An American media personality."),  # teacher no, answer
            Passage(id="d", title="Rome", text="Rome is in Italy."),  # neither
        ],
    )


SCORES = {"a": YES, "b": YES, "c": NO, "d": NO}


def verdicts(example: Example) -> dict[str, bool]:
    return {p.id: p.extra["relevant"] for p in example.passages}


def test_default_rule_needs_teacher_and_answer():
    [ex] = label_examples([qa_example()], TableScorer(SCORES), MONOT5)
    assert verdicts(ex) == {"a": True, "b": False, "c": False, "d": False}
    a, b, c, _ = ex.passages
    assert (a.extra["teacher_relevant"], a.extra["has_answer"]) == (True, True)
    assert (b.extra["teacher_relevant"], b.extra["has_answer"]) == (True, False)
    # "Paris" in the title counts: containment reads title + text.
    assert (c.extra["teacher_relevant"], c.extra["has_answer"]) == (False, True)
    assert ex.extra["label_rule"] == "teacher_and_answer"


@pytest.mark.parametrize(
    "rule, expected",
    [
        ("teacher", {"a": True, "b": True, "c": False, "d": False}),
        ("answer", {"a": True, "b": False, "c": True, "d": False}),
        ("teacher_or_answer", {"a": True, "b": True, "c": True, "d": False}),
    ],
)
def test_other_rules(rule, expected):
    [ex] = label_examples([qa_example()], TableScorer(SCORES), LabelConfig(scorer="monot5", rule=rule))
    assert verdicts(ex) == expected


def test_fever_uses_the_teacher_alone():
    # The label "SUPPORTS" occurs in passage a's text: containment must not be consulted.
    ex = qa_example(task="fever", answers=("SUPPORTS",))
    ex.passages[0] = Passage(id="a", text="The evidence supports the claim.")
    ex.passages[3] = Passage(id="d", text="Nothing supports this.")
    [out] = label_examples([ex], TableScorer(SCORES), MONOT5)
    assert verdicts(out) == {"a": True, "b": True, "c": False, "d": False}
    assert all(p.extra["has_answer"] is None for p in out.passages)
    assert out.extra["label_rule"] == "teacher"


def test_yes_no_answers_use_the_teacher_alone():
    # HotpotQA comparison question: "yes" in passage d's text is chance, not evidence.
    ex = qa_example(task="hotpotqa", answers=("yes",))
    ex.passages[3] = Passage(id="d", text="yes, Rome is in Italy.")
    [out] = label_examples([ex], TableScorer(SCORES), MONOT5)
    assert verdicts(out) == {"a": True, "b": True, "c": False, "d": False}
    assert out.extra["label_rule"] == "teacher"


def test_example_without_answers_uses_the_teacher_alone():
    [out] = label_examples([qa_example(answers=())], TableScorer(SCORES), MONOT5)
    assert verdicts(out) == {"a": True, "b": True, "c": False, "d": False}


def test_scores_are_stored_and_inputs_untouched():
    ex = qa_example()
    [out] = label_examples([ex], TableScorer(SCORES), MONOT5)
    assert [p.score for p in out.passages] == [YES, YES, NO, NO]
    assert out.passages[0].extra["retrieval_score"] == 12.0
    assert ex.passages[0].score == 12.0 and "relevant" not in ex.passages[0].extra


def test_monot5_threshold_is_the_generated_word():
    scores = {"a": math.log(0.51), "b": math.log(0.49), "c": math.log(0.5), "d": NO}
    [out] = label_examples([qa_example()], TableScorer(scores), LabelConfig(scorer="monot5", rule="teacher"))
    assert [p.extra["teacher_relevant"] for p in out.passages] == [True, False, False, False]


def test_top_n_keeps_the_first_passages_only():
    scorer = TableScorer(SCORES)
    [out] = label_examples([qa_example()], scorer, LabelConfig(scorer="monot5", top_n=2))
    assert [p.id for p in out.passages] == ["a", "b"]


def test_embedding_teacher_caps_at_its_top_m():
    # Every cosine is above the floor: only the 3 best (ties in retrieval order) count.
    config = LabelConfig(rule="teacher")
    assert (config.threshold, config.top_m) == (0.45, 3)
    scores = {"a": 0.6, "b": 0.9, "c": 0.7, "d": 0.7}
    [out] = label_examples([qa_example()], TableScorer(scores), config)
    assert verdicts(out) == {"a": False, "b": True, "c": True, "d": True}
    [out] = label_examples([qa_example()], TableScorer({**scores, "b": 0.44}), config)
    assert verdicts(out) == {"a": True, "b": False, "c": True, "d": True}


def test_wrong_score_count_names_the_example():
    class Short:
        def score(self, query, passages):
            return [0.0]

    with pytest.raises(ValueError, match="returned 1 scores for 4 passages.*'q1'"):
        label_example(qa_example(), Short(), MONOT5)
    # In a stage the example keeps the error, unlabelled; the stage goes on.
    [out] = label_examples([qa_example()], Short(), MONOT5)
    assert "returned 1 scores for 4 passages" in out.extra["label_error"] and "'q1'" in out.extra["label_error"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rule": "teacher_and_gold"}, "rule: unknown rule 'teacher_and_gold'.*'answer'"),
        ({"scorer": "bm25"}, "unknown kind 'bm25'.*'embedding'"),
        ({"top_n": 0}, "top_n must be >= 1"),
        ({"top_m": -1}, "top_m must be >= 0"),
    ],
)
def test_config_errors_say_what_is_wrong(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LabelConfig(**kwargs)


def test_config_rule_accepts_the_string():
    assert LabelConfig(rule="answer").rule is LabelRule.answer
    assert LabelConfig(scorer="cross-encoder:my/model").threshold == 0.0


def test_read_labelled_round_trip_and_unlabelled_error(tmp_path):
    [out] = label_examples([qa_example()], TableScorer(SCORES), MONOT5)
    path = tmp_path / "labelled.jsonl"
    path.write_text(json.dumps(out.model_dump(mode="json")) + "\n")
    assert read_labelled(path) == [out]
    path.write_text(json.dumps(out.model_dump(mode="json")) + "\n" + json.dumps(qa_example().model_dump()) + "\n")
    with pytest.raises(DataError, match=r"labelled.jsonl:2.*dynamicrag label"):
        read_labelled(path)


@pytest.mark.slow
def test_real_hotpotqa_with_the_embedding_teacher(shared_data, tmp_path):
    """Six real HotpotQA questions, the bundled encoder as teacher, then prepare."""
    from dynamicrag.data import load_examples
    from dynamicrag.rerank.pointwise import make_scorer
    from dynamicrag.train import prepare

    examples = load_examples(shared_data / "hotpotqa" / "hotpotqa_train.json", limit=6)
    config = LabelConfig()
    labelled = label_examples(examples, make_scorer(config.scorer), config)

    assert [ex.id for ex in labelled] == [ex.id for ex in examples]
    relevant = [(ex, p) for ex in labelled for p in ex.passages if p.extra["relevant"]]
    assert relevant, "the teacher found nothing relevant in six HotpotQA questions"
    for ex in labelled:
        assert sum(p.extra["teacher_relevant"] for p in ex.passages) <= 3
    for ex, p in relevant:
        assert p.extra["teacher_relevant"] and p.score > 0.45
        # Containment decides, except for yes/no comparison answers (the teacher alone).
        assert p.extra["has_answer"] is (None if ex.answers[0] in ("yes", "no") else True)
    # The label picks HotpotQA's own supporting paragraphs, not distractors, most of the time.
    supporting = sum(bool(p.extra.get("supporting")) for _, p in relevant)
    assert supporting / len(relevant) >= 0.5

    stats = prepare(labelled, tmp_path / "sft", seed=0)
    assert stats["examples"] == 6 and stats["sft_examples"] + stats["dpo_examples"] == 6
    assert sum(stats["k_distribution"].values()) == stats["sft_examples"]


def supporting_example(marks: list[bool]) -> Example:
    return Example(id="h1", question="Which band did the singer of X join?", answers=["The Y"], task="hotpotqa",
                   passages=[Passage(id=str(i), title=f"T{i}", text="text", extra={"supporting": m})
                             for i, m in enumerate(marks)])


@pytest.mark.parametrize(
    ("example", "top_m", "expert"),
    [
        # Single-hop: read up to the first passage holding the answer (here the third), no further.
        (qa_example().model_copy(update={"passages": qa_example().passages[1:]}), None, [1, 2]),
        (qa_example(), None, [1]),
        (qa_example(answers=("Berlin",)), None, []),  # no candidate holds it: None
        (qa_example(task="fever", answers=("SUPPORTS",)), None, []),  # a label answer proves nothing
        # Multi-hop: up to the last supporting paragraph, the bridge included; capped at top_m.
        (supporting_example([False, True, False, True, False]), None, [1, 2, 3, 4]),
        (supporting_example([False, True, False, True, False]), 2, [1, 2]),
        (supporting_example([True, False, False, False]), None, [1]),
    ],
)
def test_evidence_teacher_reads_to_the_last_evidence_and_prepare_keeps_that_prefix(example, top_m, expert):
    from dynamicrag.train.trajectories import reranker_target_ids

    config = LabelConfig(scorer="evidence", top_m=top_m)
    [out] = label_examples([example], make_teacher(config), config)
    assert out.extra["expert"] == expert
    assert [p.extra["relevant"] for p in out.passages] == [i + 1 in expert for i in range(len(out.passages))]
    assert reranker_target_ids(out, max_k=5) == expert  # the SFT target is the prefix, in the order shown
