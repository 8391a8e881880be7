import json

import pytest

from dynamicrag.evaluate import (
    TASK_METRICS,
    asqa_str_em,
    em,
    f1,
    fever_accuracy,
    fever_label,
    match,
    match_official,
    rouge_l,
    score_record,
)


def test_em_normalises_and_takes_the_best_answer():
    assert em("The Eiffel Tower.", ["eiffel tower"]) == 1.0
    assert em("Paris", ["London", "paris!"]) == 1.0
    assert em("Paris, France", ["Paris"]) == 0.0
    assert em("anything", []) == 0.0


def test_match_finds_gold_inside_prediction():
    assert match("It was Paris, France.", ["paris"]) == 1.0
    assert match("Paris", ["Paris, France"]) == 0.0
    assert match("in 19015", ["1901"]) == 0.0  # whole tokens
    assert match("", ["paris"]) == 0.0


def test_match_official_is_the_reversed_rule_and_matches_empty_predictions():
    assert match_official("Paris", ["Paris, France"]) == 1.0
    assert match_official("It was Paris, France.", ["paris"]) == 0.0
    assert match_official("", ["paris"]) == 1.0  # the flaw it keeps for comparison
    assert match_official("", []) == 0.0


def test_f1_is_squad_token_f1_max_over_answers():
    # pred {barack, obama, jr}, gold {barack, obama}: P = 2/3, R = 1 -> F1 = 0.8
    assert f1("Barack Obama Jr.", ["Barack Obama"]) == pytest.approx(0.8)
    # pred {cat, cat}, gold {cat}: overlap 1 (counts clipped), P = 1/2, R = 1 -> 2/3
    assert f1("cat cat", ["the cat"]) == pytest.approx(2 / 3)
    assert f1("Obama", ["Bush", "Barack Obama"]) == pytest.approx(2 / 3)
    assert f1("", ["x"]) == 0.0
    assert f1("x", []) == 0.0


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("SUPPORTS", "SUPPORTS"),
        ("supports", "SUPPORTS"),
        ("Support", "SUPPORTS"),
        ("SUPPORTED.", "SUPPORTS"),
        ("\u201cREFUTES\u201d", "REFUTES"),
        ("The claim is refuted by the passage.", "REFUTES"),
        ("refute", "REFUTES"),
        ("NEI", "NOT ENOUGH INFO"),
        ("not enough info", "NOT ENOUGH INFO"),
        ("There is Not Enough Information here.", "NOT ENOUGH INFO"),
        ("NOT_ENOUGH_INFO", "NOT ENOUGH INFO"),
        ("Refutes; it does not support the claim", "REFUTES"),  # first label wins
        ("The evidence supports it, nothing refutes it", "SUPPORTS"),
        ("I cannot fully answer based on the available information.", None),
        ("suppose", None),
        ("", None),
    ],
)
def test_fever_label_reads_the_usual_spellings(text, label):
    assert fever_label(text) == label


def test_fever_label_reads_every_gold_label_of_fever_dev(shared_data):
    with open(shared_data / "fever" / "paper_dev.jsonl", encoding="utf-8") as f:
        labels = {json.loads(line)["label"] for line in f}
    assert labels == {"SUPPORTS", "REFUTES", "NOT ENOUGH INFO"}
    assert all(fever_label(label) == label for label in labels)


def test_fever_accuracy():
    assert fever_accuracy("“Supported”", ["SUPPORTS"]) == 1.0
    assert fever_accuracy("NEI", ["NOT ENOUGH INFO"]) == 1.0
    assert fever_accuracy("REFUTES", ["SUPPORTS"]) == 0.0
    # The original first-letter rule would count this as SUPPORTS; no label means wrong.
    assert fever_accuracy("Sorry, I cannot tell.", ["SUPPORTS"]) == 0.0
    assert fever_accuracy("SUPPORTS", []) == 0.0


def test_rouge_l_f_measure_max_over_references():
    # LCS "the cat on the mat" = 5 of 6 tokens each side: P = R = F = 5/6
    assert rouge_l("the cat sat on the mat", ["the cat was on the mat"]) == pytest.approx(5 / 6)
    assert rouge_l("the cat sat on the mat", ["dog", "the cat sat on the mat"]) == pytest.approx(1.0)
    assert rouge_l("cats running", ["cat runs"]) == pytest.approx(1.0)  # Porter stemming
    assert rouge_l("anything", []) == 0.0
    assert rouge_l("", ["text"]) == 0.0


