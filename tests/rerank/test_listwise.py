"""RankGPT-style listwise reranking: the permutation parser, the sliding window, a real smoke test."""

from __future__ import annotations

import random
import re

import pytest

from dynamicrag.llm.base import Completion, SamplingParams
from dynamicrag.rerank.listwise import ListwiseReranker, parse_permutation, sliding_windows
from dynamicrag.schema import Example, Passage


class RelevanceBackend:
    """Answers each window with its passages sorted by the "relevance N" written in their text.

    ``outputs`` overrides the reply of given call indices, to script malformed permutations.
    """

    name = model = "relevance"

    def __init__(self, outputs: dict[int, str] | None = None):
        self.outputs = outputs or {}
        self.windows: list[int] = []  # passages shown per call

    def count_tokens(self, chat):
        return sum(len(m["content"].split()) for m in chat)

    def generate(self, chats, params: SamplingParams):
        out = []
        for chat in chats:
            shown = re.findall(r"^\[(\d+)\] relevance (\d+)", chat[-1]["content"], flags=re.M)
            ranked = sorted(shown, key=lambda m: -int(m[1]))
            text = self.outputs.get(len(self.windows), " > ".join(f"[{i}]" for i, _ in ranked))
            self.windows.append(len(shown))
            out.append([Completion(text, self.count_tokens(chat), len(text.split()))] * params.n)
        return out


def example(relevance: list[int], qid: str = "q") -> Example:
    passages = [Passage(id=f"p{i}", text=f"relevance {r}") for i, r in enumerate(relevance, 1)]
    return Example(id=qid, question="most relevant?", passages=passages)


def test_windows_of_one_pass_for_50_passages():
    """N=50, w=20, s=10: [30,50) -> [20,40) -> [10,30) -> [0,20); the next start (-10) plus the
    stride is 0, the front window again, so the walk stops: 4 windows, 4 calls."""
    assert sliding_windows(50, 20, 10) == [(30, 50), (20, 40), (10, 30), (0, 20)]
    # N=45: [25,45) [15,35) [5,25), then the clipped [0,15).
    assert sliding_windows(45, 20, 10) == [(25, 45), (15, 35), (5, 25), (0, 15)]
    assert sliding_windows(7, 20, 10) == [(0, 7)]  # one window when all fit
    assert sliding_windows(1, 20, 10) == sliding_windows(0, 20, 10) == []


def test_sliding_window_brings_the_true_top_to_the_front_in_order():
    rng = random.Random(0)
    relevance = rng.sample(range(1000), 50)
    backend = RelevanceBackend()
    sel = ListwiseReranker(backend, k=10, window=20, stride=10).select([example(relevance)])[0]
    best = sorted(range(50), key=lambda i: -relevance[i])
    assert sel.ids == [i + 1 for i in best[:10]]  # one pass sorts window - stride = 10 correctly
    assert sel.calls == 4 and backend.windows == [20, 20, 20, 20]
    assert sel.well_formed and sel.raw.count(" || ") == 3
    assert sel.prompt_tokens > 0 and sel.completion_tokens > 0


def test_best_passage_at_the_very_end_bubbles_to_the_top():
    relevance = [1] * 49 + [99]
    relevance[3], relevance[20] = 50, 60  # second and third best, in the middle
    sel = ListwiseReranker(RelevanceBackend(), k=5).select([example(relevance)])[0]
    assert sel.ids[:3] == [50, 21, 4]
    assert len(set(sel.ids)) == 5


def test_a_batch_keeps_each_example_apart():
    exs = [example(list(range(50)), "a"), example([3, 9, 1, 7, 5], "b"), example([], "c"), example([4], "d")]
    backend = RelevanceBackend()
    sels = ListwiseReranker(backend, k=3).select(exs)
    assert sels[0].ids == [50, 49, 48] and sels[0].calls == 4
    assert sels[1].ids == [2, 4, 5] and sels[1].calls == 1
    assert sels[2].ids == [] and sels[2].calls == 0
    assert sels[3].ids == [1] and sels[3].calls == 0  # one passage: nothing to ask
    assert len(backend.windows) == 5


def test_a_malformed_window_is_counted_and_the_ranking_goes_on():
    relevance = list(range(30))
    # Call 0 sees [10,30) and names only two ids, one twice; the rest keep their order.
    backend = RelevanceBackend(outputs={0: "Ranking: [3] > [3] > [1] > [42]"})
    sel = ListwiseReranker(backend, k=5).select([example(relevance)])[0]
    assert not sel.well_formed
    assert sel.raw.startswith("Ranking: [3]") and sel.calls == 2
    assert len(set(sel.ids)) == 5 and all(1 <= i <= 30 for i in sel.ids)


@pytest.mark.parametrize(
    ("raw", "order", "well_formed", "missing", "invalid"),
    [
        ("[2] > [1] > [3]", [2, 1, 3], True, 0, 0),
        (" [3]>[1] >[2]\n", [3, 1, 2], True, 0, 0),
        ("[2] > [2] > [5] > [1]", [2, 1, 3], False, 1, 2),  # duplicate, out of range, missing
        ("The ranking is [3] > [1]", [3, 1, 2], False, 1, 0),  # chatter, then a partial list
        ("[3], [1], [2]", [3, 1, 2], False, 0, 0),  # every id, but not the "[] > []" grammar
        ("[0] > [4]", [1, 2, 3], False, 3, 2),
        ("", [1, 2, 3], False, 3, 0),
    ],
)
def test_parse_permutation(raw, order, well_formed, missing, invalid):
    perm = parse_permutation(raw, 3)
    assert (perm.order, perm.well_formed, perm.missing, perm.invalid) == (order, well_formed, missing, invalid)


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="stride"):
        ListwiseReranker(RelevanceBackend(), window=10, stride=11)
    with pytest.raises(ValueError, match="k must"):
        ListwiseReranker(RelevanceBackend(), k=0)


def test_bundled_model_returns_a_full_valid_selection(smollm):
    passages = [
        Passage(id="a", title="Okapi", text="The okapi is a mammal native to the Congo."),
        Passage(id="b", title="Paris", text="Paris is the capital of France."),
        Passage(id="c", title="Rust", text="Rust is a systems programming language."),
        Passage(id="d", title="Lyon", text="Lyon is a city in France."),
        Passage(id="e", title="Tea", text="Tea is an aromatic beverage."),
    ]
    ex = Example(id="q", question="What is the capital of France?", passages=passages)
    sel = ListwiseReranker(smollm, k=5, max_new_tokens=30).select([ex])[0]
    assert sorted(sel.ids) == [1, 2, 3, 4, 5]  # every id once, whatever the model wrote
    assert sel.calls == 1 and isinstance(sel.well_formed, bool)
    assert sel.well_formed == (parse_permutation(sel.raw, 5).well_formed)
    assert 0 < sel.completion_tokens <= 30 and sel.prompt_tokens > 0
