"""Adapters shipped with the package, one folder each (see :mod:`dynamicrag.llm.adapters`)."""
