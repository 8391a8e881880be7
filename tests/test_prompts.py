"""Prompts: the official style reproduces the released checkpoints' training strings."""

import pytest

from dynamicrag.prompts import generator_chat, load_style, parse_style, reranker_chat, reranker_target
from dynamicrag.schema import Passage

PASSAGES = [
    Passage(id="a", title="Hamlet", text="Hamlet is a tragedy by William Shakespeare."),
    Passage(id="b", title="Globe Theatre", text="The Globe was built in 1599."),
]

# Built by hand from the original reranker_sequence.py: f"Query: {question}\n\n{retrieved_content}"
# with retrieved_content = "Retrieved Content:\n" + "\n".join(f"{i+1}. Topic: {title}\nContent: {text}").
OFFICIAL_RERANKER_USER = (
    "Query: who wrote hamlet\n\nRetrieved Content:\n"
    "1. Topic: Hamlet\nContent: Hamlet is a tragedy by William Shakespeare.\n"
    "2. Topic: Globe Theatre\nContent: The Globe was built in 1599."
)
OFFICIAL_RERANKER_SYSTEM = (
    "You are an expert at dynamically generating document identifiers to answer a given query.\n"
    "I will provide you with a set of documents, each uniquely identified by a number within square brackets, e.g., [1], [2], etc.\n"
    "Your task is to identify and generate only the identifiers of the documents that contain sufficient information to answer the query.\n"
    "Stop generating identifiers as soon as the selected documents collectively provide enough information to answer the query.\n"
    "If no documents are required to answer the query, output \"None\".\n"
    "Output the identifiers as a comma-separated list, e.g., [1], [2] or \"None\" if no documents are needed.\n"
    "Focus solely on providing the identifiers. Do not include any explanations, descriptions, or additional text."
)
# construct_generator_sft.py: f"{remember_prompt}\nQuery: {question}\n\n{retrieved_content}"
OFFICIAL_GENERATOR_USER = (
    "Please answer the question with a short phrase.\nQuery: who wrote hamlet\n\n"
    "Retrieved Content:\n1. Topic: Globe Theatre\nContent: The Globe was built in 1599."
)
OFFICIAL_GENERATOR_NONE = (
    "Please answer the question with “SUPPORTS”, “REFUTES” or “NEI” based on what you know.\n"
    "Query: Hamlet is a comedy.\n\nRetrieved Content: None"
)


def test_official_reranker_matches_training_strings():
    chat = reranker_chat(load_style("official"), "who wrote hamlet", PASSAGES)
    assert chat == [
        {"role": "system", "content": OFFICIAL_RERANKER_SYSTEM},
        {"role": "user", "content": OFFICIAL_RERANKER_USER},
    ]


def test_official_generator_matches_training_strings():
    style = load_style("official")
    chat = generator_chat(style, "who wrote hamlet", [PASSAGES[1]], "nq")
    assert chat[1]["content"] == OFFICIAL_GENERATOR_USER
    assert chat[0]["content"].startswith(
        "You are an intelligent assistant that uses retrieved knowledge to answer user queries "
        "accurately and concisely. Follow these rules:\n\n1. **Task**:\n"
    )
    assert chat[0]["content"].endswith("   - A structured, clear response tailored to the query.\n\nAlways prioritize clarity and reliability.")
    assert generator_chat(style, "Hamlet is a comedy.", [], "fever")[1]["content"] == OFFICIAL_GENERATOR_NONE


def test_task_lines_follow_the_task():
    style = load_style("default")
    assert "paragraph" in generator_chat(style, "why is the sky blue", PASSAGES, "eli5")[1]["content"]
    assert "SUPPORTS" in generator_chat(style, "a claim", PASSAGES, "FEVER")[1]["content"]
    assert "short phrase" in generator_chat(style, "q", PASSAGES, "hotpotqa")[1]["content"]


def test_default_style_numbers_passages_like_the_ids():
    user = reranker_chat(load_style("default"), "who wrote hamlet", PASSAGES)[1]["content"]
    assert "[1] Hamlet\nHamlet is a tragedy" in user and "[2] Globe Theatre\n" in user
    assert user.rstrip().endswith("(or None):")
    assert reranker_target(load_style("default"), [2, 1]) == "[2], [1]"
    assert reranker_target(load_style("default"), []) == "None"


def test_style_with_a_wrong_placeholder_fails_at_load(tmp_path):
    import yaml
    from importlib import resources

    data = yaml.safe_load(resources.files("dynamicrag.prompts").joinpath("default.yaml").read_text())
    data["reranker"]["user"] = "Query: {question}\n{passages}"
    with pytest.raises(ValueError, match=r"reranker.user must use placeholders \['passages', 'query'\]"):
        parse_style(data, "mine.yaml")
    path = tmp_path / "mine.yaml"
    data["reranker"]["user"] = "Q: {query}\n{passages}"
    path.write_text(yaml.safe_dump(data))
    assert reranker_chat(load_style(str(path)), "q", PASSAGES[:1])[1]["content"].startswith("Q: q\n[1] Hamlet")
    with pytest.raises(ValueError, match="unknown prompt style 'nope'"):
        load_style("nope")


def test_passage_words_caps_each_passage_in_the_reranker_prompt():
    from dynamicrag.prompts import load_style, reranker_chat
    from dynamicrag.schema import Passage

    style = load_style("default")
    passages = [Passage(id="a", title="T", text="one two three four five"), Passage(id="b", text="six seven")]
    capped = reranker_chat(style, "q", passages, passage_words=3)[1]["content"]
    assert "one two three" in capped and "four" not in capped
    assert "six seven" in capped  # shorter than the cap: unchanged
    assert "four five" in reranker_chat(style, "q", passages)[1]["content"]
    with pytest.raises(ValueError):
        reranker_chat(style, "q", passages, passage_words=0)
