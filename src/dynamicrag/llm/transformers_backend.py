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
import functools
import inspect
import logging
import threading
from collections import OrderedDict, deque
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import torch

from dynamicrag.llm.base import Chat, Completion, SamplingParams, continue_token_ids, cut_at_stop
from dynamicrag.llm.constrain import is_complete, is_valid_prefix
from dynamicrag.llm.lora import adapter_active, attach_adapter
from dynamicrag.llm.models import resolve_model
from dynamicrag.runtime import apply_threads, auto_decode_threads, cpu_bf16_flag, thread_settings, torch_threads

logger = logging.getLogger(__name__)

_MODELS: dict[tuple[str, str, str, str], tuple[Any, Any]] = {}  # (path, device, dtype, decode weights)
_MODELS_LOCK = threading.Lock()
# One lock per loaded model: generate() from several threads (a thread pool, the server) runs
# one call at a time, as the seeded RNG and a CPU's cores are shared anyway.
_GENERATE_LOCKS: dict[int, threading.Lock] = {}
# One prompt-prefix KV cache per loaded model (id of the model), shared by every backend on it
# (the reranker's view with its adapter, the generator's without) and used under its generate
# lock; entries are keyed by the adapter state that computed them (_prefix_cache_key).
_PREFIX_CACHES: dict[int, _PrefixCache] = {}

# decode_threads="auto" decodes one sequence on one thread only up to this many prompt tokens;
# longer contexts spend their steps in attention over the cache, which uses every core.
_ONE_THREAD_MAX_CONTEXT = 512

# Every character the id grammar can produce: "None", "[12], [3]".
_GRAMMAR_CHARS = frozenset("[]0123456789, None")


_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
_SHORT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def choose_dtype(dtype: str | torch.dtype = "auto", device: str = "cpu") -> tuple[torch.dtype, str]:
    """The dtype a model runs in, and why, e.g. ``(torch.bfloat16, "bf16 (CPU has avx512_bf16)")``.

    ``"auto"`` on CPU is bf16 where the CPU multiplies bf16 natively (AVX512-BF16 or AMX: half
    the memory traffic and faster products; ``benchmarks/speed_work.py`` measures the gain and
    ``benchmarks/dtype_quality.py`` the outputs against fp32) and fp32 elsewhere (emulated bf16
    is slower than fp32); on a GPU it is bf16, or fp16 without bf16.

    Args:
        dtype: ``"auto"``, a name (``"float32"``, ``"bf16"``, ...) or a ``torch.dtype``.
        device: Torch device string.

    Raises:
        ValueError: Unknown dtype name.
    """
    if isinstance(dtype, torch.dtype):
        return dtype, f"{_SHORT_NAMES.get(dtype, str(dtype))} (dtype={dtype})"
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_available():
            if torch.cuda.is_bf16_supported():
                return torch.bfloat16, "bf16 (GPU supports bf16)"
            return torch.float16, "fp16 (GPU without bf16)"
        flag = cpu_bf16_flag() if device == "cpu" else None
        if flag is not None:
            return torch.bfloat16, f"bf16 (CPU has {flag})"
        return torch.float32, "fp32 (no native bf16 on this device: no avx512_bf16 or amx_bf16)"
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be 'auto' or one of {sorted(_DTYPE_NAMES)}, got {dtype!r}")
    chosen = _DTYPE_NAMES[dtype]
    return chosen, f"{_SHORT_NAMES[chosen]} (dtype={dtype})"


def _torch_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype:
    return choose_dtype(dtype, device)[0]


def choose_decode_weights(decode_weights: str, dtype: torch.dtype, device: str) -> str:
    """``"int8"`` or ``"model"``: the weights a loaded model's few-row products run with.

    ``"auto"`` is int8 for a bf16 model on CPU (where torch has the weight-only int8 kernel)
    and the model's own weights elsewhere: fp32 stays the exact fallback, and a GPU reads its
    weights fast enough.

    Raises:
        ValueError: Unknown value.
    """
    if decode_weights not in ("auto", "int8", "model"):
        raise ValueError(f"decode_weights must be 'auto', 'int8' or 'model', got {decode_weights!r}")
    if decode_weights == "auto":
        native = device == "cpu" and dtype == torch.bfloat16 and hasattr(torch, "_weight_int8pack_mm")
        return "int8" if native else "model"
    return decode_weights


