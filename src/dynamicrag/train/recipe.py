"""The whole training recipe of the shipped reranker adapter, as one resumable command.

``dynamicrag train recipe --config recipe.yaml --out runs/recipe`` runs, in order::

    index    BM25 over the NQ corpus (nq-open-oracle gold passages + flashrag_wiki_sample)
    label    NQ training questions (BM25 top-N) and HotpotQA training questions (own paragraphs)
    prepare  expert trajectories; the SFT pool and the DPO pool
    sft      LoRA behaviour cloning of the trained roles
    sample   n id lists per DPO-pool question from the SFT model, each answered by the generator
    reward   the reward of every sampled answer
    pairs    DPO preference pairs (with ties and the share of `None` chosen lists)
    dpo      DPO continuing the SFT adapter, the SFT model as reference
    calibrate  the reranker's continue bias, set on its SFT prompts (dynamicrag.train.calibrate)
    eval     the trained reranker and fixed-k rows on the held-apart questions
    adapter  the final adapter with its manifest (base model, role, prompt settings, slices,
             the recipe command, the evaluation)

Every stage is skipped when its output is complete; a partial one resumes (the JSONL stages
from their last written record, the trainers from their last checkpoint). ``stages.json``
logs the wall time of every stage, summed over the runs that worked on it. The config is
stored in the output folder on the first run, and a later run with another config is
refused (a stage would otherwise mix outputs of two settings): use a new ``--out``.

Questions: training slices come from NQ 200-2654 and HotpotQA 0-69; NQ 0-199 and HotpotQA
70-99 are held apart for evaluation (:data:`HELD_APART`), and a config whose training slices
overlap them is refused. The reranker prompt's per-passage word cap (``passage_words``) is the
same in prepare, sample and evaluation, and goes into the manifest so that inference uses it;
so does the candidate order (``order_by``: the label stage orders each question's candidates,
and every later stage reads them in that order).

Example:
    >>> config = load_recipe_config("src/dynamicrag/train/configs/recipe_smollm2.yaml")  # doctest: +SKIP
    >>> adapter = run_recipe(config, Path("runs/recipe"))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

from dynamicrag.data import atomic_write_json, load_examples, read_jsonl
from dynamicrag.schema import Example

logger = logging.getLogger(__name__)

STAGES = ("index", "label", "prepare", "sft", "sample", "reward", "pairs", "dpo", "calibrate", "eval", "adapter")
"""The recipe's stages, in order."""

HELD_APART: dict[str, tuple[int, int]] = {"nq": (0, 200), "hotpotqa": (70, 100)}
"""Question slices [start, end) never trained on: the evaluation's questions."""

# Fields of the stage configs that the recipe sets itself (a config may not set them).
_RECIPE_OWNED = {
    "label": {"scorer", "top_n", "prompt_style", "order_by"},
    "sft": {"train_file", "output_dir", "model", "max_steps", "roles", "save"},
    "dpo": {"train_file", "output_dir", "model", "adapter", "max_steps", "roles", "save"},
    "reward": set(),
}


