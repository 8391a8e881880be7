"""The GPU backend: an in-process vLLM engine (extra ``[vllm]``).

vLLM batches, caches shared prompt prefixes (the reranker's instruction is the same for every
query) and constrains decoding to a regex, which makes it the backend for GPU machines. The
mapping from :class:`~dynamicrag.llm.base.SamplingParams` is a pure function,
:func:`to_vllm_sampling_kwargs`, so it is tested without vLLM installed.

Example:
    >>> llm = VLLMBackend("Qwen/Qwen2.5-7B-Instruct", tensor_parallel_size=2)
    >>> llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=8))
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dynamicrag.llm.base import Chat, Completion, SamplingParams, continue_token_ids, loop_frequency_penalty
from dynamicrag.llm.constrain import id_list_regex
from dynamicrag.llm.models import resolve_model

logger = logging.getLogger(__name__)


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ImportError("the vLLM backend needs vLLM and a GPU: `pip install dynamicrag[vllm]`") from e
    return vllm


def to_vllm_sampling_kwargs(params: SamplingParams, continue_ids: Sequence[int] = ()) -> dict[str, Any]:
    """Keyword arguments of ``vllm.SamplingParams`` for ``params``.

    The id grammar is returned as a plain ``{"regex": ...}`` under ``"structured_outputs"``, a
    label set (``choices``) as ``{"choice": [...]}`` (vLLM's guided choice);
    :meth:`VLLMBackend.sampling_params` wraps it in the class the installed vLLM has
    (``StructuredOutputsParams``, or ``GuidedDecodingParams`` before vLLM 0.10.2). In-range and
    distinct ids are left to the reranker's parser, as a regex cannot express them.
    ``no_repeat_ngram_size`` has no vLLM counterpart and is sent as ``frequency_penalty``
    (:func:`~dynamicrag.llm.base.loop_frequency_penalty`).

    ``continue_bias`` becomes vLLM's ``logit_bias`` on ``continue_ids``.

    Args:
        params: The backend-neutral settings.
        continue_ids: The model's continue tokens (:func:`~dynamicrag.llm.base.continue_token_ids`),
            needed when ``params.continue_bias`` is set.

    Returns:
        A dict of plain values (no vLLM objects).

    Raises:
        ValueError: ``continue_bias`` is set and ``continue_ids`` is empty.
    """
    kwargs: dict[str, Any] = {
        "temperature": params.temperature,  # vLLM decodes greedily at 0
        "top_p": params.top_p,
        "max_tokens": params.max_new_tokens,
        "n": params.n,
    }
    if params.seed is not None:
        kwargs["seed"] = params.seed
    if params.stop:
        kwargs["stop"] = list(params.stop)  # excluded from the output text, as in SamplingParams
    if params.id_list_max is not None:
        kwargs["structured_outputs"] = {"regex": id_list_regex(params.id_list_max)}
    if params.choices is not None:
        kwargs["structured_outputs"] = {"choice": list(params.choices)}
    # vLLM has no n-gram ban: an asked-for no_repeat_ngram_size becomes its frequency_penalty,
    # which also counts output tokens only (see loop_frequency_penalty for the difference).
    penalty = loop_frequency_penalty(params)
    if penalty:
        kwargs["frequency_penalty"] = penalty
    if params.continue_bias:
        if not continue_ids:
            raise ValueError("continue_bias needs the model's continue tokens (its vocabulary has no '],' token?)")
        kwargs["logit_bias"] = {i: params.continue_bias for i in continue_ids}
    return kwargs


class VLLMBackend:
    """Generate with an in-process vLLM engine, using the model's own chat template.

    Args:
        model: ``None`` for the bundled SmolLM2 (converted checkpoint), a local checkpoint or a
            hub id.
        tensor_parallel_size: GPUs one model is split over.
        data_parallel_size: Engine replicas (needs a vLLM whose ``LLM`` accepts it).
        enable_prefix_caching: Reuse the KV cache of shared prompt prefixes.
        max_model_len: Context cap (lowers memory); ``None`` keeps the model's.
        gpu_memory_utilization: Share of GPU memory vLLM may take.
        **engine_kwargs: Passed to ``vllm.LLM`` unchanged.
    """

    name = "vllm"

    def __init__(
        self,
        model: str | None = None,
        *,
        tensor_parallel_size: int = 1,
        data_parallel_size: int = 1,
        enable_prefix_caching: bool = True,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.9,
        **engine_kwargs: Any,
    ) -> None:
        self._vllm = _import_vllm()
        self.model = resolve_model(model)
        kwargs: dict[str, Any] = {
            "model": self.model,
            "tensor_parallel_size": tensor_parallel_size,
            "enable_prefix_caching": enable_prefix_caching,
            "gpu_memory_utilization": gpu_memory_utilization,
            **engine_kwargs,
        }
        if data_parallel_size > 1:
            kwargs["data_parallel_size"] = data_parallel_size
        if max_model_len is not None:
            kwargs["max_model_len"] = max_model_len
        logger.info("Starting vLLM on %s", self.model)
        self._engine_kwargs = {k: v for k, v in kwargs.items() if k != "model"}
        self.llm = self._vllm.LLM(**kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self._continue_ids: list[int] | None = None  # found at the first continue_bias

    def describe(self) -> dict[str, Any]:
        """The engine's settings, as passed to ``vllm.LLM``, and the vLLM version."""
        return {
            "name": self.name,
            "model": self.model,
            **{k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
               for k, v in self._engine_kwargs.items()},
            "vllm": getattr(self._vllm, "__version__", None),
        }

    def sampling_params(self, params: SamplingParams) -> Any:
        """``params`` as a ``vllm.SamplingParams`` of the installed vLLM version."""
        if params.continue_bias and self._continue_ids is None:
            self._continue_ids = continue_token_ids(self.tokenizer)
        kwargs = to_vllm_sampling_kwargs(params, self._continue_ids or ())
        constraint = kwargs.pop("structured_outputs", None)
        if constraint is not None:
            from vllm import sampling_params as sp

            if hasattr(sp, "StructuredOutputsParams"):
                kwargs["structured_outputs"] = sp.StructuredOutputsParams(**constraint)
            else:  # vLLM < 0.10.2
                kwargs["guided_decoding"] = sp.GuidedDecodingParams(**constraint)
        return self._vllm.SamplingParams(**kwargs)

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[Completion]]:
        """Return ``params.n`` completions for each chat, in input order."""
        if not chats:
            return []
        outputs = self.llm.chat(list(chats), self.sampling_params(params), use_tqdm=False)
        return [
            [
                Completion(
                    text=o.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(o.token_ids),
                    finish_reason=o.finish_reason,
                )
                for o in out.outputs
            ]
            for out in outputs
        ]

    def count_tokens(self, chat: Chat) -> int:
        """Prompt tokens of ``chat`` after the model's chat template."""
        text = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
