"""The training side of the ``dynamicrag`` command line: the data stages (``label``, ``prepare``,
``sample``, ``reward``, ``pairs``) and ``dynamicrag train`` (``sft``, ``dpo``, ``recipe``). Like
:mod:`dynamicrag.cli`, each command parses its options, calls its stage, prints; the options
come from the stages' config classes (:mod:`dynamicrag.cli_options`).
"""

from __future__ import annotations

import importlib
import json
import shlex
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any, Optional

import typer

from dynamicrag.cli_options import (
    EXAMPLES, EXECUTOR, OUTPUT, RETRIEVE, ROLES, TRAINING_LOGS, VERBOSE, batch_size_option, checked_examples,
    config_options, index_option, pipeline_options, resolve_pipeline, with_options,
)
from dynamicrag.console import announce_dtypes, console, fail, failing, run_stage, show_stats, show_table
from dynamicrag.train.common import RunConfig
from dynamicrag.train.export import PrepareConfig
from dynamicrag.train.label import LabelConfig
from dynamicrag.train.reward import RewardConfig
from dynamicrag.train.sample import SampleConfig

train_app = typer.Typer(help="Training stages: supervised fine-tuning (behaviour cloning + generator), DPO.",
                        no_args_is_help=True)
STAGE_COMMANDS: list[tuple[str, Callable[..., Any]]] = []
"""The data stages' commands, (name, function), added to the main app by :mod:`dynamicrag.cli`."""


