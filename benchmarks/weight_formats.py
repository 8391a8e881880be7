"""Weight formats on the bundled SmolLM2: next-token agreement with fp32, prefill and decoding speed.

    python benchmarks/weight_formats.py            # 8 NQ reranker prompts (top-10), every format
    python benchmarks/weight_formats.py --quick    # 2 prompts, top-3

A cheap screen before ``dtype_quality.py`` runs a format end to end: each format reads the
same real prompts (the default reranker prompt over BM25 top --top-n passages of the shared NQ
questions) in one forward pass, and the share of positions whose most likely next token equals
fp32's is reported (the whole prompt, not only the answer: every position is a prediction the
model makes). Then, on the first prompt, the prefill time of the whole prompt and the time of
one decoding step after it (median of --steps steps), on every thread and on one.

Formats: ``fp32``; ``bf16``; ``int8`` (torch.ao dynamic quantisation of every linear layer:
int8 weights with a scale per tensor, activations quantised per call, fbgemm kernels; lm_head
untied from the embedding first); ``int8-keep-down`` and ``int8-keep-mlp`` (the same with the
MLP's ``down_proj``, or every MLP layer, left in fp32: where a small model's activation
outliers live); ``int8-weight`` (weight-only int8: every linear layer's weight rounded to int8
with a scale per output row, activations kept in bf16, ``torch._weight_int8pack_mm``, the
weight-only kernel behind torchao's int8; lm_head untied first). Decoding one sequence reads
every weight once per step, so on this CPU a step costs what the weights weigh; int8 weights
halve that against bf16 without quantising the activations that sank ``int8``.
``int8-decode`` is the backend's own ``decode_weights="int8"`` copy (bf16 model, int8 weights
per output row, the tied output projection included) read for every product, so its agreement
is what decoding reads; ``int8-decode-keep-head`` leaves the output projection in bf16.

Last, a table of one product of each layer shape by 1-16 rows (``--product-rows``), bf16
weights against the int8 copy: where the int8 kernel, a matrix-vector one, stops paying, which
sets the backend's row limit for it.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from _common import (
    MODEL_NAME,
    add_common_args,
    fmt,
    int8_copy,
    log,
    markdown_table,
    nq_setup,
    parse_args,
    print_header,
    write_result,
)

QUICK = {"questions": 2, "top_n": 3, "corpus_limit": 500, "steps": 4}
FORMATS = ("fp32", "bf16", "int8", "int8-keep-down", "int8-keep-mlp", "int8-weight", "int8-decode",
           "int8-decode-keep-head")


def int8_decode_copy(fp32, keep_head: bool):
    """bf16 with the backend's own int8 decoding weights (``decode_weights="int8"``) read for
    every product, so the agreement counts what decoding reads at every position."""
    import torch

    from dynamicrag.llm.transformers_backend import _int8_decoding_weights

    lm = copy.deepcopy(fp32).to(torch.bfloat16)
    _int8_decoding_weights(lm, max_rows=10**9)
    if keep_head:
        del lm.get_output_embeddings().forward  # back to the class's bf16 product
    return lm


def int8_weight_copy(fp32):
    """A bf16 copy of ``fp32`` whose linear layers hold int8 weights (a scale per output row)."""
    import torch

    class Int8WeightLinear(torch.nn.Module):
        # torch has the kernel but no module for it outside torchao (not a dependency here).
        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            w = linear.weight.detach().float()
            scale = w.abs().amax(1).clamp(min=1e-8) / 127
            self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-128, 127).to(torch.int8))
            self.register_buffer("scale", scale.to(torch.bfloat16))
            self.bias = None if linear.bias is None else linear.bias.detach().to(torch.bfloat16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch._weight_int8pack_mm(x.reshape(-1, x.shape[-1]).contiguous(), self.weight_int8, self.scale)
            y = y.reshape(*x.shape[:-1], -1)
            return y if self.bias is None else y + self.bias

    lm = copy.deepcopy(fp32)
    lm.lm_head.weight = torch.nn.Parameter(lm.lm_head.weight.detach().clone(), requires_grad=False)  # untie
    lm = lm.to(torch.bfloat16)
    for module in list(lm.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear):
                setattr(module, child_name, Int8WeightLinear(child))
    return lm


def build(name: str, fp32):
    """The model in format ``name``, a copy of ``fp32`` (or ``fp32`` itself)."""
    import torch

    if name == "fp32":
        return fp32
    if name == "bf16":
        return copy.deepcopy(fp32).to(torch.bfloat16)
    if name == "int8-weight":
        return int8_weight_copy(fp32)
    if name.startswith("int8-decode"):
        return int8_decode_copy(fp32, keep_head=name == "int8-decode-keep-head")
    return int8_copy(fp32, keep={"int8": (), "int8-keep-down": ("down_proj",), "int8-keep-mlp": ("mlp.",)}[name])


def product_rows(fp32, row_counts: list[int], threads: int) -> list[dict]:
    """Time one product of each distinct layer shape of the model (layer 0's, and the output
    projection) by ``row_counts`` rows, bf16 weights against the backend's int8 copy."""
    import torch

    from dynamicrag.llm.transformers_backend import _int8_decoding_weights

    if not row_counts:
        return []
    layer = fp32.model.layers[0]
    chosen = {"q_proj": layer.self_attn.q_proj, "k_proj": layer.self_attn.k_proj, "up_proj": layer.mlp.up_proj,
              "down_proj": layer.mlp.down_proj, "lm_head": fp32.get_output_embeddings()}
    out = []
    for name, linear in chosen.items():
        bf16 = copy.deepcopy(linear).to(torch.bfloat16)
        int8 = copy.deepcopy(bf16)
        _int8_decoding_weights(int8, max_rows=10**9)  # modules() includes the layer itself
        for n in sorted({threads, 1}):
            torch.set_num_threads(n)
            try:
                times = {"bf16_us": [], "int8_us": []}
                for rows in row_counts:
                    x = torch.randn(rows, linear.in_features, dtype=torch.bfloat16)
                    for key, module in (("bf16_us", bf16), ("int8_us", int8)):
                        samples = []
                        for i in range(60):
                            start = time.perf_counter()
                            module(x)
                            if i >= 10:  # warm-up
                                samples.append(time.perf_counter() - start)
                        times[key].append(1e6 * statistics.median(samples))
            finally:
                torch.set_num_threads(threads)
            out.append({"layer": f"{name} ({linear.in_features} x {linear.out_features})", "threads": n,
                        "rows": row_counts, **times})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap, questions=8, llm=False)
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--steps", type=int, default=16, help="Decoding steps timed per format and thread count")
    ap.add_argument("--formats", default=",".join(FORMATS), help=f"Comma-separated, of {', '.join(FORMATS)}")
    ap.add_argument("--product-rows", default="1,2,4,8,16",
                    help="Row counts of the bf16 against int8-weight product table (where decode_weights=int8 stops paying); empty skips it")
    args = parse_args(ap, QUICK)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    if unknown := sorted(set(formats) - set(FORMATS)):
        ap.error(f"unknown format(s) {unknown}; choose from {', '.join(FORMATS)}")

    import torch
    from transformers import DynamicCache

    from dynamicrag.llm import load_backend
    from dynamicrag.prompts import load_style, reranker_chat

    setup = nq_setup(args)
    style = load_style("default")
    backend = load_backend("transformers", dtype="float32")  # its model and chat encoding
    prompts = [torch.tensor([backend.encode(reranker_chat(style, ex.question, ex.passages))])
               for ex in setup.top(args.top_n)]
    fp32 = backend.lm
    threads = torch.get_num_threads()

    def timings(lm) -> dict:
        ids = prompts[0]
        out: dict = {}
        for n in sorted({threads, 1}, reverse=True):
            torch.set_num_threads(n)
            try:
                start = time.perf_counter()
                cache = DynamicCache(config=lm.config)
                logits = lm(input_ids=ids, cache=cache, use_cache=True, logits_to_keep=1).logits
                out[f"prefill_s_{n}t"] = time.perf_counter() - start
                token, steps = logits[:, -1:].argmax(-1), []
                for _ in range(args.steps):
                    start = time.perf_counter()
                    token = lm(input_ids=token, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
                    steps.append(time.perf_counter() - start)
                out[f"step_ms_{n}t"] = 1000 * statistics.median(steps)
            finally:
                torch.set_num_threads(threads)
        return out

    with torch.inference_mode():
        reference = [fp32(input_ids=ids).logits[0].argmax(-1) for ids in prompts]
        rows = []
        for name in formats:
            log(f"{name}")
            lm = build(name, fp32)
            agree = sum(int((lm(input_ids=ids).logits[0].argmax(-1) == ref).sum()) for ids, ref in zip(prompts, reference))
            positions = sum(len(ref) for ref in reference)
            lm(input_ids=prompts[0][:, :32])  # warm-up
            rows.append({"format": name, "agreement": agree / positions, "positions": positions, **timings(lm)})

    with torch.inference_mode():
        products = product_rows(fp32, [int(r) for r in args.product_rows.split(",") if r.strip()], threads)
    path_out = write_result("weight_formats", {"model": MODEL_NAME, "top_n": args.top_n, "threads": threads,
                                               "rows": rows, "products": products}, args)
    print_header(args, f"{MODEL_NAME}; {len(prompts)} NQ reranker prompts over BM25 top-{args.top_n} "
                       f"({rows[0]['positions']} positions); prefill of the first ({prompts[0].shape[1]} tokens) "
                       f"and the median decoding step after it; JSON: {path_out}")
    cols = sorted({threads, 1}, reverse=True)
    print(markdown_table(
        ["format", "next token = fp32's", *[f"prefill s ({n} thr)" for n in cols], *[f"step ms ({n} thr)" for n in cols]],
        [[r["format"], f"{r['agreement']:.1%}", *[fmt(r[f"prefill_s_{n}t"]) for n in cols],
          *[fmt(r[f"step_ms_{n}t"], ".1f") for n in cols]] for r in rows]))
    if products:
        print(f"\nOne product of a layer's weights by R rows, bf16 weights against int8 weights (the "
              f"backend's decode_weights=int8 copy, torch._weight_int8pack_mm), microseconds (median of 50):")
        print(markdown_table(["layer (in x out)", "threads", *[f"{r} rows: bf16 / int8" for r in products[0]["rows"]]],
                             [[p["layer"], p["threads"], *[f"{b:.0f} / {i:.0f}" for b, i in zip(p["bf16_us"], p["int8_us"])]]
                              for p in products]))


if __name__ == "__main__":
    main()
