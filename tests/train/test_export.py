"""SFT export: TRL JSONL and LLaMA-Factory files load with `datasets`; prepare is deterministic."""

from __future__ import annotations

import json

import pytest

from dynamicrag.schema import Example, Passage
from dynamicrag.train import build_sft_records, prepare, read_labelled, write_llamafactory, write_trl_jsonl
from dynamicrag.train.export import to_alpaca

import datasets  # the `train` extra


def labelled(i: int) -> Example:
    # Example i has i % 4 relevant passages (0: target None), scores rising with position.
    return Example(
        id=f"ex{i}",
        question=f"Question number {i} with ünïcode?",
        answers=[f"answer {i}"],
        task="nq",
        passages=[
            Passage(id=f"{i}-{j}", title=f"Title {j}", text=f"Passage {j} of {i}.", score=j / 10,
                    extra={"relevant": j < i % 4})
            for j in range(5)
        ],
    )


EXAMPLES = [labelled(i) for i in range(12)]


def load(path, cache):
    return datasets.load_dataset("json", data_files=str(path), split="train", cache_dir=str(cache))


def test_trl_jsonl_loads_with_datasets(tmp_path):
    records = build_sft_records(EXAMPLES[:4], "default")
    write_trl_jsonl(records, tmp_path / "sft.jsonl")
    ds = load(tmp_path / "sft.jsonl", tmp_path / "cache")
    assert ds.num_rows == len(records)
    assert [row["messages"] for row in ds] == [r["messages"] for r in records]
    assert ds["role"] == [r["role"] for r in records]


def test_trl_rejects_records_without_messages(tmp_path):
    with pytest.raises(ValueError, match="record 1 .*'b'.*messages"):
        write_trl_jsonl([{"messages": []}, {"id": "b"}], tmp_path / "x.jsonl")


def test_llamafactory_alpaca_loads_and_round_trips(tmp_path):
    records = build_sft_records(EXAMPLES[:4], "default")
    (tmp_path / "lf").mkdir()
    (tmp_path / "lf" / "dataset_info.json").write_text(json.dumps({"alpaca_en": {"file_name": "a.json"}}))
    data_file = write_llamafactory(records, tmp_path / "lf", "mine")

    ds = load(data_file, tmp_path / "cache")
    assert ds.num_rows == len(records)
    for row, record in zip(ds, records):
        system, user, assistant = (m["content"] for m in record["messages"])
        assert (row["system"], row["instruction"], row["input"], row["output"]) == (system, user, "", assistant)
    info = json.loads((tmp_path / "lf" / "dataset_info.json").read_text())
    assert info["alpaca_en"] == {"file_name": "a.json"}  # other entries are kept
    assert info["mine"] == {
        "file_name": "mine.json",
        "formatting": "alpaca",
        "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
    }


def test_alpaca_needs_system_user_assistant():
    with pytest.raises(ValueError, match="'x'.*\\['user', 'assistant'\\]"):
        to_alpaca({"id": "x", "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})


def test_prepare_writes_everything_deterministically(tmp_path):
    stats = prepare(EXAMPLES, tmp_path / "a", max_k=2, sft_fraction=0.75, seed=7)
    prepare(EXAMPLES, tmp_path / "b", max_k=2, sft_fraction=0.75, seed=7)
    names = ["sft.jsonl", "dpo_pool.jsonl", "prepare_stats.json",
             "llamafactory/dynamicrag_sft.json", "llamafactory/dataset_info.json"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name

    assert (stats["sft_examples"], stats["dpo_examples"]) == (9, 3)
    assert stats["reranker_records"] == stats["generator_records"] == 9
    assert sum(stats["k_distribution"].values()) == 9
    assert set(stats["k_distribution"]) <= {"0", "1", "2"}  # 3 relevant passages are cut at max_k=2
    assert stats["none_targets"] == stats["k_distribution"].get("0", 0)
    assert json.loads((tmp_path / "a" / "prepare_stats.json").read_text()) == stats

    sft_ids = {json.loads(line)["id"] for line in (tmp_path / "a" / "sft.jsonl").read_text().splitlines()}
    dpo = read_labelled(tmp_path / "a" / "dpo_pool.jsonl")
    assert len(dpo) == 3 and not sft_ids & {ex.id for ex in dpo}
    assert dpo[0] == next(ex for ex in EXAMPLES if ex.id == dpo[0].id)  # full schema records
    lf = json.loads((tmp_path / "a" / "llamafactory" / "dynamicrag_sft.json").read_text())
    assert len(lf) == 18

    other = prepare(EXAMPLES, tmp_path / "c", max_k=2, sft_fraction=0.75, seed=8)
    assert other["sft_examples"] == 9
    assert (tmp_path / "c" / "dpo_pool.jsonl").read_bytes() != (tmp_path / "a" / "dpo_pool.jsonl").read_bytes()


def test_prepare_oversamples_targets_other_than_top1_and_reports_their_share(tmp_path):
    plain = prepare(EXAMPLES, tmp_path / "a", max_k=2, sft_fraction=1.0, seed=7)
    doubled = prepare(EXAMPLES, tmp_path / "b", max_k=2, sft_fraction=1.0, seed=7, oversample_not_top1=2)
    # Example i's relevant passages are its first i % 4, scores rising: targets [1] for i % 4 == 1 only.
    assert plain["reranker_records"] == 12 and plain["reranker_not_top1_share"] == pytest.approx(9 / 12)
    assert doubled["reranker_records"] == 21 and doubled["reranker_not_top1_share"] == pytest.approx(18 / 21)
    assert doubled["generator_records"] == plain["generator_records"] == 12
    assert doubled["k_distribution"] == plain["k_distribution"]  # per example, before the copies
