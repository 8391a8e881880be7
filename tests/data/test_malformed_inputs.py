"""Malformed input files, one explicit case each: the error names the file, the line and the field.

Error or warning: everything here is an error (:class:`~dynamicrag.data.DataError`, exit code 2
from the CLI), because each case either loses data silently or breaks a later stage that joins
records by id:

- a line that is not JSON, or a JSON line cut short: error naming the line;
- a missing required field (question, claim, passage text): error naming the field;
- a wrong type (answers as a number, passages as a string, even an empty one): error naming the
  field and the type found;
- an empty or blank passage text: error naming the passage (``ctxs[2].text``);
- two passages of one example with the same id: error naming both (``ctxs[2].id``, ``ctxs[0]``);
- two examples with the same id: error naming both lines (or records of a JSON array);
- an empty file (no bytes, only blank lines, or ``[]``): error naming the file;
- a truncated gzip file: error naming the line the data breaks off in.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from dynamicrag.data import DataError, ResumableJsonlWriter, load_corpus, load_examples, read_jsonl


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def rec(**fields) -> str:
    return json.dumps(fields, ensure_ascii=False)


def raises(load, path: Path, *, line: int | None, field: str | None, record: int | None = None) -> DataError:
    """Load ``path`` expecting a DataError at ``line``/``record`` and ``field``; check the message says so."""
    with pytest.raises(DataError) as info:
        load(path)
    err = info.value
    message = str(err)
    assert err.path == str(path) and message.startswith(str(path)), message
    assert (err.line, err.record, err.field) == (line, record, field), message
    if line is not None:
        assert message.startswith(f"{path}:{line}: "), message
    if record is not None:
        assert message.startswith(f"{path}: record {record}: "), message
    if field is not None:
        assert f"field '{field}'" in message, message
    return err


GOOD = rec(id="q1", question="Who wrote Hamlet?", answers=["Shakespeare"],
           ctxs=[{"id": "p1", "title": "Hamlet", "text": "Hamlet is a tragedy by Shakespeare."}])


# ---------------------------------------------------------------- JSON syntax


def test_last_line_cut_off(tmp_path):
    path = tmp_path / "nq_dev.jsonl"
    path.write_text(GOOD + "\n" + GOOD.replace("q1", "q2")[:40], encoding="utf-8")  # no newline: killed writer
    err = raises(load_examples, path, line=2, field=None)
    assert "invalid JSON" in str(err)


def test_a_line_that_is_not_json(tmp_path):
    path = write_lines(tmp_path / "nq_dev.jsonl", [GOOD, "question: who wrote Hamlet?"])
    assert "invalid JSON" in str(raises(load_examples, path, line=2, field=None))


def test_a_line_that_is_json_but_not_an_object(tmp_path):
    path = write_lines(tmp_path / "nq_dev.jsonl", [GOOD, "", '["Who wrote Hamlet?", "Shakespeare"]'])
    assert "expected a JSON object, got list" in str(raises(load_examples, path, line=3, field=None))


def test_json_array_cut_off_names_the_line(tmp_path):
    path = tmp_path / "asqa_dev.json"
    path.write_text("[\n" + GOOD + ",\n" + GOOD.replace("q1", "q2")[:30], encoding="utf-8")
    assert "invalid JSON" in str(raises(load_examples, path, line=3, field=None))


def test_unreadable_json_values_are_data_errors(tmp_path):
    # Valid JSON syntax that Python's parser refuses: an integer past 4300 digits, deep nesting.
    huge = tmp_path / "huge.jsonl"
    huge.write_text(GOOD + "\n" + '{"question": "q", "id": ' + "9" * 5000 + "}\n")
    assert "integer string conversion" in str(raises(load_examples, huge, line=2, field=None))
    deep = tmp_path / "deep.jsonl"
    deep.write_text('{"question": "q", "extra": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    assert "nested too deeply" in str(raises(load_examples, deep, line=1, field=None))


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(rec(question="Où est né Gödel ?").encode("latin-1") + b"\n")
    with pytest.raises(DataError, match=r"latin1\.jsonl: not UTF-8 text"):
        load_examples(path)


# ---------------------------------------------------------------- missing fields and wrong types


@pytest.mark.parametrize(
    "record, field, says",
    [
        ({"answers": ["a"]}, "question", "missing"),
        ({"question": "  ", "answers": ["a"]}, "question", "empty"),
        ({"question": 7}, "question", "expected a string, got int"),
        ({"question": "q", "answers": 3}, "answers", "expected a list of strings, got int"),
        ({"question": "q", "answers": ["a", None]}, "answers", "expected a list of strings, got a list containing null"),
        ({"question": "q", "ctxs": "Hamlet is a tragedy."}, "ctxs", "expected a list of passages, got str"),
        ({"question": "q", "ctxs": ""}, "ctxs", "expected a list of passages, got str"),  # not "no passages"
        ({"question": "q", "docs": {}}, "docs", "expected a list of passages, got dict"),
        ({"question": "q", "ctxs": ["Hamlet is a tragedy."]}, "ctxs[0]", "expected a JSON object, got str"),
        ({"question": "q", "ctxs": [{"title": "Hamlet"}]}, "ctxs[0].text", "missing"),
        ({"question": "q", "ctxs": [{"title": "Hamlet", "text": None}]}, "ctxs[0].text", "got null"),
        ({"question": "q", "ctxs": [{"title": 0, "text": "x"}]}, "ctxs[0].title", "got int"),  # not ""
        ({"question": "q", "ctxs": [{"id": 1.5, "text": "x"}]}, "ctxs[0].id", "expected a string or an integer, got float"),
        ({"id": ["q1"], "question": "q"}, "id", "expected a string or an integer, got list"),
        ({"_id": " ", "question": "q"}, "_id", "empty id"),
        ({"question": "q", "ctxs": [{"id": "", "text": "x"}]}, "ctxs[0].id", "empty id"),
    ],
)
def test_missing_field_or_wrong_type(tmp_path, record, field, says):
    path = write_lines(tmp_path / "nq_dev.jsonl", [GOOD.replace("q1", "q0"), rec(**record)])
    assert says in str(raises(load_examples, path, line=2, field=field))


@pytest.mark.parametrize(
    "name, record, field",
    [
        ("fever_dev.jsonl", {"id": 1, "label": "SUPPORTS", "claim": None}, "claim"),
        ("fever_dev.jsonl", {"id": 1, "claim": "c", "label": ["SUPPORTS"]}, "label"),
        ("flashrag_nq.jsonl", {"id": "t", "question": "q", "golden_answers": 5}, "golden_answers"),
        ("hotpot_dev.jsonl", {"_id": "h", "question": "q", "context": [["T", 5]]}, "context[0][1]"),
        ("hotpot_dev.jsonl", {"_id": "h", "question": "q", "context": [["T", [""]]]}, "context[0].text"),
    ],
)
def test_other_formats_name_the_field(tmp_path, name, record, field):
    path = write_lines(tmp_path / name, [rec(**record)])
    raises(load_examples, path, line=1, field=field)


# ---------------------------------------------------------------- empty texts and duplicates


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_passage_text(tmp_path, text):
    ctxs = [{"id": "p1", "text": "fine"}, {"id": "p2", "text": "also fine"}, {"id": "p3", "title": "T", "text": text}]
    path = write_lines(tmp_path / "nq_dev.jsonl", [rec(question="q", ctxs=ctxs)])
    assert "empty passage text" in str(raises(load_examples, path, line=1, field="ctxs[2].text"))


def test_empty_passage_text_in_a_corpus(tmp_path):
    path = write_lines(tmp_path / "kb.jsonl", [rec(id="a", text="fine"), rec(id="b", title="B", text="")])
    assert "empty passage text" in str(raises(load_corpus, path, line=2, field="text"))
    tsv = tmp_path / "psgs_w100.tsv"
    tsv.write_text("id\ttext\ttitle\n1\tfine\tA\n2\t \tB\n")
    raises(load_corpus, tsv, line=3, field="text")


def test_duplicate_passage_ids_within_an_example(tmp_path):
    ctxs = [{"id": 7, "text": "a"}, {"id": "8", "text": "b"}, {"id": "7", "text": "c"}]  # 7 and "7": one id
    path = write_lines(tmp_path / "nq_dev.jsonl", [GOOD, rec(id="q2", question="q", ctxs=ctxs)])
    err = raises(load_examples, path, line=2, field="ctxs[2].id")
    assert "duplicate passage id '7' (also ctxs[0])" in str(err)


def test_the_same_passage_id_in_two_examples_is_fine(tmp_path):
    path = write_lines(tmp_path / "nq_dev.jsonl", [GOOD, GOOD.replace('"q1"', '"q2"')])
    assert [ex.passages[0].id for ex in load_examples(path)] == ["p1", "p1"]


def test_duplicate_example_ids_name_both_lines(tmp_path):
    path = write_lines(tmp_path / "nq_dev.jsonl", [GOOD, GOOD.replace('"q1"', '"q2"'), "", GOOD])
    err = raises(load_examples, path, line=4, field="id")
    assert "duplicate example id 'q1' (first at line 1)" in str(err)


@pytest.mark.parametrize(
    "name, records, field",
    [
        ("hotpot_dev.json", [{"_id": "h1", "question": "q", "context": []}] * 2, "_id"),
        ("asqa_dev.json", [{"sample_id": 5, "question": "q"}, {"sample_id": "5", "question": "r"}], "sample_id"),
        ("fever_dev.json", [{"id": 1, "claim": "c"}, {"id": 1, "claim": "d"}], "id"),
    ],
)
def test_duplicate_example_ids_in_a_json_array_name_both_records(tmp_path, name, records, field):
    path = tmp_path / name
    path.write_text(json.dumps(records))
    err = raises(load_examples, path, line=None, record=2, field=field)
    assert "(first at record 1)" in str(err)


# ---------------------------------------------------------------- empty and truncated files


@pytest.mark.parametrize("content", ["", "\n\n  \n", "[]", "\ufeff"])
def test_empty_file(tmp_path, content):
    path = tmp_path / ("nq_dev.json" if content == "[]" else "nq_dev.jsonl")
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=r"nq_dev\.jsonl?: no records: the file is empty"):
        load_examples(path)
    with pytest.raises(DataError, match=r"no records: the file is empty"):
        load_examples(path, format="dynamicrag")  # also when the format is not sniffed
    with pytest.raises(DataError, match=r"no records|no passages"):
        load_corpus(path)


def test_examples_without_passages_are_no_corpus(tmp_path):
    path = write_lines(tmp_path / "nq_dev.jsonl", [rec(question="q", answers=["a"])])
    with pytest.raises(DataError, match=r"nq_dev\.jsonl: no passages in this corpus"):
        load_corpus(path)


def test_truncated_gzip_names_the_line_it_breaks_off_in(tmp_path):
    lines = [rec(id=f"q{i}", question=f"question number {i} with some words {i * 7919}") for i in range(3000)]
    data = gzip.compress(("\n".join(lines) + "\n").encode())
    path = tmp_path / "nq_train.jsonl.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        load_examples(path)
    err = info.value
    assert "corrupt or truncated gzip file" in str(err) and str(err).startswith(f"{path}:{err.line}: ")
    assert 1 < err.line < 3000
    # Every line before it was whole: reading up to there gives exactly those records.
    read = []
    with pytest.raises(DataError):
        for _, record in read_jsonl(path):
            read.append(record["id"])
    assert read == [f"q{i}" for i in range(err.line - 1)]


def test_truncated_gzip_json_names_the_file(tmp_path):
    path = tmp_path / "hotpot_dev.json.gz"
    path.write_bytes(gzip.compress(json.dumps([{"_id": "h", "question": "q", "context": []}] * 50).encode())[:-12])
    with pytest.raises(DataError, match=r"hotpot_dev\.json\.gz: corrupt or truncated gzip file"):
        load_examples(path)


def test_not_gzip_at_all(tmp_path):
    path = tmp_path / "nq_dev.jsonl.gz"
    path.write_text(GOOD + "\n")
    with pytest.raises(DataError, match=r"nq_dev\.jsonl\.gz(:1)?: corrupt or truncated gzip file"):
        load_examples(path)


# ---------------------------------------------------------------- odd but valid input


def test_huge_numbers_and_odd_unicode_load_and_write_back(tmp_path, caplog):
    """Valid JSON that once broke a loader or a stage: a score past 1e308, U+2028, a lone surrogate."""
    lines = [
        rec(id=10**30, question="q\u2028with a line separator", answers=["a\x85b"],
            ctxs=[{"text": "t", "score": 10**400}]),
        '{"id": "s", "question": "lone \\ud800 surrogate", "ctxs": [{"text": "\\udfff\\ud83d\\ude00"}]}',
    ]
    for path in (write_lines(tmp_path / "odd.jsonl", lines), write_lines(tmp_path / "odd.json", lines)):
        first, second = load_examples(path)  # .json holding JSONL: split on "\n" only, not at U+2028
        assert first.id == str(10**30) and first.question == "q\u2028with a line separator"
        assert first.passages[0].score is None and first.passages[0].extra["score"] == 10**400
        # A lone surrogate is not Unicode (pydantic cannot serialise it, UTF-8 cannot hold it):
        # replaced by U+FFFD, with a warning naming the line; a valid pair stays one emoji.
        assert second.question == "lone \ufffd surrogate" and second.passages[0].text == "\ufffd\U0001F600"
        assert f"{path}:2: replaced lone UTF-16 surrogates" in caplog.text
        out = tmp_path / f"out-{path.suffix[1:]}.jsonl"
        with ResumableJsonlWriter(out) as writer:
            for ex in (first, second):
                writer.write(ex.model_dump(mode="json"))
        assert load_examples(out) == [first, second]


def test_the_writer_keeps_a_lone_surrogate_it_is_given(tmp_path):
    path = tmp_path / "out.jsonl"
    with ResumableJsonlWriter(path) as writer:
        writer.write({"id": "a", "answer": "broken \ud800 emoji"})  # not UTF-8 encodable: \u-escaped
        writer.write({"id": "b", "answer": "Gödel"})
    assert path.read_bytes().decode("utf-8").splitlines() == [
        '{"id": "a", "answer": "broken \\ud800 emoji"}', '{"id": "b", "answer": "Gödel"}'
    ]
    with ResumableJsonlWriter(path) as writer:
        assert writer.done == 2
