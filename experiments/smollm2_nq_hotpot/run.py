"""DynamicRAG training of the bundled SmolLM2-135M on shared NQ + HotpotQA: base vs SFT vs SFT+DPO.

Every stage is a `dynamicrag` command and resumes after an interruption; a finished stage is
skipped on rerun, so the script can be run again until everything is done.

Behaviour cloning (issue 4):
  index     BM25 over the NQ corpus (gold passages + Wikipedia sample)
  label     NQ questions 1000-1299 (BM25 top-10, retrieved even though NQ-open ships its gold
            passage) and HotpotQA questions 0-69 (their own 10 paragraphs), MiniLM teacher
  prepare   expert trajectories; 70 % SFT pool, 30 % DPO pool
  sft       LoRA on reranker + generator records (sft.yaml)
DPO from generator feedback (issue 5):
  sample    8 id lists per DPO-pool question from the SFT model (temperature 0.4), one answer each
  reward    EM, MiniLM similarity, ROUGE-L, 1/(1+k) (no judge offline)
  pairs     best vs worst list per question; gold vs wrong answer
  dpo       LoRA DPO from the SFT model (dpo.yaml)
Evaluation on held-apart questions (eval.yaml: NQ 0-49 with BM25 top-10, HotpotQA 70-99), free
and grammar-constrained decoding, for each model.

The base model's held-apart questions are also questions of the shipped `dynamicrag benchmark`
(same harness, settings and prompts): with --base-from, the records that benchmark already wrote
for them seed the base evaluation, which then runs only what is missing.

Writes runs/smollm2_nq_hotpot/ (data, models, logs, timings.json) and results.md beside this
script. Usage, from the repository root:

    python experiments/smollm2_nq_hotpot/run.py --data ../shared/data [--base-from BENCH_OUT] [--stop-after sft]
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RUN = Path("runs/smollm2_nq_hotpot")
NQ = "nq/nq-open-oracle.jsonl.gz"
NQ_CORPUS = ["nq/nq-open-oracle.jsonl.gz", "nq/flashrag_wiki_sample.jsonl"]
HOTPOT = "hotpotqa/hotpotqa_train.json"
MODELS = ("base", "sft", "sft+dpo")


class Stages:
    """Runs `dynamicrag` commands once each, recording their command lines and wall times."""

    def __init__(self) -> None:
        self.timings_path = RUN / "timings.json"
        self.timings = json.loads(self.timings_path.read_text()) if self.timings_path.exists() else {}
        self.commands: list[str] = []

    def run(self, name: str, args: list[str], done: Path | None) -> None:
        """Run the command unless ``done`` exists (None: always run; the command resumes by itself)."""
        command = ["dynamicrag", *map(str, args)]
        self.commands.append(shlex.join(command))
        if done is not None and done.exists():
            print(f"[{name}] done already ({done})")
            return
        print(f"[{name}] {shlex.join(command)}", flush=True)
        start = time.perf_counter()
        subprocess.run(command, check=True)
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - start
        self.timings_path.write_text(json.dumps(self.timings, indent=2))


def seed_base_eval(bench_out: Path, eval_out: Path, data: Path) -> None:
    """Copy the base model's records of the held-apart questions from a `dynamicrag benchmark` output.

    For each (benchmark, reranker) of eval.yaml, the longest prefix of held-apart questions that
    the benchmark has already answered is written as the start of the base run, which the
    benchmark harness then resumes. Runs that already exist are left alone.
    """
    from dynamicrag.data import load_examples, read_jsonl
    from dynamicrag.evaluate.benchmark import load_config

    config = load_config(HERE / "eval.yaml")
    for bench in config.benchmarks:
        wanted = [ex.id for ex in load_examples(data / bench.file, task=bench.task, limit=bench.limit, skip=bench.skip)]
        for spec in config.rerankers:
            source = bench_out / "runs" / bench.name / f"{spec.name}.jsonl"
            target = eval_out / "runs" / bench.name / f"{spec.name}.jsonl"
            if target.exists() or not source.exists():
                continue
            by_id = {r["id"]: r for _, r in read_jsonl(source)}
            prefix = list(itertools.takewhile(lambda i: i in by_id, wanted))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("".join(json.dumps(by_id[i], ensure_ascii=False) + "\n" for i in prefix), "utf-8")
            print(f"[eval base] {len(prefix)} of {len(wanted)} records of {bench.name}/{spec.name} from {source}")


def mean_reward(records: Path, scorer) -> float:
    """Mean training reward (default RewardConfig, no judge) of an evaluation's records.

    The same function DPO optimised, applied to the held-apart answers: k is the number of
    passages selected; a failed record (no answer) scores 0.
    """
    from dynamicrag.data.files import read_jsonl  # noqa: PLC0415 (only the report needs the package)
    from dynamicrag.train.reward import reward_parts  # noqa: PLC0415

    totals = [
        reward_parts(r.get("answer"), r["answers"], len(r.get("selected") or []), semantic_scorer=scorer)["total"]
        for _, r in read_jsonl(records)
    ]
    return sum(totals) / len(totals) if totals else float("nan")


def row(name: str, run: dict, reward: float) -> str:
    """One line of the comparison table from a run's evaluation."""
    group = next(iter(run["groups"].values()))
    sel, rr = group["selection"], group["rerank"] or {}
    cells = [
        name, str(group["n"]), f"{100 * (1 - sel['malformed']):.0f}",
        *(f"{rr[m]:.3f}" if m in rr else "-" for m in ("precision", "recall", "f1")),
        f"{sel['mean_k']:.2f}", f"{100 * sel['none']:.0f}", f"{group['answer'].get('match', float('nan')):.3f}",
        f"{reward:.3f}", str(group["failed"]),
    ]
    return "| " + " | ".join(cells) + " |"