@dataclass
class RecipeConfig:
    """What the recipe trains on, how much, and with which settings (sizes are config fields)."""

    data: str = field(default="../shared/data", metadata={"help": "The shared data folder (--data overrides)."})
    nq_file: str = field(default="nq/nq-open-oracle.jsonl.gz", metadata={"help": "NQ questions, relative to data."})
    nq_corpus: list[str] = field(
        default_factory=lambda: ["nq/nq-open-oracle.jsonl.gz", "nq/flashrag_wiki_sample.jsonl"],
        metadata={"help": "Files of the NQ retrieval corpus (BM25), relative to data."},
    )
    hotpot_file: str = field(default="hotpotqa/hotpotqa_train.json", metadata={"help": "HotpotQA questions."})
    model: str | None = field(default=None, metadata={"help": "Base model; null = the bundled SmolLM2-135M-Instruct."})
    prompt_style: str = field(default="default", metadata={"help": "Prompt style of training and inference."})
    top_n: int = field(default=10, metadata={"help": "Candidates per question (BM25 top-N for NQ)."})
    passage_words: int | None = field(
        default=None, metadata={"help": "Words shown per passage in the reranker prompt (null: all); same at inference."}
    )
    order_by: str | None = field(
        default=None,
        metadata={"help": "Scorer that orders each question's candidates before the reranker reads them (e.g. "
                  "query-likelihood), in labelling and every later stage; stored in the manifest, so inference "
                  "uses it too (null: retrieval order)."},
    )
    nq_slice: list[int] = field(default_factory=lambda: [200, 2655], metadata={"help": "NQ training slice [start, end)."})
    hotpot_slice: list[int] = field(default_factory=lambda: [0, 70], metadata={"help": "HotpotQA training slice."})
    label_nq: int = field(default=300, metadata={"help": "NQ training questions labelled: the first of nq_slice."})
    label_hotpot: int = field(default=70, metadata={"help": "HotpotQA training questions labelled."})
    teacher: str = field(default="utility", metadata={"help": "Label teacher (label --scorer)."})
    label: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "Other LabelConfig fields (rule, threshold, top_m, tie_margin, ...)."}
    )
    max_k: int = field(default=5, metadata={"help": "Most ids in a reranker target (prepare --max-k)."})
    oversample_not_top1: int = field(
        default=1, metadata={"help": "Copies of each SFT reranker target other than [1] (prepare --oversample-not-top1)."}
    )
    dpo_pool: int = field(default=100, metadata={"help": "Labelled questions kept for sampling and DPO (the rest: SFT)."})
    roles: list[str] = field(
        default_factory=lambda: ["reranker"],
        metadata={"help": "Roles trained: [reranker] | [generator] | [reranker, generator] (the paper's mix)."},
    )
    sft_steps: int = field(default=24, metadata={"help": "SFT optimizer steps."})
    sft: dict[str, Any] = field(default_factory=dict, metadata={"help": "Other SFTRunConfig fields (lora_r, lr, ...)."})
    sample_n: int = field(default=8, metadata={"help": "Id lists sampled per DPO-pool question."})
    sample_temperature: float = field(default=0.4, metadata={"help": "Sampling temperature of the id lists."})
    sample_constrained: bool = field(
        default=False,
        metadata={"help": "Sample the id lists under the id grammar (every list well-formed; the original: free)."},
    )
    answer_tokens: int | None = field(
        default=None,
        metadata={"help": "Cap on every generated answer (sample and eval); null: each task's default decoding "
                  "(dynamicrag.generate.TASK_GENERATION), the same as infer and benchmark."},
    )
    reward: dict[str, Any] = field(default_factory=dict, metadata={"help": "RewardConfig fields (weights, ...)."})
    dpo_steps: int = field(default=15, metadata={"help": "DPO optimizer steps; 0: no DPO (the SFT adapter ships)."})
    dpo: dict[str, Any] = field(default_factory=dict, metadata={"help": "Other DPORunConfig fields (beta, lr, ...)."})
    calibrate_stop: bool = field(
        default=True,
        metadata={"help": "Set the reranker's continue bias on its SFT prompts (dynamicrag.train.calibrate); used in "
                  "eval and stored in the manifest (false: 0, greedy as trained)."},
    )
    eval_nq: int = field(default=200, metadata={"help": "Held-apart NQ questions evaluated (of NQ 0-199)."})
    eval_hotpot: int = field(default=30, metadata={"help": "Held-apart HotpotQA questions evaluated (of 70-99)."})
    eval_fixed_k: list[int] = field(
        default_factory=lambda: [1], metadata={"help": "Fixed top-k rows evaluated beside the trained reranker."}
    )
    adapter_name: str = field(default="smollm2-135m-reranker", metadata={"help": "Name in the manifest."})
    seed: int = field(default=0, metadata={"help": "Seed of the SFT/DPO split and of sampling."})

    def __post_init__(self) -> None:
        from dynamicrag.train.common import TRAINED_ROLES

        for name in ("top_n", "label_nq", "max_k", "oversample_not_top1", "sample_n", "answer_tokens", "sft_steps"):
            value = getattr(self, name)
            if name == "answer_tokens" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("label_hotpot", "dpo_pool", "dpo_steps", "eval_nq", "eval_hotpot"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0, got {value!r}")
        if self.passage_words is not None and (not isinstance(self.passage_words, int) or self.passage_words < 1):
            raise ValueError(f"passage_words: a positive integer or null, got {self.passage_words!r}")
        if not self.roles or any(r not in TRAINED_ROLES for r in self.roles):
            raise ValueError(f"roles: a non-empty list of {list(TRAINED_ROLES)}, got {self.roles!r}")
        if any(not isinstance(k, int) or k < 1 for k in self.eval_fixed_k):
            raise ValueError(f"eval_fixed_k: positive integers, got {self.eval_fixed_k!r}")
        check_slices(self)
        if self.dpo_steps and not 0 < self.dpo_pool < self.label_nq + self.label_hotpot:
            raise ValueError(f"dpo_pool: must leave questions for SFT and be > 0 when dpo_steps > 0, got {self.dpo_pool}")
        self._check_stage_fields()

    def _check_stage_fields(self) -> None:
        """Build every stage's config once, so a bad field fails now, not hours into the run."""
        from dynamicrag.train.dpo import DPORunConfig
        from dynamicrag.train.label import LabelConfig
        from dynamicrag.train.reward import RewardConfig
        from dynamicrag.train.sft import SFTRunConfig

        for name, cls in (("label", LabelConfig), ("sft", SFTRunConfig), ("dpo", DPORunConfig), ("reward", RewardConfig)):
            values = getattr(self, name)
            if not isinstance(values, dict):
                raise ValueError(f"{name}: a mapping of {cls.__name__} fields, got {type(values).__name__}")
            owned = sorted(_RECIPE_OWNED[name] & set(values))
            if owned:
                raise ValueError(f"{name}: {owned} are set by the recipe (use its top-level fields)")
            known = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(values) - known)
            if unknown:
                raise ValueError(f"{name}: unknown field(s) {unknown} of {cls.__name__}")
        try:
            self.label_config()
            self.sft_config(Path("."))
            self.dpo_config(Path("."), adapter=None)
            RewardConfig(**self.reward)
        except (TypeError, ValueError) as err:
            raise ValueError(f"a stage config is invalid: {err}") from None

    def label_config(self) -> Any:
        from dynamicrag.train.label import LabelConfig

        return LabelConfig(scorer=self.teacher, top_n=self.top_n, prompt_style=self.prompt_style,
                           order_by=self.order_scorer(), **self.label)

    def order_scorer(self) -> str | None:
        """``order_by`` for the stages: query likelihood on this recipe's base model (the
        manifest keeps the bare name, which inference runs on the reranker role's base)."""
        if self.order_by == "query-likelihood" and self.model:
            return f"query-likelihood:{self.model}"
        return self.order_by

    def sft_config(self, out: Path) -> Any:
        from dynamicrag.train.sft import SFTRunConfig

        return SFTRunConfig(
            train_file=str(out / "prepare" / "sft.jsonl"), output_dir=str(out / "sft"), model=self.model,
            max_steps=self.sft_steps, roles=list(self.roles), save="both", **self.sft,
        )

    def dpo_config(self, out: Path, adapter: str | None) -> Any:
        from dynamicrag.train.dpo import DPORunConfig

        return DPORunConfig(
            train_file=str(out / "pairs" / "dpo.jsonl"), output_dir=str(out / "dpo"), model=self.model,
            adapter=adapter, max_steps=max(self.dpo_steps, 1), roles=list(self.roles), save="both", **self.dpo,
        )


