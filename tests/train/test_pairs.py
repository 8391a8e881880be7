"""DPO pairs: which samples are chosen and rejected, what is skipped and why, and the files."""

from __future__ import annotations

import json

import pytest

from dynamicrag.prompts import generator_chat, load_style, reranker_chat
from dynamicrag.schema import Example, Passage
from dynamicrag.train.pairs import (
    LLAMAFACTORY_DPO_NAME,
    build_generator_pairs,
    build_reranker_pairs,
    export_pairs,
    write_llamafactory_pairs,
    write_trl_pairs,
)
from dynamicrag.train.reward import score_samples

import datasets  # the `train` extra

STYLE = load_style("default")
PASSAGES = [Passage(id=f"p{i}", title=f"Title {i}", text=f"Passage text {i}.") for i in range(1, 5)]


def reward(total: float, em: float = 0.0) -> dict:
    return {"total": total, "em": em, "semantic": 0.0, "rouge_l": 0.0, "length": 0.0, "judge": None,
            "judge_error": None}


def sample(ids, answer, total, em=0.0, *, raw=None, well_formed=True, error=None) -> dict:
    raw = raw if raw is not None else (", ".join(f"[{i}]" for i in ids) or "None")
    return {"ids": ids, "raw": raw, "well_formed": well_formed, "error": error, "answer": answer,
            "reward": reward(total, em)}


def record(samples, answers=("Paris",), rid="q1", style="default") -> dict:
    ex = Example(id=rid, question="What is the capital of France?", answers=list(answers), task="nq",
                 passages=PASSAGES)
    return {**ex.model_dump(mode="json"), "prompt_style": style, "samples": samples}


def test_reranker_pair_is_best_list_against_worst():
    rec = record([
        sample([3], "Lyon", 0.2),
        sample([2, 1], "Paris", 0.9, em=1.0),
        sample([1, 2, 3, 4], "Paris", 0.6, em=1.0),
        sample([4], "Berlin", 0.1),
    ])
    [pair], skipped = build_reranker_pairs([rec], STYLE)
    assert not skipped
    assert pair["prompt"] == reranker_chat(STYLE, "What is the capital of France?", PASSAGES)
    assert pair["chosen"] == [{"role": "assistant", "content": "[2], [1]"}]
    assert pair["rejected"] == [{"role": "assistant", "content": "[4]"}]
    assert (pair["chosen_ids"], pair["rejected_ids"]) == ([2, 1], [4])
    assert (pair["chosen_reward"], pair["rejected_reward"]) == (0.9, 0.1)
    assert pair["role"] == "reranker" and pair["id"] == "q1"


def test_equal_rewards_are_skipped_as_ties_for_both_kinds():
    rec = record([sample([1], "Lyon", 0.3), sample([2], "Nice", 0.3), sample([3], "Metz", 0.3)])
    assert build_reranker_pairs([rec], STYLE) == ([], {"tie": 1})
    assert build_generator_pairs([rec], STYLE) == ([], {"tie": 1})
    # the paper's rule can be relaxed for the generator: gold against a wrong answer
    [pair], _ = build_generator_pairs([rec], STYLE, skip_ties=False)
    assert pair["chosen"][0]["content"] == "Paris" and pair["rejected"][0]["content"] == "Lyon"


def test_examples_without_enough_samples_or_gold_are_counted():
    records = [
        record([]),
        record([sample([1], "Paris", 0.9, em=1.0)]),
        record([{**sample([1], "a", 0), "reward": None}, {**sample([2], "b", 0), "reward": None}], answers=()),
        record([sample([2, 1], "Paris", 0.9, em=1.0), sample([2, 1], "Paris", 0.5, em=1.0)]),
    ]
    pairs, skipped = build_reranker_pairs(records, STYLE)
    assert pairs == []
    assert skipped == {"no_samples": 1, "too_few_samples": 1, "no_gold": 1, "same_ids": 1}
    _, skipped = build_generator_pairs(records, STYLE)
    assert skipped == {"no_samples": 1, "too_few_samples": 1, "no_gold": 1, "none_wrong": 1}


