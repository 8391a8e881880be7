"""DynamicRAG: retrieve, let an LLM reranker choose the passages (order and number), answer."""

from dynamicrag.schema import Example, Passage, Selection

__all__ = ["Example", "Passage", "Selection"]
__version__ = "0.1.0"
