"""Loaders: the real shared files, hand-built files per format, detection, and error messages."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dynamicrag.data import (
    CORPUS_FORMATS,
    EXAMPLE_FORMATS,
    DataError,
    detect_corpus_format,
    detect_example_format,
    guess_task,
    iter_corpus,
    load_corpus,
    load_examples,
)


def write_jsonl(path: Path, records: list[dict]) -> Path:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return path


# ---------------------------------------------------------------- the real shared files


@pytest.fixture(scope="module")
def hotpot(shared_data):
    return load_examples(shared_data / "hotpotqa" / "hotpotqa_train.json")


def test_nq_open_oracle(shared_data):
    examples = load_examples(shared_data / "nq" / "nq-open-oracle.jsonl.gz")
    assert len(examples) == 2655
    assert all(ex.task == "nq" for ex in examples)  # from the file name
    assert all(len(ex.passages) == 1 and ex.passages[0].extra["isgold"] is True for ex in examples)
    first = examples[0]
    assert first.id == "nq-open-oracle-1" and first.passages[0].id == "nq-open-oracle-1:1"
    assert first.question == "who got the first nobel prize in physics"
    assert first.answers == ["Wilhelm Conrad Röntgen"]
    assert first.passages[0].title == "List of Nobel laureates in Physics"
    assert "hasanswer" in first.passages[0].extra
    assert set(first.extra) == {"nq_annotated_gold"}


def test_flashrag_wiki_sample(shared_data):
    passages = load_corpus(shared_data / "nq" / "flashrag_wiki_sample.jsonl")
    assert len(passages) == 1000
    assert passages[0].id == "0" and passages[0].title == "Evan Morris"
    assert passages[0].text.startswith("Evan Morris Evan L. Morris (January 26, 1977")
    assert not any('"' in p.title or "\n" in p.title for p in passages)  # quotes removed
    assert all(p.title and p.text for p in passages)


def test_flashrag_nq_test(shared_data):
    examples = load_examples(shared_data / "nq" / "flashrag_nq_test.jsonl")
    assert len(examples) == 17
    assert examples[2].id == "test_2" and examples[2].answers == ["Olivia", "MFSK"]
    assert {ex.task for ex in examples} == {"nq"} and not examples[0].passages


def test_hotpotqa_train(hotpot):
    assert len(hotpot) == 100
    assert {ex.task for ex in hotpot} == {"hotpotqa"}
    # The sample holds one question with only 4 context paragraphs; the other 99 have 10.
    assert sorted(len(ex.passages) for ex in hotpot) == [4] + [10] * 99
    for ex in hotpot:
        supporting = [p for p in ex.passages if p.extra["supporting"]]
        assert len(supporting) >= 2
        assert {p.title for p in supporting} == {t for t, _ in ex.extra["supporting_facts"]}
        assert len(ex.answers) == 1
    first = hotpot[0]
    assert first.id == "5a77ec115542992a6e59dff7" and first.answers == ["a spirit"]
    assert first.passages[0].id == "5a77ec115542992a6e59dff7:1"
    # sentences carry their own leading space: joined with "" they read as prose
    assert "and Tim Brown. In it, each player" in first.passages[0].text
    assert {"type", "level", "supporting_facts"} <= set(first.extra) and "context" not in first.extra


def test_hotpotqa_corpus_matches_the_examples(shared_data, hotpot):
    passages = load_corpus(shared_data / "hotpotqa" / "hotpotqa_train_corpus.json")
    assert len(passages) == 994
    by_title = {p.title: p.text for p in passages}
    assert len(by_title) == 994
    for ex in hotpot:
        for p in ex.passages:
            if p.extra["supporting"]:
                assert by_title[p.title] == p.text


def test_fever_paper_dev(shared_data):
    examples = load_examples(shared_data / "fever" / "paper_dev.jsonl")
    assert len(examples) == 9999
    assert {ex.answers[0] for ex in examples} == {"SUPPORTS", "REFUTES", "NOT ENOUGH INFO"}
    assert all(ex.task == "fever" and len(ex.answers) == 1 and not ex.passages for ex in examples)
    assert examples[1].id == "194462" and examples[1].question == "Tilda Swinton is a vegan."
    assert set(examples[0].extra) == {"verifiable", "evidence"}


@pytest.mark.parametrize(
    "rel, kind, expected",
    [
        ("nq/nq-open-oracle.jsonl.gz", "examples", "dynamicrag"),
        ("nq/flashrag_nq_test.jsonl", "examples", "flashrag"),
        ("hotpotqa/hotpotqa_train.json", "examples", "hotpotqa"),
        ("fever/paper_dev.jsonl", "examples", "fever"),
        ("nq/flashrag_wiki_sample.jsonl", "corpus", "flashrag"),
        ("hotpotqa/hotpotqa_train_corpus.json", "corpus", "hotpotqa"),
    ],
)
def test_detection_on_shared_files(shared_data, rel, kind, expected):
    detect = detect_example_format if kind == "examples" else detect_corpus_format
    assert detect(shared_data / rel) == expected


# ---------------------------------------------------------------- hand-built files per format


def test_asqa_json_array(tmp_path):
    path = tmp_path / "asqa_eval_gtr_top100.json"
    record = {
        "sample_id": "-123",
        "question": "Who played Bilbo?",
        "answer": "A long-form reference answer.",
        "qa_pairs": [
            {"question": "in the films?", "short_answers": ["Martin Freeman", ["Ian Holm", "Martin Freeman"]]},
            {"question": "on radio?", "short_answers": ["Paul Daneman"]},
        ],
        "docs": [{"title": "The Hobbit", "text": "Bilbo was played by Martin Freeman.", "summary": "s"}],
    }
    path.write_text(json.dumps([record]))
    assert detect_example_format(path) == "dynamicrag"
    (ex,) = load_examples(path)
    assert ex.answers == ["Martin Freeman", "Ian Holm", "Paul Daneman"]
    assert ex.task == "asqa" and ex.id == "-123"
    assert ex.passages[0].id == "-123:1" and ex.passages[0].extra == {"summary": "s"}
    assert ex.extra["qa_pairs"] == record["qa_pairs"]
    assert ex.extra["answer"] == record["answer"]  # the long-form answer is not a gold short answer


def test_selfrag_ctxs_ids_and_scores(tmp_path):
    path = write_jsonl(
        tmp_path / "popqa_longtail.jsonl",
        [
            {
                "id": 7,
                "question": "What is George Rankin's occupation?",
                "answers": "politician",  # a str becomes a one-element list
                "ctxs": [
                    {"id": "4186", "title": "George Rankin", "text": "George Rankin was a politician.", "score": 1.5, "hasanswer": True},
                    {"id": 99, "title": "Rankin", "text": "Another Rankin.", "score": "0.25"},  # Contriever writes str
                    {"title": None, "text": "No id, no title.", "score": "n/a"},
                ],
            }
        ],
    )
    (ex,) = load_examples(path)
    assert ex.id == "7" and ex.answers == ["politician"] and ex.task == "popqa"
    p1, p2, p3 = ex.passages
    assert (p1.id, p1.score, p1.extra) == ("4186", 1.5, {"hasanswer": True})
    assert (p2.id, p2.score) == ("99", 0.25)
    assert (p3.id, p3.title, p3.score, p3.extra) == ("7:3", "", None, {"score": "n/a"})


def test_nq_open_answer_and_eli5_long_answer(tmp_path):
    nq = write_jsonl(tmp_path / "NQ-open.dev.jsonl", [{"question": "q", "answer": ["a", "b"]}])
    eli5 = write_jsonl(tmp_path / "eli5_eval.jsonl", [{"question": "why?", "answer": "Because."}])
    assert [(e.id, e.answers, e.task) for e in load_examples(nq)] == [("NQ-open.dev-1", ["a", "b"], "nq")]
    assert [(e.answers, e.task) for e in load_examples(eli5)] == [(["Because."], "eli5")]


def test_task_precedence(tmp_path):
    path = write_jsonl(
        tmp_path / "nq_dev.jsonl",
        [{"question": "a", "answers": []}, {"question": "b", "answers": [], "dataset": "TriviaQA"}],
    )
    assert [e.task for e in load_examples(path)] == ["nq", "triviaqa"]  # the record's field wins
    assert [e.task for e in load_examples(path, task="popqa")] == ["popqa", "popqa"]  # argument wins
    other = write_jsonl(tmp_path / "known_questions.jsonl", [{"question": "a"}])
    assert load_examples(other)[0].task == "qa"  # 'nq' inside a word is no signal


@pytest.mark.parametrize(
    "path, task",
    [
        ("data/nq-open-oracle.jsonl.gz", "nq"),
        ("flashrag_nq_test.jsonl", "nq"),
        ("nqueens.jsonl", None),
        ("unqualified_dev.jsonl", None),
        ("eval/2wikimultihopqa/dev.jsonl", "2wikimqa"),
        ("eval/hotpotqa/dev.jsonl", "hotpotqa"),
        ("my_qa.json", None),
    ],
)
def test_guess_task(path, task):
    assert guess_task(path) == task


def test_dpr_tsv(tmp_path):
    path = tmp_path / "psgs_w100.tsv"
    path.write_text(
        'id\ttext\ttitle\n1\t"Aaron Aaron ( or ; ""Ahärôn"") is the brother of Moses."\tAaron\n2\tPlain text.\tB\n'
    )
    passages = load_corpus(path)
    assert [(p.id, p.title) for p in passages] == [("1", "Aaron"), ("2", "B")]
    assert passages[0].text == 'Aaron Aaron ( or ; "Ahärôn") is the brother of Moses.'


def test_dpr_tsv_is_streamed(tmp_path):
    # A bad row at line 3: a loader that reads the whole file first fails before yielding.
    path = tmp_path / "psgs.tsv"
    path.write_text("id\ttext\ttitle\n1\tfirst passage\tT\nbroken row without tabs\n")
    passages = iter_corpus(path)
    assert next(passages).text == "first passage"
    with pytest.raises(DataError, match=r"psgs\.tsv:3: expected 3 tab-separated columns"):
        next(passages)


def test_markdown_folder(tmp_path):
    docs = tmp_path / "docs"
    (docs / "guide").mkdir(parents=True)
    (docs / ".hidden").mkdir()
    (docs / ".hidden" / "skip.md").write_text("# Hidden\n\nnever read\n")
    long_paragraph = " ".join(f"Sentence number {i} has exactly seven words." for i in range(40))  # 280 words
    (docs / "guide" / "setup.md").write_text(
        "Intro line before any heading.\n\n"
        "# Install\n\nShort one.\n\nShort two\ncontinues here.\n\n"
        "```bash\n# not a heading\npip install x\n```\n\n"
        f"## Long part ##\n\n{long_paragraph}\n"
    )
    (docs / "notes.txt").write_text("# plain text has no headings\n\nSecond paragraph.\n")
    (docs / "data.json").write_text("{}")  # not a text file: ignored
    passages = load_corpus(docs)
    assert detect_corpus_format(docs) == "text"
    by_id = {p.id: p for p in passages}
    assert list(by_id)[:2] == ["guide/setup.md:1", "guide/setup.md:2"]
    assert (by_id["guide/setup.md:1"].title, by_id["guide/setup.md:1"].text) == ("setup", "Intro line before any heading.")
    install = by_id["guide/setup.md:2"]
    assert install.title == "Install"
    assert install.text == "Short one. Short two continues here. # not a heading pip install x"  # merged, one line
    long = [p for p in passages if p.title == "Long part"]
    assert len(long) in (2, 3) and all(50 <= len(p.text.split()) <= 150 for p in long)
    assert " ".join(p.text for p in long) == long_paragraph  # cut at sentence ends, nothing lost
    assert [(p.id, p.title) for p in passages if p.id.startswith("notes")] == [("notes.txt:1", "notes")]
    assert not any("Hidden" in p.title for p in passages)


def test_single_text_file(tmp_path):
    path = tmp_path / "faq.md"
    path.write_text("# FAQ\n\nQ and A.\n")
    assert [(p.id, p.title, p.text) for p in load_corpus(path)] == [("faq.md:1", "FAQ", "Q and A.")]


def test_gzip_everywhere(tmp_path):
    ex_path = write_jsonl(tmp_path / "triviaqa.jsonl.gz", [{"question": "q?", "answers": ["a"]}])
    assert [(e.id, e.task) for e in load_examples(ex_path)] == [("triviaqa-1", "triviaqa")]
    corpus = tmp_path / "wiki.json.gz"
    with gzip.open(corpus, "wt") as f:
        json.dump([{"title": "T", "text": "body"}], f)
    assert [(p.id, p.title) for p in load_corpus(corpus)] == [("wiki:1", "T")]
    md = tmp_path / "readme.md.gz"
    with gzip.open(md, "wt") as f:
        f.write("# Title\n\nBody.\n")
    assert [p.title for p in load_corpus(md)] == ["Title"]
    tsv = tmp_path / "psgs.tsv.gz"
    with gzip.open(tsv, "wt") as f:
        f.write("id\ttext\ttitle\n5\tx y\tZ\n")
    assert [p.id for p in load_corpus(tsv)] == ["5"]


def test_plain_corpus_records(tmp_path):
    path = write_jsonl(tmp_path / "kb.jsonl", [{"title": "A", "text": "one", "url": "u"}, {"id": 10, "text": "two"}])
    assert [(p.id, p.title, p.extra) for p in load_corpus(path)] == [("kb:1", "A", {"url": "u"}), ("10", "", {})]
    assert detect_corpus_format(path) == "passages"


def test_json_file_holding_jsonl(tmp_path):
    path = tmp_path / "dev.json"
    path.write_text('{"question": "a"}\n{"question": "b"}\n')
    assert [e.id for e in load_examples(path)] == ["dev-1", "dev-2"]


def test_limit_and_format_override(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"question": str(i)} for i in range(5)])
    assert [e.question for e in load_examples(path, limit=2)] == ["0", "1"]
    assert [e.question for e in load_examples(path, skip=3)] == ["3", "4"]  # a held-apart tail
    assert [e.question for e in load_examples(path, skip=1, limit=2)] == ["1", "2"]
    assert load_examples(path, skip=9) == []
    with pytest.raises(DataError, match=r"unknown examples format 'nope'; choose from \['dynamicrag', 'fever', 'flashrag', 'hotpotqa'\]"):
        load_examples(path, format="nope")
    with pytest.raises(DataError, match=str(sorted(CORPUS_FORMATS)).replace("[", r"\[").replace("]", r"\]")):
        load_corpus(path, format="nope")
    assert sorted(EXAMPLE_FORMATS) == ["dynamicrag", "fever", "flashrag", "hotpotqa"]


def test_undetectable_keys(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{"query": "q"}])
    with pytest.raises(DataError, match=r"x\.jsonl: cannot detect .*\['query'\].*format= one of"):
        load_examples(path)


# ---------------------------------------------------------------- malformed inputs


@pytest.mark.parametrize(
    "lines, line, field",
    [
        (['{"question": "ok"}', '{"question": "cut off'], 2, None),
        (['{"question": "ok"}', "", '{"answers": ["a"]}'], 3, "question"),
        (['{"question": "q", "answers": 5}'], 1, "answers"),
        (['{"question": "q", "answers": ["a", 3]}'], 1, "answers"),
        (['{"question": "q", "ctxs": [{"title": "t", "text": "x"}, {"title": "t", "text": " "}]}'], 1, "ctxs[1].text"),
        (['{"question": "q", "ctxs": [{"title": 5, "text": "x"}]}'], 1, "ctxs[0].title"),
        (['{"claim": ""}'], 1, "claim"),
    ],
)
def test_malformed_examples(tmp_path, lines, line, field):
    path = tmp_path / "bad_input.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        load_examples(path)
    message = str(err.value)
    assert f"bad_input.jsonl:{line}:" in message
    assert err.value.line == line and err.value.field == field
    if field:
        assert f"field '{field}'" in message


def test_error_message_wording(tmp_path):
    path = write_jsonl(tmp_path / "nq.jsonl", [{"question": "q", "answers": 17}])
    with pytest.raises(DataError) as err:
        load_examples(path)
    assert str(err.value) == f"{path}:1: field 'answers': expected a list of strings, got int"


def test_malformed_json_array_names_the_record(tmp_path):
    path = tmp_path / "hotpot_dev.json"
    path.write_text(json.dumps([{"_id": "a", "question": "q", "context": []}, {"_id": "b", "context": []}]))
    with pytest.raises(DataError, match=r"hotpot_dev\.json: record 2: field 'question': missing"):
        load_examples(path)
    path.write_text('[{"question": "q"},\n {"question": ]')
    with pytest.raises(DataError, match=r"hotpot_dev\.json:2: invalid JSON"):
        load_examples(path)


def test_malformed_corpora(tmp_path):
    empty = write_jsonl(tmp_path / "kb.jsonl", [{"text": "fine"}, {"title": "T", "text": ""}])
    with pytest.raises(DataError, match=r"kb\.jsonl:2: field 'text': empty passage text"):
        load_corpus(empty)
    flash = write_jsonl(tmp_path / "wiki.jsonl", [{"id": "1", "contents": '"Title"\n'}])
    with pytest.raises(DataError, match=r"wiki\.jsonl:1: field 'contents'"):
        load_corpus(flash)
    titles = tmp_path / "corpus.json"
    titles.write_text(json.dumps({"Good": ["a."], "Bad": 3}))
    with pytest.raises(DataError, match=r"corpus\.json: field 'Bad': expected a list of sentence strings, got int"):
        load_corpus(titles)
    bad_gz = tmp_path / "x.jsonl.gz"
    bad_gz.write_bytes(gzip.compress(b'{"text": "a"}\n' * 100)[:-20])
    with pytest.raises(DataError, match=r"x\.jsonl\.gz:2: corrupt or truncated gzip"):  # the line it breaks off in
        load_corpus(bad_gz)


def test_a_qa_file_serves_as_the_corpus_of_its_own_passages(shared_data):
    from dynamicrag.data import detect_corpus_format, load_corpus

    path = shared_data / "nq" / "nq-open-oracle.jsonl.gz"
    assert detect_corpus_format(path) == "examples"
    passages = load_corpus(path)
    # 2655 gold passages, of which some questions share the same one: each kept once
    assert 2500 < len(passages) < 2655
    assert len({(p.title, p.text) for p in passages}) == len(passages)
    # "gold for the question it came with" means nothing for other questions: dropped
    assert not any({"isgold", "hasanswer"} & set(p.extra) for p in passages)
    assert len(load_corpus(shared_data / "hotpotqa" / "hotpotqa_train.json")) == 994


def test_the_packages_own_example_dumps_read_back_unchanged(tmp_path):
    from dynamicrag.schema import Example, Passage

    examples = [
        Example(id="q1", question="who?", answers=["Ada"], task="nq", extra={"label_rule": "teacher"},
                passages=[Passage(id="p1", title="T", text="Ada wrote it.", score=0.7, extra={"relevant": True}),
                          Passage(id="p2", text="Filler.", extra={"relevant": False, "isgold": False})]),
        Example(id="q2", question="what?", answers=[], task="hotpotqa"),
    ]
    path = write_jsonl(tmp_path / "pool.jsonl", [ex.model_dump(mode="json") for ex in examples])
    assert load_examples(path) == examples
