"""The benchmark's answer cache: one backend call per (generator settings, prompt), kept across
processes, never shared between settings."""

from __future__ import annotations

from dynamicrag.evaluate.answer_cache import AnswerCache, CachedGenerator, generator_fingerprint
from dynamicrag.schema import Example, Passage, Selection
from fakes import ScriptedBackend


def example(i: int) -> Example:
    return Example(id=f"q{i}", question=f"question {i}", answers=["x"],
                   passages=[Passage(id=f"{i}-{p}", title=f"in t{p} now", text="text") for p in range(1, 4)])


def test_each_prompt_is_asked_once_within_a_batch_and_across_calls(tmp_path):
    backend = ScriptedBackend()
    with AnswerCache(tmp_path / "cache.jsonl") as cache:
        generator = CachedGenerator(backend, max_new_tokens=8, cache=cache)
        ex = example(0)
        answers = generator.answer([ex, ex, example(1)], [Selection(ids=[2]), Selection(ids=[2]), Selection(ids=[2])])
        assert answers == ["in t2 now"] * 3
        assert len(backend.calls) == 2  # q0's prompt once, q1's once
        assert generator.take_log() == [("q0", True), ("q0", False), ("q1", True)]
        assert generator.answer([ex], [Selection(ids=[2])]) == ["in t2 now"] and len(backend.calls) == 2
        assert generator.take_log() == [("q0", False)] and generator.log == []


def test_the_cache_survives_a_new_process_and_a_partial_last_line(tmp_path):
    path = tmp_path / "cache.jsonl"
    with AnswerCache(path) as cache:
        CachedGenerator(ScriptedBackend(), max_new_tokens=8, cache=cache).answer([example(0)], [Selection(ids=[1])])
    with open(path, "ab") as f:
        f.write(b'{"key": "abc", "ans')  # a run killed mid-write
    backend = ScriptedBackend()
    with AnswerCache(path) as cache:
        assert len(cache) == 1
        assert CachedGenerator(backend, max_new_tokens=8, cache=cache).answer([example(0)], [Selection(ids=[1])]) == ["in t1 now"]
    assert backend.calls == [] and path.read_bytes().endswith(b"}\n")


def test_other_settings_share_the_file_but_not_the_answers(tmp_path):
    with AnswerCache(tmp_path / "cache.jsonl") as cache:
        short = CachedGenerator(ScriptedBackend(), max_new_tokens=8, cache=cache)
        short.answer([example(0)], [Selection(ids=[1])])
        longer_backend = ScriptedBackend()
        longer = CachedGenerator(longer_backend, max_new_tokens=16, cache=cache)
        longer.answer([example(0)], [Selection(ids=[1])])
        assert len(longer_backend.calls) == 1 and len(cache) == 2
        other_server = ScriptedBackend()
        CachedGenerator(other_server, max_new_tokens=8, cache=cache, backend_options={"base_url": "http://b"}).answer(
            [example(0)], [Selection(ids=[1])])
        assert len(other_server.calls) == 1


def test_a_local_checkpoint_that_changes_is_another_model(tmp_path):
    model = tmp_path / "ckpt"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"0" * 10)
    backend = ScriptedBackend()
    backend.model = str(model)
    before = generator_fingerprint(backend, 8)
    assert before["model_files"] == [["model.safetensors", 10, (model / "model.safetensors").stat().st_mtime_ns]]
    (model / "model.safetensors").write_bytes(b"1" * 12)  # retrained in place
    assert generator_fingerprint(backend, 8) != before
    assert generator_fingerprint(ScriptedBackend(), 8)["model_files"] is None  # a name, not a path


def test_a_generator_adapter_and_its_files_are_part_of_the_fingerprint(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"0" * 4)
    backend = ScriptedBackend()
    base = generator_fingerprint(backend, 8)
    assert "adapter" not in base  # caches written before adapters existed keep their keys
    backend.adapter = str(adapter)  # as TransformersBackend(adapter=...) holds it
    tuned = generator_fingerprint(backend, 8)
    assert tuned["adapter"] == str(adapter) and tuned != base
    assert generator_fingerprint(ScriptedBackend(), 8, adapter=str(adapter)) == tuned  # or named by the caller
    (adapter / "adapter_model.safetensors").write_bytes(b"1" * 6)  # retrained in place
    assert generator_fingerprint(backend, 8) != tuned


def test_the_dtype_a_generator_computes_in_is_part_of_the_fingerprint():
    """``dtype=auto`` is bf16 on CPUs with native bf16: answers cached in fp32
    must not be reused in bf16, so the dtype the backend describes counts, not the option."""
    class Described(ScriptedBackend):
        def __init__(self, dtype):
            super().__init__()
            self.dtype = dtype

        def describe(self):
            return {**super().describe(), "dtype": self.dtype, "batch_size": 8}

    fp32 = generator_fingerprint(Described("float32"), 8)
    assert fp32 == generator_fingerprint(ScriptedBackend(), 8)  # caches written in fp32 keep their keys
    assert generator_fingerprint(Described("bfloat16"), 8) == {**fp32, "dtype": "bfloat16"}


def test_other_decoding_settings_never_reuse_cached_answers(tmp_path):
    """Issue 17: the generator's decoding (n-gram ban, stop strings, frequency penalty, label
    constraint, caps) is part of the key, so a changed setting asks the backend again."""
    from dynamicrag.generate import GenerationConfig

    ex, sel = example(0), Selection(ids=[1])
    with AnswerCache(tmp_path / "cache.jsonl") as cache:
        CachedGenerator(ScriptedBackend(), cache=cache).answer([ex], [sel])
        for changed in (GenerationConfig(no_repeat_ngram_size=0), GenerationConfig(stop=("\n",)),
                        GenerationConfig(frequency_penalty=0.5), GenerationConfig(constrain_labels=False),
                        GenerationConfig(max_new_tokens=16)):
            backend = ScriptedBackend()
            CachedGenerator(backend, config=changed, cache=cache).answer([ex], [sel])
            assert len(backend.calls) == 1, changed
        same = ScriptedBackend()
        assert CachedGenerator(same, config=GenerationConfig(), cache=cache).answer([ex], [sel]) == ["in t1 now"]
        assert same.calls == []


def test_each_task_is_asked_with_its_own_decoding_settings(tmp_path):
    from dynamicrag.generate import FEVER_CHOICES

    class Recording(ScriptedBackend):
        def generate(self, chats, params):
            self.params = [*getattr(self, "params", []), params]
            return super().generate(chats, params)

    backend = Recording()
    fever = example(1).model_copy(update={"task": "fever"})
    with AnswerCache(tmp_path / "cache.jsonl") as cache:
        CachedGenerator(backend, cache=cache).answer([example(0), fever], [Selection(ids=[1])] * 2)
    assert sorted(p.choices is not None for p in backend.params) == [False, True]
    assert next(p for p in backend.params if p.choices).choices == FEVER_CHOICES