def report(stages: Stages, evals: dict[str, Path]) -> str:
    """results.md: setup, one table per benchmark (every evaluated model), wall times, commands."""
    stats = json.loads((RUN / "prepare" / "prepare_stats.json").read_text())
    comparisons = {m: json.loads((p / "comparison.json").read_text()) for m, p in evals.items() if (p / "comparison.json").exists()}
    pairs_path = RUN / "pairs" / "pairs_stats.json"
    pairs = json.loads(pairs_path.read_text()) if pairs_path.exists() else None
    header = ("| model, decoding | n | well-formed % | sel. precision | sel. recall | sel. F1 | mean k | None % | match | reward | failed |\n"
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    from dynamicrag.train.reward import make_semantic_scorer  # noqa: PLC0415

    scorer = make_semantic_scorer("minilm")
    tables = []
    for bench in ("nq", "hotpotqa"):
        lines = [f"### {bench}", "", header]
        for decoding in ("dynamic", "dynamic-constrained"):
            for model, comparison in comparisons.items():
                label = f"{model}, {'constrained' if decoding.endswith('constrained') else 'free'}"
                records = evals[model] / "runs" / bench / f"{decoding}.jsonl"
                lines.append(row(label, comparison["runs"][f"{bench}/{decoding}"], mean_reward(records, scorer)))
        tables.append("\n".join(lines))
    dpo_data = (
        f"DPO pool: {pairs['examples']} questions gave {pairs['reranker_pairs']} reranker and "
        f"{pairs['generator_pairs']} generator pairs (skipped: reranker {pairs['reranker_skipped']}, "
        f"generator {pairs['generator_skipped']}; mean reward gap {pairs['mean_reranker_reward_gap']:.3f})."
        if pairs else "DPO: not run yet."
    )
    wall = "\n".join(f"| {name} | {seconds / 60:.1f} |" for name, seconds in stages.timings.items())
    commands = "\n".join(stages.commands)
    return f"""# SmolLM2-135M as a DynamicRAG model: base, SFT, SFT+DPO

Produced by `python experiments/smollm2_nq_hotpot/run.py --data ../shared/data --base-from BENCH_OUT`
on 2 CPU cores. Training questions: NQ-open 1000-1299 (BM25 top-10 over the 3.6k-passage NQ
corpus) and HotpotQA 0-69 (own 10 paragraphs), labelled by the bundled MiniLM teacher with the
`teacher_and_answer` rule. SFT pool: {stats['sft_examples']} questions, {stats['reranker_records']}
reranker and {stats['generator_records']} generator records (mean target k {stats['mean_k']:.2f},
{stats['none_targets']} `None` targets); LoRA SFT per `sft.yaml`. {dpo_data}
Held apart: NQ 0-49, HotpotQA 70-99; one model plays both roles. "free" decoding is plain greedy
decoding; "constrained" forces the id grammar, so it is well-formed by construction. Failed
records (unusable reranker output) count as wrong answers; selection precision/recall/F1 are
against the gold passage (NQ, when retrieved) or the supporting paragraphs (HotpotQA). "reward"
is the mean of the DPO training reward (default weights, no judge) over the held-apart answers.

{(chr(10) * 2).join(tables)}

### Wall time per stage (minutes, 2 cores shared with other jobs)

| stage | minutes |
|---|---:|
{wall}

### Commands

```
{commands}
```
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/data"), help="The shared data folder")
    parser.add_argument("--base-from", type=Path, help="A `dynamicrag benchmark --data DATA` output whose records seed the base evaluation")
    parser.add_argument("--stop-after", choices=("sft", "dpo"), default="dpo", help="Last training stage to run")
    args = parser.parse_args()
    data = args.data
    RUN.mkdir(parents=True, exist_ok=True)
    stages = Stages()
    evals = {"base": RUN / "eval_base", "sft": RUN / "eval_sft", "sft+dpo": RUN / "eval_dpo"}

    def evaluate(model: str, path: Path | None) -> None:
        stages.run(f"eval {model}", ["benchmark", "--config", HERE / "eval.yaml", "--data", data, "--out", evals[model],
                                     *(["--model", path] if path else [])],
                   evals[model] / "comparison.json")

    index = RUN / "index"
    stages.run("index", ["index", *(data / f for f in NQ_CORPUS), "--out", index], index / "meta.json")
    label_nq, label_hp = RUN / "label" / "nq.jsonl", RUN / "label" / "hotpotqa.jsonl"
    stages.run("label nq", ["label", "--input", data / NQ, "--task", "nq", "--index", index, "--retrieve",
                            "--skip", "1000", "--limit", "300", "--top-n", "10", "--output", label_nq], None)
    stages.run("label hotpotqa", ["label", "--input", data / HOTPOT, "--task", "hotpotqa", "--limit", "70",
                                  "--top-n", "10", "--output", label_hp], None)
    prep = RUN / "prepare"
    stages.run("prepare", ["prepare", "--input", label_nq, "--input", label_hp, "--out", prep, "--max-k", "5",
                           "--sft-fraction", "0.7", "--seed", "0"], prep / "prepare_stats.json")
    sft = RUN / "sft" / "merged"
    stages.run("sft", ["train", "sft", "--config", HERE / "sft.yaml"], sft / "config.json")
    evaluate("sft", sft)
    if args.base_from:
        seed_base_eval(args.base_from, evals["base"], data)
    evaluate("base", None)

    if args.stop_after == "dpo":
        samples, rewarded = RUN / "samples.jsonl", RUN / "rewarded.jsonl"
        stages.run("sample", ["sample", "--input", prep / "dpo_pool.jsonl", "--output", samples, "--model", sft,
                              "--n", "8", "--temperature", "0.4", "--top-n", "10", "--max-new-tokens", "48"], None)
        stages.run("reward", ["reward", "--input", samples, "--output", rewarded], None)
        stages.run("pairs", ["pairs", "--input", rewarded, "--out", RUN / "pairs"], RUN / "pairs" / "pairs_stats.json")
        dpo = RUN / "dpo" / "merged"
        stages.run("dpo", ["train", "dpo", "--config", HERE / "dpo.yaml"], dpo / "config.json")
        evaluate("sft+dpo", dpo)

    out = HERE / "results.md"
    out.write_text(report(stages, evals), encoding="utf-8")
    print(out.read_text("utf-8"))


if __name__ == "__main__":
    main()
