"""Trajectory sampling: record format and answer dedupe (scripted), diversity on the real SmolLM2."""

from __future__ import annotations

import json

import pytest

from dynamicrag.llm.base import Completion
from dynamicrag.schema import Example, Passage
from dynamicrag.train.sample import SampleConfig, sample_trajectories
from fakes import ScriptedBackend


class SampledBackend(ScriptedBackend):
    """ScriptedBackend whose reranker calls return a scripted list of n texts per prompt.

    ``lists[question]`` holds the n reranker outputs of that question's prompt; generator calls
    go to ScriptedBackend (answer = titles of the passages shown, joined by ``|``).
    """

    def __init__(self, lists: dict[str, list[str]]):
        super().__init__()
        self.lists = lists
        self.params = []

    def generate(self, chats, params):
        self.params.append(params)
        out = []
        for chat in chats:
            if "document identifiers" in chat[0]["content"]:
                self.calls.append(chat)
                question = next(q for q in self.lists if f"Query: {q}\n" in chat[-1]["content"])
                texts = self.lists[question]
                assert len(texts) == params.n
                out.append([Completion(t, 10, 3) for t in texts])
            else:
                out.extend(super().generate([chat], params))
        return out


def example(i: int, n_passages: int = 4) -> Example:
    passages = [Passage(id=f"{i}-{p}", title=f"t{p}", text=f"text {p}", score=1.0 / p) for p in range(1, n_passages + 1)]
    return Example(id=f"q{i}", question=f"question {i}", answers=["a"], task="nq", passages=passages,
                   extra={"source": "unit"})


def test_records_keep_every_sample_dedupe_answers_and_keep_malformed_outputs():
    backend = SampledBackend({
        "question 0": ["[2], [1]", "[2], [1]", "banana", "None", "[2],[1]"],
        "question 1": ["[3]", "[3]", "[3]", "[3]", "[3]"],
    })
    config = SampleConfig(n=5, temperature=0.7, top_p=0.9, seed=3, top_n=3, rerank_max_new_tokens=7,
                          answer_max_new_tokens=11)
    records = sample_trajectories([example(0), example(1)], backend, "default", config)

    # The record is the example (passages cut to the top_n shown) plus prompt_style and samples.
    first = records[0]
    assert set(first) == {"id", "question", "answers", "task", "passages", "extra", "prompt_style", "passage_words",
                          "samples"}
    assert first["passage_words"] is None  # no word cap unless one is set
    assert first["id"] == "q0" and first["extra"] == {"source": "unit"} and first["prompt_style"] == "default"
    assert [p["id"] for p in first["passages"]] == ["0-1", "0-2", "0-3"]
    assert Example.model_validate({k: first[k] for k in first if k not in ("prompt_style", "passage_words", "samples")})
    json.dumps(records)  # plain JSON

    samples = first["samples"]
    assert len(samples) == 5 and all(set(s) == {"ids", "raw", "well_formed", "error", "answer"} for s in samples)
    assert samples[0] == {"ids": [2, 1], "raw": "[2], [1]", "well_formed": True, "error": None, "answer": "t2|t1"}
    assert samples[1] == samples[0]
    # Malformed and unusable outputs stay, with their raw text and error; no answer for unusable ones.
    assert samples[2]["ids"] == [] and samples[2]["raw"] == "banana" and not samples[2]["well_formed"]
    assert samples[2]["error"].startswith("unusable reranker output") and samples[2]["answer"] is None
    assert samples[3] == {"ids": [], "raw": "None", "well_formed": True, "error": None, "answer": "no passages"}
    assert samples[4]["ids"] == [2, 1] and not samples[4]["well_formed"] and samples[4]["answer"] == "t2|t1"
    assert [s["answer"] for s in records[1]["samples"]] == ["t3"] * 5

    # One reranker request with n=5 per example; answers: one per distinct usable list per example
    # ([2],[1] and None for q0, [3] for q1), in a single batched greedy call.
    rerank_params, answer_params = backend.params
    assert (rerank_params.n, rerank_params.temperature, rerank_params.top_p, rerank_params.seed) == (5, 0.7, 0.9, 3)
    assert rerank_params.max_new_tokens == 7 and rerank_params.id_list_max is None
    assert (answer_params.n, answer_params.temperature, answer_params.max_new_tokens) == (1, 0.0, 11)
    generator_chats = [c for c in backend.calls if "document identifiers" not in c[0]["content"]]
    assert len(generator_chats) == 3


