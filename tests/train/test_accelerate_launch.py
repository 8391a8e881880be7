"""Launch configs: they load, the paper configs say the paper's numbers, and a real 2-process
CPU run through ``accelerate launch`` trains data-parallel and writes one merged model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dynamicrag.train.dpo import load_dpo_config
from dynamicrag.train.sft import load_sft_config

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "src" / "dynamicrag" / "train" / "configs"
ACCELERATE = CONFIGS / "accelerate"

pytest.importorskip("accelerate")


def accelerate_config(name: str):
    from accelerate.commands.config.config_args import load_config_from_file

    return load_config_from_file(str(ACCELERATE / name))


def launch(name: str) -> tuple[Any, dict[str, str]]:
    """What ``accelerate launch --config_file NAME -m dynamicrag.cli train sft`` checks and
    hands to its processes, stopping before it starts them (``launch_command`` of
    accelerate.commands.launch, whose launchers need GPUs, and DeepSpeed's also the package)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    parser = launch_command_parser()
    args = parser.parse_args(["--config_file", str(ACCELERATE / name), "-m", "dynamicrag.cli", "train", "sft"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command
        return args, prepare_deepspeed_cmd_env(args)[1]
    return args, prepare_multi_gpu_env(args)


def test_deepspeed_zero3_config_is_accepted_and_gathers_the_weights_on_save(monkeypatch):
    """Without the deepspeed package (not installed here): the launcher's checks, and the plugin
    each process builds from the launcher's environment, reading ds_zero3.json."""
    from accelerate.utils import DeepSpeedPlugin

    args, env = launch("deepspeed_zero3.yaml")
    assert args.use_deepspeed and args.num_processes == 8
    monkeypatch.chdir(ROOT)  # the json path in the config is relative to the repository root
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    ds = plugin.deepspeed_config
    assert plugin.zero_stage == 3 and plugin.zero3_init_flag and plugin.hf_ds_config.is_zero3()
    # The merged model is gathered from the shards at the end: without this, save_model
    # writes a DeepSpeed checkpoint instead of weights.
    assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    # Batch size, accumulation and bf16 come from the run config (the Trainer fills "auto").
    assert ds["train_micro_batch_size_per_gpu"] == "auto" and ds["bf16"]["enabled"] == "auto"


def test_fsdp_config_is_accepted_and_saves_a_full_state_dict(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    args, env = launch("fsdp.yaml")
    assert args.use_fsdp and args.num_processes == 8 and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True  # FULL_SHARD
    assert plugin.state_dict_type.name == "FULL_STATE_DICT"  # what save_sharded's save_model needs
    assert plugin.auto_wrap_policy.__name__ == "transformer_auto_wrap_policy" and plugin.cpu_ram_efficient_loading


def test_cpu_config_starts_two_local_processes():
    args, _ = launch("cpu_2proc.yaml")
    assert args.multi_gpu and args.num_processes == 2 and args.num_machines == 1  # torchrun, 2 processes
    cpu = accelerate_config("cpu_2proc.yaml")
    assert cpu.use_cpu and cpu.mixed_precision == "no"


def test_paper_configs_carry_the_papers_recipe():
    sft = load_sft_config(CONFIGS / "paper_llama3_8b_sft.yaml")
    dpo = load_dpo_config(CONFIGS / "paper_llama3_8b_dpo.yaml")
    gpus = accelerate_config("deepspeed_zero3.yaml").num_processes
    assert (sft.learning_rate, sft.num_train_epochs, sft.max_length) == (1e-5, 3, 8192)
    assert (dpo.learning_rate, dpo.num_train_epochs, dpo.beta, dpo.loss_type) == (5e-6, 1, 0.1, "sigmoid")
    assert "Llama-3-8B" in sft.model
    for run in (sft, dpo):
        assert not run.lora and run.bf16
        assert run.per_device_train_batch_size * run.gradient_accumulation_steps * gpus == 32
    assert dpo.model == str(Path(sft.output_dir) / "merged")  # DPO starts from the SFT model


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_cpu_processes_train_data_parallel_and_write_one_merged_model(tmp_path):
    """``accelerate launch`` of ``dynamicrag train sft`` on 2 CPU processes (gloo), 2 steps of
    LoRA on the bundled SmolLM2-135M: ~1-3 min on an idle 2-core machine."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dynamicrag.llm.models import resolve_model
    from test_sft import RECORDS, write_jsonl

    config = tmp_path / "tiny.yaml"
    config.write_text(
        f"train_file: {write_jsonl(tmp_path / 'sft.jsonl', RECORDS)}\n"
        f"output_dir: {tmp_path / 'run'}\n"
        "lora_r: 8\nlora_alpha: 16\nlearning_rate: 1.0e-3\nmax_steps: 2\n"
        "per_device_train_batch_size: 1\ngradient_accumulation_steps: 1\nmax_length: 256\n"
        "warmup_ratio: 0.0\nlogging_steps: 1\nsave_steps: 2\n"
    )
    # ACCELERATE_USE_CPU: see cpu_2proc.yaml (the torchrun launcher does not pass use_cpu on).
    # One torch thread per process: two processes share the 2 cores.
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE / "cpu_2proc.yaml"),
         "--main_process_port", str(free_port()),
         "-m", "dynamicrag.cli", "train", "sft", "--config", str(config)],
        env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    state = json.loads((tmp_path / "run" / "checkpoints" / "trainer_state.json").read_text())
    # 4 rows, batch 1 per process: two steps are one epoch only if two processes shared the data.
    assert state["global_step"] == 2 and state["epoch"] == pytest.approx(1.0)
    assert proc.stderr.count("Merged model written") == 1  # the main process alone merged and saved

    merged_dir = tmp_path / "run" / "merged"
    model = AutoModelForCausalLM.from_pretrained(merged_dir)  # a plain model: LoRA folded in
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.chat_template and not any("lora" in name for name, _ in model.named_parameters())
    base = load_file(str(Path(resolve_model(None)) / "model.safetensors"))
    name = "model.layers.0.self_attn.q_proj.weight"
    trained = model.state_dict()[name]
    assert trained.shape == base[name].shape and not (trained == base[name]).all()


class GatheringTrainer:
    """What ``save_sharded`` uses of a ZeRO-3/FSDP trainer: ``save_model`` (the gather of the
    shards, which needs GPUs) writes the adapter of a real LoRA model."""

    def __init__(self, peft_model, tokenizer):
        self.peft_model, self.processing_class = peft_model, tokenizer

    def save_model(self, output_dir: str) -> None:
        self.peft_model.save_pretrained(output_dir)

    def is_world_process_zero(self) -> bool:
        return True


@pytest.mark.slow
def test_sharded_lora_run_is_merged_from_the_gathered_adapter(tmp_path):
    import torch
    from peft import get_peft_model

    from dynamicrag.train.common import load_trainable, lora_config, save_sharded
    from dynamicrag.train.sft import SFTRunConfig

    config = SFTRunConfig(
        train_file="unused.jsonl", output_dir=str(tmp_path), lora_r=4, lora_alpha=8, target_modules=["q_proj"]
    )
    model, tokenizer = load_trainable(config.model)
    peft_model = get_peft_model(model, lora_config(config))
    torch.manual_seed(0)
    with torch.no_grad():  # a trained adapter: B is zero at initialisation
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.02)

    save_sharded(GatheringTrainer(peft_model, tokenizer), config)

    from safetensors.torch import load_file

    written = load_file(str(config.merged_dir / "model.safetensors"))
    expected = peft_model.merge_and_unload().state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(written[name], expected[name], atol=1e-6)
    assert (config.merged_dir / "tokenizer_config.json").is_file()
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