def test_all_answers_wrong_still_gives_both_pairs():
    rec = record([sample([1], "Lyon", 0.3), sample([2, 3], "Marseille", 0.5), sample([4], "Berlin", 0.1)])
    [rr], _ = build_reranker_pairs([rec], STYLE)
    assert (rr["chosen_ids"], rr["rejected_ids"]) == ([2, 3], [4])
    [gen], _ = build_generator_pairs([rec], STYLE)
    # prompt over the best list's passages in its order; gold chosen; the best list's own
    # (wrong) answer rejected: on-policy for exactly this prompt
    assert gen["prompt"] == generator_chat(STYLE, "What is the capital of France?", [PASSAGES[1], PASSAGES[2]], "nq")
    assert gen["chosen"][0]["content"] == "Paris"
    assert gen["rejected"][0]["content"] == "Marseille"
    assert (gen["chosen_ids"], gen["rejected_ids"]) == ([2, 3], [2, 3])


def test_generator_rejects_the_worst_wrong_answer_when_the_best_is_right():
    rec = record([
        sample([1], "Lyon", 0.4),
        sample([2], "Paris", 0.9, em=1.0),
        sample([3], "Berlin", 0.2),
        sample([], None, 0.0, raw="garbage", well_formed=False, error="unparsable"),  # no answer: never rejected text
    ])
    [gen], _ = build_generator_pairs([rec], STYLE)
    assert gen["rejected"][0]["content"] == "Berlin" and gen["rejected_reward"] == 0.2
    assert gen["chosen_reward"] is None


def test_empty_selection_gives_the_no_passage_generator_prompt():
    rec = record([sample([], "Lyon", 0.6), sample([1, 2, 3], "Nice", 0.1)])
    [rr], _ = build_reranker_pairs([rec], STYLE)
    assert rr["chosen"][0]["content"] == "None"
    [gen], _ = build_generator_pairs([rec], STYLE)
    assert gen["prompt"] == generator_chat(STYLE, "What is the capital of France?", [], "nq")
    assert "Retrieved Content: None" in gen["prompt"][-1]["content"]
    assert "Passage text" not in gen["prompt"][-1]["content"]


def test_a_malformed_rejected_output_is_kept_as_written():
    rec = record([sample([2], "Paris", 0.8, em=1.0),
                  sample([], None, 0.0, raw="Documents 2 and 3", well_formed=False, error="no ids")])
    [pair], _ = build_reranker_pairs([rec], STYLE)
    assert pair["rejected"][0]["content"] == "Documents 2 and 3"


def test_bad_records_are_named():
    mismatch = record([sample([1], "Paris", 1.0, 1.0), sample([2], "Lyon", 0.0)], style="official")
    with pytest.raises(ValueError, match=r"record 0 .*'q1'.*'official'"):
        build_reranker_pairs([mismatch], STYLE)
    out_of_range = record([sample([9], "Paris", 1.0, 1.0), sample([2], "Lyon", 0.0)])
    with pytest.raises(ValueError, match=r"sample 0: ids \[9\].*4 passages"):
        build_reranker_pairs([out_of_range], STYLE)
    unscored = record([{"ids": [1], "answer": "x"}, {"ids": [2], "answer": "y"}])
    with pytest.raises(ValueError, match="score the samples first"):
        build_reranker_pairs([unscored], STYLE)


def test_style_defaults_to_the_records_own():
    rec = record([sample([1], "Paris", 1.0, 1.0), sample([2], "Lyon", 0.0)], style="official")
    [pair], _ = build_reranker_pairs([rec])
    assert pair["prompt"] == reranker_chat(load_style("official"), "What is the capital of France?", PASSAGES)


class ExactSimilarity:
    name = "exact-test"

    def similarity(self, pairs):
        return [float(a.lower() == b.lower()) for a, b in pairs]


def load(path, cache):
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


