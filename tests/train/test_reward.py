"""The DPO reward: hand-checked parts, averaging over gold answers, judge parsing and failures."""

from __future__ import annotations

import copy
import importlib.util

import pytest

from dynamicrag.llm.base import Completion
from dynamicrag.train.reward import (
    EMRule,
    EmbeddingSimilarity,
    RewardConfig,
    em_part,
    length_part,
    parse_judge_score,
    reward_parts,
    score_samples,
)


class ExactSimilarity:
    """Semantic scorer at the model boundary: 1.0 for equal lower-cased texts, else 0.0."""

    name = "exact-test"

    def __init__(self):
        self.calls: list[list[tuple[str, str]]] = []

    def similarity(self, pairs):
        self.calls.append(list(pairs))
        return [float(a.lower() == b.lower()) for a, b in pairs]


class JudgeBackend:
    """A judge LLM at the backend boundary: replies looked up by (gold, answer) in the prompt."""

    name = "judge-test"
    model = "judge-test"

    def __init__(self, replies: dict[tuple[str, str], str], fail_on: str | None = None):
        self.replies, self.fail_on, self.prompts = replies, fail_on, []

    def count_tokens(self, chat):
        return 0

    def generate(self, chats, params):
        out = []
        for chat in chats:
            user = chat[-1]["content"]
            if self.fail_on is not None and self.fail_on in user:
                raise RuntimeError("judge server down")
            self.prompts.append(user)
            gold = user.split("Reference answer: ")[1].split("\n")[0]
            answer = user.split("Predicted answer: ")[1].split("\n")[0]
            out.append([Completion(self.replies[(gold, answer)])])
        return out


EXACT = ExactSimilarity()


@pytest.mark.parametrize(
    ("answer", "gold", "normalized", "lowercase"),
    [
        ("It was Paris.", "paris", 1.0, 1.0),  # gold inside the answer
        ("Paris", "Paris, France", 1.0, 1.0),  # answer inside the gold (the paper's other direction)
        ("US", "U.S.", 1.0, 0.0),  # punctuation: only normalisation sees the same answer
        ("19015", "1901", 0.0, 1.0),  # whole tokens: a longer number is not the year
        ("The", "The Beatles", 0.0, 1.0),  # an article alone normalises to "" and never matches
        ("London", "Paris", 0.0, 0.0),
    ],
)
def test_em_containment_either_way(answer, gold, normalized, lowercase):
    assert em_part(answer, gold, EMRule.normalized) == normalized
    assert em_part(answer, gold, "lowercase") == lowercase


def test_length_term_uses_the_true_k():
    assert [length_part(k) for k in (0, 1, 3)] == [1.0, 0.5, 0.25]
    assert length_part(3, "inverse_sqrt") == 0.5
    with pytest.raises(ValueError, match="k must be >= 0"):
        length_part(-1)


def test_parts_of_one_answer_by_hand():
    # ROUGE-L of "the cat sat" vs "the cat sat on the mat": LCS 3, P 3/3, R 3/6 -> F 2/3.
    r = reward_parts("the cat sat", ["the cat sat on the mat"], 0, semantic_scorer=EXACT)
    assert r["em"] == 1.0  # the answer is inside the gold answer
    assert r["rouge_l"] == pytest.approx(2 / 3)
    assert r["semantic"] == 0.0 and r["length"] == 1.0
    assert r["judge"] is None and r["judge_error"] is None
    # no judge: its weight is dropped, the total is the mean of the other four
    assert r["total"] == pytest.approx((1 + 0 + 2 / 3 + 1) / 4)


def test_each_part_is_averaged_over_two_gold_answers():
    judge = JudgeBackend({("Paris", "Paris"): "100", ("London", "Paris"): "Score: 40/100"})
    r = reward_parts("Paris", ["Paris", "London"], 1, question="capital of France?",
                     semantic_scorer=EXACT, judge_backend=judge)
    assert (r["em"], r["semantic"], r["rouge_l"], r["length"]) == (0.5, 0.5, 0.5, 0.5)
    assert r["judge"] == pytest.approx(0.7)  # (1.00 + 0.40) / 2
    assert r["total"] == pytest.approx(0.2 * (0.5 * 4 + 0.7))
    assert all("Question: capital of France?" in p for p in judge.prompts)


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("85", 0.85),
        ("Score (0-100): 85", 0.85),  # the scale echoed back is not the score
        ("85/100", 0.85),
        ("7 out of 100", 0.07),
        ("I'd say 150... no, 90.", 0.90),  # first number within 0..100
        ("<think>maybe 20?</think>\n70", 0.70),
        ("100.0", 1.0),
        ("0", 0.0),
        ("-5", None),
        ("The answer is correct.", None),
        ("", None),
    ],
)
def test_judge_reply_parsing(reply, score):
    parsed = parse_judge_score(reply)
    assert parsed == (pytest.approx(score) if score is not None else None)


