"""DPO trainer: config and pair validation, and a few LoRA steps that move SmolLM2 towards the chosen side."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dynamicrag.train.dpo import DPORunConfig, load_dpo_config, load_dpo_records

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "dynamicrag" / "train" / "configs"

SYSTEM = "You select the documents needed to answer the query."


def pair(query: str, docs: str, chosen: str, rejected: str) -> dict:
    return {
        "id": query,
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Query: {query}\n{docs}"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


PAIRS = [
    pair("capital of France?", "[1] Berlin is in Germany.\n[2] Paris is the capital of France.", "[2]", "[1], [2]"),
    pair("who wrote Hamlet?", "[1] Hamlet is a play by Shakespeare.\n[2] Rome is old.", "[1]", "None"),
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def baby_config(tmp: Path, **kw) -> DPORunConfig:
    values = dict(
        train_file=str(write_jsonl(tmp / "pairs.jsonl", PAIRS)), output_dir=str(tmp / "run"),
        lora_r=8, lora_alpha=16, learning_rate=1e-3, max_steps=2, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_length=256, warmup_ratio=0.0, logging_steps=1, save_steps=2,
    )
    values.update(kw)
    return DPORunConfig(**values)


def test_shipped_config_loads_with_the_papers_beta_and_loss():
    config = load_dpo_config(CONFIGS / "dpo_smollm2_lora.yaml")
    assert config.beta == 0.1 and config.loss_type == "sigmoid" and config.num_train_epochs == 1
    assert config.lora and config.ref_model is None and not config.bf16
    default = DPORunConfig(train_file="x.jsonl")  # the paper's recipe
    assert (default.learning_rate, default.beta, default.num_train_epochs) == (5e-6, 0.1, 1.0)
    assert default.per_device_train_batch_size * default.gradient_accumulation_steps == 32


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, field in [("beta: 0.1\nbta: 2\n", "bta"), ("beta: 0\n", "beta"), ("loss_type: dpo\n", "loss_type"),
                        ("max_length: -1\n", "max_length"), ("dpo_args: {beta: 0.2}\n", "dpo_args")]:
        bad.write_text("train_file: x.jsonl\n" + text)
        with pytest.raises(ValueError, match=rf"bad\.yaml.*{field}"):
            load_dpo_config(bad)
    with pytest.raises(ValueError, match="train_file: required"):
        DPORunConfig()
    toml = tmp_path / "c.toml"
    toml.write_text('train_file = "x.jsonl"\nloss_type = "ipo"\n')
    assert load_dpo_config(toml, beta=0.5).loss_type == "ipo" and load_dpo_config(toml, beta=0.5).beta == 0.5


def test_pairs_are_read_and_bad_lines_are_named(tmp_path):
    records = load_dpo_records(write_jsonl(tmp_path / "ok.jsonl", PAIRS))
    assert set(records[0]) == {"prompt", "chosen", "rejected"}  # "id" is dropped
    assert records[1]["chosen"] == [{"role": "assistant", "content": "[1]"}]
    cases = [
        ({**PAIRS[0], "rejected": []}, r"bad\.jsonl:2: \['rejected'\] must be non-empty"),
        ({**PAIRS[0], "chosen": [{"role": "user", "content": "[2]"}]}, r"bad\.jsonl:2: chosen must be exactly one assistant"),
        ({**PAIRS[0], "prompt": [{"role": "bot", "content": "x"}]}, r"bad\.jsonl:2: prompt\[0\] must be"),
        ({**PAIRS[0], "rejected": PAIRS[0]["chosen"]}, r"bad\.jsonl:2: chosen and rejected are identical"),
    ]
    for row, message in cases:
        with pytest.raises(ValueError, match=message):
            load_dpo_records(write_jsonl(tmp_path / "bad.jsonl", [PAIRS[1], row]))
    (tmp_path / "bad.jsonl").write_text(json.dumps(PAIRS[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: invalid JSON"):
        load_dpo_records(tmp_path / "bad.jsonl")


def test_dropped_and_cut_pairs_are_counted(tmp_path, caplog):
    from datasets import Dataset

    from dynamicrag.train.dpo import _report_truncation

    # What TRL leaves after tokenising 3 pairs with max_length=10: one pair dropped (prompt >= 10).
    kept = Dataset.from_list([{"prompt_ids": [1] * 8, "chosen_ids": [2] * 3, "rejected_ids": [3]},
                              {"prompt_ids": [1] * 4, "chosen_ids": [2] * 3, "rejected_ids": [3] * 2}])
    with caplog.at_level("WARNING", logger="dynamicrag.train.dpo"):
        _report_truncation(kept, 3, baby_config(tmp_path, max_length=10))
    assert "1 of 3 pairs dropped" in caplog.text and "1 of 2 pairs exceed max_length=10" in caplog.text
    with pytest.raises(ValueError, match="max_length: all 2 pairs"):
        _report_truncation(kept.select([]), 2, baby_config(tmp_path, max_length=10))


def completion_logprob(lm, tokenizer, prompt: list[dict], completion: list[dict]) -> float:
    """log p(completion | prompt) under the chat template: the sum over the completion's tokens."""
    import torch

    head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(prompt + completion, tokenize=False)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert ids[: len(head_ids)] == head_ids
    with torch.inference_mode():
        logits = lm(torch.tensor([ids])).logits[0, :-1].float()  # (len - 1, vocab): position t predicts t + 1
    logps = logits.log_softmax(-1).gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
    return float(logps[len(head_ids) - 1:].sum())


