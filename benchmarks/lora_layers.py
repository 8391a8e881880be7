"""LoRA training cost by the number of adapted layers: one reranker sequence's forward + backward.

    python benchmarks/lora_layers.py            # 4 NQ reranker prompts (top-10, 60 words a passage)
    python benchmarks/lora_layers.py --quick    # 2 prompts, top-3

Training the reranker is the recipe's slowest stage (SFT: ~8 s per 1.2k-token sequence on 2
cores). With LoRA on the last N decoder layers only (``lora_layers: N`` in an SFT or DPO
config), no parameter below layer L-N needs a gradient, so autograd records nothing there and
the backward pass stops at layer L-N. Each row is one setting, built the way the SFT stage
builds it (``load_trainable`` + ``lora_config``), timed on the same real prompts (the default
reranker chat over BM25's top --top-n with an answer ``[1]``), bf16 autocast as the shipped
recipe: the median seconds per sequence over --repeats passes (after one warm-up pass).
"""

from __future__ import annotations

import argparse
import statistics
import time

from _common import MODEL_NAME, add_common_args, fmt, log, markdown_table, nq_setup, parse_args, print_header, write_result

QUICK = {"questions": 2, "top_n": 3, "corpus_limit": 500, "repeats": 1, "layers": "all,2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, questions=4, llm=False)
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--passage-words", type=int, default=60, help="The shipped recipe's cap")
    ap.add_argument("--repeats", type=int, default=2, help="Timed passes over the prompts per setting")
    ap.add_argument("--layers", default="all,8,4,2", help="Comma-separated lora_layers values ('all' = every layer)")
    args = parse_args(ap, QUICK)

    import torch
    from peft import get_peft_model

    from dynamicrag.prompts import load_style, reranker_chat
    from dynamicrag.train.common import lora_config, load_trainable
    from dynamicrag.train.sft import SFTRunConfig

    setup = nq_setup(args)
    style = load_style("default")
    base, tokenizer = load_trainable(None)
    sequences = []
    for ex in setup.top(args.top_n):
        chat = [*reranker_chat(style, ex.question, ex.passages, args.passage_words), {"role": "assistant", "content": "[1]"}]
        sequences.append(tokenizer.apply_chat_template(chat, return_tensors="pt", return_dict=True)["input_ids"])
    total_layers = base.config.num_hidden_layers

    rows = []
    for value in [v.strip() for v in args.layers.split(",") if v.strip()]:
        layers = None if value == "all" else int(value)
        config = SFTRunConfig(train_file="-", lora_r=8, lora_alpha=16, lora_layers=layers)
        model = get_peft_model(base, lora_config(config, base))
        model.train()
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        log(f"lora_layers={value}: {trainable:,} trainable parameters")
        times = []
        for i in range(args.repeats + 1):
            for ids in sequences:
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    loss = model(input_ids=ids, labels=ids).loss
                loss.backward()
                model.zero_grad(set_to_none=True)
                if i:  # the first pass warms up
                    times.append(time.perf_counter() - start)
        rows.append({"lora_layers": value, "trainable": trainable, "s_per_sequence": statistics.median(times)})
        base = model.unload()

    reference = rows[0]["s_per_sequence"]
    tokens = statistics.mean(ids.shape[1] for ids in sequences)
    path_out = write_result("lora_layers", {"model": MODEL_NAME, "layers": total_layers, "top_n": args.top_n,
                                            "passage_words": args.passage_words, "mean_tokens": tokens,
                                            "threads": torch.get_num_threads(), "rows": rows}, args)
    print_header(args, f"{MODEL_NAME} ({total_layers} layers), LoRA r=8 on every linear layer of the adapted layers, "
                       f"bf16 autocast; {len(sequences)} NQ reranker sequences of {tokens:.0f} tokens on average; "
                       f"JSON: {path_out}")
    print(markdown_table(["lora_layers", "trainable params", "s per sequence (fwd + bwd)", f"vs {rows[0]['lora_layers']}"],
                         [[r["lora_layers"], f"{r['trainable']:,}", fmt(r["s_per_sequence"]),
                           f"{reference / r['s_per_sequence']:.2f}x"] for r in rows]))


if __name__ == "__main__":
    main()