def stage_command(name: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def register(command: Callable[..., Any]) -> Callable[..., Any]:
        STAGE_COMMANDS.append((name or command.__name__, command))
        return command

    return register


@stage_command()
@with_options(inputs=EXAMPLES, config=config_options(LabelConfig), executor=EXECUTOR, logs=VERBOSE)
def label(output: Path = OUTPUT, index_dir: Optional[str] = index_option(), retrieve: bool = RETRIEVE,
          batch_size: int = batch_size_option(8, "Examples per teacher batch and write"),
          *, inputs: Any, config: dict, executor: Any, logs: None) -> None:
    """Label the passages of every example of INPUT as relevant or not (teacher + gold answer)."""
    from dynamicrag.train.label import label_batch_fn, label_summary

    with failing():
        cfg = LabelConfig(**config)
    examples = checked_examples(inputs, index_dir, retrieve)
    _, records, per_question = run_stage("label", examples, output, batch_size, partial(label_batch_fn, cfg, index_dir, retrieve),
                                         executor.make())
    stats = label_summary(records)
    show_stats(f"label: {output} ({cfg.scorer}, {cfg.rule.value}, threshold {cfg.threshold:.3g}, top_m {cfg.top_m})",
               stats, s_per_question=per_question)
    if stats["utility"]:
        show_stats("utility teacher: expert lists and cost per question", stats["utility"])


@stage_command("prepare")
@with_options(config=config_options(PrepareConfig), logs=VERBOSE)
def prepare_cmd(inputs: list[Path] = typer.Option(..., "--input", help="Labelled examples JSONL (the output of `dynamicrag label`); repeat to mix data sets"),
                out_dir: Path = typer.Option(..., "--out", help="Output folder: sft.jsonl, dpo_pool.jsonl, llamafactory/, prepare_stats.json"),
                *, config: dict, logs: None) -> None:
    """Split labelled examples into SFT and DPO pools; write SFT data for TRL and LLaMA-Factory."""
    from dynamicrag.train.export import prepare
    from dynamicrag.train.label import read_labelled

    with failing():
        stats = prepare([ex for path in inputs for ex in read_labelled(path)], out_dir, **PrepareConfig(**config).kwargs())
    show_stats(f"prepare: {out_dir}", stats)


@stage_command()
@with_options(inputs=EXAMPLES, config=config_options(SampleConfig, exclude=("passage_words",), flags={
    "rerank_max_new_tokens": "--reranker-max-tokens", "answer_max_new_tokens": "--max-new-tokens",
    "constrained": "--constrained/--free"}), method=pipeline_options("passage_words"), roles=ROLES, executor=EXECUTOR, logs=VERBOSE)
def sample(output: Path = OUTPUT, index_dir: Optional[str] = index_option(),
           batch_size: int = batch_size_option(4, "Questions per model batch (each asks for n lists)"),
           *, inputs: Any, config: dict, method: dict, roles: dict, executor: Any, logs: None) -> None:
    """Sample n id lists per question from the reranker and answer each greedily (DPO data)."""
    from dynamicrag.build import stage_settings
    from dynamicrag.train.sample import sample_batch_fn, sample_summary

    config_roles = resolve_pipeline(roles, **method)
    if config_roles.reranker.prompt_style != config_roles.generator.prompt_style:
        # The records name one style, from which the reward stage rebuilds both roles' prompts.
        fail(f"sample runs both roles with one prompt style; the reranker's is {config_roles.reranker.prompt_style!r}, "
             f"the generator's {config_roles.generator.prompt_style!r}: give --prompt-style")
    with failing():
        cfg = SampleConfig(**config, passage_words=config_roles.passage_words or None)
        examples = inputs()
    settings = partial(stage_settings, config_roles, executor.local, sample=cfg, index=index_dir,
                       run=executor.settings(batch_size))
    with failing(ValueError):
        _, records, per_question = run_stage("sample", examples, output, batch_size,
                                             partial(sample_batch_fn, config_roles, index_dir, cfg), executor.make(), settings)
    show_stats(f"sample: {output} (n {cfg.n}, temperature {cfg.temperature})", sample_summary(records),
               s_per_question=per_question)


@stage_command()
@with_options(config=config_options(RewardConfig, unset=True), executor=EXECUTOR, logs=VERBOSE)
def reward(
    input: Path = typer.Option(..., "--input", help="Sampled trajectories (the output of `dynamicrag sample`)"),
    output: Path = OUTPUT,
    config_file: Optional[Path] = typer.Option(None, "--config", help="Reward config (.yaml/.toml) of these fields; options given here win"),
    judge_backend: Optional[str] = typer.Option(None, "--judge-backend", help="LLM judge backend (transformers | openai | vllm | llamacpp); none: no judge part"),
    judge_model: Optional[str] = typer.Option(None, "--judge-model", help="Judge model (HF id, path, or the server's model name)"),
    judge_base_url: Optional[str] = typer.Option(None, "--judge-base-url", help="OpenAI-compatible judge server"),
    batch_size: int = batch_size_option(32, "Records per scoring batch and write"),
    *, config: dict, executor: Any, logs: None,
) -> None:
    """Score every sampled answer: exact match, semantic similarity, ROUGE-L, length of k, optional judge."""
    from dynamicrag.build import backend_spec
    from dynamicrag.data import read_jsonl
    from dynamicrag.train.common import read_config_file
    from dynamicrag.train.reward import reward_batch_fn, reward_summary

    with failing():
        cfg = read_config_file(RewardConfig, config_file, config, "reward") if config_file else RewardConfig(**config)
        records = [r for _, r in read_jsonl(input)]
        judge = backend_spec("judge", judge_backend, judge_model, judge_base_url) if judge_backend not in (None, "none") else None
        if judge:
            announce_dtypes({"judge": judge})
    try:
        ran, scored, _ = run_stage("reward", records, output, batch_size, partial(reward_batch_fn, cfg, judge), executor.make())
    except ValueError as err:  # a record without what the reward needs; from a Ray worker, .cause
        fail(f"{input}: {getattr(err, 'cause', err)}")
    show_stats(f"reward: {output} ({ran} records scored in this run)", reward_summary(scored))


@stage_command()
@with_options(logs=VERBOSE)
def pairs(input: Path = typer.Option(..., "--input", help="Rewarded trajectories (the output of `dynamicrag reward`)"),
          out_dir: Path = typer.Option(..., "--out", help="Output folder: dpo.jsonl (TRL), llamafactory/, pairs_stats.json"),
          keep_ties: bool = typer.Option(False, "--keep-ties", help="Also build generator pairs for questions whose samples all scored the same"),
          reward_config: Optional[Path] = typer.Option(None, "--reward-config", help="Recompute every total from the stored parts with these weights first (reward's config file; no model runs)"),
          *, logs: None) -> None:
    """Build DPO preference pairs: best vs worst id list, gold vs wrong answer."""
    from dynamicrag.data import read_jsonl
    from dynamicrag.train.common import read_config_file
    from dynamicrag.train.pairs import export_pairs
    from dynamicrag.train.reward import reweight_samples

    with failing():
        records = [r for _, r in read_jsonl(input)]
        if reward_config:
            records = reweight_samples(records, read_config_file(RewardConfig, reward_config, {}, "reward"))
        stats = export_pairs(records, out_dir, skip_ties=not keep_ties)
    show_stats(f"pairs: {out_dir}", stats)


TRAIN = dict(overrides=config_options(RunConfig, only=("train_file", "output_dir", "model", "max_steps"), unset=True),
             logs=TRAINING_LOGS)


def trainer_command(stage: str, what: str, summary: str) -> None:
    """``dynamicrag train sft`` / ``dpo``: the stage's config file, then the options given, then training."""

    @train_app.command(stage, help=f"{summary}; writes <output_dir>/adapter and/or merged.")
    @with_options(**TRAIN)
    def command(config: Path = typer.Option(..., "--config", help=f"{what} config (.yaml or .toml), e.g. "
                                            f"src/dynamicrag/train/configs/{stage}_smollm2_lora.yaml"),
                *, overrides: dict, logs: None) -> None:
        module = importlib.import_module(f"dynamicrag.train.{stage}")
        start = time.perf_counter()
        with failing():
            merged = getattr(module, f"train_{stage}")(getattr(module, f"load_{stage}_config")(config, **overrides))
        elapsed = time.perf_counter() - start
        if merged.name == "adapter":
            console.print(f"adapter written to {merged} in {elapsed:.0f} s")
        else:
            console.print(f"merged model written to {merged} in {elapsed:.0f} s; use it with --model {merged}")


trainer_command("sft", "SFT", "Supervised fine-tuning (behaviour cloning + generator SFT)")
trainer_command("dpo", "DPO", "DPO from generator feedback (preference pairs)")


@train_app.command("recipe")
@with_options(logs=TRAINING_LOGS)
def train_recipe_command(
    config: Path = typer.Option(..., "--config", help="Recipe config (.yaml or .toml), e.g. src/dynamicrag/train/configs/recipe_smollm2.yaml"),
    out: Path = typer.Option(..., "--out", help="Run folder: every stage's output, stages.json (wall times), adapter/ (with manifest.json)"),
    data: Optional[Path] = typer.Option(None, "--data", help="The shared data folder (overrides the config's data)"),
    stop_after: Optional[str] = typer.Option(None, "--stop-after", help="Last stage to run: index | label | prepare | sft | sample | reward | pairs | dpo | calibrate | eval | adapter"),
    *, logs: None,
) -> None:
    """The whole recipe of the shipped adapter: label -> prepare -> SFT -> sample -> reward -> pairs -> DPO -> calibrate -> eval.

    Resumable: a complete stage is skipped, a partial one resumes (trainers from their last checkpoint).
    """
    from dynamicrag.train.recipe import load_recipe_config, run_recipe

    command = shlex.join(["dynamicrag", "train", "recipe", "--config", str(config), "--out", str(out), *(["--data", str(data)] if data else [])])
    with failing():
        adapter = run_recipe(load_recipe_config(config, data=data and str(data)), out, command=command, stop_after=stop_after)
    stages = json.loads((out / "stages.json").read_text("utf-8"))
    show_table(f"recipe: {out}", [{"stage": name, "state": e["state"], "runs": e["runs"], "wall_minutes": e["seconds"] / 60}
                                  for name, e in stages.items()])
    if adapter is not None:
        console.print(f"adapter written to {adapter} (manifest: {adapter / 'manifest.json'})")


@train_app.command("calibrate-stop")
@with_options(logs=TRAINING_LOGS)
def calibrate_stop_command(
    adapter: Path = typer.Option(..., "--adapter", help="Reranker adapter folder (peft's, with or without manifest.json)"),
    sft: Path = typer.Option(..., "--sft", help="The prompts it was trained on: a recipe's prepare/sft.jsonl (reranker records)"),
    model: Optional[str] = typer.Option(None, "--model", help="Base model (default: the manifest's, else the bundled one)"),
    output: Optional[Path] = typer.Option(None, "--json", help="Also write the calibration here"),
    *, logs: None,
) -> None:
    """Set a reranker adapter's continue bias on its training prompts; stored in its manifest.

    The largest bias under which every training prompt whose target stops after one id still
    stops (dynamicrag.train.calibrate); inference then uses it by default (--continue-bias overrides).
    """
    from dynamicrag.data import atomic_write_json
    from dynamicrag.llm import load_backend
    from dynamicrag.llm.adapters import MANIFEST, read_manifest, write_manifest
    from dynamicrag.train.calibrate import calibrate_continue_bias, sft_reranker_prompts

    with failing():
        manifest = read_manifest(adapter) if (adapter / MANIFEST).exists() else None
        chats, targets = sft_reranker_prompts(sft)
        backend = load_backend("transformers", model or (manifest.base_model if manifest else None),
                               adapter=str(adapter.resolve()))
        calibration = calibrate_continue_bias(backend, chats, targets)
    show_table(f"calibrate-stop: {adapter}", [calibration.to_dict()])
    if output:
        atomic_write_json(output, {"adapter": str(adapter), "sft": str(sft), **calibration.to_dict()})
    if manifest is not None:
        write_manifest(adapter, manifest.model_copy(update={
            "continue_bias": calibration.continue_bias,
            "training": {**manifest.training, "calibrate": calibration.to_dict()}}))
        console.print(f"continue bias {calibration.continue_bias:+.2f} written to {adapter / MANIFEST}")
    else:
        console.print(f"continue bias {calibration.continue_bias:+.2f} ({adapter} has no {MANIFEST}: pass "
                      f"--continue-bias {calibration.continue_bias} to use it)")