def test_unparsable_judge_drops_its_weight_and_records_why():
    judge = JudgeBackend({("Paris", "Paris"): "Excellent answer!"})
    r = reward_parts("Paris", ["Paris"], 1, semantic_scorer=EXACT, judge_backend=judge)
    no_judge = reward_parts("Paris", ["Paris"], 1, semantic_scorer=EXACT)
    assert r["judge"] is None and "Excellent answer!" in r["judge_error"]
    assert r["total"] == pytest.approx(no_judge["total"]) == pytest.approx((1 + 1 + 1 + 0.5) / 4)


def test_failing_judge_never_crashes_and_spares_the_rest_of_its_batch():
    records = [{
        "id": "q1", "question": "capital of France?", "answers": ["Paris"],
        "samples": [{"ids": [1], "answer": "Paris", "error": None},
                    {"ids": [2], "answer": "Lyon", "error": None}],
    }]
    judge = JudgeBackend({("Paris", "Paris"): "95"}, fail_on="Predicted answer: Lyon")
    [scored] = score_samples(records, RewardConfig(), judge, semantic_scorer=EXACT)
    good, bad = (s["reward"] for s in scored["samples"])
    assert good["judge"] == pytest.approx(0.95) and good["judge_error"] is None
    assert bad["judge"] is None and "judge server down" in bad["judge_error"]
    assert bad["total"] == pytest.approx((0 + 0 + 0 + 1 / 2) / 4)  # judge weight dropped


def test_score_samples_adds_rewards_without_touching_the_input():
    records = [
        {
            "id": "q1", "question": "Who wrote Hamlet?", "answers": ["Shakespeare", "William Shakespeare"],
            "task": "nq", "passages": [], "extra": {}, "prompt_style": "default",
            "samples": [
                {"ids": [2, 1], "raw": "[2], [1]", "well_formed": True, "error": None, "answer": "Shakespeare"},
                {"ids": [], "raw": "None", "well_formed": True, "error": None, "answer": "Marlowe"},
                {"ids": [], "raw": "[99", "well_formed": False, "error": "unparsable", "answer": "Shakespeare"},
                {"ids": [1], "raw": "[1]", "well_formed": True, "error": None, "answer": "  "},
            ],
        },
        {"id": "q2", "question": "unlabelled", "answers": [], "samples": [{"ids": [1], "answer": "x", "error": None}]},
    ]
    before = copy.deepcopy(records)
    scorer = ExactSimilarity()
    scored = score_samples(records, semantic_scorer=scorer)
    assert records == before
    right, wrong, failed, blank = (s["reward"] for s in scored[0]["samples"])
    # "Shakespeare" vs each gold: em 1 and 1, semantic 1 and 0, ROUGE-L 1 and 2/3; k = 2
    assert right["em"] == 1.0 and right["semantic"] == 0.5
    assert right["rouge_l"] == pytest.approx((1 + 2 / 3) / 2) and right["length"] == pytest.approx(1 / 3)
    assert wrong["em"] == 0.0 and wrong["length"] == 1.0
    # an unusable output (error, or a blank answer) scores 0 everywhere: the lowest total
    for reward in (failed, blank):
        assert reward == {"total": 0.0, "em": 0.0, "semantic": 0.0, "rouge_l": 0.0, "length": 0.0,
                          "match": 0.0, "judge": None, "judge_error": None}
    assert right["total"] > wrong["total"] > failed["total"]
    assert scored[1]["samples"][0]["reward"] is None  # no gold answer: no reward
    assert scored[0]["reward_meta"]["semantic"] == "exact-test"
    assert scored[0]["reward_meta"]["weights"]["judge"] == 0.0
    assert len(scorer.calls) == 1  # one batched semantic call for the whole input
    assert len(scorer.calls[0]) == len(set(scorer.calls[0])) == 4  # distinct (answer, gold) pairs


def test_score_samples_names_a_bad_record():
    with pytest.raises(ValueError, match=r"record 0 \(id 'q'\), sample 0: no 'ids'"):
        score_samples([{"id": "q", "answers": ["a"], "samples": [{"answer": "a"}]}], semantic_scorer=EXACT)
    with pytest.raises(ValueError, match=r"record 0 \(id 'q'\): no 'samples'"):
        score_samples([{"id": "q", "answers": ["a"]}], semantic_scorer=EXACT)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"judge_prompt": "Q: {question} A: {answer}"}, "placeholders"),
        ({"semantic": "word2vec"}, "unknown kind 'word2vec'"),
        ({"em_weight": -1.0}, "em_weight"),
        ({"length_penalty": "cubic"}, "inverse"),
        ({"em_rule": "fuzzy"}, "lowercase"),
        ({"em_weight": 0, "semantic_weight": 0, "rouge_l_weight": 0, "length_weight": 0}, "undefined"),
    ],
)
def test_config_errors_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RewardConfig(**kwargs)


@pytest.mark.skipif(importlib.util.find_spec("bert_score") is not None, reason="bert-score is installed")
def test_bertscore_without_the_package_says_how_to_install():
    from dynamicrag.train.reward import make_semantic_scorer

    with pytest.raises(ImportError, match="pip install bert-score"):
        make_semantic_scorer("bertscore:roberta-large")


