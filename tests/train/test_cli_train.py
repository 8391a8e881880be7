"""label -> prepare -> train sft through the CLI on real HotpotQA questions."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from dynamicrag.cli import app

runner = CliRunner()


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.slow
def test_label_prepare_and_sft_chain(shared_data, tmp_path):
    labelled = tmp_path / "labelled.jsonl"
    invoke("label", "--input", shared_data / "hotpotqa" / "hotpotqa_train.json", "--output", labelled, "--limit", "4")
    records = [json.loads(line) for line in labelled.read_text().splitlines()]
    assert len(records) == 4
    assert all("relevant" in p["extra"] and p["score"] is not None for r in records for p in r["passages"])

    out = tmp_path / "prepared"
    invoke("prepare", "--input", labelled, "--out", out, "--sft-fraction", "1.0", "--seed", "3")
    stats = json.loads((out / "prepare_stats.json").read_text())
    assert stats["reranker_records"] == 4
    sft_rows = [json.loads(line) for line in (out / "sft.jsonl").read_text().splitlines()]
    assert {row["role"] for row in sft_rows} <= {"reranker", "generator"}
    assert (out / "llamafactory" / "dataset_info.json").exists()

    config = tmp_path / "sft.yaml"
    config.write_text(yaml.safe_dump({
        "train_file": str(out / "sft.jsonl"), "output_dir": str(tmp_path / "run"), "max_steps": 2,
        "max_length": 512, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "learning_rate": 1e-4, "lora_r": 4, "lora_alpha": 8, "save_steps": 100, "logging_steps": 1,
    }))
    result = invoke("train", "sft", "--config", config, "--quiet")
    assert "merged model written to" in result.output
    assert (tmp_path / "run" / "merged" / "config.json").exists()


def test_bad_rule_lists_the_choices(shared_data, tmp_path):
    result = runner.invoke(app, [
        "label", "--input", str(shared_data / "hotpotqa" / "hotpotqa_train.json"),
        "--output", str(tmp_path / "l.jsonl"), "--rule", "vibes",
    ])
    assert result.exit_code == 2 and "teacher_and_answer" in result.output
