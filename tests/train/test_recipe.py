"""The training recipe: config checks (held-apart slices), and a tiny real run end to end, resumed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.train.recipe import STAGES, Recipe, RecipeConfig, load_recipe_config

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "dynamicrag" / "train" / "configs"
runner = CliRunner()


def test_shipped_recipe_config_loads_and_trains_the_reranker_on_training_slices():
    config = load_recipe_config(CONFIGS / "recipe_smollm2.yaml")
    assert config.roles == ["reranker"] and config.teacher == "evidence" and config.max_k == 3
    assert config.calibrate_stop  # the shipped adapter's stop is calibrated
    assert config.nq_slice == [200, 2655] and config.hotpot_slice == [0, 70]
    assert config.passage_words and config.reward["match_weight"] > 0
    assert config.order_by == "query-likelihood"  # the shipped adapter reads its candidates in that order
    assert config.sft_config(Path("runs/x")).save == "both"


@pytest.mark.parametrize(("fields", "message"), [
    ({"nq_slice": [150, 2655]}, r"nq_slice: \[150, 2655\] overlaps the held-apart nq questions \[0, 200\)"),
    ({"hotpot_slice": [0, 80]}, "hotpot_slice.*overlaps the held-apart hotpotqa"),
    ({"hotpot_slice": [90, 100], "label_hotpot": 5}, "hotpot_slice.*overlaps"),
    ({"label_nq": 3000}, "nq_slice.*fewer than the 3000"),
    ({"eval_hotpot": 31}, "eval_hotpot: at most 30"),
    ({"sft": {"max_steps": 3}}, r"sft: \['max_steps'\] are set by the recipe"),
    ({"dpo": {"betta": 0.1}}, r"dpo: unknown field\(s\) \['betta'\]"),
    ({"reward": {"length_weight": -1}}, "length_weight"),
    ({"roles": ["critic"]}, "roles"),
    ({"label": {"answer_form": "essay"}}, "answer_form"),
    ({"label": {"expert": "suffix"}}, "expert: unknown rule"),
    ({"order_by": "bm42"}, "order_by: unknown scorer 'bm42'"),
])
def test_bad_configs_are_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        RecipeConfig(**fields)


def test_a_run_folder_refuses_another_config(tmp_path):
    Recipe(RecipeConfig(label_nq=200), tmp_path)
    Recipe(RecipeConfig(label_nq=200), tmp_path)  # the same config resumes
    with pytest.raises(ValueError, match=r"fields \['label_nq'\] differ"):
        Recipe(RecipeConfig(label_nq=300), tmp_path)
    Recipe(RecipeConfig(label_nq=200, data=str(tmp_path / "data")), tmp_path)  # where the data lives is no setting


def test_a_run_stored_before_a_field_existed_resumes_while_the_field_keeps_its_default(tmp_path):
    Recipe(RecipeConfig(), tmp_path)
    stored = json.loads((tmp_path / "recipe_config.json").read_text())
    del stored["oversample_not_top1"]  # a run stored by a version without the field
    (tmp_path / "recipe_config.json").write_text(json.dumps(stored))
    Recipe(RecipeConfig(), tmp_path)
    with pytest.raises(ValueError, match=r"fields \['oversample_not_top1'\] differ"):
        Recipe(RecipeConfig(oversample_not_top1=2), tmp_path)


TINY = {
    "top_n": 3, "passage_words": 20, "order_by": "query-likelihood", "label_nq": 3, "label_hotpot": 1, "dpo_pool": 2,
    "label": {"max_answers": 1, "top_m": 2, "expert": "prefix"},
    "sft_steps": 1,
    "sft": {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 1, "max_length": 512, "lora_r": 4,
            "lora_alpha": 8, "learning_rate": 1e-3, "save_steps": 1, "logging_steps": 1},
    # Constrained sampling: a model after one SFT step writes no id list of its own, and pairs
    # need lists that differ.
    "sample_n": 3, "sample_temperature": 1.0, "sample_constrained": True, "answer_tokens": 4,
    "reward": {"match_weight": 0.4, "length_weight": 0.05},
    "dpo_steps": 1,
    "dpo": {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 1, "max_length": 512, "lora_r": 4,
            "lora_alpha": 8, "learning_rate": 1e-3, "save_steps": 1, "logging_steps": 1},
    "eval_nq": 1, "eval_hotpot": 1, "eval_fixed_k": [1],
}


def recipe(*args):
    result = runner.invoke(app, ["train", "recipe", *map(str, args), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


@pytest.mark.slow
def test_tiny_recipe_end_to_end_then_resumes_only_what_is_missing(shared_data, tmp_path):
    config, out = tmp_path / "recipe.yaml", tmp_path / "run"
    config.write_text(yaml.safe_dump(TINY))
    result = recipe("--config", config, "--out", out, "--data", shared_data)
    assert "adapter written to" in result.output

    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == list(STAGES) and all(s["state"] == "done" and s["runs"] == 1 for s in stages.values())
    # The stop, calibrated on the SFT prompts, went into the evaluation and the manifest.
    calibration = json.loads((out / "calibrate" / "stop.json").read_text())
    assert calibration["stopping"] >= 1 and calibration["adapter"] == str(out / "dpo" / "adapter")
    assert (out / "dpo" / "adapter" / "adapter_config.json").exists()  # DPO ran, from the SFT adapter
    assert json.loads((out / "pairs" / "pairs_stats.json").read_text())["reranker_pairs"] >= 1
    labelled = [json.loads(line) for line in (out / "label" / "nq.jsonl").read_text().splitlines()]
    assert [r["id"] for r in labelled] == ["nq-open-oracle-201", "nq-open-oracle-202", "nq-open-oracle-203"]
    assert all("expert" in r["extra"] and len(r["passages"]) == 3 for r in labelled)
    # order_by: the label stage wrote each question's candidates by query likelihood, the order
    # every later stage reads them in (and, from the manifest, inference).
    from dynamicrag.rerank.pointwise import make_scorer
    from dynamicrag.schema import Example

    scorer = make_scorer("query-likelihood")
    for record in labelled:
        example = Example.model_validate(record)
        scores = scorer.score(example.question, example.passages)
        assert scores == sorted(scores, reverse=True), record["id"]
        # expert: prefix, so the teacher's list is the first k of that order.
        expert = record["extra"]["expert"]
        assert expert == list(range(1, len(expert) + 1)) and record["extra"]["utility"]["expert_rule"] == "prefix"
    # The word cap reached the reranker's training prompts and the sampling.
    from dynamicrag.prompts import load_style, reranker_chat
    from dynamicrag.train import read_labelled

    examples = {ex.id: ex for d in ("nq", "hotpotqa") for ex in read_labelled(out / "label" / f"{d}.jsonl")}
    rows = [json.loads(line) for line in (out / "prepare" / "sft.jsonl").read_text().splitlines()]
    reranker_rows = [r for r in rows if r["role"] == "reranker"]
    assert len(reranker_rows) == 2
    for row in reranker_rows:
        ex = examples[row["id"]]
        assert row["messages"][:2] == reranker_chat(load_style("default"), ex.question, ex.passages, 20)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2 and all(r["passage_words"] == 20 and len(r["samples"]) == 3 for r in samples)

    adapter = out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    from dynamicrag.llm.adapters import read_manifest

    manifest = read_manifest(adapter)
    assert (manifest.role, manifest.base_model, manifest.passage_words, manifest.top_n, manifest.order_by) == (
        "reranker", "smollm2-135m-instruct", 20, 3, "query-likelihood")
    assert manifest.training["slices"] == {"nq": [200, 203], "hotpotqa": [0, 1]}
    assert manifest.training["command"].startswith("dynamicrag train recipe --config ")
    assert manifest.training["stages"].endswith("-> dpo -> calibrate")
    assert set(manifest.evaluation["nq"]) == {"dynamic", "top-1"} and manifest.evaluation["hotpotqa"]["top-1"]["n"] == 1
    assert set(manifest.training["wall_seconds"]) == set(STAGES)
    assert manifest.continue_bias == calibration["continue_bias"] and manifest.training["calibrate"] == calibration

    # Rerun: every stage is complete and skipped.
    before = (adapter / "manifest.json").read_text()
    recipe("--config", config, "--out", out, "--data", shared_data)
    stages = json.loads((out / "stages.json").read_text())
    assert all(s["runs"] == 1 for s in stages.values()) and (adapter / "manifest.json").read_text() == before

    # A partial evaluation (a killed run) resumes: only eval and adapter run again.
    (out / "eval" / "results.json").unlink()
    run = out / "eval" / "runs" / "hotpotqa" / "dynamic.jsonl"
    run.write_text("")
    recipe("--config", config, "--out", out, "--data", shared_data)
    stages = json.loads((out / "stages.json").read_text())
    # The adapter's manifest carries the evaluation, so it is written again after it.
    assert {k: v["runs"] for k, v in stages.items()} == {**dict.fromkeys(STAGES, 1), "eval": 2, "adapter": 2}
    assert len(run.read_text().splitlines()) == 1 and (out / "eval" / "results.json").exists()
