"""The reward of one sampled trajectory (id list -> answer), stage two of DynamicRAG training.

The paper scores the generator's answer to each sampled id list with five parts, weight 0.2
each, every answer part averaged over the gold answers (arXiv 2505.07233, reward of the
sampled trajectories)::

    r = 0.2 EM + 0.2 semantic + 0.2 ROUGE-L + 0.2 length(k) + 0.2 judge

- ``em``: containment either way (the gold answer inside the answer, or the answer inside the
  gold answer), per gold answer. Default :attr:`EMRule.normalized`: SQuAD-normalised, whole
  tokens, an empty side never matches (:func:`~dynamicrag.evaluate.normalize.contains_answer`
  in both directions). The paper's rule (:attr:`EMRule.lowercase`) compares lower-cased raw
  strings, so punctuation decides ("U.S." vs "US" fails), "1901" is found inside "19015", and
  an answer of "the" is inside most gold answers. Either way, "pred inside gold" is the
  paper's choice and rewards partial answers ("Paris" for "Paris, France").
- ``semantic``: similarity of answer and gold answer. The paper: BERTScore-F1 rescaled with
  the baseline (``"bertscore:roberta-large"``, needs the ``bert-score`` package and the model).
  Default here: ``"minilm"``, the cosine of the bundled all-MiniLM-L6-v2 embeddings (offline;
  a deviation, recorded in ``reward_meta.semantic``). Negative values are clipped to 0.
- ``rouge_l``: ROUGE-L F (rouge-score, Porter stemming), per gold answer.
- ``length``: ``1 / (1 + k)`` with k the number of selected passages (1 for ``None``, 0.5 for
  one passage, 0.25 for three). The original code passes a constant instead of k, so this
  part never varied there.
- ``match`` (not in the paper; weight 0 by default): 1.0 when a SQuAD-normalised gold answer
  occurs inside the answer on whole tokens, the ``match`` of the evaluation tables
  (:func:`~dynamicrag.evaluate.answer_metrics.match`, max over the gold answers). A small
  generator writes sentences, so the paper's parts barely separate a right answer from a
  wrong one; this part rewards exactly what the tables count.
- ``judge``: an LLM judge (any :class:`~dynamicrag.llm.base.Backend`) scores 0-100, read as the
  first number in 0..100 of its reply and divided by 100. The original never parses the reply
  (the reward crashes there). Asked once per (answer, gold answer), identical questions shared.

Weights are renormalised over the parts present: without a judge (or when the judge fails
for a sample) the judge's weight is dropped and the total is the weighted mean of the other
four, so totals stay in [0, 1] and comparable within an example.

A sample with no usable answer (its ``error`` is set, or its answer is None or blank) scores
0 on every part, length included, so its total is 0.0: the lowest possible, never preferred
to a usable sample, always a candidate for the rejected side of a pair.

Example:
    >>> scored = score_samples(records, RewardConfig())  # doctest: +SKIP
    >>> scored[0]["samples"][0]["reward"]["total"]  # doctest: +SKIP
    0.53
"""

from __future__ import annotations

import logging
import math
import re
import string
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol


from dynamicrag.evaluate.answer_metrics import match, rouge_l
from dynamicrag.evaluate.normalize import contains_answer
from dynamicrag.isolation import run_isolated
from dynamicrag.llm.base import Backend, Chat, SamplingParams
from dynamicrag.prompts import load_prompt

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

PARTS = ("em", "semantic", "rouge_l", "length", "judge", "match")
"""The reward's parts, in the order they are stored."""

DEFAULT_BERTSCORE_MODEL = "roberta-large"  # bert-score's default for English

_JUDGE_PLACEHOLDERS = {"question", "gold", "answer"}
_JUDGE = load_prompt("judge", {"system": set(), "user": _JUDGE_PLACEHOLDERS})  # prompts/judge.yaml
JUDGE_SYSTEM = _JUDGE["system"]
JUDGE_PROMPT = _JUDGE["user"]

