"""SFT trainer: config loading, the loss mask, and a 3-step LoRA run on the bundled SmolLM2."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from dynamicrag.train.sft import SFTRunConfig, load_sft_config, load_sft_records

CONFIGS = Path(__file__).resolve().parents[2] / "src" / "dynamicrag" / "train" / "configs"

SYSTEM = "You are a helpful assistant."
RECORDS = [
    {"role": "reranker", "id": "q1", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Query: capital of France?\n[1] Berlin is in Germany.\n[2] Paris is the capital of France."},
        {"role": "assistant", "content": "[2], [1]"}]},
    {"role": "reranker", "id": "q2", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Query: who wrote Hamlet?\n[1] Hamlet is a play by Shakespeare.\n[2] Rome is old."},
        {"role": "assistant", "content": "[1]"}]},
    {"role": "generator", "id": "q1", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Query: capital of France?\n1. Paris is the capital of France."},
        {"role": "assistant", "content": "Paris"}]},
    {"role": "generator", "id": "q2", "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Query: who wrote Hamlet?\n1. Hamlet is a play by Shakespeare."},
        {"role": "assistant", "content": "William Shakespeare"}]},
]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def baby_config(tmp: Path, **kw) -> SFTRunConfig:
    values = dict(
        train_file=str(write_jsonl(tmp / "sft.jsonl", RECORDS)), output_dir=str(tmp / "run"),
        lora_r=8, lora_alpha=16, learning_rate=1e-3, max_steps=3, per_device_train_batch_size=2,
        gradient_accumulation_steps=1, max_length=256, warmup_ratio=0.0, logging_steps=1, save_steps=3,
    )
    values.update(kw)
    return SFTRunConfig(**values)


def test_shipped_config_loads():
    config = load_sft_config(CONFIGS / "sft_smollm2_lora.yaml")
    assert config.lora and config.lora_r == 8 and config.learning_rate == 2e-4 and config.max_length == 1024
    assert config.model is None and not config.bf16


def test_config_errors_name_file_and_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train_file: x.jsonl\nlearning_rat: 1e-4\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*learning_rat"):
        load_sft_config(bad)
    bad.write_text("train_file: x.jsonl\nlora_dropout: 1.5\n")
    with pytest.raises(ValueError, match=r"bad\.yaml.*lora_dropout"):
        load_sft_config(bad)
    toml = tmp_path / "c.toml"
    toml.write_text('train_file = "x.jsonl"\nmax_steps = 5\n')
    assert load_sft_config(toml).max_steps == 5


def test_records_become_prompt_completion_and_bad_lines_are_named(tmp_path):
    records = load_sft_records(write_jsonl(tmp_path / "ok.jsonl", RECORDS))
    assert records[0]["completion"] == [{"role": "assistant", "content": "[2], [1]"}]
    assert [m["role"] for m in records[0]["prompt"]] == ["system", "user"]
    bad = RECORDS[:1] + [{"messages": RECORDS[1]["messages"][:2]}]  # no assistant turn on line 2
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: the last message must be the assistant"):
        load_sft_records(write_jsonl(tmp_path / "bad.jsonl", bad))


@pytest.mark.slow
def test_loss_is_only_on_the_assistant_turn(tmp_path):
    from dynamicrag.train.sft import build_sft_trainer

    trainer = build_sft_trainer(baby_config(tmp_path))
    tok = trainer.processing_class
    batch = next(iter(trainer.get_train_dataloader()))
    targets = {r["messages"][-1]["content"] for r in RECORDS}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        learnt = labels[labels != -100]
        # The learnt tokens are one contiguous span, exactly the assistant content + end of turn.
        start = int((labels != -100).nonzero()[0])
        assert ids[start:start + len(learnt)].tolist() == learnt.tolist()
        text = tok.decode(learnt)
        assert text.replace("<|im_end|>", "").strip() in targets
        assert "<|im_end|>" in text  # the model learns to stop
        assert "Query:" in tok.decode(ids[:start])  # the prompt is there, but masked


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from dynamicrag.train.sft import train_sft

    config = baby_config(tmp_path_factory.mktemp("sft"))
    return config, train_sft(config)


@pytest.mark.slow
def test_lora_run_changes_weights_and_merged_model_serves(trained):
    import torch
    from safetensors.torch import load_file

    from dynamicrag.llm import SamplingParams, load_backend
    from dynamicrag.llm.models import resolve_model

    config, merged = trained
    assert merged == Path(config.output_dir) / "merged"
    state = json.loads((Path(config.output_dir) / "checkpoints" / "trainer_state.json").read_text())
    losses = [e["loss"] for e in state["log_history"] if "loss" in e]
    assert state["global_step"] == 3 and len(losses) == 3 and all(math.isfinite(x) for x in losses)

    base = load_file(str(Path(resolve_model(None)) / "model.safetensors"))
    new = load_file(str(merged / "model.safetensors"))
    assert set(new) == set(base)  # a plain model again: no lora_A / lora_B keys left
    changed = [k for k in base if not torch.equal(base[k], new[k])]
    assert any("q_proj" in k for k in changed) and any("mlp" in k for k in changed)  # all-linear LoRA
    assert not any("embed_tokens" in k or "norm" in k for k in changed)  # LoRA leaves the rest alone

    llm = load_backend("transformers", model=str(merged))
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": RECORDS[0]["messages"][1]["content"]}]
    [[out]] = llm.generate([chat], SamplingParams(max_new_tokens=4))
    assert out.completion_tokens >= 1 and out.prompt_tokens > 10


@pytest.mark.slow
def test_rerun_resumes_from_the_last_checkpoint(trained, caplog):
    from dynamicrag.train.sft import train_sft

    config, _ = trained
    more = SFTRunConfig(**{**config.__dict__, "max_steps": 4})
    with caplog.at_level("INFO", logger="dynamicrag.train"):
        train_sft(more)
    assert "Resuming from" in caplog.text and "checkpoint-3" in caplog.text
    state = json.loads((Path(config.output_dir) / "checkpoints" / "trainer_state.json").read_text())
    assert state["global_step"] == 4


def test_roles_select_the_records_and_bad_roles_are_named(tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl", RECORDS)
    only_gen = load_sft_records(path, ["generator"])
    assert [r["completion"][0]["content"] for r in only_gen] == ["Paris", "William Shakespeare"]
    assert len(load_sft_records(path, ["reranker", "generator"])) == 4 == len(load_sft_records(path))
    assert baby_config(tmp_path, roles="reranker").roles == ["reranker"]  # one name is a list of one
    with pytest.raises(ValueError, match="roles"):
        baby_config(tmp_path, roles=["critic"])
    with pytest.raises(ValueError, match="save"):
        baby_config(tmp_path, save="everything")
    with pytest.raises(ValueError, match="needs lora"):
        baby_config(tmp_path, save="adapter", lora=False)
    no_role = [RECORDS[0], {"messages": RECORDS[2]["messages"]}]
    with pytest.raises(ValueError, match=r"norole\.jsonl:2: 'role' must be one of"):
        load_sft_records(write_jsonl(tmp_path / "norole.jsonl", no_role), ["reranker"])
    with pytest.raises(ValueError, match="no training rows of roles"):
        load_sft_records(write_jsonl(tmp_path / "rr.jsonl", RECORDS[:2]), ["generator"])


@pytest.mark.slow
def test_the_saved_adapter_on_the_base_model_is_the_merged_model(trained):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from dynamicrag.llm.models import resolve_model

    config, merged = trained
    adapter = Path(config.output_dir) / "adapter"
    meta = json.loads((adapter / "adapter_config.json").read_text())
    assert meta["base_model_name_or_path"] == "smollm2-135m-instruct"  # no machine-local path: it can ship
    from safetensors.torch import load_file

    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert weights and all("lora_A" in k or "lora_B" in k for k in weights)  # LoRA only: no base weights
    assert (adapter / "adapter_model.safetensors").stat().st_size < 12_000_000  # r 8, all-linear, fp32: ~10 MB
    base = AutoModelForCausalLM.from_pretrained(resolve_model(None))
    with_adapter = PeftModel.from_pretrained(base, str(adapter)).eval()
    plain = AutoModelForCausalLM.from_pretrained(merged).eval()
    ids = torch.tensor([[1, 504, 3458, 314, 4649, 47, 216, 28]])
    with torch.inference_mode():
        a, b = with_adapter(ids).logits, plain(ids).logits
        with with_adapter.disable_adapter():
            untrained = with_adapter(ids).logits
    assert torch.allclose(a, b, atol=1e-3)
    assert not torch.allclose(a, untrained, atol=1e-3)  # the adapter changed something


@pytest.mark.slow
def test_adapter_only_run_on_one_role_in_bf16_on_a_cpu(tmp_path):
    from dynamicrag.train.sft import build_sft_trainer, train_sft

    # bf16 autocast without a GPU: transformers refuses it unless the trainer is told use_cpu
    config = baby_config(tmp_path, roles=["generator"], save="adapter", max_steps=1, bf16=True)
    assert len(build_sft_trainer(config).train_dataset) == 2  # the two generator rows
    out = train_sft(config)
    assert out == Path(config.output_dir) / "adapter" and (out / "adapter_config.json").exists()
    assert not (Path(config.output_dir) / "merged").exists()


def test_lora_layers_is_checked_before_anything_loads(tmp_path):
    for bad in (0, -2, True, "4"):
        with pytest.raises(ValueError, match="lora_layers"):
            baby_config(tmp_path, lora_layers=bad)


@pytest.mark.slow
def test_lora_on_the_last_layers_trains_those_layers_only(tmp_path):
    from safetensors.torch import load_file

    from dynamicrag.train.common import load_trainable, lora_config
    from dynamicrag.train.sft import train_sft

    out = train_sft(baby_config(tmp_path, lora_layers=2, save="adapter", max_steps=1))
    weights = load_file(str(out / "adapter_model.safetensors"))
    layers = {int(k.split(".layers.")[1].split(".")[0]) for k in weights}
    assert layers == {28, 29}  # SmolLM2-135M has 30 layers: the last two
    # every linear layer of those two ("all-linear" named out, as peft needs for a layer range)
    assert {k.split(".")[-3] for k in weights} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert json.loads((out / "adapter_config.json").read_text())["layers_to_transform"] == [28, 29]
    model, _ = load_trainable(None)
    with pytest.raises(ValueError, match="more than the model's 30 layers"):
        lora_config(baby_config(tmp_path, lora_layers=31), model)