@pytest.fixture(scope="module")
def minilm():
    return EmbeddingSimilarity()  # the bundled all-MiniLM-L6-v2, loaded once per process


def test_minilm_similarity_ranks_paraphrases_above_unrelated_answers(minilm):
    same, para, other = minilm.similarity([
        ("William Shakespeare", "William Shakespeare"),
        ("Shakespeare wrote it", "William Shakespeare"),
        ("a kind of fish", "William Shakespeare"),
    ])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert para > other and 0.0 <= other
    assert minilm.name.startswith("minilm:")
    # the default config uses it, and names it in the records
    [scored] = score_samples([{"id": "q", "question": "q", "answers": ["Paris"],
                               "samples": [{"ids": [], "answer": "Paris", "error": None}]}],
                             semantic_scorer=minilm)
    assert scored["samples"][0]["reward"]["semantic"] == pytest.approx(1.0, abs=1e-5)
    assert scored["reward_meta"]["semantic"] == "minilm:all-MiniLM-L6-v2 cosine"


def test_match_part_counts_a_gold_answer_inside_the_answer_with_its_own_weight():
    from dynamicrag.train.reward import RewardConfig

    # A sentence around the gold answer: match 1, while the paper's parts barely move.
    right = reward_parts("The capital of France is Paris.", ["Paris", "City of Light"], 1, semantic_scorer=EXACT)
    wrong = reward_parts("The capital of France is Lyon.", ["Paris", "City of Light"], 1, semantic_scorer=EXACT)
    assert right["match"] == 1.0 and wrong["match"] == 0.0  # max over the gold answers, not a mean
    assert right["em"] == 0.5  # em averages over the two gold answers
    # The answer inside the gold answer is not a match (em's other direction is).
    assert reward_parts("Paris", ["Paris, France"], 0, semantic_scorer=EXACT)["match"] == 0.0
    # Weight 0 by default: the total is the paper's; with a weight, match moves the total.
    assert right["total"] == pytest.approx((0.5 + 0 + right["rouge_l"] + 0.5) / 4)
    config = RewardConfig(match_weight=0.6, em_weight=0.1, semantic_weight=0.1, rouge_l_weight=0.1, length_weight=0.1)
    weighted = reward_parts("The capital of France is Paris.", ["Paris"], 1, config=config, semantic_scorer=EXACT)
    unweighted = reward_parts("The capital of France is Lyon.", ["Paris"], 1, config=config, semantic_scorer=EXACT)
    assert weighted["total"] - unweighted["total"] > 0.6  # match alone separates them by its weight
    # A config whose only weight is match is valid; one with all weights 0 is not.
    only = RewardConfig(em_weight=0, semantic_weight=0, rouge_l_weight=0, length_weight=0, judge_weight=0,
                        match_weight=1.0)
    assert reward_parts("It is Paris", ["Paris"], 3, config=only, semantic_scorer=EXACT)["total"] == 1.0
    with pytest.raises(ValueError, match="match weights are all 0"):
        RewardConfig(em_weight=0, semantic_weight=0, rouge_l_weight=0, length_weight=0)


def test_reweighting_stored_parts_changes_which_list_wins_without_a_model():
    from dynamicrag.train.pairs import build_reranker_pairs
    from dynamicrag.train.reward import RewardConfig, reweight_samples

    passages = [{"id": f"p{i}", "title": f"T{i}", "text": "x"} for i in (1, 2)]
    # Three gold answers: the paper's parts average over them, so a right sentence scores little.
    record = {"id": "q", "question": "capital of France?", "answers": ["Paris", "City of Light", "Lutetia"],
              "task": "nq", "passages": passages, "prompt_style": "default", "samples": [
                  {"ids": [], "raw": "None", "well_formed": True, "error": None, "answer": "I do not know"},
                  {"ids": [1, 2], "raw": "[1], [2]", "well_formed": True, "error": None,
                   "answer": "The capital city is Paris."},
                  {"ids": [2], "raw": "[2]", "well_formed": False, "error": "unusable", "answer": None}]}
    paper = score_samples([record], semantic_scorer=EXACT)
    [pair], _ = build_reranker_pairs(paper)
    assert pair["chosen_ids"] == []  # the paper's weights: the length term makes None win
    config = RewardConfig(length_weight=0.05, match_weight=0.4)
    [again] = reweight_samples(paper, config)
    [pair], _ = build_reranker_pairs([again])
    assert pair["chosen_ids"] == [1, 2]  # match decides once the length term weighs little
    rescored = score_samples([record], config, semantic_scorer=EXACT)[0]
    assert [s["reward"]["total"] for s in again["samples"]] == pytest.approx(
        [s["reward"]["total"] for s in rescored["samples"]])  # the same as scoring again
    assert again["samples"][2]["reward"]["total"] == 0.0 and again["reward_meta"]["weights"]["match"] == 0.4
    assert paper[0]["samples"][1]["reward"]["total"] != again["samples"][1]["reward"]["total"]  # input untouched