# Parser of the judge's reply, kept beside its prompt: reasoning blocks and the scale's own
# numbers ("0-100", "85/100", "out of 100") are removed, then the first number in 0..100 wins.
_THINK = re.compile(r"<think>.*?(</think>|$)", re.DOTALL | re.IGNORECASE)
_SCALE = re.compile(r"\b0\s*(?:-|–|—|to)\s*100\b|/\s*100\b|\bout\s+of\s+100\b", re.IGNORECASE)
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class EMRule(str, Enum):
    """How the ``em`` part compares an answer with one gold answer (containment either way)."""

    normalized = "normalized"  # SQuAD-normalised, whole tokens, empty never matches (default)
    lowercase = "lowercase"  # the paper's code: lower-cased raw substrings


LENGTH_PENALTIES: dict[str, Callable[[int], float]] = {
    "inverse": lambda k: 1.0 / (1.0 + k),  # the paper's 1/(1+k)
    "inverse_sqrt": lambda k: 1.0 / math.sqrt(1.0 + k),  # gentler: k=3 -> 0.5
}
"""Length term by name, a function of k = number of selected passages, 1 at k = 0."""


@dataclass
class RewardConfig:
    """Options of the reward (stage two of DynamicRAG training)."""

    em_weight: float = field(default=0.2, metadata={"help": "Weight of exact match (paper: 0.2)"})
    semantic_weight: float = field(default=0.2, metadata={"help": "Weight of semantic similarity (paper: 0.2)"})
    rouge_l_weight: float = field(default=0.2, metadata={"help": "Weight of ROUGE-L F (paper: 0.2)"})
    length_weight: float = field(
        default=0.2,
        metadata={"help": "Weight of the length term (paper: 0.2); with a weak generator the length term "
                  "decides most pairs (see the recipe config for the measured value)"},
    )
    match_weight: float = field(
        default=0.0,
        metadata={"help": "Weight of match, a gold answer inside the answer (not in the paper: 0)"},
    )
    judge_weight: float = field(
        default=0.2,
        metadata={"help": "Weight of the LLM judge (paper: 0.2); used only when a judge backend is given, "
                  "otherwise dropped and the other weights renormalised"},
    )
    em_rule: EMRule = field(
        default=EMRule.normalized,
        metadata={"help": "normalized (SQuAD-normalised whole-token containment either way) | "
                  "lowercase (the paper's lower-cased substring containment either way)"},
    )
    semantic: str = field(
        default="minilm",
        metadata={"help": "minilm (bundled all-MiniLM-L6-v2 cosine, offline) | embedding:MODEL "
                  "(any sentence-transformers model) | bertscore[:MODEL] (the paper: BERTScore-F1 rescaled, "
                  "needs the bert-score package; default model roberta-large)"},
    )
    length_penalty: str = field(
        default="inverse",
        metadata={"help": "Length term of k selected passages: inverse = 1/(1+k) (the paper) | "
                  "inverse_sqrt = 1/sqrt(1+k)"},
    )
    judge_system: str = field(default=JUDGE_SYSTEM, metadata={"help": "System message of the judge"})
    judge_prompt: str = field(
        default=JUDGE_PROMPT,
        metadata={"help": "User message of the judge; placeholders {question}, {gold}, {answer}; "
                  "the reply's first number in 0..100 is the score"},
    )
    judge_max_new_tokens: int = field(
        default=32, metadata={"help": "Token cap of a judge reply (raise it for reasoning models)"}
    )
    judge_batch_size: int = field(default=16, metadata={"help": "Judge prompts per backend call"})
    semantic_batch_size: int = field(default=64, metadata={"help": "Texts per embedding / BERTScore batch"})

    def __post_init__(self) -> None:
        for part, weight in self.weights().items():
            if not (weight >= 0 and math.isfinite(weight)):
                raise ValueError(f"{part}_weight must be a finite number >= 0, got {weight}")
        if sum(w for p, w in self.weights().items() if p != "judge") <= 0:
            raise ValueError("em, semantic, rouge_l, length and match weights are all 0: the reward would be "
                             "undefined without a judge")
        try:
            self.em_rule = EMRule(self.em_rule)
        except ValueError:
            raise ValueError(f"em_rule: unknown rule {self.em_rule!r}; use one of "
                             f"{sorted(r.value for r in EMRule)}") from None
        kind = self.semantic.partition(":")[0]
        if kind not in SEMANTIC_SCORERS:
            raise ValueError(f"semantic: unknown kind {kind!r}; use one of {sorted(SEMANTIC_SCORERS)}, "
                             "optionally as 'kind:model'")
        if self.length_penalty not in LENGTH_PENALTIES:
            raise ValueError(f"length_penalty: unknown form {self.length_penalty!r}; use one of "
                             f"{sorted(LENGTH_PENALTIES)}")
        found = {name for _, name, _, _ in string.Formatter().parse(self.judge_prompt) if name is not None}
        if found != _JUDGE_PLACEHOLDERS:
            raise ValueError(f"judge_prompt must use placeholders {sorted(_JUDGE_PLACEHOLDERS)}, found {sorted(found)}")
        for name in ("judge_max_new_tokens", "judge_batch_size", "semantic_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def weights(self) -> dict[str, float]:
        """Part name -> weight, in :data:`PARTS` order."""
        return {part: float(getattr(self, f"{part}_weight")) for part in PARTS}


# ---------------------------------------------------------------- parts of one answer


def em_part(answer: str, gold: str, rule: EMRule | str = EMRule.normalized) -> float:
    """1.0 when ``gold`` is inside ``answer`` or ``answer`` inside ``gold`` (see :class:`EMRule`).

    Args:
        answer: Generated answer.
        gold: One gold answer.
        rule: ``normalized`` (default) or ``lowercase`` (the paper's code).

    Returns:
        1.0 or 0.0.
    """
    if EMRule(rule) is EMRule.lowercase:
        a, g = answer.lower(), gold.lower()
        return float(g in a or a in g)
    return float(contains_answer(answer, [gold]) or contains_answer(gold, [answer]))


def length_part(k: int, form: str = "inverse") -> float:
    """The length term for ``k`` selected passages (``inverse``: 1/(1+k), the paper's form).

    Raises:
        ValueError: ``k`` is negative or the form is unknown.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if form not in LENGTH_PENALTIES:
        raise ValueError(f"unknown length penalty {form!r}; use one of {sorted(LENGTH_PENALTIES)}")
    return LENGTH_PENALTIES[form](k)


def parse_judge_score(text: str) -> float | None:
    """The judge's score in [0, 1]: the first number in 0..100 of its reply, divided by 100.

    ``<think>`` blocks and mentions of the scale itself ("0-100", "/100", "out of 100") are
    ignored first, so "Score (0-100): 85" and "85/100" read 0.85.

    Args:
        text: The judge's reply.

    Returns:
        The score, or None when the reply holds no number in 0..100.
    """
    cleaned = _SCALE.sub(" ", _THINK.sub(" ", text))
    for number in _NUMBER.finditer(cleaned):
        value = float(number.group())
        if 0.0 <= value <= 100.0:
            return value / 100.0
    return None


def combine(parts: dict[str, float | None], config: RewardConfig) -> float:
    """Weighted mean of the parts present (None parts drop out and the weights renormalise).

    Raises:
        ValueError: No part with a positive weight is present.
    """
    used = {p: w for p, w in config.weights().items() if parts.get(p) is not None and w > 0}
    total_weight = sum(used.values())
    if total_weight <= 0:
        raise ValueError(f"no weighted reward part present in {parts}")
    return sum(w * float(parts[p]) for p, w in used.items()) / total_weight  # type: ignore[arg-type]


# ---------------------------------------------------------------- semantic similarity


class SemanticScorer(Protocol):
    """Similarity in [0, 1] of (answer, reference) pairs; ``name`` is stored with the rewards."""

    name: str

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        """One similarity per (answer, reference) pair, in input order."""
        ...


class EmbeddingSimilarity:
    """Cosine of sentence-embeddings, clipped to [0, 1] (the offline default).

    Args:
        encoder: A loaded SentenceTransformer, a hub id / local path, or None for the bundled
            all-MiniLM-L6-v2 (loaded once per process by
            :func:`dynamicrag.retrieve.dense.load_encoder`).
        batch_size: Texts per encoder batch.
    """

    def __init__(self, encoder: str | SentenceTransformer | None = None, *, batch_size: int = 64) -> None:
        if encoder is None or isinstance(encoder, str):
            from dynamicrag.retrieve.dense import load_encoder

            self.name = "minilm:all-MiniLM-L6-v2 cosine" if encoder is None else f"embedding:{encoder} cosine"
            encoder = load_encoder(encoder)
        else:
            self.name = f"embedding:{getattr(encoder, 'name_or_path', None) or type(encoder).__name__} cosine"
        self.encoder = encoder
        self.batch_size = batch_size

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        import numpy as np  # here, not at import: the command line's help loads no numpy

        if not pairs:
            return []
        texts = sorted({t for pair in pairs for t in pair})  # each distinct text encoded once
        row = {t: i for i, t in enumerate(texts)}
        emb = self.encoder.encode(texts, batch_size=self.batch_size, show_progress_bar=False,
                                  convert_to_numpy=True, normalize_embeddings=True)
        emb = np.asarray(emb, dtype=np.float64)  # (n_texts, dim), unit rows
        a = emb[[row[x] for x, _ in pairs]]  # (n_pairs, dim)
        b = emb[[row[y] for _, y in pairs]]
        return np.clip((a * b).sum(axis=1), 0.0, 1.0).tolist()


class BertScoreSimilarity:
    """BERTScore-F1 rescaled with its baseline, clipped to [0, 1] (the paper's semantic part).

    Args:
        model: bert-score ``model_type`` (``roberta-large`` by default, as bert-score uses for
            English); it must have a rescaling baseline in bert-score.
        batch_size: Pairs per batch.

    References:
        Zhang et al., BERTScore: Evaluating Text Generation with BERT, ICLR 2020.
    """

    def __init__(self, model: str = DEFAULT_BERTSCORE_MODEL, *, batch_size: int = 64) -> None:
        try:
            from bert_score import BERTScorer
        except ImportError as err:
            raise ImportError(
                "semantic='bertscore' needs the bert-score package: pip install bert-score "
                "(or use semantic='minilm', the offline default)"
            ) from err
        self.name = f"bertscore:{model} F1 rescaled"
        self.scorer = BERTScorer(model_type=model, lang="en", rescale_with_baseline=True, batch_size=batch_size)

    def similarity(self, pairs: Sequence[tuple[str, str]]) -> list[float]:
        import numpy as np

        if not pairs:
            return []
        _, _, f1 = self.scorer.score([a for a, _ in pairs], [r for _, r in pairs])
        return np.clip(f1.cpu().numpy().astype(np.float64), 0.0, 1.0).tolist()


SEMANTIC_SCORERS: dict[str, Callable[[str, int], SemanticScorer]] = {
    "minilm": lambda arg, bs: EmbeddingSimilarity(None, batch_size=bs),
    "embedding": lambda arg, bs: EmbeddingSimilarity(arg or None, batch_size=bs),
    "bertscore": lambda arg, bs: BertScoreSimilarity(arg or DEFAULT_BERTSCORE_MODEL, batch_size=bs),
}
"""Semantic scorer kind -> factory taking the model part of ``"kind:model"`` and a batch size."""


def make_semantic_scorer(spec: str = "minilm", batch_size: int = 64) -> SemanticScorer:
    """Build a semantic scorer from ``"minilm"``, ``"embedding:MODEL"`` or ``"bertscore[:MODEL]"``.

    Raises:
        ValueError: Unknown kind (the message lists the known ones).
        ImportError: ``bertscore`` without the bert-score package.
    """
    kind, _, arg = spec.partition(":")
    if kind not in SEMANTIC_SCORERS:
        raise ValueError(f"unknown semantic scorer {spec!r}; use one of {sorted(SEMANTIC_SCORERS)}")
    return SEMANTIC_SCORERS[kind](arg.strip(), batch_size)


# ---------------------------------------------------------------- the judge


def _judge_chat(config: RewardConfig, question: str, gold: str, answer: str) -> Chat:
    user = config.judge_prompt.format(question=question, gold=gold, answer=answer)
    return [{"role": "system", "content": config.judge_system}, {"role": "user", "content": user}]


def _judge_one_call(backend: Backend, chats: Sequence[Chat], params: SamplingParams) -> list[str]:
    replies = backend.generate(chats, params)
    if len(replies) != len(chats) or any(not r for r in replies):
        raise RuntimeError(f"backend returned {len(replies)} results for {len(chats)} prompts")
    return [r[0].text for r in replies]


def judge_scores(
    backend: Backend, items: Sequence[tuple[str, str, str]], config: RewardConfig
) -> list[tuple[float | None, str | None]]:
    """Ask the judge about each (question, gold, answer); never raises on a bad reply.

    Identical items are asked once. A failing batch is retried one prompt at a time, so one
    bad prompt costs only its own score.

    Args:
        backend: Any LLM backend (local, vLLM, OpenAI-compatible).
        items: (question, gold answer, answer) triples.
        config: Judge prompt, token cap and batch size.

    Returns:
        Per item, ``(score in [0, 1], None)`` or ``(None, why it failed)``.
    """
    unique = list(dict.fromkeys(items))
    params = SamplingParams(temperature=0.0, max_new_tokens=config.judge_max_new_tokens, n=1)
    results: dict[tuple[str, str, str], tuple[float | None, str | None]] = {}
    for start in range(0, len(unique), config.judge_batch_size):
        batch = unique[start : start + config.judge_batch_size]
        chats = [_judge_chat(config, *item) for item in batch]
        # A failing prompt costs only its own score: its reply is the exception.
        replies: list[str | Exception] = run_isolated(
            lambda group: _judge_one_call(backend, group, params), chats, lambda chat, err: err,
            what="judge prompt", log=logger,
        )
        for item, reply in zip(batch, replies):
            if isinstance(reply, Exception):
                results[item] = (None, f"judge backend failed: {type(reply).__name__}: {reply}")
                continue
            score = parse_judge_score(reply)
            results[item] = (score, None) if score is not None else (
                None, f"no score in 0..100 in judge reply {reply[:200]!r}"
            )
    failed = sum(r[0] is None for r in results.values())
    if failed:
        logger.warning("judge: %d of %d distinct prompts gave no score", failed, len(results))
    return [results[item] for item in items]


# ---------------------------------------------------------------- scoring


@dataclass
class _Item:
    """One answer to score: its question, gold answers, answer (None: unusable) and k."""

    question: str
    golds: list[str]
    answer: str | None
    k: int


def _golds(values: Any) -> list[str]:
    """The non-blank gold answers (a blank one would only drag every mean down)."""
    return [g for g in values or [] if isinstance(g, str) and g.strip()]


def _usable(answer: Any, error: Any) -> str | None:
    return answer if error is None and isinstance(answer, str) and answer.strip() else None


def _score_items(
    items: Sequence[_Item],
    config: RewardConfig,
    judge_backend: Backend | None,
    semantic_scorer: SemanticScorer,
) -> list[dict[str, Any]]:
    """Rewards of many answers with one batched semantic call and batched judge calls."""
    use_judge = judge_backend is not None and config.judge_weight > 0
    pairs = list(dict.fromkeys((it.answer, g) for it in items if it.answer is not None for g in it.golds))
    sims = dict(zip(pairs, semantic_scorer.similarity(pairs)))
    judged: dict[tuple[str, str, str], tuple[float | None, str | None]] = {}
    if use_judge:
        triples = list(dict.fromkeys(
            (it.question, g, it.answer) for it in items if it.answer is not None for g in it.golds
        ))
        judged = dict(zip(triples, judge_scores(judge_backend, triples, config)))  # type: ignore[arg-type]

    out = []
    for it in items:
        if it.answer is None:
            # No usable answer: 0 everywhere (length too), so the total is the minimum, 0.0.
            parts: dict[str, Any] = dict.fromkeys(PARTS, 0.0)
            parts["judge"] = 0.0 if use_judge else None
            out.append({"total": 0.0, **parts, "judge_error": None})
            continue
        n = len(it.golds)
        parts = {
            "em": sum(em_part(it.answer, g, config.em_rule) for g in it.golds) / n,
            "semantic": sum(sims[(it.answer, g)] for g in it.golds) / n,
            "rouge_l": sum(rouge_l(it.answer, [g]) for g in it.golds) / n,
            "length": length_part(it.k, config.length_penalty),
            "judge": None,
            "match": match(it.answer, it.golds),
        }
        judge_error = None
        if use_judge:
            verdicts = [judged[(it.question, g, it.answer)] for g in it.golds]
            errors = [e for _, e in verdicts if e is not None]
            if errors:
                judge_error = errors[0]  # the judge part is a mean over gold answers: all or none
            else:
                parts["judge"] = sum(s for s, _ in verdicts) / n  # type: ignore[misc]
        out.append({"total": combine(parts, config), **parts, "judge_error": judge_error})
    return out


def reward_parts(
    answer: str | None,
    gold_answers: Sequence[str],
    k: int,
    *,
    question: str = "",
    config: RewardConfig | None = None,
    semantic_scorer: SemanticScorer | None = None,
    judge_backend: Backend | None = None,
) -> dict[str, Any]:
    """The reward of one answer (see the module docstring for each part).

    Args:
        answer: The generated answer; None or blank counts as no usable answer (total 0.0).
        gold_answers: Gold answers; every answer part is averaged over them.
        k: Number of passages the reranker selected.
        question: The question (only the judge reads it).
        config: Weights and choices; default :class:`RewardConfig`.
        semantic_scorer: A built scorer to reuse; default built from ``config.semantic``.
        judge_backend: The judge LLM; None leaves the judge out.

    Returns:
        ``{"total", "em", "semantic", "rouge_l", "length", "judge", "match", "judge_error"}``.

    Raises:
        ValueError: No gold answer, or a negative k.
    """
    config = config or RewardConfig()
    golds = _golds(gold_answers)
    if not golds:
        raise ValueError("reward_parts needs at least one gold answer")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    scorer = semantic_scorer or make_semantic_scorer(config.semantic, config.semantic_batch_size)
    item = _Item(question, golds, _usable(answer, None), k)
    return _score_items([item], config, judge_backend, scorer)[0]


def score_samples(
    records: Sequence[dict[str, Any]],
    config: RewardConfig | None = None,
    judge_backend: Backend | None = None,
    *,
    semantic_scorer: SemanticScorer | None = None,
) -> list[dict[str, Any]]:
    """Add a reward to every sample of sampled-trajectory records.

    Each record is ``Example.model_dump(mode="json")`` plus ``prompt_style`` and ``samples``
    (``ids``, ``raw``, ``well_formed``, ``error``, ``answer``). All semantic similarities of
    the call are computed in one batched pass, judge prompts in batches.

    Args:
        records: Sampled records (not modified).
        config: Weights and choices; default :class:`RewardConfig`.
        judge_backend: The judge LLM; None leaves the judge out (its weight is dropped).
        semantic_scorer: A built scorer to reuse across calls; default built from
            ``config.semantic``.

    Returns:
        Copies of the records where every sample has ``"reward": {"total", "em", "semantic",
        "rouge_l", "length", "judge", "match", "judge_error"}`` (``None`` for records without gold
        answers, which cannot be scored), and each record has ``"reward_meta"``: the weights,
        the semantic scorer's name, the EM rule, the length form and the judge model.

    Raises:
        ValueError: A record without a ``samples`` list, or a sample without an ``ids`` list
            (naming the record's index and id).
    """
    config = config or RewardConfig()
    scorer = semantic_scorer or make_semantic_scorer(config.semantic, config.semantic_batch_size)
    use_judge = judge_backend is not None and config.judge_weight > 0
    meta = {
        "weights": config.weights() if use_judge else {**config.weights(), "judge": 0.0},
        "semantic": scorer.name,
        "em_rule": EMRule(config.em_rule).value,
        "length_penalty": config.length_penalty,
        "judge": getattr(judge_backend, "model", None) if use_judge else None,
    }
    items: list[_Item] = []
    where: list[tuple[int, int]] = []  # (record index, sample index) of each item
    out: list[dict[str, Any]] = []
    no_gold = 0
    for r, record in enumerate(records):
        samples = record.get("samples")
        if not isinstance(samples, list):
            raise ValueError(f"record {r} (id {record.get('id')!r}): no 'samples' list")
        golds = _golds(record.get("answers"))
        new_samples = []
        for s, sample in enumerate(samples):
            if not isinstance(sample, dict) or not isinstance(sample.get("ids"), list):
                raise ValueError(f"record {r} (id {record.get('id')!r}), sample {s}: no 'ids' list")
            new_samples.append({**sample, "reward": None})
            if golds:
                items.append(_Item(record.get("question", ""), golds,
                                   _usable(sample.get("answer"), sample.get("error")), len(sample["ids"])))
                where.append((r, s))
        no_gold += not golds
        out.append({**record, "samples": new_samples, "reward_meta": meta})
    if no_gold:
        logger.warning("score_samples: %d of %d records have no gold answer; their rewards are None",
                       no_gold, len(records))
    for (r, s), reward in zip(where, _score_items(items, config, judge_backend, scorer)):
        out[r]["samples"][s]["reward"] = reward
    return out


def reweight_samples(records: Sequence[dict[str, Any]], config: RewardConfig) -> list[dict[str, Any]]:
    """Recompute every sample's ``total`` from its stored parts under ``config``'s weights.

    No model runs: the parts (em, semantic, rouge_l, length, judge, match) were stored by
    :func:`score_samples`, so trying another weighting (e.g. a smaller length weight) on the
    same samples costs nothing, and ``pairs`` can report what each weighting would choose.
    Only the weights and the length form are read from ``config``; a sample without a
    usable answer keeps its total of 0.0.

    Args:
        records: Records of :func:`score_samples` (not modified).
        config: The weights to apply.

    Returns:
        Copies with new totals and ``reward_meta.weights`` updated.

    Raises:
        ValueError: A sample's reward lacks a part that ``config`` weights (naming the record).
    """
    out = []
    for r, record in enumerate(records):
        samples = []
        for s, sample in enumerate(record.get("samples") or []):
            reward = sample.get("reward")
            if reward is None:
                samples.append(sample)
                continue
            parts = dict(reward)
            if config.length_penalty != (record.get("reward_meta") or {}).get("length_penalty", "inverse"):
                parts["length"] = length_part(len(sample.get("ids") or []), config.length_penalty)
            missing = [p for p, w in config.weights().items() if w > 0 and p != "judge" and p not in parts]
            if missing:
                raise ValueError(f"record {r} (id {record.get('id')!r}), sample {s}: reward has no {missing} part; "
                                 "score the samples again with this version of `reward`")
            usable = _usable(sample.get("answer"), sample.get("error")) is not None
            total = combine(parts, config) if usable else 0.0
            samples.append({**sample, "reward": {**parts, "total": total}})
        meta = {**(record.get("reward_meta") or {}), "weights": config.weights(), "length_penalty": config.length_penalty}
        out.append({**record, "samples": samples, "reward_meta": meta})
    return out


def config_dict(config: RewardConfig) -> dict[str, Any]:
    """The config as plain JSON values (for stats files)."""
    data = asdict(config)
    data["em_rule"] = EMRule(config.em_rule).value
    return data


__all__ = [
    "BertScoreSimilarity",
    "EMRule",
    "EmbeddingSimilarity",
    "JUDGE_PROMPT",
    "JUDGE_SYSTEM",
    "LENGTH_PENALTIES",
    "PARTS",
    "RewardConfig",
    "SEMANTIC_SCORERS",
    "SemanticScorer",
    "combine",
    "config_dict",
    "em_part",
    "judge_scores",
    "length_part",
    "make_semantic_scorer",
    "parse_judge_score",
    "reward_parts",
    "reweight_samples",
    "score_samples",
]


def reward_batch_fn(config: RewardConfig, judge: dict[str, Any] | None) -> Callable[[list[dict]], list[dict]]:
    """The batch function of ``dynamicrag reward`` (see :mod:`dynamicrag.executors`): the
    semantic scorer and the judge (``judge``: ``load_backend``'s arguments, or None) load here,
    once per worker; each batch of sampled records is scored."""
    from dynamicrag.llm import load_backend

    judge_llm = load_backend(**judge) if judge else None
    scorer = make_semantic_scorer(config.semantic, config.semantic_batch_size)
    return lambda batch: score_samples(batch, config, judge_llm, semantic_scorer=scorer)


def reward_summary(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """What a reward output holds: ``records``, ``samples`` (scored), the mean of ``total`` and of
    each part over the samples that have it (None where none has), ``judge_errors``."""
    rewards = [s["reward"] for r in records for s in r["samples"] if s.get("reward")]

    def mean(part: str) -> float | None:
        values = [r[part] for r in rewards if r.get(part) is not None]
        return sum(values) / len(values) if values else None

    return {"records": len(records), "samples": len(rewards), "total": mean("total"),
            **{part: mean(part) for part in PARTS}, "judge_errors": sum(r.get("judge_error") is not None for r in rewards)}
