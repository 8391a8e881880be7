"""A CPU backend on llama.cpp (extra ``[llamacpp]``): runs GGUF files quantised, as shipped.

The bundled SmolLM2 GGUF runs here without the fp32 conversion the transformers backend needs,
and decodes several times faster than the transformers backend on a CPU; its prompt prefill
can be slower (benchmarks/README.md, "llama.cpp, built"). ``llama-cpp-python`` has no
binary wheel on PyPI for CPUs, so installing it compiles llama.cpp (about 10 minutes on 2
cores): it is optional. The id grammar is enforced with a GBNF grammar (ids in 1..k).

Example:
    >>> llm = LlamaCppBackend()  # the bundled SmolLM2-135M-Instruct Q4_1
    >>> llm.generate([[{"role": "user", "content": "Hi"}]], SamplingParams(max_new_tokens=8))
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from dynamicrag.llm.base import Chat, Completion, SamplingParams, continue_ids_in, loop_frequency_penalty
from dynamicrag.llm.models import bundled_gguf_path
from dynamicrag.llm.constrain import id_list_gbnf
from dynamicrag.llm.openai_backend import choice_gbnf

logger = logging.getLogger(__name__)


def _import_llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise ImportError("the llama.cpp backend needs llama-cpp-python: `pip install dynamicrag[llamacpp]`") from e
    return llama_cpp


class LlamaCppBackend:
    """Generate with llama.cpp through ``llama_cpp.Llama.create_chat_completion``.

    The chat template is the one stored in the GGUF file. Sampling matches the other
    backends: no top-k, min-p or repetition penalty unless given in ``llama_kwargs``. A label
    set (``choices``) is enforced with a GBNF alternation; ``no_repeat_ngram_size`` becomes a
    ``frequency_penalty`` (:func:`~dynamicrag.llm.base.loop_frequency_penalty`).

    Args:
        model_path: A ``.gguf`` file; ``None`` for the bundled SmolLM2-135M-Instruct.
        n_ctx: Context window in tokens.
        n_threads: CPU threads; ``None`` lets llama.cpp choose.
        **llama_kwargs: Passed to ``llama_cpp.Llama`` unchanged (e.g. ``n_gpu_layers``).
    """

    name = "llamacpp"

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *,
        n_ctx: int = 8192,
        n_threads: int | None = None,
        **llama_kwargs: Any,
    ) -> None:
        self._llama_cpp = _import_llama_cpp()
        path = bundled_gguf_path() if model_path is None else os.fspath(model_path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"GGUF file {path} does not exist")
        self.model = str(path)
        self.llm = self._llama_cpp.Llama(model_path=self.model, n_ctx=n_ctx, n_threads=n_threads,
                                         verbose=False, **llama_kwargs)
        self._settings = {"n_ctx": n_ctx, "n_threads": n_threads, **llama_kwargs}
        self._grammars: dict[int, Any] = {}  # id_list_max -> its compiled id grammar
        self._continue_ids: list[int] | None = None  # found at the first continue_bias

    def describe(self) -> dict[str, Any]:
        """The ``llama_cpp.Llama`` settings (quantisation is the GGUF file's own)."""
        return {
            "name": self.name,
            "model": self.model,
            "batch_size": 1,  # one prompt at a time
            **{k: v if isinstance(v, (bool, int, float, str, type(None))) else repr(v)
               for k, v in self._settings.items()},
            "llama_cpp": getattr(self._llama_cpp, "__version__", None),
        }

    def generate(self, chats: Sequence[Chat], params: SamplingParams) -> list[list[Completion]]:
        """Return ``params.n`` completions for each chat, in input order (one at a time)."""
        kwargs: dict[str, Any] = {
            "temperature": params.temperature,  # llama.cpp samples greedily at 0
            "top_p": params.top_p,
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,  # counts the prompt too; frequency_penalty counts the output only
            # llama.cpp has no n-gram ban: see loop_frequency_penalty.
            "frequency_penalty": loop_frequency_penalty(params),
            "max_tokens": params.max_new_tokens,
            "stop": list(params.stop) or None,
        }
        if params.id_list_max is not None:
            if params.id_list_max not in self._grammars:
                self._grammars[params.id_list_max] = self._llama_cpp.LlamaGrammar.from_string(
                    id_list_gbnf(params.id_list_max), verbose=False)
            kwargs["grammar"] = self._grammars[params.id_list_max]
        if params.choices is not None:
            kwargs["grammar"] = self._llama_cpp.LlamaGrammar.from_string(choice_gbnf(params.choices), verbose=False)
        if params.continue_bias:
            if self._continue_ids is None:
                special = {self.llm.token_bos(), self.llm.token_eos()}
                self._continue_ids = continue_ids_in(
                    (i, self.llm.detokenize([i]).decode("utf-8", "replace"))
                    for i in range(self.llm.n_vocab()) if i not in special)
            kwargs["logit_bias"] = {str(i): params.continue_bias for i in self._continue_ids}  # OpenAI's form
        results = []
        for chat in chats:
            completions = []
            for i in range(params.n):
                # One seed for all n samples would give n copies: offset it per sample.
                seed = None if params.seed is None else params.seed + i
                response = self.llm.create_chat_completion(messages=chat, seed=seed, **kwargs)
                usage, choice = response["usage"], response["choices"][0]
                completions.append(Completion(
                    text=choice["message"]["content"] or "",
                    prompt_tokens=usage["prompt_tokens"],
                    completion_tokens=usage["completion_tokens"],
                    finish_reason=choice["finish_reason"],
                ))
            results.append(completions)
        return results

    def count_tokens(self, chat: Chat) -> int:
        """Prompt tokens of ``chat`` after the GGUF's chat template."""
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{self.model} has no chat template in its metadata")
        vocab = self.llm
        formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=vocab.detokenize([vocab.token_eos()]).decode(),
            bos_token=vocab.detokenize([vocab.token_bos()]).decode(),
            add_generation_prompt=True,
        )
        prompt = formatter(messages=chat).prompt
        return len(self.llm.tokenize(prompt.encode(), add_bos=False, special=True))
