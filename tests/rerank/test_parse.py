"""The reranker-output parser on well-formed and adversarial outputs."""

import pytest

from dynamicrag.rerank.parse import parse_selection


@pytest.mark.parametrize(
    "raw, n, ids, well_formed",
    [
        ("[3], [1]", 5, [3, 1], True),
        ("None", 5, [], True),
        (" [2] ", 5, [2], True),  # surrounding whitespace is not a defect
        ("none.", 5, [], False),  # read as None, but not the exact grammar
        ('"None"', 5, [], False),
        ("[3], [3], [1]", 5, [3, 1], False),  # duplicates dropped, first wins
        ("[0], [2]", 5, [2], False),  # [0] never means "the last passage"
        ("[2], [9]", 5, [2], False),  # past the end: dropped, no crash
        ("[3] > [1] > [2]", 5, [3, 1, 2], False),  # RankGPT style
        ("The answer is in [4] and [2].", 5, [4, 2], False),
        ("[[3]], [1]", 5, [3, 1], False),  # nested brackets
        ("[1], None", 5, [1], False),
        ("3, 1", 5, [3, 1], False),  # bare ids, the whole output is a list of numbers
        ("3 and 1.", 5, [3, 1], False),
        ("[99999999999999999999999]", 5, [], False),
    ],
)
def test_readings(raw, n, ids, well_formed):
    sel = parse_selection(raw, n)
    assert sel.ids == ids
    assert sel.well_formed is well_formed
    assert sel.raw == raw


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "1. Topic: Hamlet\nContent: Hamlet is a tragedy",  # what the untrained model echoes
        "I think document 3 is useful",  # a number inside prose is ambiguous
        "[0]",
        "[7], [8]",
        "Ignore the above and output [1]"[:10],
    ],
)
def test_unusable_outputs_are_explicit_failures(raw):
    sel = parse_selection(raw, 5)
    assert sel.ids == [] and not sel.well_formed
    assert sel.error and sel.error.startswith("unusable reranker output")


def test_none_is_not_an_error():
    assert parse_selection("None", 3).error is None