def load_model_and_tokenizer(
    model: str | None = None, *, device: str = "cpu", dtype: str | torch.dtype = "auto",
    decode_weights: str = "auto",
) -> tuple[Any, Any]:
    """Load a causal LM and its tokenizer once per process, ready for batched generation.

    Models are shared: a reranker and a generator on the same model get the same objects, so
    callers must not train or modify them in place (load a fresh copy for training).

    Args:
        model: Anything :func:`~dynamicrag.llm.models.resolve_model` accepts.
        device: Torch device string.
        dtype: ``"auto"`` (see :func:`choose_dtype`: bf16 on CPUs with native bf16, else
            fp32; bf16/fp16 on GPU), a name like ``"float32"``, or a ``torch.dtype``.
        decode_weights: ``"int8"`` gives every linear layer an int8 copy of its weights for
            products of a few rows (decoding; see :func:`_int8_decoding_weights`), ``"model"``
            runs them in the model's dtype, ``"auto"`` (see :func:`choose_decode_weights`):
            int8 for a bf16 model on CPU, else the model's dtype.

    Returns:
        ``(model, tokenizer)``: the model in eval mode on ``device``; the tokenizer padding on
        the left with a pad token set.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(model)
    torch_dtype, reason = choose_dtype(dtype, device)
    decode_weights = choose_decode_weights(decode_weights, torch_dtype, device)
    key = (path, device, str(torch_dtype), decode_weights)
    with _MODELS_LOCK:
        if key not in _MODELS:
            logger.info("transformers backend: %s", reason)
            logger.info("Loading %s on %s (%s)", path, device, torch_dtype)
            tokenizer = AutoTokenizer.from_pretrained(path)
            if not tokenizer.chat_template:
                raise ValueError(f"tokenizer of {path} has no chat template; an instruct model is needed")
            tokenizer.padding_side = "left"  # decoder-only: new tokens follow the last real token
            if tokenizer.pad_token is None:
                tokenizer.pad_token = tokenizer.eos_token
            lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype).to(device).eval()
            lm.requires_grad_(False)  # shared for inference only; peft does the same when an adapter attaches
            _contiguous_head_input(lm)
            _fast_attention(lm)
            if decode_weights == "int8":
                _int8_decoding_weights(lm)
            _MODELS[key] = (lm, tokenizer)
        return _MODELS[key]


def _contiguous_head_input(lm: Any) -> None:
    """Hand the output projection a contiguous input.

    A forward with ``logits_to_keep`` (scoring, generate's prefill) slices the last positions of
    a batch's hidden states, which leaves them strided. With weights that need no gradient (as
    here, and as peft leaves the base model once an adapter is attached), ``torch.matmul`` does
    not fold that 3-d input into one matrix product but runs a batched product over the
    vocabulary projection expanded to the batch: a copy of 57 MB (bf16) per row on every call.
    The copy made here is of the kept positions only (rows x kept x 576). With the shipped
    adapter attached, the query-likelihood order of the bundled docs' 10 candidates takes 0.92 s
    against 1.73 s (``benchmarks/ask_phases.py``, benchmarks/README.md).
    """
    head = lm.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))


# Products of at most this many rows take a linear layer's int8 weights (decode_weights="int8").
# One 576x1536 product on one thread, bf16 against int8 weights (AMD host; benchmarks/weight_formats.py):
# 65 against 24 us at 1 row, 65 against 49 at 4, 79 against 94 at 8.
_INT8_MAX_ROWS = 4


def _int8_decoding_weights(lm: Any, max_rows: int = _INT8_MAX_ROWS) -> None:
    """Give every linear layer of ``lm`` an int8 copy of its weights for products of few rows.

    A decoding step multiplies one row per sequence by every weight of the model, so it is
    bound by reading the weights: in int8 (one scale per output row, activations kept in the
    model's dtype; torch's ``_weight_int8pack_mm`` kernel, which torch ships without a module
    for it outside torchao, not a dependency here) a step after a 1,474-token prompt takes
    21.4 against 33.7 ms on one thread (AMD host, ``benchmarks/weight_formats.py``). The
    kernel is a matrix-vector one, so prefill (many rows) keeps the model's weights:
    ``max_rows`` is where the two cross. The copy costs
    1 byte per weight (the tied output projection gets its own). peft's LoRA layers call the
    layer they wrap, so an adapter adds its update on top of either path. The model must not be
    trained or have its weights changed afterwards (the shared models are inference-only).
    """
    import types

    def forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if x.numel() > max_rows * self.in_features or x.dtype != self.int8_scale.dtype:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        y = torch._weight_int8pack_mm(x.reshape(-1, self.in_features).contiguous(), self.int8_weight, self.int8_scale)
        y = y.reshape(*x.shape[:-1], self.out_features)
        return y if self.bias is None else y + self.bias

    for module in lm.modules():
        if type(module) is torch.nn.Linear:  # not peft's LoRA layers, which wrap one
            with torch.no_grad():
                # The scale in the dtype the kernel reads it in, and the weights rounded with that one.
                scale = (module.weight.abs().amax(1).float().clamp(min=1e-8) / 127).to(module.weight.dtype)
                q = torch.round(module.weight.float().div_(scale.float()[:, None])).clamp_(-127, 127)
                # Plain attributes, not buffers: the state dict stays the model's own.
                module.int8_weight, module.int8_scale = q.to(torch.int8), scale
            module.forward = types.MethodType(forward, module)


# The attention the backend's models run: transformers' SDPA, except for the two cases below.
FAST_ATTENTION = "sdpa_fast_paths"

# A prompt of at least this many positions, alone and causal, in one of these dtypes, is
# prefilled by _chunked_causal_attention, in blocks of _CAUSAL_CHUNK query positions. Per layer,
# bf16, 167 cached tokens, AMD host: 7.0 against 15.4 ms for 1,000 positions, 18 against 44 ms
# for 1,700, 2.6 against 2.3 ms for 300 (so short prompts keep SDPA). A whole fp32 forward of
# 1,000 tokens gains nothing (1.93-2.05 against 1.90-1.94 s), so fp32 keeps SDPA.
_CHUNKED_MIN_POSITIONS = 512
_CHUNKED_DTYPES = (torch.bfloat16,)
_CAUSAL_CHUNK = 256


def _sdpa_fast_paths(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     is_causal: bool | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, with two cases of a sequence alone done the fast way.

    Decoding: SmolLM2 has 3 key/value heads for 9 query heads. For one new token without a mask
    (a batch of one), transformers calls ``scaled_dot_product_attention(..., enable_gqa=True)``,
    whose CPU kernel is slow at one query position: 286 us against 39 us for the same product
    with each key/value head's 3 query heads laid out as 3 query positions, one thread, 334
    cached tokens (1,309 against 162 us after 1,670; bf16, AMD host). transformers itself takes
    that packed layout when a mask is present (a padded batch); here it is taken without one
    too. No mask and one position means every cached token is visible, so the packed product is
    exact (the same result as the grouped one, up to float rounding).

    Prefill: a long bf16 prompt alone on CPU, causal (see :func:`_causal_offset`), goes to
    :func:`_chunked_causal_attention` (measured on CPU only; a GPU has its own SDPA kernels).
    Every other case is transformers' own function.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    plain = (kwargs.get("position_bias") is None and kwargs.get("softcap") is None
             and not (module.training and dropout))
    if query.shape[2] == 1 and groups > 1 and plain and attention_mask is None:
        batch, heads, _, dim = query.shape
        packed = query.reshape(batch, heads // groups, groups, dim)  # query head h = kv head h // groups
        out = torch.nn.functional.scaled_dot_product_attention(packed, key, value, scale=scaling)
        return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous(), None
    if (plain and query.shape[0] == 1 and query.shape[2] >= _CHUNKED_MIN_POSITIONS and query.device.type == "cpu"
            and query.dtype in _CHUNKED_DTYPES and getattr(module, "is_causal", True) and is_causal is not False):
        seen = _causal_offset(attention_mask, query.shape[2], key.shape[2])
        if seen is not None:
            return _chunked_causal_attention(query, key[:, :, :seen], value[:, :, :seen], scaling), None
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


@functools.lru_cache(maxsize=8)
def _causal_mask(positions: int, keys: int, device: str) -> torch.Tensor:
    """The boolean mask of ``positions`` new tokens after ``keys - positions`` cached ones."""
    return torch.ones(positions, keys, dtype=torch.bool, device=device).tril(keys - positions)


def _causal_offset(mask: torch.Tensor | None, positions: int, keys: int) -> int | None:
    """How many keys a causal prompt of ``positions`` tokens attends to, when ``mask`` (one
    sequence's) is plain causal attention after the cache, else None (padding, windows, ...).

    transformers passes no mask when SDPA's own ``is_causal`` applies (the first ``positions``
    keys, top-left aligned), and a boolean one otherwise; that one is compared in full, as the
    same shape could hold padding.
    """
    if mask is None:
        return positions if keys >= positions else None
    if mask.dtype != torch.bool or mask.shape != (1, 1, positions, keys):
        return None
    return keys if torch.equal(mask[0, 0], _causal_mask(positions, keys, str(mask.device))) else None


def _chunked_causal_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                              scaling: float | None) -> torch.Tensor:
    """Causal attention of one sequence's ``query`` (1, heads, T, dim) over ``key``/``value``
    (1, kv_heads, cached + T, dim), the query positions being the last T; returns
    (1, T, heads, dim) as transformers' attention functions do.

    Written here because torch's CPU kernels do not skip the masked half: with a mask (new
    tokens after a cached prefix) SDPA's flash kernel computes every query-key product at about
    160 GFLOPS, and with ``is_causal`` it is not much faster. Here each block of
    ``_CAUSAL_CHUNK`` query positions is a plain matrix product over the keys it can see, the
    query heads of a key/value head stacked as one (grouped-query attention without copying
    keys), masked on its diagonal block only; the softmax runs in the model's dtype (torch
    accumulates it in fp32 and rounds the probabilities).
    """
    _, heads, positions, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    cached = keys - positions
    scale = scaling if scaling is not None else dim ** -0.5
    grouped = query.view(1, kv_heads, groups, positions, dim)  # query head h = kv head h // groups
    blocks, chunk = [], _CAUSAL_CHUNK
    for start in range(0, positions, chunk):
        end = min(positions, start + chunk)
        rows, seen = end - start, cached + end
        block = (grouped[:, :, :, start:end] * scale).reshape(1, kv_heads, groups * rows, dim)
        scores = torch.matmul(block, key[:, :, :seen].transpose(-1, -2)).view(1, kv_heads, groups, rows, seen)
        later = ~_causal_mask(rows, rows, str(query.device))
        scores[..., seen - rows:].masked_fill_(later, float("-inf"))
        probs = torch.softmax(scores, dim=-1).view(1, kv_heads, groups * rows, seen)
        blocks.append(torch.matmul(probs, value[:, :, :seen]).view(1, kv_heads, groups, rows, dim))
    return torch.cat(blocks, dim=3).view(1, heads, positions, dim).transpose(1, 2).contiguous()


def _fast_attention(lm: Any) -> None:
    """Run ``lm``'s attention through :func:`_sdpa_fast_paths` where it would run SDPA
    (registered with transformers' attention and mask interfaces; the masks are SDPA's)."""
    if getattr(lm.config, "_attn_implementation", None) != "sdpa":
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(FAST_ATTENTION, _sdpa_fast_paths)
    AttentionMaskInterface.register(FAST_ATTENTION, sdpa_mask)
    lm.set_attn_implementation(FAST_ATTENTION)


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

    def prefix_fn(self, prompt_len: int | Sequence[int], max_id: int, pad_id: int):
        """A ``prefix_allowed_tokens_fn`` for a batch whose padded prompts are ``prompt_len`` long
        (or, a sequence, each row's own)."""
        from dynamicrag.llm.logits import row_start

        stops = set(self.stop_ids) | {pad_id}

        def fn(batch_id: int, input_ids: torch.Tensor) -> list[int]:
            generated = input_ids[row_start(prompt_len, batch_id):].tolist()
            if any(t in stops for t in generated):
                return [pad_id]  # finished row: generate fills it with padding anyway
            return self.allowed("".join(self.pieces[t] for t in generated), max_id)

        return fn


class _FewRowsLeft:
    """A stopping criterion that ends a batched ``generate`` call once at most half of its
    rows are still writing (and at least one has ended), or, with ``refill`` (prompts are
    waiting for a place), once any row has ended (:meth:`ended` tells the caller which).

    A row has ended when its completion (from its column in ``starts``) holds an end or padding
    token, reaches its column in ``limits`` (its token budget), or the last tokens hold one of
    the stop strings (transformers' own stop-string criterion ends such a row; padding follows
    from the next step on). A transformers ``StoppingCriteria`` in all but name: generate only
    calls it.
    """

    _TAIL = 16  # tokens decoded to look for a stop string: more than any stop string spans

    def __init__(self, starts: Sequence[int], limits: Sequence[int], ended_ids: set[int], stop: Sequence[str],
                 tokenizer: Any, refill: bool = False) -> None:
        self.starts, self.limits = torch.tensor(starts), torch.tensor(limits)
        self.refill = refill
        self.ended_ids = torch.tensor(sorted(ended_ids))
        self.stop = list(stop)
        self.tokenizer = tokenizer

    def ended(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Which rows of ``input_ids`` have ended (bool per row)."""
        columns = torch.arange(input_ids.shape[1], device=input_ids.device)
        completion = columns[None] >= self.starts.to(input_ids.device)[:, None]
        ended = (torch.isin(input_ids, self.ended_ids.to(input_ids.device)) & completion).any(dim=1)
        ended |= input_ids.shape[1] >= self.limits.to(input_ids.device)
        if self.stop:
            for row in (~ended).nonzero().flatten().tolist():
                start = max(int(self.starts[row]), input_ids.shape[1] - self._TAIL)
                tail = self.tokenizer.decode(input_ids[row, start:])
                ended[row] = any(s in tail for s in self.stop)
        return ended

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        ended = self.ended(input_ids)
        writing = int((~ended).sum())
        stop = bool(ended.any()) and (self.refill or writing <= input_ids.shape[0] // 2)
        return torch.full_like(ended, stop)


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


def _left_pad(x: torch.Tensor, width: int, value: int, dim: int = 1) -> torch.Tensor:
    """``x`` with ``value`` prepended along ``dim`` up to ``width`` (a row layout's left padding)."""
    extra = width - x.shape[dim]
    if not extra:
        return x
    pad = [0, 0] * (x.dim() - 1 - dim) + [extra, 0]  # F.pad lists the last dimension first
    return torch.nn.functional.pad(x, pad, value=value)


def _common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _joinable(config: Any) -> bool:
    """Whether per-row KV caches of this model can be joined into one batch cache: every layer
    is a plain growing cache (no sliding window, no recurrent state)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    try:
        return all(type(layer) is DynamicLayer for layer in DynamicCache(config=config).layers)
    except (AttributeError, KeyError, TypeError, ValueError):
        return False


@dataclasses.dataclass
class _Prefix:
    """A token prefix and its KV cache: per layer ``(keys, values)`` of shape (1, kv_heads, len, dim)."""

    tokens: tuple[int, ...]
    kv: list[tuple[torch.Tensor, torch.Tensor]]

    def cropped(self, length: int) -> _Prefix:
        """The first ``length`` tokens (``self`` when that is all of them). The KV of a prefix
        does not depend on what follows it (causal attention); copied, so the longer tensors
        can be freed."""
        if length >= len(self.tokens):
            return self
        kv = [(k[:, :, :length].clone(), v[:, :, :length].clone()) for k, v in self.kv]
        return _Prefix(self.tokens[:length], kv)


class _PrefixCache:
    """KV caches of the token prefixes that prompts share, per weights state (adapter).

    The prompts of one role start alike: the chat template's header and the role's system
    prompt (about 170 tokens of each reranker prompt here). Which tokens are shared is learnt
    from the prompts themselves: the longest common token prefix of a batch, or, for a batch
    of one, of that prompt and the most similar of the last few seen under the same key. An entry is computed
    once and cut back (never recomputed) when a later batch shares less of it, so entries
    settle on what every prompt of a role has in common. Written by hand because transformers
    has no prefix cache for ``generate``; vLLM's automatic prefix caching is the same idea.

    Args:
        max_entries: Prefixes kept (least recently used dropped first); one per role and adapter
            is the usual need.
        min_tokens: Shorter shared prefixes are not worth a separate pass.
    """

    def __init__(self, max_entries: int = 4, min_tokens: int = 32) -> None:
        self.max_entries = max_entries
        self.min_tokens = min_tokens
        self._entries: OrderedDict[Hashable, list[_Prefix]] = OrderedDict()
        # The last prompts seen per key: batches of one learn their prefix from them (a few,
        # as roles alternate: reranker, generator, reranker, ...).
        self._recent: dict[Hashable, deque[list[int]]] = {}
        self.hits = self.misses = 0  # batches served from a cached prefix / that computed one

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def clear(self) -> None:
        """Drop every entry and the prompts seen, and reset the counters."""
        self._entries.clear()
        self._recent.clear()
        self.hits = self.misses = 0

    def lookup(self, key: Hashable, prompts: list[list[int]], encode) -> _Prefix | None:
        """The cached prefix to start ``prompts`` from, or None when they share too little.

        Args:
            key: The weights state (see ``TransformersBackend._prefix_cache_key``).
            prompts: Token ids of a batch's prompts.
            encode: ``(tokens, base) -> kv`` for a new prefix, continuing from ``base`` (a
                cached prefix of ``tokens``, or None).

        Returns:
            A prefix of every prompt that leaves each prompt at least one token of its own.
        """
        first = prompts[0]
        shared = min(len(p) for p in prompts) - 1  # every prompt keeps its last token
        for other in prompts[1:]:
            shared = min(shared, _common_prefix_len(first, other))
        entries = self._entries.setdefault(key, [])
        self._entries.move_to_end(key)
        length, index = max(((min(_common_prefix_len(e.tokens, first), shared), i) for i, e in enumerate(entries)),
                            default=(0, -1))
        best = entries[index] if length >= self.min_tokens else None
        recent = self._recent.setdefault(key, deque(maxlen=4))
        if len(prompts) == 1:  # one prompt: learn what it shares with the last few seen
            shared = min(shared, max((_common_prefix_len(first, r) for r in recent), default=0))
        recent.append(list(first))
        # A known prefix serves; only a batch that shares much more extends it (a prompt seen
        # twice alone must not become an entry of its own, pushing the roles' prefixes out).
        if best is not None and (len(prompts) == 1 or shared < length + self.min_tokens):
            entries.pop(index)
            best = best.cropped(length)  # cut back to what is shared
            entries.append(best)  # most recently used last
            self.hits += 1
            return best
        if shared < self.min_tokens:
            return None
        # New (e.g. another role's system prompt), or much longer than the best entry: keep
        # the entries as they are, and encode only what the best one does not hold.
        base = best.cropped(length) if best is not None else None  # a prefix of first[:shared]
        entry = _Prefix(tuple(first[:shared]), encode(first[:shared], base))
        entries.append(entry)
        while len(self) > self.max_entries:
            oldest = next(k for k, v in self._entries.items() if v)
            self._entries[oldest].pop(0)
        self.misses += 1
        return entry


class TransformersBackend:
    """Generate with a local transformers model (the bundled SmolLM2 by default).

    Args:
        model: ``None`` for the bundled SmolLM2-135M-Instruct, a checkpoint folder, a ``.gguf``
            file or a hub id (see :func:`~dynamicrag.llm.models.resolve_model`).
        device: Torch device, e.g. ``"cpu"`` or ``"cuda:0"``.
        dtype: ``"auto"`` (bf16 on CPUs with native bf16, else fp32; see :func:`choose_dtype`)
            or a dtype name (``"float32"`` restores full precision).
        batch_size: Sequences per forward batch (prompts x ``n`` when sampling several).
        adapter: A LoRA adapter folder (peft ``save_pretrained``) to run on the model. The base
            model stays loaded once: backends on the same model with other adapters (or none)
            share it and switch their adapter on per call, under the shared generate lock
            (see :mod:`dynamicrag.llm.lora`).
        threads: CPU threads for torch (``torch.set_num_threads``, process-wide); None keeps
            ``$DYNAMICRAG_THREADS`` or torch's default.
        prefix_cache: Keep the KV cache of the token prefix that a role's prompts share (the
            system prompt and chat header) and reuse it for every batch (see
            :class:`_PrefixCache`; one cache per loaded model, shared by the backends on it,
            its entries kept apart per adapter).
        prefill: ``"rows"`` encodes each prompt alone, after the shared prefix, and decodes the
            batch together from the joined caches (no compute spent on padding); ``"batch"``
            encodes the left-padded batch in one pass; ``"auto"``: rows on CPU (where one
            prompt of a few hundred tokens already fills the cores), batch on GPU.
        kv_cache: ``"dynamic"`` (grows by concatenation) or ``"static"`` (preallocated for
            prompt + ``max_new_tokens``; fewer allocations per decoded token).
        decode_threads: torch threads while decoding token by token, after the prompts are
            encoded here (row prefill or a cached prefix): ``"auto"`` is 1 on CPU under
            ``OMP_WAIT_POLICY=PASSIVE`` when one sequence of at most 512 prompt tokens is
            decoded (the generator in ``ask``, ``chat``, a streamed answer: waking the other
            threads for each small product costs more than they add; see
            :func:`~dynamicrag.runtime.auto_decode_threads`), and unchanged for a batch, a
            longer prompt or under another policy; an int sets it for every decoding; None (or
            ``"none"``) keeps the process's count. The switch is process-wide for the length
            of the decoding, under the generate lock.
        shrink_batch: Decode without the rows that have finished: once at most half of the
            rows are still writing, continue those from their KV cache, with the next prompts
            of the call (beyond ``batch_size`` rows) in the free places (continuous batching;
            see :meth:`_decode_queue`). False decodes ``batch_size`` rows at a time, each
            batch until its longest row ends, as ``generate`` does (a static KV cache always
            does).
        decode_weights: ``"int8"``: products of at most 4 rows (decoding one to four
            sequences) read an int8 copy of each linear layer's weights, 1.6x faster a step
            on one thread; prefill keeps the model's weights. ``"model"``: the model's weights
            everywhere. ``"auto"`` (see :func:`choose_decode_weights`): int8 for bf16 on CPU.
            A property of the loaded model, shared by the backends on it.

    Attributes:
        adapter_name: The peft name of the adapter this backend runs (``None``: the base
            model); the weights active during this backend's ``generate`` calls.
        decoded_row_steps: Rows x decoding steps run by this backend's ``generate`` calls,
            finished rows included (``benchmarks/throughput.py`` compares it with the tokens
            the completions kept).

    Example:
        >>> llm = TransformersBackend()
        >>> [[c]] = llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=8))
        >>> reranker = TransformersBackend(adapter="runs/recipe/adapter")  # same base, adapter on
    """

    name = "transformers"
    # Encode a prompt once for its n samples (see _prepare_inputs); benchmarks/speed_work.py
    # turns it off on an instance to measure what it saves.
    share_prefill = True

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str = "cpu",
        dtype: str | torch.dtype = "auto",
        batch_size: int = 8,
        adapter: str | None = None,
        threads: int | None = None,
        prefix_cache: bool = True,
        prefill: str = "auto",
        kv_cache: str = "dynamic",
        decode_threads: int | str | None = "auto",
        shrink_batch: bool = True,
        decode_weights: str = "auto",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if prefill not in ("auto", "rows", "batch"):
            raise ValueError(f"prefill must be 'auto', 'rows' or 'batch', got {prefill!r}")
        if kv_cache not in ("dynamic", "static"):
            raise ValueError(f"kv_cache must be 'dynamic' or 'static', got {kv_cache!r}")
        apply_threads(threads)
        self.device = device
        self.batch_size = batch_size
        self.model = resolve_model(model)
        self.dtype, self.dtype_reason = choose_dtype(dtype, device)
        self.decode_weights = choose_decode_weights(decode_weights, self.dtype, device)
        self.lm, self.tokenizer = load_model_and_tokenizer(self.model, device=device, dtype=self.dtype,
                                                           decode_weights=self.decode_weights)
        with _MODELS_LOCK:
            self._lock = _GENERATE_LOCKS.setdefault(id(self.lm), threading.Lock())
        eos = self.lm.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos] if eos is not None else []
        self.eos_ids = sorted(set(eos) | {self.tokenizer.eos_token_id} - {None})
        self.pad_id = self.tokenizer.pad_token_id
        self._constraint: _IdListConstraint | None = None
        self._choice_constraints: dict[tuple[str, ...], Any] = {}  # label set -> ChoiceConstraint
        self._continue_ids: list[int] | None = None  # the tokens continue_bias applies to, found once
        self._stop_criteria: dict[tuple[str, ...], Any] = {}  # stop strings -> transformers' criterion
        self.adapter = adapter
        self.adapter_name: str | None = None
        if adapter:
            with self._lock:  # injecting LoRA layers must not race a generate call on the shared model
                self.adapter_name = attach_adapter(self.lm, adapter)
        self.prefix_cache = prefix_cache
        self.prefill = ("batch" if device.startswith("cuda") else "rows") if prefill == "auto" else prefill
        self.kv_cache = kv_cache
        if isinstance(decode_threads, str) and decode_threads.lower() == "none":  # --backend-option decode_threads=none
            decode_threads = None
        if decode_threads not in ("auto", None) and (not isinstance(decode_threads, int) or decode_threads < 1):
            raise ValueError(f"decode_threads must be 'auto', None or an int >= 1, got {decode_threads!r}")
        self.decode_threads = decode_threads
        self.shrink_batch = shrink_batch
        self.decoded_row_steps = 0
        with _MODELS_LOCK:  # one cache per loaded model, shared by its views (see _prefix_cache_key)
            self._prefixes = _PREFIX_CACHES.setdefault(id(self.lm), _PrefixCache())
        self._joinable = _joinable(self.lm.config)

    def describe(self) -> dict[str, Any]:
        """What this backend runs with: everything that changes its outputs or its speed.

        Written into each run's settings (``<output>.settings.json``, see
        :mod:`dynamicrag.run_settings`).
        """
        import transformers

        return {
            "name": self.name,
            "model": self.model,
            "device": self.device,
            "dtype": str(self.dtype).removeprefix("torch."),
            "dtype_reason": self.dtype_reason,
            "batch_size": self.batch_size,
            "threads": torch.get_num_threads() if self.device == "cpu" else None,
            "thread_env": thread_settings(),
            "attention": getattr(self.lm.config, "_attn_implementation", None),
            "prefix_cache": self.prefix_cache,
            "prefill": self.prefill,
            "kv_cache": self.kv_cache,
            "decode_threads": self.decode_threads,
            "shrink_batch": self.shrink_batch,
            "decode_weights": self.decode_weights,
            "share_prefill": self.share_prefill,
            "adapter": self.adapter,
            "adapter_name": self.adapter_name,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        }

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
        n_gen = 1 if greedy else params.n  # sequences decoded per prompt
        # Similar lengths together: less padding to compute over.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[list[Completion]] = [[] for _ in prompts]
        with self._lock, adapter_active(self.lm, self.adapter_name), torch.inference_mode(), _seeded(params.seed, self.device):
            if self.shrink_batch and self.kv_cache == "dynamic":
                for i, tokens in zip(order, self._decode_queue([prompts[i] for i in order], params, n_gen)):
                    results[i] = self._completions(tokens, len(prompts[i]), params)
            else:
                per_batch = max(1, self.batch_size // n_gen)
                for start in range(0, len(order), per_batch):
                    chunk = order[start:start + per_batch]
                    for i, completions in zip(chunk, self._generate_batch([prompts[i] for i in chunk], params)):
                        results[i] = completions
        return results

    def _completions(self, tokens: list[list[int]], prompt_tokens: int, params: SamplingParams) -> list[Completion]:
        """``params.n`` completions of one prompt from its decoded sequences' new tokens."""
        texts = [self._completion(t, prompt_tokens, params) for t in tokens]
        # Greedy decoding gives one answer: n independent copies of it.
        return [dataclasses.replace(texts[0]) for _ in range(params.n)] if params.temperature == 0 else texts

    def _generate_kwargs(self, params: SamplingParams, prompt_len: int | list[int], max_new_tokens: int) -> dict[str, Any]:
        """``generate``'s kwargs for ``params``, for rows whose completions start at column
        ``prompt_len`` (one for the batch, or each row's own); ``stopping_criteria`` is a list
        the caller may add to."""
        from transformers import StoppingCriteriaList, StopStringCriteria

        kwargs: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.eos_ids,
            "stopping_criteria": StoppingCriteriaList(),
        }
        if params.temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            # top_k=0 turns off transformers' default top-k of 50, as vLLM/OpenAI have none.
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            # Built once per stop set: transformers' own (generate's stop_strings) builds it on
            # every call, 35-70 ms of scanning the vocabulary, as much as two decoding steps.
            key = tuple(params.stop)
            if key not in self._stop_criteria:
                self._stop_criteria[key] = StopStringCriteria(self.tokenizer, list(key))
            kwargs["stopping_criteria"].append(self._stop_criteria[key])
        if params.id_list_max is not None:
            if self._constraint is None:
                self._constraint = _IdListConstraint(self.tokenizer, self.eos_ids)
            kwargs["prefix_allowed_tokens_fn"] = self._constraint.prefix_fn(prompt_len, params.id_list_max, self.pad_id)
        kwargs.update(self._decoding_controls(params, prompt_len))
        return kwargs

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, **extra: Any) -> list[list[Completion]]:
        """One ``generate`` call over ``prompts``, every row decoded until the longest ends (a
        static KV cache, ``shrink_batch=False``, ``stream``); ``extra`` goes to it as is
        (``stream`` passes its streamer and a stopping criterion)."""
        n_gen = 1 if params.temperature == 0 else params.n
        # The prompts' KV cache built here (shared prefix, one prompt at a time, n samples from
        # one encoding), or the padded batch for generate to encode: see _prepare_inputs.
        batch, cache_kwargs = self._prepare_inputs(prompts, n_gen, params.max_new_tokens)
        prompt_len = batch["input_ids"].shape[1]
        kwargs = self._generate_kwargs(params, prompt_len, params.max_new_tokens)
        kwargs["stopping_criteria"].extend(extra.pop("stopping_criteria", []))
        with torch_threads(self._threads_for_decoding(*batch["input_ids"].shape, cache_kwargs)):
            out = self.lm.generate(**batch, **kwargs, **cache_kwargs, **extra)  # (batch * n_gen, prompt_len + new)
        self.decoded_row_steps += out.shape[0] * (out.shape[1] - prompt_len)
        return [self._completions([out[row * n_gen + j, prompt_len:].tolist() for j in range(n_gen)], len(prompts[row]), params)
                for row in range(len(prompts))]

    def _decode_queue(self, prompts: list[list[int]], params: SamplingParams, n_gen: int) -> list[list[list[int]]]:
        """Decode ``n_gen`` sequences of every prompt, at most ``batch_size`` rows at a time,
        without the rows that have finished and with new prompts in their places.

        transformers' ``generate`` decodes every row of a batch until the longest one ends;
        answers of a few tokens beside one of 200 spent most of a batch's steps on finished rows
        (70 % in benchmarks/throughput.py at batch 8), and a batch whose rows had ended one by
        one still decoded its last answer alone. Here each ``generate`` call stops as soon as a
        row has ended while prompts wait for a place, else once at most half of its rows are
        still writing (:class:`_FewRowsLeft`); the rows still writing go on in the next call
        from their KV cache (``batch_select_indices``), their tokens so far and their attention
        mask, and the next prompts waiting take the free places: each prompt's cache
        is built as :meth:`_prepare_inputs` builds it, and the two groups are left-padded to one
        width and stacked (padding is masked; positions follow the mask). So each row sees the
        same tokens at the same positions as alone. Rows join at different steps, so the
        completion-only processors, the id grammar and the stop test read each row's
        completion from its own column. Continuous batching, written here because transformers'
        own (``generate_batch``, paged attention) has no prefix cache, row prefill, int8
        decoding weights or these processors.

        Returns:
            Per prompt, the new tokens of each of its ``n_gen`` sequences (at most
            ``max_new_tokens``; a finished one may be followed by padding).
        """
        import torch.nn.functional as F

        cache_kw = _cache_kwarg(self.lm)
        out: list[list[list[int]]] = [[[] for _ in range(n_gen)] for _ in prompts]
        pending = deque(range(len(prompts)))
        rows: list[tuple[int, int]] = []  # (prompt, sample) of each row being decoded
        starts: list[int] = []  # the column where each row's completion starts
        ids = mask = cache = None
        while pending or rows:
            room = max(1, self.batch_size // n_gen) if not rows else (self.batch_size - len(rows)) // n_gen
            take = [pending.popleft() for _ in range(min(room, len(pending)))]
            expand = 1  # generate's num_return_sequences: only for a padded batch it encodes itself
            if take:
                batch, cache_kwargs = self._prepare_inputs([prompts[i] for i in take], n_gen, params.max_new_tokens)
                new_cache = cache_kwargs.get(cache_kw)
                if rows and new_cache is None:  # a padded batch for generate to encode cannot join rows in flight
                    pending.extendleft(reversed(take))
                    take = []
                elif not rows:
                    ids, mask, cache = batch["input_ids"], batch["attention_mask"], new_cache
                    expand = cache_kwargs.get("num_return_sequences", 1)
                    starts = [ids.shape[1]] * (len(take) * n_gen)
                else:
                    width = max(ids.shape[1], batch["input_ids"].shape[1])
                    starts = [s + width - ids.shape[1] for s in starts] + [width] * (len(take) * n_gen)
                    ids = torch.cat([_left_pad(ids, width, self.pad_id), _left_pad(batch["input_ids"], width, self.pad_id)])
                    mask = torch.cat([_left_pad(mask, width, 0), _left_pad(batch["attention_mask"], width, 0)])
                    cache = self._stacked_cache(cache, new_cache, width - 1)
                rows += [(i, j) for i in take for j in range(n_gen)]
            limits = [s + params.max_new_tokens for s in starts]
            # Stop at the first ended row only if its place can go to a waiting prompt (one
            # sequence a prompt; a prompt's n samples need n places).
            left = _FewRowsLeft(starts, limits, set(self.eos_ids) | {self.pad_id}, params.stop, self.tokenizer,
                                refill=bool(pending) and n_gen == 1)
            kwargs = self._generate_kwargs(params, starts, max(limits) - ids.shape[1])
            kwargs["stopping_criteria"].append(left)
            if cache is not None:
                kwargs[cache_kw] = cache
            elif expand > 1:
                kwargs["num_return_sequences"] = expand
            with torch_threads(self._threads_for_decoding(len(rows), ids.shape[1], {cache_kw: cache})):
                result = self.lm.generate(input_ids=ids, attention_mask=mask, return_dict_in_generate=True, **kwargs)
            seq = result.sequences  # (rows, width + new)
            self.decoded_row_steps += seq.shape[0] * (seq.shape[1] - ids.shape[1])
            ended = left.ended(seq)
            for r in ended.nonzero().flatten().tolist():
                prompt, sample = rows[r]
                out[prompt][sample] = seq[r, starts[r]:limits[r]].tolist()
            keep = (~ended).nonzero().flatten()
            mask = F.pad(mask.repeat_interleave(expand, dim=0), (0, seq.shape[1] - mask.shape[1]), value=1)[keep]
            ids = seq[keep]
            cache = getattr(result, cache_kw)  # the output field has the forward's name for it
            cache.batch_select_indices(keep)
            rows = [rows[r] for r in keep.tolist()]
            starts = [starts[r] for r in keep.tolist()]
        return out

    def _stacked_cache(self, first: Any, second: Any, length: int) -> Any:
        """One KV cache of ``first``'s rows then ``second``'s, each left-padded (zeros) to ``length``."""
        cache = _decoding_cache(self.lm.config)
        for layer, (a, b) in enumerate(zip(first.layers, second.layers)):
            keys = torch.cat([_left_pad(a.keys, length, 0, dim=2), _left_pad(b.keys, length, 0, dim=2)])
            values = torch.cat([_left_pad(a.values, length, 0, dim=2), _left_pad(b.values, length, 0, dim=2)])
            cache.update(keys, values, layer)
        return cache

    def _threads_for_decoding(self, rows: int, context: int, cache_kwargs: dict) -> int | None:
        """Torch threads for ``generate`` (None: unchanged). Only when the prompts are already in
        the cache, so generate only decodes. "auto" only for one row of at most
        ``_ONE_THREAD_MAX_CONTEXT`` tokens: at batch 8 one thread decodes no faster
        (benchmarks/speed_work.py, group ``decode``), and after a 1,500-token prompt attention
        over the cache needs both cores (fp32: 121 against 72 ms a step; weight_formats.py)."""
        if cache_kwargs.get(_cache_kwarg(self.lm)) is None:
            return None
        if self.decode_threads == "auto":
            single = self.device == "cpu" and rows == 1 and context <= _ONE_THREAD_MAX_CONTEXT
            return auto_decode_threads() if single else None
        return self.decode_threads

    def _decoding_controls(self, params: SamplingParams, prompt_len: int | list[int]) -> dict[str, Any]:
        """``generate`` kwargs for the loop controls and the label constraint, which count the
        completion only (see :mod:`dynamicrag.llm.logits` for why not transformers' own)."""
        from transformers import LogitsProcessorList, SequenceBiasLogitsProcessor

        from dynamicrag.llm.logits import ChoiceConstraint, CompletionFrequencyPenalty, CompletionNoRepeatNGram

        kwargs: dict[str, Any] = {}
        processors = LogitsProcessorList()
        if params.no_repeat_ngram_size:
            processors.append(CompletionNoRepeatNGram(params.no_repeat_ngram_size, prompt_len))
        if params.frequency_penalty:
            processors.append(CompletionFrequencyPenalty(params.frequency_penalty, prompt_len))
        if params.continue_bias:
            if self._continue_ids is None:
                self._continue_ids = continue_token_ids(self.tokenizer)
            processors.append(SequenceBiasLogitsProcessor([[[i], params.continue_bias] for i in self._continue_ids]))
        if processors:
            kwargs["logits_processor"] = processors
        if params.choices is not None:
            key = tuple(params.choices)
            if key not in self._choice_constraints:
                self._choice_constraints[key] = ChoiceConstraint(self.tokenizer, key, self.eos_ids)
            kwargs["prefix_allowed_tokens_fn"] = self._choice_constraints[key].prefix_fn(prompt_len, self.pad_id)
        return kwargs

    def stream(self, chat: Chat, params: SamplingParams) -> Iterator[str]:
        """Yield the text of one completion of ``chat`` in pieces, as the model writes it.

        The same inputs and decoding as :meth:`generate` (one prompt, ``params.n`` must be 1;
        the prefix cache and row prefill of :meth:`_prepare_inputs`, under this backend's
        adapter; the decoding controls of :meth:`_decoding_controls`), run in a thread that feeds
        transformers' ``TextIteratorStreamer``. Closing the iterator early (the caller stopped
        reading, or Ctrl-C) stops the generation at the next token.

        Raises:
            ValueError: ``params.n`` is not 1.
        """
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        if params.n != 1:
            raise ValueError(f"stream gives one completion; got n={params.n}")
        prompt = self.encode(chat)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        stop = threading.Event()
        failure: list[BaseException] = []

        class _Stopped(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs: Any) -> torch.BoolTensor:
                return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool)

        def run() -> None:
            try:
                # As generate: this backend's adapter (if any) on for the call, under the shared lock.
                with self._lock, adapter_active(self.lm, self.adapter_name), torch.inference_mode(), \
                        _seeded(params.seed, self.device):
                    self._generate_batch([prompt], params, streamer=streamer,
                                         stopping_criteria=StoppingCriteriaList([_Stopped()]))
            except BaseException as err:  # noqa: BLE001 - re-raised in the reading thread below
                failure.append(err)
                streamer.end()  # wake the reader, which would otherwise wait for ever

        thread = threading.Thread(target=run, name="dynamicrag-stream", daemon=True)
        thread.start()
        try:
            # The stop strings end generate's completions (see _completion): cut the stream there too.
            yield from cut_at_stop(streamer, params.stop)
        finally:
            stop.set()  # a no-op once generation ended; otherwise stops it at the next token
            thread.join()
        if failure:
            raise failure[0]

    # --- Speed: what generate starts from ------------------------------------------------

    def _prefix_cache_key(self) -> Hashable:
        """The weights state a cached prefix KV belongs to: the LoRA adapter(s) switched on now.

        Read from the model's LoRA layers at the time of the call, inside
        :func:`~dynamicrag.llm.lora.adapter_active`: the prefix cache is shared by every backend
        on this model, so a prefix computed by the generator's view (adapters off) must never
        serve the reranker's view (its adapter on), and the other way round. ``()`` is the base
        model (no LoRA layers, or all disabled), else the sorted names of the active adapters.
        :meth:`clear_prefix_cache` drops every entry (for weight changes this key cannot see,
        e.g. training in place).
        """
        if not hasattr(self.lm, "peft_config"):  # peft writes it on the model it injects layers into
            return ()
        from peft.tuners.tuners_utils import BaseTunerLayer

        active = {tuple(m.active_adapters) for m in self.lm.modules()
                  if isinstance(m, BaseTunerLayer) and not m.disable_adapters}
        return tuple(sorted(active))

    def clear_prefix_cache(self) -> None:
        """Forget every cached prompt prefix of this model, for every backend on it (needed
        after the weights change in place)."""
        self._prefixes.clear()

    def _prepare_inputs(self, prompts: list[list[int]], n: int, max_new_tokens: int) -> tuple[dict, dict]:
        """The inputs of ``generate`` for ``prompts``, with ``n`` sequences generated per prompt.

        Returns ``(batch, kwargs)``. Either the left-padded batch, which ``generate`` encodes in
        one pass (``prefill="batch"`` without a cached prefix, or ``n`` samples without
        ``share_prefill``), or rows laid out as ``[shared prefix][padding][rest of the
        prompt]`` with the KV cache of every token but the last already computed: the prefix
        once (or from :class:`_PrefixCache`), then each prompt's rest on its own, each row
        repeated ``n`` times. ``generate`` then continues from the last token; the attention
        mask hides the padding and positions follow from the mask (``cumsum``), so each row
        sees the same tokens at the same positions as without the cache.
        """
        if not self._joinable or (n > 1 and not self.share_prefill):
            return self._padded_inputs(prompts, n)
        prefix = self._prefixes.lookup(self._prefix_cache_key(), prompts, self._encode) if self.prefix_cache else None
        if not (prefix or self.prefill == "rows" or n > 1):
            return self._padded_inputs(prompts, n)
        p_len = len(prefix.tokens) if prefix else 0
        rest = max(len(p) for p in prompts) - p_len  # >= 1: the prefix leaves each prompt a token
        if p_len + rest < 2:
            return self._padded_inputs(prompts, n)
        ids = torch.full((len(prompts), p_len + rest), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        layers: list[list[tuple[torch.Tensor, torch.Tensor] | None]] = []
        for row, prompt in enumerate(prompts):
            start = p_len + rest - (len(prompt) - p_len)  # the row's rest, right-aligned
            ids[row, :p_len] = torch.tensor(prompt[:p_len])
            ids[row, start:] = torch.tensor(prompt[p_len:])
            mask[row, :p_len] = 1
            mask[row, start:] = 1
            layers.append(self._encode_rest(prompt, prefix))
        cache = self._joined_cache(layers, prefix, [len(p) - p_len - 1 for p in prompts], rest - 1,
                                   n, p_len + rest + max_new_tokens)
        batch = {"input_ids": ids.repeat_interleave(n, dim=0).to(self.device),
                 "attention_mask": mask.repeat_interleave(n, dim=0).to(self.device)}
        return batch, {_cache_kwarg(self.lm): cache}

    def _padded_inputs(self, prompts: list[list[int]], n: int) -> tuple[dict, dict]:
        """The left-padded batch; ``generate`` encodes it (and ``n`` copies of each prompt)."""
        batch = self.tokenizer.pad({"input_ids": prompts}, padding=True, return_tensors="pt").to(self.device)
        kwargs: dict[str, Any] = {"num_return_sequences": n} if n > 1 else {}
        if self.kv_cache == "static":
            kwargs["cache_implementation"] = "static"
        return dict(batch), kwargs

    def _forward(self, tokens: list[int], cache: Any) -> None:
        """Run ``tokens`` through the model after what ``cache`` holds, filling it."""
        ids = torch.tensor([tokens], device=self.device)
        self.lm(input_ids=ids, use_cache=True, logits_to_keep=1, **{_cache_kwarg(self.lm): cache})  # no logits needed

    def _encode(self, tokens: list[int], base: _Prefix | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """KV of ``tokens``, per layer (1, kv_heads, len, dim), continuing from ``base`` (a
        prefix of ``tokens`` whose KV is known) when given."""
        from transformers import DynamicCache

        cache = DynamicCache(ddp_cache_data=base.kv if base else None, config=self.lm.config)
        self._forward(tokens[len(base.tokens) if base else 0:], cache)
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _encode_rest(self, prompt: list[int], prefix: _Prefix | None) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """KV of ``prompt`` after the prefix, but for its last token, shape (1, kv_heads, len, dim)
        per layer; None when there is no such token."""
        from transformers import DynamicCache

        p_len = len(prefix.tokens) if prefix else 0
        if len(prompt) - p_len < 2:
            return None
        cache = DynamicCache(ddp_cache_data=prefix.kv if prefix else None, config=self.lm.config)
        self._forward(prompt[p_len:-1], cache)
        return [(layer.keys[:, :, p_len:], layer.values[:, :, p_len:]) for layer in cache.layers]

    def _joined_cache(self, rows: list, prefix: _Prefix | None, lengths: list[int], width: int, n: int,
                      max_len: int) -> Any:
        """One batch cache from the prefix and each row's own KV: per row the prefix, zeros
        where the row is padded, then its KV right-aligned in ``width`` positions; each row
        repeated ``n`` times (row i -> rows i*n .. i*n+n-1, as ``generate`` orders samples)."""
        from transformers import StaticCache

        cache = (StaticCache(config=self.lm.config, max_cache_len=max_len) if self.kv_cache == "static"
                 else _decoding_cache(self.lm.config))
        shapes = prefix.kv if prefix else next(r for r in rows if r)
        p_len = len(prefix.tokens) if prefix else 0
        for layer, (key, _) in enumerate(shapes):
            joined = []
            for part in (0, 1):  # keys, values
                out = key.new_zeros((len(rows), key.shape[1], p_len + width, key.shape[3]))  # (batch, kv_heads, len, dim)
                if prefix:
                    out[:, :, :p_len] = prefix.kv[layer][part]
                for i, (row, length) in enumerate(zip(rows, lengths)):
                    if row:
                        out[i, :, p_len + width - length:] = row[layer][part][0]
                joined.append(out.repeat_interleave(n, dim=0) if n > 1 else out)
            for row in rows:
                if row:
                    row[layer] = None  # free each row's own copy once joined
            cache.update(joined[0], joined[1], layer)
        return cache

    def loglikelihood(
        self, chats: Sequence[Chat | str], continuations: Sequence[str], *, batch_size: int | None = None,
        groups: Sequence[Hashable] | None = None, stats: dict[str, int] | None = None,
    ) -> list[float]:
        """Teacher-forced log-likelihood of each continuation as the start of the assistant's reply.

        No decoding: one forward pass per batch (see :func:`continuation_loglikelihood`, which
        shares each group's common prefix within a batch itself; the generate path's
        :class:`_PrefixCache` is not used here).

        Args:
            chats: Chat prompts (the chat template's assistant header is appended), or plain
                strings, tokenized as they are (no template: a completion-style prompt).
            continuations: One text per chat, scored as the first tokens of the reply.
            batch_size: Sequences per forward pass (default: the backend's ``batch_size``).
            groups: A key per chat: chats with the same key (one question's prompts) share the
                encoding of their common prefix. None: no sharing.
            stats: If given, the forward passes and tokens run are added to it.

        Returns:
            ``sum_t log p(c_t | chat, c_<t)`` in nats per chat, in input order.
        """
        if len(chats) != len(continuations):
            raise ValueError(f"{len(chats)} chats but {len(continuations)} continuations")
        prompts = [self.tokenizer(chat, add_special_tokens=False)["input_ids"] if isinstance(chat, str) else self.encode(chat)
                   for chat in chats]
        conts = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        with self._lock, adapter_active(self.lm, self.adapter_name):  # this backend's adapter (or none)
            return continuation_loglikelihood(
                self.lm, prompts, conts, pad_id=self.pad_id, batch_size=batch_size or self.batch_size,
                groups=groups, stats=stats,
            )

    def _completion(self, new: list[int], prompt_tokens: int, params: SamplingParams) -> Completion:
        stops = set(self.eos_ids) | {self.pad_id}
        end = next((k for k, t in enumerate(new) if t in stops), None)
        tokens = new[:end] if end is not None else new
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cut = min((p for p in (text.find(s) for s in params.stop) if p >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
        # A row that wrote a stop string is padded from there on, and the padding token may be
        # the end token (SmolLM2's is): only a row without one ended on a written end token.
        ended = end is not None and new[end] in self.eos_ids and cut < 0
        finish = "stop" if ended or cut >= 0 else "length"
        return Completion(
            text=text,
            prompt_tokens=prompt_tokens,
            completion_tokens=len(tokens) + (1 if ended else 0),
            finish_reason=finish,
        )


def clear_prefix_caches() -> None:
    """Forget the cached prompt prefixes of every loaded model (as each backend's
    :meth:`TransformersBackend.clear_prefix_cache`): the next calls encode their prefixes again,
    as a fresh process would."""
    with _MODELS_LOCK:
        for cache in _PREFIX_CACHES.values():
            cache.clear()


# ---------------------------------------------------------------- teacher-forced scoring


def continuation_loglikelihood(
    lm: Any,
    prompts: Sequence[list[int]],
    continuations: Sequence[list[int]],
    *,
    pad_id: int,
    batch_size: int = 8,
    groups: Sequence[Hashable] | None = None,
    stats: dict[str, int] | None = None,
) -> list[float]:
    """Sum of the log-probabilities of each continuation's tokens after its prompt.

    Sequences are batched by length (less padding). With ``groups``, a batch holds sequences
    of one group only (e.g. one question's prompts, which share the system prompt, task line
    and query): the longest prefix common to the batch is encoded once and its KV cache
    repeated for every row. Each row's rest follows, left-padded, so every continuation ends
    in the last column and only the last ``max continuation + 1`` positions go through the
    vocabulary projection (``logits_to_keep``). Written here rather than taken from a library
    because the scoring must run on the backend's own loaded model and chat template
    (lm-eval-harness would load its own copy and shares no prefix).

    Args:
        lm: A causal LM (in eval mode).
        prompts: Token ids of each prompt.
        continuations: Token ids of each continuation (at least one token each).
        pad_id: Padding token id.
        batch_size: Sequences per forward pass.
        groups: A key per sequence; sequences with the same key may share a prefix cache.
            None: no sharing.
        stats: If given, ``forward_passes`` and ``tokens`` (tokens run through the model,
            after prefix sharing, padding not counted) are added to it.

    Returns:
        One log-likelihood in nats per pair, in input order.

    Raises:
        ValueError: An empty prompt or continuation, or lengths that differ.
    """
    if len(prompts) != len(continuations) or (groups is not None and len(groups) != len(prompts)):
        raise ValueError(f"{len(prompts)} prompts, {len(continuations)} continuations and groups of another length")
    if any(not c for c in continuations) or any(not p for p in prompts):
        raise ValueError("every prompt and continuation needs at least one token")
    seqs = [list(p) + list(c) for p, c in zip(prompts, continuations)]
    by_group: dict[Hashable, list[int]] = {}
    for i in range(len(seqs)):
        by_group.setdefault(groups[i] if groups is not None else None, []).append(i)
    chunks = []
    for members in by_group.values():
        members.sort(key=lambda i: len(seqs[i]))
        chunks += [members[k:k + batch_size] for k in range(0, len(members), batch_size)]
    stats = stats if stats is not None else {}
    out = [0.0] * len(seqs)
    with torch.inference_mode():
        for chunk in chunks:
            shared = 0
            if groups is not None:
                # Every row keeps at least its last prompt token: its logits predict the first answer token.
                shared = min(_common_prefix([seqs[i] for i in chunk]), min(len(prompts[i]) for i in chunk) - 1)
            cache = _prefix_cache(lm, seqs[chunk[0]][:shared]) if shared else None
            rows = [seqs[i][shared:] for i in chunk]
            keep = max(len(continuations[i]) for i in chunk) + 1
            token_logps = _suffix_logps(lm, rows, keep, pad_id, cache, shared)
            stats["forward_passes"] = stats.get("forward_passes", 0) + 1 + bool(shared)
            stats["tokens"] = stats.get("tokens", 0) + shared + sum(map(len, rows))
            for row, i in enumerate(chunk):
                out[i] = float(token_logps[row, keep - 1 - len(continuations[i]):].sum())
    return out


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    first, n = seqs[0], min(map(len, seqs))
    return next((k for k in range(n) if any(s[k] != first[k] for s in seqs)), n)


def _prefix_cache(lm: Any, prefix: list[int]) -> Any:
    from transformers import DynamicCache

    cache = DynamicCache(config=lm.config)
    ids = torch.tensor([prefix], device=next(lm.parameters()).device)
    lm(input_ids=ids, use_cache=True, logits_to_keep=1, **{_cache_kwarg(lm): cache})
    return cache


def _decoding_cache(config: Any) -> Any:
    """A ``DynamicCache`` for decoding whose layers append in place (:func:`_growing_layer`)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=config)
    cache.layers = [_growing_layer()() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


@functools.cache
def _growing_layer() -> type:
    """transformers' ``DynamicLayer`` that appends each step's keys and values into spare room.

    ``DynamicLayer`` grows by ``torch.cat``: every decoding step copies the whole cache of
    every layer, 45-100 us a layer (1 row of 400 tokens to 8 rows of 1,700, bf16) against 2-4
    us to write one position in place: 3-6 ms of a 23-66 ms step. Here the keys and values
    are views of a larger buffer; a step writes its position into the room after them, and a
    new buffer (a quarter larger, at least 64 positions) is made at the first update (the
    prompts' KV, copied once) and then only when the room runs out or the layer's tensors were
    replaced (``batch_select_indices``; ``crop`` keeps the view).
    Defined lazily: transformers is imported on first use only.
    """
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            length, new = (self.keys.shape[-2] if self.keys.numel() else 0), key_states.shape[-2]
            room = getattr(self, "room", None)
            if (not length or room is None or room[0].data_ptr() != self.keys.data_ptr()
                    or room[0].shape[0] != key_states.shape[0] or room[0].shape[-2] < length + new):
                size = length + new + max(64, (length + new) // 4)
                room = tuple(t.new_empty((*t.shape[:2], size, t.shape[-1])) for t in (key_states, value_states))
                if length:
                    room[0][:, :, :length], room[1][:, :, :length] = self.keys, self.values
                self.room = room
            room[0][:, :, length:length + new] = key_states
            room[1][:, :, length:length + new] = value_states
            self.keys, self.values = room[0][:, :, :length + new], room[1][:, :, :length + new]
            return self.keys, self.values

    return GrowingLayer


def _cache_kwarg(lm: Any) -> str:
    """The forward's name for the KV cache: ``cache`` from transformers 5.x on, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(lm.forward).parameters else "past_key_values"


def _suffix_logps(lm: Any, rows: list[list[int]], keep: int, pad_id: int, cache: Any, shared: int) -> torch.Tensor:
    """Log-probabilities of each row's last ``keep - 1`` tokens, given a shared prefix's cache.

    Rows are left-padded after the prefix (padding in the middle, masked out; positions
    continue from the prefix), so they all end in the last column.
    """
    device = next(lm.parameters()).device
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        ids[r, width - len(row):] = torch.tensor(row)
        mask[r, width - len(row):] = 1
    ids, mask = ids.to(device), mask.to(device)
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
    kwargs: dict[str, Any] = {}
    if cache is not None:
        past = cache
        past.batch_repeat_interleave(len(rows))  # one copy of the prefix per row
        mask = torch.cat([torch.ones((len(rows), shared), dtype=torch.long, device=device), mask], dim=1)
        kwargs.update({_cache_kwarg(lm): past, "use_cache": True})
    logits = lm(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=keep, **kwargs).logits
    logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts t + 1
    return logps.gather(-1, ids[:, width - keep + 1:, None])[..., 0]  # (rows, keep - 1)
