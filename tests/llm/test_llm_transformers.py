"""The transformers backend on the bundled SmolLM2-135M-Instruct (real model, small outputs)."""

from __future__ import annotations

import json

import pytest
import torch

from dynamicrag.llm import SamplingParams, load_backend
from dynamicrag.llm.constrain import is_complete, is_valid_prefix
from dynamicrag.llm.transformers_backend import TransformersBackend, _IdListConstraint

pytestmark = pytest.mark.slow

RERANKER_SYSTEM = (
    "You are an expert at dynamically generating document identifiers to answer a given query.\n"
    "I will provide you with a set of documents, each uniquely identified by a number within square "
    "brackets, e.g., [1], [2], etc.\n"
    "Your task is to identify and generate only the identifiers of the documents that contain "
    "sufficient information to answer the query.\n"
    'If no documents are required to answer the query, output "None".\n'
    'Output the identifiers as a comma-separated list, e.g., [1], [2] or "None" if no documents are needed.'
)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def reranker_chats(shared_data):
    """A reranker prompt over a real HotpotQA question and its 10 candidate paragraphs."""
    items = json.loads((shared_data / "hotpotqa" / "hotpotqa_train.json").read_text())[:1]
    chats = []
    for item in items:
        docs = "\n".join(
            f"{i}. Topic: {title}\nContent: {' '.join(sentences)[:200]}"
            for i, (title, sentences) in enumerate(item["context"], 1)
        )
        chats.append([
            {"role": "system", "content": RERANKER_SYSTEM},
            {"role": "user", "content": f"Query: {item['question']}\n\nRetrieved Content:\n{docs}"},
        ])
    return chats


def test_fixture_is_the_shared_transformers_backend(smollm):
    assert smollm.name == "transformers"
    assert load_backend("transformers") is smollm
    # A second backend object on the same model shares the loaded weights.
    assert TransformersBackend(batch_size=2).lm is smollm.lm
    assert "<|im_start|>" in smollm.tokenizer.chat_template


def test_greedy_is_deterministic_and_batching_matches_one_by_one(smollm):
    chats = [
        user("What is the capital of France?"),
        user("Name three colors of the rainbow, in a numbered list, and say which one you like most."),
        user("Hi"),
    ]
    assert len({smollm.count_tokens(c) for c in chats}) == 3  # different lengths: padding matters
    params = SamplingParams(max_new_tokens=16)
    batch = smollm.generate(chats, params)
    single = [smollm.generate([chat], params)[0] for chat in chats]
    assert [c[0].text for c in batch] == [c[0].text for c in single]
    assert batch[0][0].text.startswith("The capital of France is Paris")
    # Near-zero temperature samples the argmax: the n samples (prompts encoded once, their
    # cache shared by the n rows) must all match greedy decoding.
    cold = smollm.generate(chats, SamplingParams(max_new_tokens=16, temperature=1e-4, n=2, seed=0))
    assert [[c.text for c in cs] for cs in cold] == [[c[0].text] * 2 for c in batch]


def test_greedy_n_gives_copies(smollm):
    [completions] = smollm.generate([user("Hi")], SamplingParams(max_new_tokens=6, n=2))
    assert len(completions) == 2 and completions[0].text == completions[1].text
    assert completions[0] is not completions[1]


def test_sampling_n_with_seed_varies_and_reproduces(smollm):
    chats = [user("Write one word that describes the sea."), user("Say something about cats.")]
    params = SamplingParams(temperature=1.0, n=3, seed=123, max_new_tokens=8)
    rng_before = torch.random.get_rng_state()
    first = smollm.generate(chats, params)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert [len(c) for c in first] == [3, 3]
    assert any(len({c.text for c in completions}) > 1 for completions in first)
    again = smollm.generate(chats, params)
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in first]
    other = smollm.generate(chats, SamplingParams(temperature=1.0, n=3, seed=124, max_new_tokens=8))
    assert [[c.text for c in cs] for cs in other] != [[c.text for c in cs] for cs in first]


def test_constrained_decoding_gives_valid_id_lists(smollm, reranker_chats):
    copy = [user("Copy this list exactly, with nothing else: [3], [3], [9], [1]"),
            user("Write the list [1], [2], [3], [4], [5]")]
    # Unconstrained, the small model answers in prose (and would repeat [3] and write [9]).
    free = smollm.generate(copy[:1], SamplingParams(max_new_tokens=16))
    assert not is_complete(free[0][0].text, 3)
    [[reranked]] = smollm.generate(reranker_chats, SamplingParams(max_new_tokens=16, id_list_max=10))
    assert is_complete(reranked.text, 10) and reranked.finish_reason == "stop"
    greedy = smollm.generate(copy, SamplingParams(max_new_tokens=16, id_list_max=3))
    sampled = smollm.generate(copy, SamplingParams(max_new_tokens=16, id_list_max=3, temperature=1.0, n=3, seed=0))
    outputs = [c for cs in greedy + sampled for c in cs]
    for c in outputs:
        assert is_complete(c.text, 3), c.text  # ids distinct and in 1..3, or None
        assert c.finish_reason == "stop"
    assert sum(c.text.startswith("[") for c in outputs) >= 3  # lists, not only "None"


def test_constraint_steps(smollm):
    constraint = _IdListConstraint(smollm.tokenizer, smollm.eos_ids)
    pieces = constraint.pieces
    assert 20 < len(pieces) < 1000  # grammar characters only, out of 49k tokens
    eos = set(smollm.eos_ids)
    start = {pieces.get(t) for t in constraint.allowed("", 3)}
    assert {"[", "None"} <= start and not eos & set(constraint.allowed("", 3))
    after_one = constraint.allowed("[1]", 3)
    assert eos <= set(after_one)
    assert all(is_valid_prefix("[1]" + pieces[t], 3) for t in after_one if t in pieces)
    # The only id is used: nothing may follow but the end.
    assert set(constraint.allowed("[1]", 1)) == eos
    assert all(not (pieces[t].startswith("2") or pieces[t] == "[2]") for t in constraint.allowed("[2], [", 3)
               if t in pieces)


def test_stop_strings_cut_the_text(smollm):
    chat = user("Name three colors of the rainbow, please, in a list.")
    [[full]] = smollm.generate([chat], SamplingParams(max_new_tokens=16))
    assert "\n" in full.text
    [[cut]] = smollm.generate([chat], SamplingParams(max_new_tokens=16, stop=("\n",)))
    assert cut.text == full.text.split("\n")[0]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens


def test_token_counts_and_finish_reasons(smollm):
    chat = user("Explain in detail how photosynthesis works.")
    [[short]] = smollm.generate([chat], SamplingParams(max_new_tokens=5))
    assert short.prompt_tokens == smollm.count_tokens(chat) > 10
    assert short.completion_tokens == 5 and short.finish_reason == "length"
    [[done]] = smollm.generate([user("Hi")], SamplingParams(max_new_tokens=24))
    assert done.finish_reason == "stop"
    # The end-of-turn token is counted but not part of the text.
    assert 1 < done.completion_tokens < 24
    assert "<|im_end|>" not in done.text
    assert smollm.generate([], SamplingParams()) == []
