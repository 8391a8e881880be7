"""LoRA adapters on one loaded base model, switched on per call.

The reranker and the generator may run on the same base model with different adapters (the
shipped reranker adapter, the untrained base for the generator). Loading the base twice would
double the memory, so the base is loaded once (:func:`~dynamicrag.llm.transformers_backend.load_model_and_tokenizer`
shares it) and every adapter is attached to it with peft: ``PeftModel.from_pretrained`` for the
first, ``load_adapter`` for the others. peft injects the LoRA layers into the base model's
modules in place, so the base model object itself runs whichever adapter is switched on.

The resting state is "all adapters off": a call that wants an adapter switches it on for its
duration (:func:`adapter_active`) and off again afterwards, under the model's generate lock. So
code that calls the shared model directly (the causal pointwise scorer) always sees the base
model. This is why peft's ``disable_adapter()`` context, which assumes "adapter on" at rest, is
not used here.

Example:
    >>> lm, tok = load_model_and_tokenizer(None)  # doctest: +SKIP
    >>> name = attach_adapter(lm, "runs/recipe/adapter")
    >>> with adapter_active(lm, name):
    ...     lm.generate(...)  # the adapter's outputs; outside the block, the base model's
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes beside the weights

_PEFT: dict[int, Any] = {}  # id(base model) -> the PeftModel wrapping it
_NAMES: dict[int, dict[str, str]] = {}  # id(base model) -> adapter folder -> its peft adapter name
_LOCK = threading.Lock()


def check_adapter_folder(folder: str | Path) -> Path:
    """The adapter folder, made absolute, once it is known to hold a peft adapter.

    Raises:
        FileNotFoundError: ``folder`` does not exist (the message names it).
        ValueError: ``folder`` holds no ``adapter_config.json``.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"adapter folder not found: {folder}")
    if not (path / ADAPTER_CONFIG).is_file():
        raise ValueError(f"{path} is not a LoRA adapter folder: it holds no {ADAPTER_CONFIG}")
    return path.resolve()


def _adapter_name(folder: Path, taken: set[str]) -> str:
    """A peft adapter name for ``folder``: its manifest name, else the folder name, made unique.

    peft keeps adapters in ``ModuleDict``s, whose keys cannot hold dots.
    """
    name = folder.name
    manifest = folder / "manifest.json"
    if manifest.is_file():
        try:
            name = json.loads(manifest.read_text("utf-8")).get("name") or name
        except (json.JSONDecodeError, AttributeError):
            pass  # a bad manifest is reported by read_manifest where settings are read
    base = re.sub(r"[^A-Za-z0-9_-]", "_", name) or "adapter"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}_{n}"
    return name


def attach_adapter(lm: Any, folder: str | Path) -> str:
    """Load the LoRA adapter in ``folder`` onto the loaded model ``lm``, once per folder.

    Args:
        lm: A transformers causal LM, shared by every backend on that base.
        folder: A folder written by peft's ``save_pretrained``.

    Returns:
        The adapter's peft name (pass it to :func:`adapter_active`). The adapter is off until then.

    Raises:
        FileNotFoundError, ValueError: ``folder`` is not an adapter folder, or does not fit
            ``lm`` (the message names the folder).
    """
    from peft import PeftModel

    path = check_adapter_folder(folder)
    key = id(lm)
    with _LOCK:
        names = _NAMES.setdefault(key, {})
        if str(path) in names:
            return names[str(path)]
        name = _adapter_name(path, set(names.values()))
        logger.info("Attaching LoRA adapter %s as %r", path, name)
        try:
            # peft asks transformers' deprecated `is_gradient_checkpointing` (a FutureWarning
            # every `ask` would print); inference never checkpoints.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
                if key not in _PEFT:
                    # Injects the LoRA layers into lm's own modules: lm now runs the adapter when on.
                    _PEFT[key] = PeftModel.from_pretrained(lm, str(path), adapter_name=name, is_trainable=False)
                else:
                    _PEFT[key].load_adapter(str(path), adapter_name=name, is_trainable=False)
        except (RuntimeError, ValueError, KeyError, OSError) as err:
            raise ValueError(f"{path}: cannot load this LoRA adapter onto the base model: {err}") from err
        _PEFT[key].base_model.disable_adapter_layers()  # resting state: the base model
        names[str(path)] = name
        return name


def attached_adapters(lm: Any) -> dict[str, str]:
    """Adapter folder -> peft name of every adapter attached to ``lm``."""
    with _LOCK:
        return dict(_NAMES.get(id(lm), {}))


@contextlib.contextmanager
def adapter_active(lm: Any, name: str | None) -> Iterator[None]:
    """Run ``lm`` with adapter ``name`` on for the block (``None``: the base model, as at rest).

    Switching is not thread safe by itself: hold the model's generate lock around the block,
    as :class:`~dynamicrag.llm.transformers_backend.TransformersBackend` does.
    """
    if name is None:
        yield
        return
    peft_model = _PEFT.get(id(lm))
    if peft_model is None or name not in peft_model.peft_config:
        raise ValueError(f"no adapter named {name!r} is attached to this model; attach_adapter() it first")
    if peft_model.active_adapter != name:
        peft_model.set_adapter(name, inference_mode=True)  # inference_mode: no requires_grad
    peft_model.base_model.enable_adapter_layers()
    try:
        yield
    finally:
        peft_model.base_model.disable_adapter_layers()