def margins(lm, tokenizer) -> list[float]:
    """log p(chosen | prompt) - log p(rejected | prompt) for each pair."""
    return [completion_logprob(lm, tokenizer, p["prompt"], p["chosen"])
            - completion_logprob(lm, tokenizer, p["prompt"], p["rejected"]) for p in PAIRS]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dynamicrag.train.dpo import train_dpo

    config = baby_config(tmp_path_factory.mktemp("dpo"))
    return config, train_dpo(config)


@pytest.mark.slow
def test_dpo_steps_raise_the_preference_margin_and_the_merged_model_serves(trained, smollm):
    from dynamicrag.llm import SamplingParams, load_backend

    config, merged = trained
    assert merged == Path(config.output_dir) / "merged"
    state = json.loads((Path(config.output_dir) / "checkpoints" / "trainer_state.json").read_text())
    logs = [e for e in state["log_history"] if "loss" in e]
    assert state["global_step"] == 2 and len(logs) == 2 and all(math.isfinite(e["loss"]) for e in logs)
    assert logs[0]["loss"] == pytest.approx(math.log(2), abs=1e-3)  # step 1: policy == reference
    assert logs[-1]["rewards/margins"] > 0

    before = margins(smollm.lm, smollm.tokenizer)  # the starting model (bundled SmolLM2)
    llm = load_backend("transformers", model=str(merged), dtype="float32")  # as smollm: margins in one dtype
    after = margins(llm.lm, llm.tokenizer)
    assert all(a > b for a, b in zip(after, before)), (before, after)

    [[out]] = llm.generate([PAIRS[0]["prompt"]], SamplingParams(max_new_tokens=4))
    assert out.completion_tokens >= 1



def test_roles_filter_pairs_and_an_adapter_needs_lora(tmp_path):
    rows = [{**PAIRS[0], "role": "reranker"}, {**PAIRS[1], "role": "generator"}]
    path = write_jsonl(tmp_path / "roles.jsonl", rows)
    assert [r["chosen"][0]["content"] for r in load_dpo_records(path, ["reranker"])] == ["[2]"]
    assert len(load_dpo_records(path)) == 2
    with pytest.raises(ValueError, match="adapter: continuing"):
        baby_config(tmp_path, adapter=str(tmp_path), lora=False)
    with pytest.raises(ValueError, match="adapter_config.json"):
        baby_config(tmp_path, adapter=str(tmp_path))


@pytest.fixture(scope="module")
def sft_adapter(tmp_path_factory):
    """A LoRA adapter from 2 SFT steps on the preferred answers, far from the base model."""
    from dynamicrag.train.sft import SFTRunConfig, train_sft

    tmp = tmp_path_factory.mktemp("sft_for_dpo")
    rows = [{"role": "reranker", "messages": [*p["prompt"], *p["rejected"]]} for p in PAIRS]
    config = SFTRunConfig(
        train_file=str(write_jsonl(tmp / "sft.jsonl", rows)), output_dir=str(tmp / "sft"), lora_r=8, lora_alpha=16,
        learning_rate=1e-2, max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
        max_length=256, warmup_ratio=0.0, logging_steps=1, save_steps=2, save="adapter",
    )
    return train_sft(config)


@pytest.mark.slow
def test_dpo_continues_the_sft_adapter_against_the_sft_model_and_resumes(sft_adapter, tmp_path, smollm, caplog):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from dynamicrag.llm.models import resolve_model
    from dynamicrag.train.dpo import train_dpo

    # The SFT adapter moved the model: against the base model as reference, the first DPO
    # loss would not be log 2.
    base = AutoModelForCausalLM.from_pretrained(resolve_model(None)).eval()
    sft_model = PeftModel.from_pretrained(base, str(sft_adapter)).eval()
    sft_margins = margins(sft_model, smollm.tokenizer)
    base_margins = margins(smollm.lm, smollm.tokenizer)
    assert max(abs(a - b) for a, b in zip(sft_margins, base_margins)) > 0.5

    config = baby_config(tmp_path, adapter=str(sft_adapter), max_steps=1, save_steps=1, learning_rate=5e-3,
                         save="adapter")
    with caplog.at_level("INFO", logger="dynamicrag.train"):
        out = train_dpo(config)
    assert "Resuming" not in caplog.text
    state = json.loads((Path(config.output_dir) / "checkpoints" / "trainer_state.json").read_text())
    [first] = [e for e in state["log_history"] if "loss" in e]
    # Step 1: the policy (base + SFT adapter) equals the reference, so the reference is the SFT model.
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-3)

    # Rerun with more steps: it resumes from checkpoint-1 instead of starting over.
    caplog.clear()
    config = baby_config(tmp_path, adapter=str(sft_adapter), max_steps=3, save_steps=1, learning_rate=5e-3,
                         save="adapter")
    with caplog.at_level("INFO", logger="dynamicrag.train"):
        out = train_dpo(config)
    assert "Resuming from" in caplog.text and "checkpoint-1" in caplog.text
    state = json.loads((Path(config.output_dir) / "checkpoints" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert len(losses) == 3 and losses[-1] < math.log(2)  # the resumed steps kept learning

    # The result is the continued adapter alone (no "ref" copy), and it moved towards the chosen side.
    assert out == Path(config.output_dir) / "adapter" and not (out / "ref").exists()
    assert set(load_file(str(out / "adapter_model.safetensors"))) == set(
        load_file(str(sft_adapter / "adapter_model.safetensors")))
    base = AutoModelForCausalLM.from_pretrained(resolve_model(None)).eval()
    dpo_model = PeftModel.from_pretrained(base, str(out)).eval()
    after = margins(dpo_model, smollm.tokenizer)
    assert all(a > b for a, b in zip(after, sft_margins)), (sft_margins, after)
