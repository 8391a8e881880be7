"""Package namespaces whose names are imported when first used.

``import dynamicrag`` and the command line's ``--help`` must not load the model libraries
(torch, transformers, faiss, bm25s) that a package's modules import; a package lists its public
names with the module each comes from, and :func:`lazy_exports` gives it the module
``__getattr__`` and ``__dir__`` that import them on first use (PEP 562).

Example:
    >>> __getattr__, __dir__ = lazy_exports(__name__, {"load_index": "dynamicrag.retrieve.index"})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose names live in its modules.

    Args:
        package: The package's ``__name__``.
        exports: Public name -> the module that defines it.

    Returns:
        ``(__getattr__, __dir__)``, to assign in the package's ``__init__``.
    """

    def getattr_(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(exports[name]), name)

    def dir_() -> list[str]:
        return sorted(exports)

    return getattr_, dir_


__all__ = ["lazy_exports"]
