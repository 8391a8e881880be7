"""Pointwise baselines: the top-k bookkeeping, and each scorer on real models and data."""

from __future__ import annotations

import math
import random

import pytest

from dynamicrag.rerank.pointwise import (
    MONOT5_TEMPLATE,
    SCORERS,
    CrossEncoderScorer,
    EmbeddingScorer,
    MonoT5Scorer,
    PointwiseReranker,
    QueryLikelihoodScorer,
    make_scorer,
)
from dynamicrag.schema import Example, Passage


class ListScorer:
    """Scores read from the passage text ("score=3.5"): the reranker's boundary, not under test."""

    def score(self, query, passages):
        return [float(p.text.split("=")[1]) for p in passages]


def example(scores: list[float]) -> Example:
    passages = [Passage(id=f"p{i}", text=f"score={s}") for i, s in enumerate(scores, 1)]
    return Example(id="q", question="q?", passages=passages)


def test_top_k_by_score_ties_keep_retrieval_order():
    exs = [example([0.1, 0.9, 0.5, 0.9, float("nan"), 0.7]), example([2.0]), example([])]
    sels = PointwiseReranker(ListScorer(), k=3).select(exs)
    assert sels[0].ids == [2, 4, 6]  # 0.9 at 2 and 4 tie: retrieval order
    assert sels[0].calls == 6
    assert sels[1].ids == [1] and sels[1].calls == 1  # fewer passages than k
    assert sels[2].ids == [] and sels[2].calls == 0
    assert PointwiseReranker(ListScorer(), k=10).select(exs[:1])[0].ids == [2, 4, 6, 3, 1, 5]  # NaN last


def test_make_scorer_rejects_unknown_kinds_and_lists_the_known_ones():
    with pytest.raises(ValueError) as err:
        make_scorer("bm25")
    for name in SCORERS:
        assert name in str(err.value)
    with pytest.raises(ValueError, match="k must be >= 0"):
        PointwiseReranker(ListScorer(), k=-1)


@pytest.fixture(scope="module")
def causal_scorer(smollm):
    return MonoT5Scorer(smollm.lm, smollm.tokenizer)


def test_monot5_on_the_bundled_causal_model(causal_scorer):
    passages = [
        Passage(id="a", title="Paris", text="Paris is the capital and largest city of France."),
        Passage(id="b", title="Okapi", text="The okapi is a mammal native to the Congo."),
        Passage(id="c", text="The Eiffel Tower, built in 1889, stands in Paris."),
    ]
    scores = causal_scorer.score("What is the capital of France?", passages)
    assert len(scores) == 3
    assert all(math.isfinite(s) and s <= 0 for s in scores)  # log-probabilities
    assert causal_scorer.score("What is the capital of France?", passages) == scores
    # Left padding must not change a passage's score: batched == one by one.
    single = MonoT5Scorer(causal_scorer.model, causal_scorer.tokenizer, batch_size=1)
    assert single.score("What is the capital of France?", passages) == pytest.approx(scores, abs=1e-4)
    # Logits of the last position only (logits_to_keep=1) are those of the full forward pass.
    assert causal_scorer.last_logits_only
    full = MonoT5Scorer(causal_scorer.model, causal_scorer.tokenizer)
    full.last_logits_only = False
    assert full.score("What is the capital of France?", passages) == pytest.approx(scores, abs=1e-4)


def test_monot5_cuts_the_document_not_the_question(causal_scorer):
    scorer = MonoT5Scorer(causal_scorer.model, causal_scorer.tokenizer, max_length=64)
    long = Passage(id="x", text="word " * 2000)
    prompt = scorer._prompt("who wrote it?", long)
    assert prompt.startswith("Query: who wrote it? Document: word") and prompt.endswith(" Relevant:")
    assert len(scorer.tokenizer(prompt)["input_ids"]) <= 64
    assert math.isfinite(scorer.score("who wrote it?", [long])[0])


