import pytest

from dynamicrag.rerank import (
    AdaptiveKReranker, GoldReranker, ListwiseReranker, PointwiseReranker, ThresholdReranker, TopKReranker, make_reranker,
)
from dynamicrag.rerank.pointwise import RetrieverScorer
from fakes import ScriptedBackend


def test_every_kind_builds_with_its_options():
    backend = ScriptedBackend()
    assert make_reranker("none") == TopKReranker(0)
    assert make_reranker("topk", k=3) == TopKReranker(3)
    listwise = make_reranker("listwise", backend, k=4, window=8, stride=4)
    assert isinstance(listwise, ListwiseReranker) and (listwise.k, listwise.window, listwise.stride) == (4, 8, 4)
    dynamic = make_reranker("dynamic", backend, constrained=True)
    assert dynamic.window == 40 and dynamic.max_new_tokens == 100 and dynamic.constrained
    assert isinstance(make_reranker("pointwise", k=2), PointwiseReranker)
    adaptive = make_reranker("adaptive-k", scorer="retriever", buffer=2)
    assert isinstance(adaptive, AdaptiveKReranker) and adaptive.buffer == 2 and isinstance(adaptive.scorer, RetrieverScorer)
    cut = make_reranker("threshold", scorer="retriever", threshold=0.5, max_drop=0.25)
    assert isinstance(cut, ThresholdReranker) and (cut.threshold, cut.max_drop) == (0.5, 0.25)
    assert isinstance(make_reranker("gold"), GoldReranker)


def test_errors_name_the_choices():
    with pytest.raises(ValueError, match=r"choose one of \['adaptive-k', 'dynamic', 'gold', 'listwise', 'none', 'pointwise', 'threshold', 'topk'\]"):
        make_reranker("rankgpt")
    with pytest.raises(ValueError, match="needs an LLM backend"):
        make_reranker("dynamic")