QA_PAIRS = [
    {"question": "q1", "short_answers": ["1901", "nineteen oh one"]},
    {"question": "q2", "short_answers": ["Röntgen"]},
    {"question": "q3", "short_answers": [["Lorentz", "H. A. Lorentz"]]},  # nested, as some files have
]


def test_asqa_str_em_counts_pairs_with_a_contained_short_answer():
    assert asqa_str_em("Röntgen won in 1901.", QA_PAIRS) == pytest.approx(2 / 3)
    assert asqa_str_em("Röntgen in 1901 and H. A. Lorentz in 1902.", QA_PAIRS) == 1.0
    assert asqa_str_em("in 19015", QA_PAIRS) == 0.0
    assert asqa_str_em("anything", []) == 0.0


def test_task_metrics():
    assert TASK_METRICS["nq"] == ["match", "em", "f1"]
    assert TASK_METRICS["fever"] == ["accuracy"]
    assert TASK_METRICS["eli5"] == ["rouge_l"]
    assert TASK_METRICS["asqa"] == ["str_em", "rouge_l"]


def test_score_record_short_qa_and_unknown_task_fallback():
    record = {"task": "nq", "answers": ["Barack Obama"], "answer": "Barack Obama Jr.", "error": None}
    assert score_record(record) == pytest.approx({"em": 0.0, "match": 1.0, "f1": 0.8})
    other = {**record, "task": "my-own-set"}
    assert score_record(other) == pytest.approx({"em": 0.0, "match": 1.0, "f1": 0.8})


def test_score_record_fever_and_eli5():
    fever = {"task": "fever", "answers": ["REFUTES"], "answer": "Refuted.", "error": None}
    assert score_record(fever) == {"accuracy": 1.0}
    eli5 = {"task": "eli5", "answers": ["the cat was on the mat"], "answer": "the cat sat on the mat", "error": None}
    assert score_record(eli5) == pytest.approx({"rouge_l": 5 / 6})


def test_score_record_asqa_uses_qa_pairs_and_long_answers():
    record = {
        "task": "asqa",
        "answers": ["1901", "nineteen oh one", "Röntgen", "Lorentz", "H. A. Lorentz"],
        "qa_pairs": QA_PAIRS,
        "annotations": [{"long_answer": "the cat was on the mat"}, {"long_answer": "unrelated words"}],
        "answer": "the cat sat on the mat",
        "error": None,
    }
    assert score_record(record) == pytest.approx({"str_em": 0.0, "rouge_l": 5 / 6})
    # Without annotations, ROUGE-L is against the answers; "Röntgen" is one of them.
    plain = {**record, "annotations": None, "answer": "Röntgen"}
    assert score_record(plain) == pytest.approx({"str_em": 1 / 3, "rouge_l": 1.0})


def test_failed_records_score_zero_on_every_metric():
    ok = {"task": "nq", "answers": ["Paris"], "answer": "Paris", "error": None}
    assert score_record(ok) == {"em": 1.0, "match": 1.0, "f1": 1.0}
    assert score_record({**ok, "error": "reranker output unreadable"}) == {"em": 0.0, "match": 0.0, "f1": 0.0}
    assert score_record({**ok, "answer": None}) == {"em": 0.0, "match": 0.0, "f1": 0.0}
    asqa = {"task": "asqa", "answers": ["x"], "answer": None, "error": "timeout"}
    assert score_record(asqa) == {"str_em": 0.0, "rouge_l": 0.0}


def test_score_record_with_chosen_metrics_and_clear_errors():
    record = {"task": "nq", "answers": ["Paris, France"], "answer": "", "error": None}
    assert score_record(record, ["match", "match_official"]) == {"match": 0.0, "match_official": 1.0}
    with pytest.raises(ValueError, match=r"unknown metric\(s\) \['bleu'\].*'em'"):
        score_record(record, ["bleu"])
    with pytest.raises(ValueError, match="record 'q7'.*qa_pairs"):
        score_record({"id": "q7", "task": "asqa", "answers": ["x"], "answer": "x", "error": None})