def test_example_without_passages_is_answered_once_without_a_reranker_call():
    backend = SampledBackend({})
    [record] = sample_trajectories([example(0, n_passages=0)], backend, "default", SampleConfig(n=3))
    assert [s["ids"] for s in record["samples"]] == [[], [], []]
    assert {s["answer"] for s in record["samples"]} == {"no passages"} and len(backend.calls) == 1


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="n: must be a positive integer"):
        SampleConfig(n=0)
    with pytest.raises(ValueError, match="temperature"):
        SampleConfig(temperature=-0.1)
    with pytest.raises(ValueError, match="top_p"):
        SampleConfig(top_p=0)


def small_examples() -> list[Example]:
    return [
        Example(id="fr", question="What is the capital of France?", answers=["Paris"], passages=[
            Passage(id="a", title="Berlin", text="Berlin is the capital of Germany."),
            Passage(id="b", title="Paris", text="Paris is the capital of France."),
            Passage(id="c", title="Tea", text="Tea is a drink.")]),
        Example(id="ham", question="Who wrote Hamlet?", answers=["Shakespeare"], passages=[
            Passage(id="d", title="Rome", text="Rome is a city in Italy."),
            Passage(id="e", title="Hamlet", text="Hamlet is a play by William Shakespeare."),
            Passage(id="f", title="Moon", text="The Moon orbits the Earth.")]),
    ]


@pytest.mark.slow
def test_real_model_samples_differ_above_zero_temperature_and_agree_at_zero(smollm):
    small = dict(constrained=True, rerank_max_new_tokens=12, answer_max_new_tokens=4)
    records = sample_trajectories(small_examples(), smollm, "default", SampleConfig(n=4, temperature=1.0, seed=0, **small))
    for record in records:
        assert len(record["samples"]) == 4
        # Constrained decoding: every sample is well-formed and answered.
        assert all(s["well_formed"] and s["error"] is None and s["answer"] is not None for s in record["samples"])
    distinct = [len({s["raw"] for s in r["samples"]}) for r in records]
    assert max(distinct) > 1, f"4 samples at temperature 1 gave one list per question: {distinct}"

    [greedy] = sample_trajectories(small_examples()[:1], smollm, "default", SampleConfig(n=3, temperature=0.0, **small))
    assert len({(tuple(s["ids"]), s["raw"], s["answer"]) for s in greedy["samples"]}) == 1


def test_a_separate_generator_answers_and_the_word_cap_reaches_the_reranker_prompt():
    from fakes import ScriptedBackend

    long = example(0).model_copy(update={"passages": [
        Passage(id=f"p{p}", title=f"t{p}", text=" ".join(f"w{j}" for j in range(40))) for p in (1, 2)]})
    reranker = SampledBackend({"question 0": ["[2]", "[1], [2]"]})
    generator = ScriptedBackend()
    [record] = sample_trajectories([long], reranker, "default", SampleConfig(n=2, passage_words=3), generator)
    prompt = reranker.calls[0][-1]["content"]
    assert "w0 w1 w2" in prompt and "w3" not in prompt  # three words per passage
    assert record["passage_words"] == 3
    # The reranker model wrote no answer: both distinct lists went to the generator.
    assert len(reranker.calls) == 1 and len(generator.calls) == 2
    assert [s["answer"] for s in record["samples"]] == ["t2", "t1|t2"]
    with pytest.raises(ValueError, match="passage_words"):
        SampleConfig(passage_words=0)
