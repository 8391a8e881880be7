"""The index folder: atomic writes, overwrite, the load cache, and clear errors."""

from __future__ import annotations

import json
import os

import pytest

from dynamicrag.retrieve import (
    RETRIEVERS,
    BM25Retriever,
    NotAnIndexError,
    Retriever,
    build_index,
    clear_index_cache,
    load_index,
)
from dynamicrag.schema import Passage

CORPUS = [
    Passage(
        id="a", title="Apple", text="Apples grow on trees in orchards.", extra={"isgold": True}
    ),
    Passage(id="b", title="Banana", text="Bananas are long yellow fruits."),
    Passage(id="c", title="", text="Cherries are small red stone fruits."),
]


def test_build_index_writes_meta_corpus_and_index_files(tmp_path):
    out = tmp_path / "idx"
    retriever = build_index(CORPUS, out, show_progress=False)
    assert isinstance(retriever, Retriever) and retriever.kind == "bm25" and len(retriever) == 3
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["kind"] == "bm25"
    assert meta["counts"]["passages"] == 3 and meta["created"].endswith("+00:00")
    assert set(meta["options"]) >= {"k1", "b", "method", "stemmer"}
    lines = (out / "passages.jsonl").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["a", "b", "c"]
    assert json.loads(lines[0])["extra"] == {"isgold": True}
    # Nothing but the index is left in the parent folder (no temporary folders).
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_load_index_is_cached_per_process_until_the_index_changes(tmp_path):
    out = tmp_path / "idx"
    build_index(CORPUS, out, show_progress=False)
    clear_index_cache()
    first = load_index(out)
    assert load_index(str(out)) is first
    assert load_index(tmp_path / "." / "idx") is first  # same folder, another spelling
    rebuilt = build_index(CORPUS[:2], out, overwrite=True, show_progress=False)
    assert load_index(out) is rebuilt and len(load_index(out)) == 2
    clear_index_cache()
    fresh = load_index(out)
    assert fresh is not rebuilt and len(fresh) == 2


def test_existing_folder_is_kept_unless_overwrite(tmp_path):
    out = tmp_path / "idx"
    build_index(CORPUS, out, show_progress=False)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_index(CORPUS[:1], out, show_progress=False)
    assert len(load_index(out)) == 3
    empty = tmp_path / "empty"
    empty.mkdir()
    build_index(CORPUS, empty, show_progress=False)  # an empty folder is fine
    assert (empty / "meta.json").is_file()


def test_interrupted_build_leaves_no_half_index(tmp_path, monkeypatch):
    original = BM25Retriever.write_files

    def write_then_die(self, index_dir):
        original(self, index_dir)  # the index files are on disk, meta.json is not yet
        raise KeyboardInterrupt

    monkeypatch.setattr(BM25Retriever, "write_files", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        build_index(CORPUS, tmp_path / "idx", show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_previous_index(tmp_path, monkeypatch):
    out = tmp_path / "idx"
    build_index(CORPUS, out, show_progress=False)

    def die(self, index_dir):
        raise OSError("disk full")

    monkeypatch.setattr(BM25Retriever, "write_files", die)
    with pytest.raises(OSError, match="disk full"):
        build_index(CORPUS[:1], out, overwrite=True, show_progress=False)
    clear_index_cache()
    assert len(load_index(out)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_load_index_on_a_folder_that_is_not_an_index(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(NotAnIndexError, match=r"not a dynamicrag index: missing meta\.json"):
        load_index(tmp_path)
    with pytest.raises(FileNotFoundError, match="index folder not found"):
        load_index(tmp_path / "nowhere")


def test_load_index_names_the_missing_index_file(tmp_path):
    out = tmp_path / "idx"
    build_index(CORPUS, out, show_progress=False)
    clear_index_cache()
    os.remove(out / "bm25" / "vocab.index.json")
    with pytest.raises(NotAnIndexError, match=r"incomplete index: missing bm25/vocab\.index\.json"):
        load_index(out)
    os.remove(out / "passages.jsonl")
    with pytest.raises(NotAnIndexError, match=r"missing passages\.jsonl"):
        load_index(out)


def test_bad_meta_and_bad_passages_lines_are_named(tmp_path):
    out = tmp_path / "idx"
    build_index(CORPUS, out, show_progress=False)
    clear_index_cache()
    meta = json.loads((out / "meta.json").read_text())
    (out / "meta.json").write_text(json.dumps({**meta, "kind": "splade"}))
    with pytest.raises(
        ValueError,
        match=r"unknown retriever kind 'splade'; choose from \['bm25', 'dense', 'hybrid', 'sharded'\]",
    ):
        load_index(out)
    (out / "meta.json").write_text(json.dumps(meta))
    lines = (out / "passages.jsonl").read_text().splitlines()
    lines[1] = '{"id": "b"}'
    (out / "passages.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"passages\.jsonl:2: not a valid passage"):
        load_index(out)


def test_build_index_refuses_bad_input(tmp_path):
    with pytest.raises(ValueError, match=r"choose from \['bm25', 'dense', 'hybrid', 'sharded'\]"):
        build_index(CORPUS, tmp_path / "x", kind="colbert")
    assert sorted(RETRIEVERS) == ["bm25", "dense", "hybrid", "sharded"]  # every kind load_index opens
    with pytest.raises(ValueError, match="sharded index .* is not built from passages"):
        build_index(CORPUS, tmp_path / "x", kind="sharded")
    with pytest.raises(ValueError, match=r"passage id 'a' occurs twice.*items 0 and 3"):
        build_index([*CORPUS, CORPUS[0]], tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="empty corpus"):
        build_index(iter([]), tmp_path / "x", show_progress=False)
    with pytest.raises(TypeError, match="corpus item 1 is a dict"):
        build_index([CORPUS[0], {"id": "b", "text": "x"}], tmp_path / "x", show_progress=False)
    with pytest.raises(ValueError, match="not bm25"):
        build_index(CORPUS, tmp_path / "x", kind="bm25", faiss_index="hnsw", show_progress=False)
    assert not (tmp_path / "x").exists()


def test_build_index_accepts_a_generator(tmp_path):
    retriever = build_index((p for p in CORPUS), tmp_path / "gen", show_progress=False)
    (row,) = retriever.search(["red cherries"], k=1)
    assert row[0].id == "c" and row[0].title == ""