def _field_defaults() -> dict[str, Any]:
    """Each RecipeConfig field's default value."""
    return {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            for f in dataclasses.fields(RecipeConfig)}


def check_slices(config: RecipeConfig) -> None:
    """Refuse training slices that overlap the held-apart ones, or that the sizes overrun.

    Raises:
        ValueError: Naming the field.
    """
    for name, data, want in (("nq_slice", "nq", config.label_nq), ("hotpot_slice", "hotpotqa", config.label_hotpot)):
        span = getattr(config, name)
        if not (isinstance(span, list) and len(span) == 2 and all(isinstance(v, int) for v in span)
                and 0 <= span[0] < span[1]):
            raise ValueError(f"{name}: [start, end) with 0 <= start < end, got {span!r}")
        lo, hi = HELD_APART[data]
        if span[0] < hi and lo < span[1]:
            raise ValueError(
                f"{name}: {span} overlaps the held-apart {data} questions [{lo}, {hi}); training slices must "
                f"leave them out (NQ 0-199 and HotpotQA 70-99 are the evaluation's)"
            )
        if want > span[1] - span[0]:
            raise ValueError(f"{name}: {span} holds {span[1] - span[0]} questions, fewer than the {want} asked for")
    for name, data in (("eval_nq", "nq"), ("eval_hotpot", "hotpotqa")):
        lo, hi = HELD_APART[data]
        if getattr(config, name) > hi - lo:
            raise ValueError(f"{name}: at most {hi - lo} held-apart {data} questions, got {getattr(config, name)}")


