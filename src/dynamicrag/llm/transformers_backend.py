"""The in-process backend: Hugging Face transformers ``generate`` on CPU or one GPU.

This is the backend the tests and CPU users run, on the bundled SmolLM2-135M-Instruct by
default. Prompts are batched with left padding, decoding is greedy at temperature 0, and the
reranker's id grammar is enforced token by token when ``SamplingParams.id_list_max`` is set.

Example:
    >>> from dynamicrag.llm import SamplingParams, load_backend
    >>> llm = load_backend("transformers")
    >>> llm.generate([[{"role": "user", "content": "Capital of France?"}]], SamplingParams(max_new_tokens=8))
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from dynamicrag.llm.base import Chat, Completion, SamplingParams
from dynamicrag.llm.constrain import is_complete, is_valid_prefix
from dynamicrag.llm.models import resolve_model

logger = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_MODELS_LOCK = threading.Lock()
# One lock per loaded model: generate() from several threads (a thread pool, the server) runs
# one call at a time, as the seeded RNG and a CPU's cores are shared anyway.
_GENERATE_LOCKS: dict[int, threading.Lock] = {}

# Every character the id grammar can produce: "None", "[12], [3]".
_GRAMMAR_CHARS = frozenset("[]0123456789, None")


def _torch_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # half precision on CPU is slower and less exact
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
             "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(names)}, got {dtype!r}")
    return names[dtype]


def load_model_and_tokenizer(
    model: str | None = None, *, device: str = "cpu", dtype: str | torch.dtype = "auto"
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer once per process, ready for batched generation.

    Models are shared: a reranker and a generator on the same model get the same objects, so
    callers must not train or modify them in place (load a fresh copy for training).

    Args:
        model: Anything :func:`~dynamicrag.llm.models.resolve_model` accepts.
        device: Torch device string.
        dtype: ``"auto"`` (fp32 on CPU, bf16/fp16 on GPU), a name like ``"bfloat16"``, or a
            ``torch.dtype``.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device``; the tokenizer padding on
        the left with a pad token set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model)
    torch_dtype = _torch_dtype(dtype, device)
    key = (path, device, str(torch_dtype))
    with _MODELS_LOCK:
        if key not in _MODELS:
            logger.info("Loading %s on %s (%s)", path, device, torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
            if not tokenizer.chat_template:
                raise ValueError(f"tokenizer of {path} has no chat template; an instruct model is needed")
            tokenizer.padding_side = "left"  # decoder-only: new tokens follow the last real token
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
            _MODELS[key] = (lm, tokenizer)
        return _MODELS[key]


class _IdListConstraint:
    """Token-level enforcement of the id grammar of :mod:`dynamicrag.llm.constrain`.

    Only tokens whose text is made of grammar characters can ever be valid, so they are found
    once per tokenizer (about a hundred for SmolLM2's 49k vocabulary); each step then checks
    just those against the text so far. Written by hand because transformers has no grammar
    engine, and the grammar's "distinct ids in range" is not a regular language over ids.
    """

    def __init__(self, tokenizer: Any, stop_ids: Sequence[int]) -> None:
        self.stop_ids = sorted(set(stop_ids))
        self.pieces = self._grammar_pieces(tokenizer)
        self._cache: dict[tuple[str, int], list[int]] = {}
        self._cache_size = 1 << 16

    @staticmethod
    def _grammar_pieces(tokenizer: Any) -> dict[int, str]:
        """Token id -> the text it adds, for tokens made only of grammar characters."""
        # Decoded after an anchor token so that tokenizers which drop a leading space when a
        # token stands alone (SentencePiece "▁") still report it.
        anchor = tokenizer.encode("0", add_special_tokens=False)
        prefix = tokenizer.decode(anchor)
        special = set(tokenizer.all_special_ids)
        ids = [i for i in range(len(tokenizer)) if i not in special]
        texts = tokenizer.batch_decode([anchor + [i] for i in ids])
        pieces = {}
        for i, text in zip(ids, texts):
            piece = text[len(prefix):] if text.startswith(prefix) else ""
            if piece and set(piece) <= _GRAMMAR_CHARS:
                pieces[i] = piece
        return pieces

    def allowed(self, text: str, max_id: int) -> list[int]:
        """Tokens that may follow ``text``; the stop tokens only once ``text`` is complete."""
        key = (text, max_id)
        if key not in self._cache:
            nxt = [i for i, piece in self.pieces.items() if is_valid_prefix(text + piece, max_id)]
            if is_complete(text, max_id):
                nxt += self.stop_ids
            # Empty only if the vocabulary cannot spell a needed character: end rather than fail.
            if len(self._cache) >= self._cache_size:  # bounded: long sampling runs see many prefixes
                self._cache.clear()
            self._cache[key] = nxt or list(self.stop_ids)
        return self._cache[key]

    def prefix_fn(self, prompt_len: int, max_id: int, pad_id: int):
        """A ``prefix_allowed_tokens_fn`` for a batch whose padded prompts are ``prompt_len`` long."""
        stops = set(self.stop_ids) | {pad_id}

        def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            generated = input_ids[prompt_len:].tolist()
            if any(t in stops for t in generated):
                return [pad_id]  # finished row: generate fills it with padding anyway
            return self.allowed("".join(self.pieces[t] for t in generated), max_id)

        return fn


@contextlib.contextmanager
def _seeded(seed: int | None, device: str) -> Iterator[None]:
    """Seed torch for one call without changing the caller's global random state."""
    if seed is None:
        yield
        return
    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class TransformersBackend:
    """Generate with a local transformers model (the bundled SmolLM2 by default).

    Args:
        model: ``None`` for the bundled SmolLM2-135M-Instruct, a checkpoint folder, a ``.gguf``
            file or a hub id (see :func:`~dynamicrag.llm.models.resolve_model`).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: ``"auto"`` (fp32 on CPU) or a dtype name.
        batch_size: Sequences per forward batch (prompts x ``n`` when sampling several).

    Example:
        >>> llm = TransformersBackend()
        >>> [[c]] = llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=8))
    """

    name = "transformers"
    # Encode a prompt once for its n samples (see _shared_prefill); benchmarks/speed_work.py
    # turns it off on an instance to measure what it saves.
    share_prefill = True

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype = "auto",
        batch_size: int = 8,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = device
        self.batch_size = batch_size
        self.model = resolve_model(model)
        self.lm, self.tokenizer = load_model_and_tokenizer(self.model, device=device, dtype=dtype)
        with _MODELS_LOCK:
            self._lock = _GENERATE_LOCKS.setdefault(id(self.lm), threading.Lock())
        eos = self.lm.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted(set(eos) | {self.tokenizer.eos_token_id} - {None})
        self.pad_id = self.tokenizer.pad_token_id
        self._constraint: _IdListConstraint | None = None
        self._choice_constraints: dict[tuple[str, ...], Any] = {}  # label set -> ChoiceConstraint

    def encode(self, chat: Chat) -> list[int]:
        """Token ids of ``chat`` after the chat template, ending with the assistant header."""
        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        # The template already writes the special tokens (BOS, <|im_start|>) as text.
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def count_tokens(self, chat: Chat) -> int:
        """Prompt tokens of ``chat`` after the chat template."""
        return len(self.encode(chat))

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[Completion]]:
        """Return ``params.n`` completions for each chat, in input order.

        Args:
            chats: Chat prompts.
            params: Sampling settings; ``temperature == 0`` is greedy (the ``n`` completions
                are then identical copies of one decode).

        Returns:
            One list of ``params.n`` :class:`Completion` per chat. ``completion_tokens`` counts
            generated tokens up to and including the end-of-sequence token.
        """
        prompts = [self.encode(chat) for chat in chats]
        greedy = params.temperature == 0
        per_batch = self.batch_size if greedy else max(1, self.batch_size // params.n)
        # Similar lengths together: less padding to compute over.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[Completion]] = [[] for _ in prompts]
        with self._lock, torch.inference_mode(), _seeded(params.seed, self.device):
            for start in range(0, len(order), per_batch):
                chunk = order[start:start + per_batch]
                for i, completions in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params)):
                    results[i] = completions
        return results

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams) -> list[list[Completion]]:
        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        prompt_len = batch["input_ids"].shape[1]
        greedy = params.temperature == 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_new_tokens,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
        }
        if greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            # top_k=0 turns off transformers' default top-k of 50, as vLLM/OpenAI have none.
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
            if params.n > 1 and prompt_len > 1 and self.share_prefill:
                kwargs["past_key_values"] = self._shared_prefill(batch, params.n)
                batch = {k: v.repeat_interleave(params.n, dim=0) for k, v in batch.items()}
            else:
                kwargs["num_return_sequences"] = params.n
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        if params.id_list_max is not None:
            if self._constraint is None:
                self._constraint = _IdListConstraint(self.tokenizer, self.eos_ids)
            allowed = self._constraint.prefix_fn(prompt_len, params.id_list_max, self.pad_id)
            kwargs["prefix_allowed_tokens_fn"] = allowed
        kwargs.update(self._decoding_controls(params, prompt_len))
        out = self.lm.generate(**batch, **kwargs)  # (batch * n_gen, prompt_len + new)
        n_gen = 1 if greedy else params.n
        completions = []
        for row in range(len(prompts)):
            texts = [self._completion(out[row * n_gen + j, prompt_len:].tolist(), len(prompts[row]), params)
                     for j in range(n_gen)]
            # Greedy decoding gives one answer: n independent copies of it.
            completions.append([dataclasses.replace(texts[0]) for _ in range(params.n)] if greedy else texts)
        return completions

    def _decoding_controls(self, params: SamplingParams, prompt_len: int) -> dict[str, Any]:
        """``generate`` kwargs for the loop controls and the label constraint, which count the
        completion only (see :mod:`dynamicrag.llm.logits` for why not transformers' own)."""
        from transformers import LogitsProcessorList

        from dynamicrag.llm.logits import ChoiceConstraint, CompletionFrequencyPenalty, CompletionNoRepeatNGram

        kwargs: dict[str, Any] = {}
        processors = LogitsProcessorList()
        if params.no_repeat_ngram_size:
            processors.append(CompletionNoRepeatNGram(params.no_repeat_ngram_size, prompt_len))
        if params.frequency_penalty:
            processors.append(CompletionFrequencyPenalty(params.frequency_penalty, prompt_len))
        if processors:
            kwargs["logits_processor"] = processors
        if params.choices is not None:
            key = tuple(params.choices)
            if key not in self._choice_constraints:
                self._choice_constraints[key] = ChoiceConstraint(self.tokenizer, key, self.eos_ids)
            kwargs["prefix_allowed_tokens_fn"] = self._choice_constraints[key].prefix_fn(prompt_len, self.pad_id)
        return kwargs

    def _shared_prefill(self, batch: Any, n: int) -> Any:
        """The KV cache of the prompts without their last token, repeated ``n`` times per row.

        ``num_return_sequences`` would copy each prompt ``n`` times and encode every copy; here
        each prompt is encoded once (the bulk of the work for reranker prompts) and ``generate``
        continues from the last token. The samples are the same as with ``num_return_sequences``.
        """
        from transformers import DynamicCache

        ids, mask = batch["input_ids"][:, :-1], batch["attention_mask"][:, :-1]
        cache = DynamicCache(config=self.lm.config)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding: real tokens start at 0
        self.lm(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        cache.batch_repeat_interleave(n)  # row i -> rows i*n .. i*n+n-1, as generate orders them
        return cache

    def _completion(self, new: list[int], prompt_tokens: int, params: SamplingParams) -> Completion:
        stops = set(self.eos_ids) | {self.pad_id}
        end = next((k for k, t in enumerate(new) if t in stops), None)
        ended = end is not None and new[end] in self.eos_ids
        tokens = new[:end] if end is not None else new
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((p for p in (text.find(s) for s in params.stop) if p >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        finish = "stop" if ended or cut >= 0 else "length"
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) + (1 if ended else 0),
            finish_reason=finish,
        )