def test_monot5_seq2seq_path_reads_the_first_decoder_step(smollm):
    """No monoT5 weights offline: a tiny random T5 over SmolLM2's vocabulary checks the plumbing."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tok = smollm.tokenizer
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tok), d_model=16, d_ff=32, d_kv=8, num_layers=1, num_heads=2,
                      pad_token_id=tok.pad_token_id, decoder_start_token_id=tok.pad_token_id)
    t5 = T5ForConditionalGeneration(config).eval()
    scorer = MonoT5Scorer(t5, tok, batch_size=2)
    assert scorer.seq2seq
    passages = [Passage(id=str(i), text=t) for i, t in enumerate(["short", "a much longer passage " * 5, "mid text"])]
    scores = scorer.score("q", passages)
    assert len(scores) == 3 and all(math.isfinite(s) for s in scores)
    # Compare with a direct first-step computation for one passage.
    batch = tok([MONOT5_TEMPLATE.format(query="q", document="short")], return_tensors="pt")
    with torch.no_grad():
        logits = t5(**batch, decoder_input_ids=torch.tensor([[tok.pad_token_id]])).logits[0, 0]
    expected = torch.log_softmax(logits[[scorer.true_id, scorer.false_id]], -1)[0].item()
    assert scores[0] == pytest.approx(expected, abs=1e-5)


def test_cross_encoder_plumbing_with_an_untrained_head():
    """No trained cross-encoder offline: the bundled MiniLM with a fresh head checks the wiring."""
    from sentence_transformers import CrossEncoder

    from dynamicrag.retrieve.dense import default_encoder_path

    scorer = CrossEncoderScorer(CrossEncoder(str(default_encoder_path()), device="cpu", num_labels=1))
    scores = scorer.score("q?", [Passage(id="a", title="T", text="one"), Passage(id="b", text="two")])
    assert len(scores) == 2 and all(math.isfinite(s) for s in scores)


def test_embedding_scorer_ranks_the_nq_gold_passage_first(nq):
    scorer = make_scorer("embedding")
    assert isinstance(scorer, EmbeddingScorer)
    rng = random.Random(0)
    n_gold = len(nq.gold_ids)
    wiki = nq.passages[n_gold:]
    questions = rng.sample(range(n_gold), 8)
    reranker = PointwiseReranker(scorer, k=1)
    exs = []
    for q in questions:
        distractors = rng.sample(wiki, 9)
        gold_at = rng.randrange(10)  # the gold passage anywhere in the list
        passages = distractors[:gold_at] + [nq.passages[q]] + distractors[gold_at:]
        exs.append(Example(id=str(q), question=nq.questions[q], passages=passages))
    sels = reranker.select(exs)
    hits = sum(ex.passages[s.ids[0] - 1].id == nq.gold_ids[int(ex.id)] for ex, s in zip(exs, sels))
    assert hits >= 6, f"gold ranked first for only {hits}/8 questions"
    assert all(s.calls == 10 for s in sels)


def _gold_among_distractors(nq, seed: int, n: int) -> list[Example]:
    """n NQ questions, each with its gold passage at a random place among 9 Wikipedia passages."""
    rng = random.Random(seed)
    n_gold = len(nq.gold_ids)
    wiki = nq.passages[n_gold:]
    exs = []
    for q in rng.sample(range(n_gold), n):
        distractors = rng.sample(wiki, 9)
        gold_at = rng.randrange(10)
        passages = distractors[:gold_at] + [nq.passages[q]] + distractors[gold_at:]
        exs.append(Example(id=str(q), question=nq.questions[q], passages=passages))
    return exs


def test_query_likelihood_ranks_the_nq_gold_passage_first(nq, smollm):
    """UPR with the bundled SmolLM2: the passage that makes the question likely is the gold one."""
    exs = _gold_among_distractors(nq, seed=1, n=8)
    sels = PointwiseReranker(QueryLikelihoodScorer(smollm), k=1).select(exs)
    hits = sum(ex.passages[s.ids[0] - 1].id == nq.gold_ids[int(ex.id)] for ex, s in zip(exs, sels))
    assert hits >= 7, f"gold ranked first for only {hits}/8 questions"  # 8/8 on seeds 0-2


def test_query_likelihood_scores_the_question_as_a_question_and_needs_a_scoring_backend(smollm):
    assert QueryLikelihoodScorer.as_question("who wrote hamlet") == " Who wrote hamlet?"
    assert QueryLikelihoodScorer.as_question(" Who wrote Hamlet? ") == " Who wrote Hamlet?"
    scorer = QueryLikelihoodScorer(smollm, passage_words=5)
    # Only the first 5 words are read: a passage differing after them scores the same.
    a, b = (Passage(id=i, title="Hamlet", text="Hamlet is a tragedy by William Shakespeare " + tail) for i, tail in
            (("a", "written around 1600."), ("b", "about a Danish prince.")))
    score_a, score_b = scorer.score("who wrote hamlet", [a, b])
    assert score_a == pytest.approx(score_b) and score_a < 0
    assert scorer.score("who wrote hamlet", []) == []
    from fakes import ScriptedBackend

    with pytest.raises(ValueError, match="needs a backend that scores continuations"):
        QueryLikelihoodScorer(ScriptedBackend())