def load_recipe_config(path: str | Path, **overrides: Any) -> RecipeConfig:
    """Read a :class:`RecipeConfig` from YAML or TOML (errors name the file and the field)."""
    from dynamicrag.train.common import read_config_file

    return read_config_file(RecipeConfig, path, overrides, what="recipe")


# ---------------------------------------------------------------- bookkeeping


class StageLog:
    """``stages.json``: per stage, the wall seconds summed over runs, the runs, and the state."""

    def __init__(self, out: Path) -> None:
        self.path = out / "stages.json"
        self.stages: dict[str, dict[str, Any]] = json.loads(self.path.read_text("utf-8")) if self.path.exists() else {}

    def run(self, name: str, done: Callable[[], bool], work: Callable[[], Any]) -> bool:
        """Run ``work`` unless ``done()``; time it; returns whether it ran."""
        entry = self.stages.setdefault(name, {"seconds": 0.0, "runs": 0, "state": "pending"})
        if done():
            logger.info("[%s] complete, skipped", name)
            entry["state"] = entry["state"] if entry["state"] == "skipped" else "done"
            self._write()
            return False
        logger.info("[%s] running", name)
        start = time.perf_counter()
        entry["state"] = "running"
        try:
            state = work()
        finally:
            entry["seconds"] += time.perf_counter() - start
            entry["runs"] += 1
            self._write()
        entry["state"] = state if isinstance(state, str) else "done"
        self._write()
        return True

    def _write(self) -> None:
        atomic_write_json(self.path, self.stages)


def _count(path: Path) -> int:
    return sum(1 for _ in read_jsonl(path)) if path.exists() else 0


def _write_resumable(path: Path, items: Sequence[Any], batch_size: int, fn: Callable[[list], list[dict]]) -> None:
    """Write ``fn(batch)`` records for the items not yet in ``path``, through the one resumable
    runner of every stage (:func:`~dynamicrag.executors.run_resumable`: the records already
    written must be those of the first items)."""
    from dynamicrag.executors import run_resumable

    run_resumable(items, path, batch_size, lambda: fn)


# ---------------------------------------------------------------- the recipe