def test_scored_records_export_loadable_trl_and_llamafactory_files(tmp_path):
    raw = [
        record([sample([2, 1], "Paris", 0), sample([3], "Lyon", 0), sample([], "I cannot fully answer", 0)], rid="a"),
        record([sample([1], "Nice", 0), sample([4], "Nice", 0)], rid="b"),  # same answers and k: a tie
    ]
    scored = score_samples(raw, semantic_scorer=ExactSimilarity())
    lf = tmp_path / "llamafactory"
    lf.mkdir()
    (lf / "dataset_info.json").write_text(json.dumps({"dynamicrag_sft": {"file_name": "dynamicrag_sft.json"}}))

    stats = export_pairs(scored, tmp_path, style="default")

    assert stats["reranker_pairs"] == 1 and stats["generator_pairs"] == 1
    assert stats["reranker_skipped"] == {"tie": 1} == stats["generator_skipped"]
    ds = load(tmp_path / "dpo.jsonl", tmp_path / "cache")
    assert ds.num_rows == 2
    assert {"prompt", "chosen", "rejected"} <= set(ds.column_names)
    rr, gen = ds[0], ds[1]
    assert [m["role"] for m in rr["prompt"]] == ["system", "user"]
    assert rr["chosen"] == [{"role": "assistant", "content": "[2], [1]"}]
    assert gen["chosen"] == [{"role": "assistant", "content": "Paris"}]
    assert gen["rejected"] == [{"role": "assistant", "content": "Lyon"}]  # the lowest-reward wrong answer
    trl_data_utils = pytest.importorskip("trl.data_utils")
    assert trl_data_utils.is_conversational(rr)

    info = json.loads((lf / "dataset_info.json").read_text())
    assert "dynamicrag_sft" in info  # other entries kept
    entry = info[LLAMAFACTORY_DPO_NAME]
    assert entry["ranking"] is True and entry["file_name"] == f"{LLAMAFACTORY_DPO_NAME}.json"
    rows = load(lf / entry["file_name"], tmp_path / "cache")
    assert set(entry["columns"].values()) <= set(rows.column_names)
    assert rows[0]["instruction"] == rr["prompt"][1]["content"] and rows[0]["system"] == rr["prompt"][0]["content"]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == ("[2], [1]", rr["rejected"][0]["content"])
    assert json.loads((tmp_path / "pairs_stats.json").read_text()) == stats


def test_writers_refuse_malformed_pairs(tmp_path):
    with pytest.raises(ValueError, match=r"pair 1 \(id 'b'\).*'rejected'"):
        write_trl_pairs([
            {"id": "a", "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "x"}],
             "rejected": [{"role": "assistant", "content": "y"}]},
            {"id": "b", "prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "x"}],
             "rejected": "y"},
        ], tmp_path / "x.jsonl")
    assert not (tmp_path / "x.jsonl").exists()
    with pytest.raises(ValueError, match="system, user, assistant"):
        write_llamafactory_pairs([{"id": "a", "prompt": [{"role": "user", "content": "q"}],
                                   "chosen": [{"role": "assistant", "content": "x"}],
                                   "rejected": [{"role": "assistant", "content": "y"}]}], tmp_path)


def test_pairs_stats_report_ties_and_the_share_of_none_chosen(tmp_path):
    records = [
        # chosen None (length term wins), and another list (ids [2]) tied with it at the top
        record([sample([], "no idea", 0.5), sample([2], "Lyon", 0.5), sample([1, 3], "Lyon", 0.1)], rid="a"),
        # chosen [1] over None: a longer chosen list
        record([sample([1], "Paris", 0.8, em=1.0), sample([], "Lyon", 0.3)], rid="b"),
        # every sample scored the same: skipped as a tie
        record([sample([1], "Lyon", 0.4), sample([2], "Nice", 0.4)], rid="c"),
        # chosen None, shorter than the rejected list; no tie at the top
        record([sample([3, 4], "Lyon", 0.2), sample([], "Paris", 0.9, em=1.0)], rid="d"),
    ]
    stats = export_pairs(records, tmp_path / "pairs")
    assert stats["reranker_pairs"] == 3 and stats["reranker_skipped"] == {"tie": 1}
    assert stats["best_ties"] == 1
    assert stats["chosen_none"] == 2 and stats["chosen_none_share"] == pytest.approx(2 / 3)
    assert stats["rejected_none"] == 1
    assert (stats["chosen_shorter"], stats["chosen_longer"], stats["same_length"]) == (2, 1, 0)
    written = json.loads((tmp_path / "pairs" / "pairs_stats.json").read_text())
    assert written["chosen_none_share"] == pytest.approx(2 / 3) and written["best_ties"] == 1
    pairs = [json.loads(line) for line in (tmp_path / "pairs" / "dpo.jsonl").read_text().splitlines()]
    assert [p["best_tied"] for p in pairs if p["role"] == "reranker"] == [True, False, False]


def test_reranker_pairs_rebuild_the_prompt_with_the_sampled_word_cap():
    long = [Passage(id=f"p{i}", title=f"T{i}", text=" ".join(f"w{j}" for j in range(50))) for i in range(2)]
    rec = {**record([sample([1], "Paris", 0.9), sample([2], "Lyon", 0.1)]), "passages": [p.model_dump() for p in long],
           "passage_words": 5}
    [pair], _ = build_reranker_pairs([rec], STYLE)
    assert pair["prompt"] == reranker_chat(STYLE, "What is the capital of France?", long, 5)
    assert "w4" in pair["prompt"][1]["content"] and "w5" not in pair["prompt"][1]["content"]
