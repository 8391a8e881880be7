"""What the shipped reranker adapter adds to building a pipeline: the base model alone vs base + adapter.

    python benchmarks/adapter_load.py              # 3 fresh processes per variant, alternating
    python benchmarks/adapter_load.py --quick      # 1 each

Each run is a fresh Python process that imports dynamicrag, then times ``build_pipeline`` with
``ask``'s defaults (the converted model already cached, as after a first ``ask``): once with
``reranker.adapter = none`` (the base model) and once with the default (the shipped adapter,
read from inside the package: no network). The difference of the medians is the adapter's
load cost. Target (the reranker issue): at most 1 s. Prints a markdown table last and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from _common import log, markdown_table, parse_args, print_header, write_result

CHILD = """
import json, time
from dynamicrag.build import PipelineConfig, build_pipeline, resolve_config
config = resolve_config(PipelineConfig(reranker={{"adapter": {adapter!r}}}), top_n=10, constrained=True)
start = time.perf_counter()
pipeline = build_pipeline(config)
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "adapter": pipeline.settings["reranker"].get("adapter_manifest")}}))
"""

VARIANTS = {"base model (adapter none)": "none", "shipped adapter (default)": "auto"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="Fresh processes per variant")
    ap.add_argument("--json", type=Path, default=None, help="Output JSON (default: results/adapter_load.json)")
    args = parse_args(ap, {"repeats": 1})
    runs: dict[str, list[float]] = {name: [] for name in VARIANTS}
    shipped = None
    # Warm-up: the first build may convert the bundled model into the cache; not timed.
    subprocess.run([sys.executable, "-c", CHILD.format(adapter="none")], check=True, capture_output=True)
    for repeat in range(args.repeats):
        for name, adapter in VARIANTS.items():  # alternating, so drift hits both alike
            out = subprocess.run([sys.executable, "-c", CHILD.format(adapter=adapter)], check=True,
                                 capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            runs[name].append(result["seconds"])
            shipped = shipped or result["adapter"]
            log(f"{name} #{repeat + 1}: {result['seconds']:.2f} s")
    medians = {name: statistics.median(times) for name, times in runs.items()}
    added = medians["shipped adapter (default)"] - medians["base model (adapter none)"]
    print_header(args, f"build_pipeline with ask's defaults; shipped adapter: {shipped}; {args.repeats} runs each")
    print(markdown_table(["variant", "median s", "runs (s)"],
                         [[name, f"{medians[name]:.2f}", ", ".join(f"{t:.2f}" for t in runs[name])] for name in runs]))
    print(f"\nadded by the adapter: {added:+.2f} s (target: at most 1 s)")
    write_result("adapter_load", {"shipped_adapter": shipped, "runs": runs, "medians": medians,
                                  "added_seconds": added}, args)


if __name__ == "__main__":
    main()
