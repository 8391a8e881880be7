"""Pointwise baselines: score each (query, passage) pair on its own, then keep the top k.

A scorer is anything with ``score(query, passages) -> list[float]`` (higher is more relevant).
Provided: a monoT5-style yes/no scorer (seq2seq or causal LM), a sentence-transformers
cross-encoder, query likelihood under a causal LM (UPR), the retriever's own scores, and the
offline default, cosine similarity under the bundled all-MiniLM-L6-v2.

Example:
    >>> reranker = PointwiseReranker(make_scorer("embedding"), k=5)
    >>> [selection] = reranker.select([example])
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol


from dynamicrag.prompts import load_prompt
from dynamicrag.retrieve.base import passage_text
from dynamicrag.schema import Example, Passage, Selection

if TYPE_CHECKING:
    from sentence_transformers import CrossEncoder, SentenceTransformer

logger = logging.getLogger(__name__)

# monoT5's input, as in pygaggle (Nogueira et al. 2020): the title is not included (prompts/pointwise.yaml).
POINTWISE_PROMPT = load_prompt("pointwise", {"monot5": {"query", "document"}, "true_word": set(), "false_word": set()})
MONOT5_TEMPLATE = POINTWISE_PROMPT["monot5"]
DEFAULT_MONOT5 = "castorini/monot5-base-msmarco"
DEFAULT_CROSS_ENCODER = "cross-encoder/ms-marco-MiniLM-L6-v2"


class Scorer(Protocol):
    """Relevance of each passage to a query; higher is more relevant."""

    def score(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """One score per passage, in input order."""
        ...


@dataclass
class PointwiseReranker:
    """Score every candidate with a :class:`Scorer` and keep the ``k`` best, best first.

    Args:
        scorer: Any :class:`Scorer`.
        k: Passages kept per example (fewer when an example has fewer).

    Returns from :meth:`select`: Selections whose ``ids`` are 1-based positions, by decreasing
    score (equal scores keep retrieval order); ``calls`` is the number of passages scored.
    """

    scorer: Scorer
    k: int = 5

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError(f"k must be >= 0, got {self.k}")

    def select(self, examples: Sequence[Example]) -> list[Selection]:
        """Top-``k`` passages of each example by score."""
        out = []
        for ex in examples:
            if not ex.passages or self.k == 0:
                out.append(Selection())
                continue
            scores = self.scorer.score(ex.question, ex.passages)
            if len(scores) != len(ex.passages):
                raise ValueError(
                    f"scorer {type(self.scorer).__name__} returned {len(scores)} scores "
                    f"for {len(ex.passages)} passages (example {ex.id!r})"
                )
            # NaN sorts last; sorted() is stable, so equal scores keep retrieval order.
            keys = [-s if not math.isnan(s) else math.inf for s in map(float, scores)]
            order = sorted(range(len(keys)), key=keys.__getitem__)
            out.append(Selection(ids=[i + 1 for i in order[: self.k]], calls=len(scores)))
        return out


class MonoT5Scorer:
    """monoT5-style relevance: log P("true") against "false" at the first decoded token.

    Works with a seq2seq model (``castorini/monot5-base-msmarco``: the first decoder step)
    and with a causal LM (the next token after the prompt; the same text, no chat template).

    Args:
        model: A loaded model, or a hub id / local path (seq2seq or causal is read from its
            config).
        tokenizer: The model's tokenizer (required when ``model`` is a loaded model).
        device: Torch device when loading by name.
        batch_size: Pairs per forward pass.
        max_length: Token limit of one input (512 for monoT5).
        true_word: The word meaning relevant.
        false_word: The word meaning not relevant.

    References:
        Nogueira et al., Document Ranking with a Pretrained Sequence-to-Sequence Model,
        Findings of EMNLP 2020.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        device: str = "cpu",
        batch_size: int = 8,
        max_length: int = 512,
        true_word: str = POINTWISE_PROMPT["true_word"],
        false_word: str = POINTWISE_PROMPT["false_word"],
    ) -> None:
        if isinstance(model, str):
            model, tokenizer = _load_lm(model, device)
        elif tokenizer is None:
            raise ValueError("MonoT5Scorer needs the tokenizer of a model passed as an object")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.tokenizer = model, tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.true_id = _single_token(tokenizer, true_word)
        self.false_id = _single_token(tokenizer, false_word)
        # Tokens of the template without query or document: what the document cannot use.
        self._frame = len(self._ids(MONOT5_TEMPLATE.format(query="", document="")))
        # A causal LM reads one position per pair: with left padding it is the last column for
        # every row, and only its logits are computed (logits_to_keep=1). The projection onto
        # the vocabulary at every position (49k words for SmolLM2) was most of the cost.
        # benchmarks/speed_work.py turns it off on an instance to measure it.
        self.last_logits_only = True

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=True)["input_ids"]

    def _prompt(self, query: str, passage: Passage) -> str:
        # Deviation from pygaggle, which truncates the joined text and so drops "Relevant:"
        # from long inputs: here only the document is cut, so the question stays last.
        budget = self.max_length - self._frame - len(self.tokenizer(query, add_special_tokens=False)["input_ids"])
        doc = self.tokenizer(passage.text, add_special_tokens=False)["input_ids"]
        text = passage.text
        if len(doc) > budget:
            text = self.tokenizer.decode(doc[: max(budget, 0)], skip_special_tokens=True)
        return MONOT5_TEMPLATE.format(query=query, document=text)

    def score(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """log P(true) (against false) per passage, in input order."""
        import torch

        prompts = [self._prompt(query, p) for p in passages]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                batch = self.tokenizer(
                    prompts[start : start + self.batch_size],
                    padding=True,
                    padding_side="right" if self.seq2seq else "left",
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(device)
                logits = self._first_step_logits(batch)  # (batch, vocab)
                pair = logits[:, [self.true_id, self.false_id]].float()  # (batch, 2)
                scores.extend(torch.log_softmax(pair, dim=-1)[:, 0].tolist())
        return scores

    def _first_step_logits(self, batch: Any) -> Any:
        import torch

        ids, mask = batch["input_ids"], batch["attention_mask"]
        if self.seq2seq:
            start = self.model.config.decoder_start_token_id
            decoder = torch.full((ids.shape[0], 1), start, dtype=torch.long, device=ids.device)
            return self.model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder).logits[:, 0]
        # Left padding: positions count real tokens only, and every row ends in the last column.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        if self.last_logits_only:
            try:
                return self.model(**inputs, logits_to_keep=1).logits[:, -1]
            except TypeError:  # an architecture without logits_to_keep: all positions
                self.last_logits_only = False
        return self.model(**inputs).logits[:, -1]


def _load_lm(name: str, device: str) -> tuple[Any, Any]:
    """A seq2seq or causal LM (by its config) and its tokenizer, in eval mode."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    config = AutoConfig.from_pretrained(name)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    logger.info("Loading %s as %s on %s", name, cls.__name__, device)
    tokenizer = AutoTokenizer.from_pretrained(name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return cls.from_pretrained(name).to(device).eval(), tokenizer


def _single_token(tokenizer: Any, word: str) -> int:
    """The id of ``word`` as it follows a space ("Relevant: true"); it must be one token."""
    ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
    # SentencePiece may split off a bare "▁"; that piece carries no letters of the word.
    ids = [i for i in ids if tokenizer.decode([i]).strip()]
    if len(ids) != 1:
        raise ValueError(
            f"{word!r} is {len(ids)} tokens for tokenizer {getattr(tokenizer, 'name_or_path', '?')}; "
            "a monoT5 scorer needs a one-token word"
        )
    return ids[0]


QUERY_LIKELIHOOD_PROMPT = load_prompt("query_likelihood", {"prompt": {"passage"}})["prompt"]


class QueryLikelihoodScorer:
    """Query likelihood (UPR): how likely a causal LM finds the question after the passage.

    The score of a passage is the mean log-probability per token of the question (written as
    a question: capitalised, ending in "?") after ``prompts/query_likelihood.yaml`` filled with
    the passage's title and text. One teacher-forced forward pass per batch of passages, no
    decoding. With the generator's own model it measures which passage that model connects to
    the question, without knowing the answer.

    Args:
        backend: A backend with ``loglikelihood(prompts, continuations)`` (the transformers
            backend); its adapter, if any, is on while scoring, so pass the base model's.
        passage_words: Words of each passage's text read (None: all).
        batch_size: Passages per forward pass (None: the backend's).

    References:
        Sachan et al., Improving Passage Retrieval with Zero-Shot Question Generation, EMNLP 2022.
    """

    def __init__(self, backend: Any, *, passage_words: int | None = 100, batch_size: int | None = None) -> None:
        if not hasattr(backend, "loglikelihood"):
            raise ValueError(
                f"the query-likelihood scorer needs a backend that scores continuations (transformers); "
                f"{type(backend).__name__} does not"
            )
        if passage_words is not None and passage_words < 1:
            raise ValueError(f"passage_words must be >= 1 or None, got {passage_words}")
        self.backend, self.passage_words, self.batch_size = backend, passage_words, batch_size

    def _prompt(self, passage: Passage) -> str:
        words = passage.text.split()
        text = " ".join(words[: self.passage_words] if self.passage_words else words)
        return QUERY_LIKELIHOOD_PROMPT.format(passage=f"{passage.title}. {text}" if passage.title else text)

    @staticmethod
    def as_question(query: str) -> str:
        """``" Who wrote X?"``: the query as the prompt's continuation (NQ's are lower case, no "?")."""
        query = query.strip()
        if not query:
            raise ValueError("the query-likelihood scorer needs a non-empty question")
        return " " + query[0].upper() + query[1:] + ("" if query.endswith("?") else "?")

    def score(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """Mean log-probability per question token, per passage, in input order."""
        if not passages:
            return []
        question = self.as_question(query)
        tokens = len(self.backend.tokenizer(question, add_special_tokens=False)["input_ids"])
        lls = self.backend.loglikelihood(
            [self._prompt(p) for p in passages], [question] * len(passages), batch_size=self.batch_size
        )
        return [ll / tokens for ll in lls]


class CrossEncoderScorer:
    """A sentence-transformers :class:`~sentence_transformers.CrossEncoder` on (query, passage).

    Args:
        model: A loaded CrossEncoder, or a hub id / local path
            (e.g. ``cross-encoder/ms-marco-MiniLM-L6-v2``).
        batch_size: Pairs per forward pass.
        device: Torch device when loading by name; None lets sentence-transformers choose.

    Passages are given as ``"title\\ntext"`` (the retrievers' convention).
    """

    def __init__(self, model: str | CrossEncoder, *, batch_size: int = 32, device: str | None = None) -> None:
        if isinstance(model, str):
            from sentence_transformers import CrossEncoder

            model = CrossEncoder(model, device=device)
        self.model = model
        self.batch_size = batch_size

    def score(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """The cross-encoder's score per passage (its own activation), in input order."""
        import numpy as np  # here, not at import: the command line's help loads no numpy

        pairs = [(query, passage_text(p)) for p in passages]
        scores = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True)
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim == 2:  # several labels: the last is "relevant" (binary heads)
            scores = scores[:, -1]
        return scores.tolist()


class EmbeddingScorer:
    """Cosine similarity of query and passage embeddings (the offline default).

    Args:
        encoder: A loaded SentenceTransformer, a hub id / local path, or None for the bundled
            all-MiniLM-L6-v2 (see :func:`dynamicrag.retrieve.dense.load_encoder`).
        batch_size: Texts per encoder batch.

    Passages are encoded as ``"title\\ntext"``, as the dense retriever indexes them.
    """

    def __init__(self, encoder: str | SentenceTransformer | None = None, *, batch_size: int = 32) -> None:
        if encoder is None or isinstance(encoder, str):
            from dynamicrag.retrieve.dense import load_encoder

            encoder = load_encoder(encoder)
        self.encoder = encoder
        self.batch_size = batch_size

    def score(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """Cosine similarity per passage, in input order."""
        import numpy as np

        kwargs = dict(batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=True)
        q = self.encoder.encode_query([query], **kwargs)  # (1, dim)
        d = self.encoder.encode_document([passage_text(p) for p in passages], **kwargs)  # (n, dim)
        return (np.asarray(d, dtype=np.float64) @ np.asarray(q, dtype=np.float64)[0]).tolist()


class RetrieverScorer:
    """The score the retriever gave each passage (``Passage.score``): no model at all.

    Raises from :meth:`score`: ValueError naming the first passage without a score (an
    example's own passages usually come without; score them with a model scorer instead).
    """

    def score(self, query: str, passages: Sequence[Passage]) -> list[float]:
        """``Passage.score`` per passage, in input order."""
        missing = next((p for p in passages if p.score is None), None)
        if missing is not None:
            raise ValueError(
                f"passage {missing.id!r} has no retriever score: the retriever scorer needs passages "
                "from an index (or with a 'score' field); use a model scorer such as 'embedding'"
            )
        return [float(p.score) for p in passages]  # type: ignore[arg-type]


def _causal(model: str) -> MonoT5Scorer:
    from dynamicrag.llm import load_backend

    backend = load_backend("transformers", model or None)  # shares the loaded model
    return MonoT5Scorer(backend.lm, backend.tokenizer)  # type: ignore[attr-defined]


def _query_likelihood(model: str) -> QueryLikelihoodScorer:
    from dynamicrag.llm import load_backend

    # The base model (no adapter), sharing the weights the roles have loaded.
    return QueryLikelihoodScorer(load_backend("transformers", model or None))


SCORERS: dict[str, Callable[[str], Scorer]] = {
    "embedding": lambda arg: EmbeddingScorer(arg or None),
    "monot5": lambda arg: MonoT5Scorer(arg or DEFAULT_MONOT5),
    "cross-encoder": lambda arg: CrossEncoderScorer(arg or DEFAULT_CROSS_ENCODER),
    "causal": _causal,
    "query-likelihood": _query_likelihood,
    "retriever": lambda arg: RetrieverScorer(),
}
"""Scorer kind -> factory taking the model part of ``"kind:model"`` ("" when absent)."""


def make_scorer(name_or_path: str = "embedding") -> Scorer:
    """Build a scorer from ``"kind"`` or ``"kind:model"``.

    Kinds: ``embedding[:encoder]`` (bundled all-MiniLM-L6-v2 by default),
    ``monot5[:model]`` (castorini/monot5-base-msmarco), ``cross-encoder[:model]``
    (cross-encoder/ms-marco-MiniLM-L6-v2), ``causal[:model]`` (the bundled SmolLM2, yes/no),
    ``query-likelihood[:model]`` (UPR with the bundled SmolLM2), ``retriever`` (the scores the retriever gave, ``Passage.score``).

    Raises:
        ValueError: Unknown kind (the message lists the known ones).
    """
    kind, _, arg = check_scorer(name_or_path).partition(":")
    return SCORERS[kind](arg.strip())


def check_scorer(name_or_path: str) -> str:
    """``name_or_path`` unchanged when its kind is one of :data:`SCORERS` (nothing is loaded).

    Raises:
        ValueError: Unknown kind (the message lists the known ones).
    """
    if name_or_path.partition(":")[0] not in SCORERS:
        raise ValueError(
            f"unknown scorer {name_or_path!r}; use one of {sorted(SCORERS)}, optionally as 'kind:model'"
        )
    return name_or_path


__all__ = [
    "CrossEncoderScorer",
    "EmbeddingScorer",
    "MonoT5Scorer",
    "PointwiseReranker",
    "QueryLikelihoodScorer",
    "RetrieverScorer",
    "SCORERS",
    "Scorer",
    "check_scorer",
    "make_scorer",
]
