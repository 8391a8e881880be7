"""Helpers the experiment scripts of this folder share (each script's own directory is on
``sys.path`` when it runs, so they import this module by name)."""

from __future__ import annotations

from pathlib import Path

from dynamicrag.data import read_jsonl
from dynamicrag.schema import Example


def reranker_records(path: str) -> list[dict]:
    """A recipe's ``prepare/sft.jsonl`` reranker records (TRL messages) in file order;
    oversampled copies count once."""
    records, seen = [], set()
    for _, r in read_jsonl(path):
        if r["role"] == "reranker" and r["id"] not in seen:
            seen.add(r["id"])
            records.append(r)
    return records


def held_apart(data: Path, index: str, nq: int = 200, hotpot: int = 30) -> tuple[list[Example], list[Example]]:
    """The reranker issue's held-apart questions with their 10 candidates, as the benchmark
    builds them: NQ 0..nq-1 over BM25's top 10 from ``index`` (the benchmark's indexes/nq), and
    HotpotQA 70..70+hotpot-1 over their own first 10 paragraphs."""
    from dynamicrag.data import load_examples
    from dynamicrag.retrieve.index import load_index

    nq_examples = load_examples(data / "nq" / "nq-open-oracle.jsonl.gz", task="nq", limit=nq)
    hits = load_index(index).search([ex.question for ex in nq_examples], 10)
    nq_examples = [ex.model_copy(update={"passages": list(p)}) for ex, p in zip(nq_examples, hits)]
    hotpot_examples = load_examples(data / "hotpotqa" / "hotpotqa_train.json", task="hotpotqa", skip=70, limit=hotpot)
    hotpot_examples = [ex.model_copy(update={"passages": ex.passages[:10]}) for ex in hotpot_examples]
    return nq_examples, hotpot_examples