class Recipe:
    """One run of the recipe into ``out`` (see the module docstring)."""

    def __init__(self, config: RecipeConfig, out: Path, command: str = "") -> None:
        self.config, self.out, self.command = config, Path(out), command
        self.data = Path(config.data)
        self.out.mkdir(parents=True, exist_ok=True)
        self._check_same_config()
        self.log = StageLog(self.out)

    def _check_same_config(self) -> None:
        path = self.out / "recipe_config.json"
        mine = dataclasses.asdict(self.config)
        if path.exists():
            stored = json.loads(path.read_text("utf-8"))
            # Where the data lives is not a setting of the run (a relative or absolute path); a
            # field added since the run was stored counts as unchanged while it keeps its default.
            defaults = _field_defaults()
            changed = sorted(k for k in (set(stored) | set(mine)) - {"data"}
                             if stored.get(k, defaults.get(k)) != mine.get(k))
            if changed:
                raise ValueError(
                    f"{self.out} holds a recipe run with another config (fields {changed} differ); "
                    "use a new --out, or delete the stages that must be redone"
                )
        else:
            atomic_write_json(path, mine)

    # -- paths
    @property
    def index_dir(self) -> Path:
        return self.out / "index"

    @property
    def calibration_path(self) -> Path:
        """The calibrate stage's output: the continue bias and what it does on the SFT prompts."""
        return self.out / "calibrate" / "stop.json"

    def label_path(self, data: str) -> Path:
        return self.out / "label" / f"{data}.jsonl"

    # -- data
    def train_questions(self) -> dict[str, list[Example]]:
        c = self.config
        nq = load_examples(self.data / c.nq_file, task="nq", skip=c.nq_slice[0], limit=c.label_nq)
        hotpot = (load_examples(self.data / c.hotpot_file, task="hotpotqa", skip=c.hotpot_slice[0], limit=c.label_hotpot)
                  if c.label_hotpot else [])
        return {"nq": nq, "hotpotqa": hotpot}

    def retriever(self) -> Any:
        from dynamicrag.retrieve import load_index

        return load_index(self.index_dir)

    def base_backend(self) -> Any:
        from dynamicrag.llm import load_backend

        return load_backend("transformers", self.config.model)

    def trained_adapter(self) -> Path:
        """The adapter of the last training stage (DPO when it ran, else SFT)."""
        dpo = self.out / "dpo" / "adapter"
        return dpo if (dpo / "adapter_config.json").exists() else self.out / "sft" / "adapter"

    def role_backend(self, role: str, adapter: Path) -> Any:
        """The backend playing ``role``: the base model with ``adapter`` on when the role was
        trained, else the base model alone (one base in memory either way, as at inference)."""
        from dynamicrag.llm import load_backend

        if role not in self.config.roles:
            return self.base_backend()
        return load_backend("transformers", self.config.model, adapter=str(adapter.resolve()))

    # -- stages
    def run(self, stop_after: str | None = None) -> Path | None:
        """Run every stage not yet complete, up to ``stop_after``; returns the adapter folder
        (None when stopped before it)."""
        if stop_after is not None and stop_after not in STAGES:
            raise ValueError(f"stop_after: one of {list(STAGES)}, got {stop_after!r}")
        for stage in STAGES:
            getattr(self, f"stage_{stage}")()
            if stage == stop_after:
                return None
        return self.out / "adapter"

    def stage_index(self) -> None:
        from dynamicrag.data import load_corpus
        from dynamicrag.retrieve import build_index

        def work() -> None:
            passages = [p for f in self.config.nq_corpus for p in load_corpus(self.data / f)]
            build_index(passages, self.index_dir, kind="bm25", show_progress=False)

        self.log.run("index", lambda: (self.index_dir / "meta.json").exists(), work)

    def stage_label(self) -> None:
        from dynamicrag.executors import run_resumable
        from dynamicrag.train.label import label_batch_fn

        questions = self.train_questions()
        done = lambda: all(_count(self.label_path(d)) == len(q) for d, q in questions.items())  # noqa: E731

        def work() -> None:
            config = self.config.label_config()
            for data, examples in questions.items():
                retrieve = data == "nq"  # NQ: BM25 over the corpus; HotpotQA: its own paragraphs
                index = str(self.index_dir) if retrieve else None
                run_resumable(examples, self.label_path(data), 8, partial(label_batch_fn, config, index, retrieve))

        self.log.run("label", done, work)

    def stage_prepare(self) -> None:
        from dynamicrag.train.export import prepare
        from dynamicrag.train.label import read_labelled

        c = self.config
        stats = self.out / "prepare" / "prepare_stats.json"

        def work() -> None:
            examples = [ex for d in ("nq", "hotpotqa") if self.label_path(d).exists()
                        for ex in read_labelled(self.label_path(d))]
            n = len(examples)
            prepare(examples, self.out / "prepare", style=c.prompt_style, max_k=c.max_k,
                    sft_fraction=(n - c.dpo_pool) / n, seed=c.seed, passage_words=c.passage_words,
                    oversample_not_top1=c.oversample_not_top1)

        self.log.run("prepare", stats.exists, work)

    def stage_sft(self) -> None:
        from dynamicrag.train.sft import train_sft

        config = self.config.sft_config(self.out)
        done = lambda: (config.adapter_dir / "adapter_config.json").exists() and (config.merged_dir / "config.json").exists()  # noqa: E731
        self.log.run("sft", done, lambda: train_sft(config))

    def _pool(self) -> list[Example]:
        return load_examples(self.out / "prepare" / "dpo_pool.jsonl")

    def stage_sample(self) -> None:
        from dynamicrag.train.sample import SampleConfig, sample_trajectories

        c = self.config
        path = self.out / "samples.jsonl"
        if not c.dpo_steps:
            self.log.run("sample", lambda: True, lambda: None)
            return
        pool = self._pool()

        def work() -> None:
            # Each role is played by the model that will play it at inference: a reranker-only
            # adapter's lists are judged by the base generator's answers, and so on.
            adapter = self.out / "sft" / "adapter"
            reranker, generator = self.role_backend("reranker", adapter), self.role_backend("generator", adapter)
            config = SampleConfig(n=c.sample_n, temperature=c.sample_temperature, top_n=c.top_n,
                                  constrained=c.sample_constrained,
                                  answer_max_new_tokens=c.answer_tokens, passage_words=c.passage_words, seed=c.seed)
            _write_resumable(path, pool, 4,
                             lambda batch: sample_trajectories(batch, reranker, c.prompt_style, config,
                                                                 generator_backend=generator))

        self.log.run("sample", lambda: _count(path) == len(pool), work)

    def stage_reward(self) -> None:
        from dynamicrag.train.reward import RewardConfig, make_semantic_scorer, score_samples

        source, path = self.out / "samples.jsonl", self.out / "rewarded.jsonl"
        if not self.config.dpo_steps:
            self.log.run("reward", lambda: True, lambda: None)
            return

        def work() -> None:
            config = RewardConfig(**self.config.reward)
            scorer = make_semantic_scorer(config.semantic, config.semantic_batch_size)
            records = [r for _, r in read_jsonl(source)]
            _write_resumable(path, records, 32, lambda batch: score_samples(batch, config, semantic_scorer=scorer))

        self.log.run("reward", lambda: path.exists() and _count(path) == _count(source), work)

    def stage_pairs(self) -> None:
        from dynamicrag.train.pairs import export_pairs

        stats = self.out / "pairs" / "pairs_stats.json"
        if not self.config.dpo_steps:
            self.log.run("pairs", lambda: True, lambda: None)
            return
        self.log.run("pairs", stats.exists, lambda: export_pairs(
            [r for _, r in read_jsonl(self.out / "rewarded.jsonl")], self.out / "pairs"))

    def _pairs_of_roles(self) -> int:
        path = self.out / "pairs" / "dpo.jsonl"
        return sum(r.get("role") in self.config.roles for _, r in read_jsonl(path)) if path.exists() else 0

    def stage_dpo(self) -> None:
        from dynamicrag.train.dpo import train_dpo

        config = self.config.dpo_config(self.out, adapter=str(self.out / "sft" / "adapter"))
        done = lambda: (not self.config.dpo_steps  # noqa: E731
                        or self.log.stages.get("dpo", {}).get("state") == "skipped"
                        or ((config.adapter_dir / "adapter_config.json").exists()
                            and (config.merged_dir / "config.json").exists()))

        def work() -> str | None:
            if not self._pairs_of_roles():
                logger.warning("dpo: no preference pairs of roles %s; the SFT adapter ships", self.config.roles)
                return "skipped"
            train_dpo(config)
            return None

        self.log.run("dpo", done, work)

    def stage_calibrate(self) -> None:
        path = self.calibration_path

        def work() -> str | None:
            from dynamicrag.train.calibrate import calibrate_continue_bias, sft_reranker_prompts

            if not self.config.calibrate_stop or "reranker" not in self.config.roles:
                return "skipped"
            adapter = self.trained_adapter()
            chats, targets = sft_reranker_prompts(self.out / "prepare" / "sft.jsonl")
            if not any(len(t) == 1 for t in targets):
                logger.warning("calibrate: no reranker target stops after one id; the continue bias stays 0")
                return "skipped"
            calibration = calibrate_continue_bias(self.role_backend("reranker", adapter), chats, targets)
            atomic_write_json(path, {"adapter": str(adapter), **calibration.to_dict()})
            # The evaluation and the manifest use the bias: written before, they are stale.
            shutil.rmtree(self.out / "eval", ignore_errors=True)
            shutil.rmtree(self.out / "adapter", ignore_errors=True)
            return None

        self.log.run("calibrate", lambda: path.exists() or self.log.stages.get("calibrate", {}).get("state") == "skipped",
                     work)

    def continue_bias(self) -> float:
        """The calibrated continue bias (0 when the calibrate stage was skipped)."""
        path = self.calibration_path
        return json.loads(path.read_text("utf-8"))["continue_bias"] if path.exists() else 0.0

    def stage_eval(self) -> None:
        path = self.out / "eval" / "results.json"

        def work() -> None:
            atomic_write_json(path, self.evaluate())
            # The manifest carries the evaluation: an adapter folder written before is stale.
            shutil.rmtree(self.out / "adapter", ignore_errors=True)

        self.log.run("eval", path.exists, work)

    def evaluate(self) -> dict[str, Any]:
        """The trained reranker (free decoding) and the fixed-k rows on the held-apart questions.

        Returns:
            Per benchmark and row: n, match, mean k, None share, well-formed share,
            selection F1 (against the gold passage / supporting paragraphs) and failed records.
        """
        from dynamicrag.evaluate.report import evaluate_records
        from dynamicrag.generate import Generator
        from dynamicrag.pipeline import Pipeline
        from dynamicrag.prompts import load_style
        from dynamicrag.rerank import make_reranker

        c = self.config
        style = load_style(c.prompt_style)
        adapter = self.trained_adapter()
        generator = Generator(self.role_backend("generator", adapter), style, max_new_tokens=c.answer_tokens)
        reranker = self.role_backend("reranker", adapter)
        rows = {"dynamic": make_reranker("dynamic", reranker, style, passage_words=c.passage_words, order_by=c.order_scorer(),
                                         continue_bias=self.continue_bias())}
        rows.update({f"top-{k}": make_reranker("topk", reranker, style, k=k) for k in c.eval_fixed_k})
        benches = {
            "nq": (load_examples(self.data / c.nq_file, task="nq", skip=HELD_APART["nq"][0], limit=c.eval_nq),
                   self.retriever()),
            "hotpotqa": (load_examples(self.data / c.hotpot_file, task="hotpotqa", skip=HELD_APART["hotpotqa"][0],
                                       limit=c.eval_hotpot), None),
        }
        results: dict[str, Any] = {}
        for bench, (examples, retriever) in benches.items():
            if not examples:
                continue
            results[bench] = {}
            for name, reranker in rows.items():
                pipeline = Pipeline(reranker, generator, retriever, c.top_n, retrieve=retriever is not None)
                path = self.out / "eval" / "runs" / bench / f"{name}.jsonl"
                _write_resumable(path, examples, 8, pipeline.run)
                summary = evaluate_records([r for _, r in read_jsonl(path)])["groups"]["all"]
                results[bench][name] = {
                    "n": summary["n"],
                    "match": summary["answer"].get("match"),
                    "mean_k": summary["selection"]["mean_k"],
                    "none": summary["selection"]["none"],
                    "well_formed": 1 - summary["selection"]["malformed"],
                    "selection_f1": (summary["rerank"] or {}).get("f1"),
                    "failed": summary["failed"],
                }
        results["slices"] = {"nq": [HELD_APART["nq"][0], c.eval_nq], "hotpotqa": [HELD_APART["hotpotqa"][0],
                                                                                   HELD_APART["hotpotqa"][0] + c.eval_hotpot]}
        results["decoding"] = "free (greedy, no grammar)"
        return results

    def stage_adapter(self) -> None:
        target = self.out / "adapter"
        self.log.run("adapter", lambda: (target / "manifest.json").exists(), lambda: self.ship(target))

    def ship(self, target: Path) -> Path:
        """Copy the final adapter to ``target`` and write its manifest."""
        import dynamicrag
        from dynamicrag.llm.adapters import AdapterManifest, write_manifest
        from dynamicrag.llm.models import DEFAULT_MODEL

        c = self.config
        ran_dpo = (self.out / "dpo" / "adapter" / "adapter_config.json").exists()
        source = self.out / ("dpo" if ran_dpo else "sft") / "adapter"
        tmp = target.with_name(target.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(source, tmp, ignore=shutil.ignore_patterns("README.md"))
        read = lambda p: json.loads(p.read_text("utf-8")) if p.exists() else None  # noqa: E731
        calibration = read(self.calibration_path)
        manifest = AdapterManifest(
            name=c.adapter_name,
            base_model=c.model or DEFAULT_MODEL,
            role="both" if set(c.roles) == {"reranker", "generator"} else c.roles[0],
            prompt_style=c.prompt_style,
            passage_words=c.passage_words,
            top_n=c.top_n,
            constrained=False,
            order_by=c.order_by,
            continue_bias=calibration["continue_bias"] if calibration else 0.0,
            training={
                "command": self.command,
                "slices": {"nq": [c.nq_slice[0], c.nq_slice[0] + c.label_nq],
                           "hotpotqa": [c.hotpot_slice[0], c.hotpot_slice[0] + c.label_hotpot]},
                "held_apart": {k: list(v) for k, v in HELD_APART.items()},
                "teacher": c.teacher,
                "stages": "label -> prepare -> sft" + (" -> sample -> reward -> pairs -> dpo" if ran_dpo else "")
                          + (" -> calibrate" if calibration else ""),
                "config": dataclasses.asdict(c),
                "prepare": read(self.out / "prepare" / "prepare_stats.json"),
                "pairs": read(self.out / "pairs" / "pairs_stats.json"),
                "calibrate": calibration,
                "wall_seconds": {k: round(v["seconds"], 1) for k, v in self.log.stages.items()},
            },
            evaluation=read(self.out / "eval" / "results.json") or {},
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            dynamicrag_version=getattr(dynamicrag, "__version__", None),
        )
        write_manifest(tmp, manifest)
        shutil.rmtree(target, ignore_errors=True)
        tmp.rename(target)  # the folder appears complete or not at all
        logger.info("adapter written to %s", target)
        return target


def run_recipe(config: RecipeConfig, out: str | Path, *, command: str = "", stop_after: str | None = None) -> Path | None:
    """Run (or resume) the recipe into ``out``; see the module docstring.

    Args:
        config: The recipe.
        out: Output folder; a rerun skips complete stages and resumes a partial one.
        command: The command line, recorded in the manifest.
        stop_after: Last stage to run (None: all).

    Returns:
        ``out/adapter`` (adapter weights + ``manifest.json``), or None when stopped earlier.

    Raises:
        ValueError: ``out`` holds a run of another config, or a stage's input is unusable.
    """
    return Recipe(config, Path(out), command).run(stop_after)


__all__ = ["HELD_APART", "STAGES", "Recipe", "RecipeConfig", "check_slices", "load_recipe_config", "run_recipe"]
