"""DynamicRAG: retrieve, let an LLM reranker choose the passages (order and number), answer.

Example:
    >>> from dynamicrag import DynamicRAG
    >>> rag = DynamicRAG.from_documents("docs/")  # doctest: +SKIP
    >>> print(rag.ask("How does DynamicRAG choose the number of passages?"))  # doctest: +SKIP

Names are imported when first used, so ``import dynamicrag`` loads no model library (torch,
transformers) and no web framework.
"""

from dynamicrag.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS = {
    "Answer": "dynamicrag.api",
    "AnswerStream": "dynamicrag.api",
    "ChosenPassage": "dynamicrag.api",
    "DynamicRAG": "dynamicrag.api",
    "Example": "dynamicrag.schema",
    "Passage": "dynamicrag.schema",
    "PipelineConfig": "dynamicrag.build",
    "RoleConfig": "dynamicrag.build",
    "Selection": "dynamicrag.schema",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
