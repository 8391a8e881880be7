"""Completion-only loop controls and the label constraint (dynamicrag.llm.logits)."""

from __future__ import annotations

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from dynamicrag.llm import SamplingParams
from dynamicrag.llm.logits import ChoiceConstraint, CompletionFrequencyPenalty, CompletionNoRepeatNGram

VOCAB = 10


def banned(processor, ids: list[int]) -> set[int]:
    scores = processor(torch.tensor([ids]), torch.zeros((1, VOCAB)))
    return {t for t in range(VOCAB) if scores[0, t] == -float("inf")}


def test_a_prompt_ngram_may_be_copied_the_library_one_forbids_it():
    prompt = [1, 2, 3, 4, 9]
    ids = prompt + [1, 2, 3]  # the completion is copying the prompt's 1 2 3 4
    assert banned(CompletionNoRepeatNGram(4, prompt_len=len(prompt)), ids) == set()
    # transformers' no_repeat_ngram_size counts the prompt: copying the passage is banned.
    assert banned(NoRepeatNGramLogitsProcessor(4), ids) == {4}


def test_a_completion_ngram_may_not_repeat():
    prompt = [9, 9]
    processor = CompletionNoRepeatNGram(3, prompt_len=len(prompt))
    assert banned(processor, prompt + [5, 6, 7, 5, 6]) == {7}  # "5 6 7" was written already
    assert banned(processor, prompt + [5, 6, 7, 5]) == set()  # "7 5 x" has no earlier match
    assert banned(processor, prompt + [5, 6]) == set()  # too short for any n-gram
    # Rows of a batch are independent.
    scores = processor(torch.tensor([prompt + [5, 6, 7, 5, 6], prompt + [1, 2, 3, 4, 5]]), torch.zeros((2, VOCAB)))
    assert torch.isinf(scores[0, 7]) and not torch.isinf(scores[1]).any()


def test_unigram_ban_forbids_every_token_already_written():
    assert banned(CompletionNoRepeatNGram(1, prompt_len=1), [8, 2, 5, 2]) == {2, 5}


def test_frequency_penalty_counts_completion_tokens_only():
    prompt = [3, 3, 3]
    scores = CompletionFrequencyPenalty(0.5, prompt_len=3)(torch.tensor([prompt + [4, 4, 5]]), torch.zeros((1, VOCAB)))
    expected = torch.zeros(VOCAB)
    expected[4], expected[5] = -1.0, -0.5  # token 3 is in the prompt only: not penalised
    assert torch.equal(scores[0], expected)


def test_rows_that_joined_later_count_their_own_completion_only():
    """A batch whose rows started their completions at different columns (continuous
    batching): each row is treated as it would be alone with its own prompt length."""
    early = [9, 5, 6, 7, 5, 6]  # completion from column 1: "5 6 7 5 6" repeats "5 6 7"
    late = [5, 6, 7, 8, 5, 6]  # prompt "5 6 7 8", completion "5 6": nothing repeated yet
    ids = torch.tensor([early, late])
    for make in (lambda start: CompletionNoRepeatNGram(3, prompt_len=start),
                 lambda start: CompletionFrequencyPenalty(0.5, prompt_len=start)):
        together = make([1, 4])(ids, torch.zeros((2, VOCAB)))
        for row, start in ((0, 1), (1, 4)):
            assert torch.equal(together[row], make(start)(ids[row:row + 1], torch.zeros((1, VOCAB)))[0])
    assert banned(CompletionNoRepeatNGram(3, prompt_len=1), early) == {7}
    scores = CompletionNoRepeatNGram(3, prompt_len=[1, 4])(ids, torch.zeros((2, VOCAB)))
    assert not torch.isinf(scores[1]).any()  # the prompt's "5 6 7" may be copied by the late row


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match="ngram_size"):
        CompletionNoRepeatNGram(0, prompt_len=0)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        SamplingParams(no_repeat_ngram_size=0)
    with pytest.raises(ValueError, match="frequency_penalty"):
        SamplingParams(frequency_penalty=3.0)
    with pytest.raises(ValueError, match="choices"):
        SamplingParams(choices=())
    with pytest.raises(ValueError, match="different constraints"):
        SamplingParams(choices=("A",), id_list_max=3)
    assert SamplingParams(choices=["A", "B"]).choices == ("A", "B")  # hashable for batching


# The real tokenizer and model.


@pytest.mark.slow
def test_choice_trie_allows_prefixes_of_choices_then_the_end(smollm):
    tok = smollm.tokenizer
    choices = ("SUPPORTS", "REFUTES", "NEI")
    constraint = ChoiceConstraint(tok, choices, smollm.eos_ids)
    eos = set(smollm.eos_ids)
    first = constraint.allowed([])
    assert {tok.decode([t]) for t in first} == {tok.decode(tok.encode(c)[:1]) for c in choices}
    for choice in choices:
        tokens = tok.encode(choice)
        for i in range(len(tokens)):
            allowed = set(constraint.allowed(tokens[:i]))
            assert tokens[i] in allowed and not eos & allowed
        assert set(constraint.allowed(tokens)) == eos  # a whole label: only the end may follow


@pytest.mark.slow
def test_completion_ngram_ban_lets_the_model_copy_the_prompt(smollm):
    chat = [{"role": "user", "content": "Repeat this sentence exactly: the cat sat on the mat near the door."}]
    [[free]] = smollm.generate([chat], SamplingParams(max_new_tokens=16))
    [[ours]] = smollm.generate([chat], SamplingParams(max_new_tokens=16, no_repeat_ngram_size=3))
    assert "cat sat on the mat near the door" in free.text.lower()
    assert ours.text == free.text  # copying the prompt is untouched
    # The library's ban counts the prompt: the copy is broken.
    ids = torch.tensor([smollm.encode(chat)])
    out = smollm.lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=16,
                             do_sample=False, no_repeat_ngram_size=3, pad_token_id=smollm.pad_id)
    library = smollm.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert "cat sat on the mat near the door" not in library.lower()
