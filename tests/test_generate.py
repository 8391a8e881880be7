"""The generator's decoding settings (GenerationConfig) and how they reach the backend."""

from __future__ import annotations

import json

import pytest

from dynamicrag.evaluate.answer_metrics import FEVER_LABELS, fever_label
from dynamicrag.evaluate.benchmark import BenchmarkConfig, load_config
from dynamicrag.generate import FEVER_CHOICES, TASK_GENERATION, GenerationConfig, Generator
from dynamicrag.llm.base import Completion, SamplingParams, loop_frequency_penalty, snap_to_choice, snapped_completion
from dynamicrag.llm.openai_backend import choice_extra_body, choice_gbnf
from dynamicrag.llm.vllm_backend import to_vllm_sampling_kwargs
from dynamicrag.pipeline import Pipeline
from dynamicrag.rerank import TopKReranker
from dynamicrag.schema import Example, Passage, Selection


class RecordingBackend:
    """Answers with the task line it was shown; keeps the settings of each call."""

    name = "recording"
    model = "recording"

    def __init__(self, text: str | None = None):
        self.calls: list[tuple[int, SamplingParams]] = []
        self.text = text

    def count_tokens(self, chat):
        return 1

    def generate(self, chats, params):
        self.calls.append((len(chats), params))
        return [[Completion(f"  {self.text or chat[-1]['content'].splitlines()[0]}\n")] for chat in chats]


def example(i: int, task: str) -> Example:
    return Example(id=str(i), question=f"q{i}", task=task, passages=[Passage(id="p", text="t")])


def test_each_task_gets_its_own_settings_in_one_call_per_task():
    backend = RecordingBackend()
    examples = [example(0, "nq"), example(1, "fever"), example(2, "hotpotqa"), example(3, "eli5")]
    answers = Generator(backend).answer(examples, [Selection(ids=[1])] * 4)
    assert answers[1].startswith("Please answer the question with \"SUPPORTS\"")  # stripped, in input order
    by_size = sorted(backend.calls, key=lambda call: -call[0])
    (two, short), (_, fever), (_, long) = by_size[0], *sorted(by_size[1:], key=lambda c: c[1].max_new_tokens)
    assert two == 2 and short == GenerationConfig().params("nq") == GenerationConfig().params("hotpotqa")
    assert fever.choices == FEVER_CHOICES and long.max_new_tokens == 200 and long.stop == ()
    assert short.stop and short.no_repeat_ngram_size and short.temperature == 0


def test_overrides_apply_to_every_task_and_defaults_stay_per_task():
    config = GenerationConfig(max_new_tokens=32, no_repeat_ngram_size=0, stop=[], constrain_labels=False)
    for task in ("nq", "fever", "eli5", "something-new"):
        params = config.params(task)
        assert params.max_new_tokens == 32 and params.no_repeat_ngram_size is None
        assert params.stop == () and params.choices is None
    default = GenerationConfig()
    assert default.params("NQ") == default.params("unknown-task")  # the "default" entry
    assert default.params("fever").choices == FEVER_CHOICES
    # The Generator's shorthand fields override the config.
    assert Generator(RecordingBackend(), max_new_tokens=5).config.params("eli5").max_new_tokens == 5


def test_settings_are_a_json_record_of_overrides_and_resolved_tasks():
    settings = Generator(RecordingBackend(), config=GenerationConfig(frequency_penalty=0.2)).settings()
    assert json.loads(json.dumps(settings)) == settings
    assert settings["overrides"]["frequency_penalty"] == 0.2
    assert set(settings["tasks"]) == set(TASK_GENERATION)
    assert settings["tasks"]["fever"]["choices"] == list(FEVER_CHOICES)
    assert all(t["frequency_penalty"] == 0.2 for t in settings["tasks"].values())


def test_bad_settings_fail_when_built():
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="no_repeat_ngram_size"):
        GenerationConfig(no_repeat_ngram_size=-1)
    with pytest.raises(ValueError, match="frequency_penalty"):
        GenerationConfig(frequency_penalty=5.0)


def test_short_answer_stop_keeps_what_the_small_model_writes_before_its_answer():
    stop = GenerationConfig().params("nq").stop
    # Seen on NQ: the model copies the passage's title line, or restates the question, and
    # answers after it; an abbreviation does not end the answer either.
    for answer in ("Mapp v. Ohio\nDollree Mapp was an employee", "Dr. Lexie Grey died in a plane crash",
                   "[1] Manchester United F.C.\nManchester United Football Club is based in Old Trafford",
                   "Who won the Australian Open in 2018?\n\nThe answer is: Roger Federer",
                   "A Whiter Shade of Pale\n\nIt is by Procol Harum"):
        assert not any(s in answer for s in stop), answer
    # A finished paragraph ends it.
    for finished in ("It was released in 2018.\n\nIt was", "Yes!\n\nAnd"):
        assert any(s in finished for s in stop)


def test_fever_choices_are_the_metrics_labels():
    # The task line asks for "NEI"; the data and the metric say NOT ENOUGH INFO: the metric must
    # read each constrained answer as one of its labels, all three covered.
    assert {fever_label(c) for c in FEVER_CHOICES} == set(FEVER_LABELS)


def test_backends_without_ngram_ban_get_a_frequency_penalty_and_choices_map_per_server():
    params = SamplingParams(no_repeat_ngram_size=6)
    assert loop_frequency_penalty(params) > 0
    assert loop_frequency_penalty(SamplingParams(no_repeat_ngram_size=6, frequency_penalty=0.1)) == 0.1
    assert loop_frequency_penalty(SamplingParams()) == 0
    assert to_vllm_sampling_kwargs(params)["frequency_penalty"] == loop_frequency_penalty(params)
    labels = SamplingParams(choices=FEVER_CHOICES)
    assert to_vllm_sampling_kwargs(labels)["structured_outputs"] == {"choice": list(FEVER_CHOICES)}
    assert "frequency_penalty" not in to_vllm_sampling_kwargs(labels)
    assert choice_extra_body("guided_regex", FEVER_CHOICES) == {"guided_choice": list(FEVER_CHOICES)}
    assert choice_extra_body("none", FEVER_CHOICES) is None
    assert choice_gbnf(["A", 'say "B"']) == 'root ::= "A" | "say \\"B\\""'


def test_snapping_takes_the_first_label_named_and_keeps_the_raw_text():
    assert snap_to_choice("REFUTES. The claim SUPPORTS nothing", FEVER_CHOICES) == "REFUTES"
    assert snap_to_choice("it is nei", FEVER_CHOICES) == "NEI"
    assert snap_to_choice("NEIGHBOURS SUPPORTSX", FEVER_CHOICES) is None  # whole words only
    snapped = snapped_completion(Completion("I think it supports it."), FEVER_CHOICES)
    assert snapped.text == "SUPPORTS" and snapped.extra == {"snapped_from": "I think it supports it.", "snapped": True}
    kept = snapped_completion(Completion("no idea"), FEVER_CHOICES)
    assert kept.text == "no idea" and kept.extra["snapped"] is False


def test_a_snapped_answer_keeps_the_models_text_in_the_record():
    class SnappingBackend(RecordingBackend):
        def generate(self, chats, params):
            return [[snapped_completion(Completion("It REFUTES it"), params.choices)] for _ in chats]

    backend = SnappingBackend()
    [record] = Pipeline(TopKReranker(1), Generator(backend)).run([example(0, "fever")])
    assert record["answer"] == "REFUTES" and record["answer_raw"] == "It REFUTES it"


def test_benchmark_yaml_generation_section(tmp_path):
    base = {"benchmarks": [{"name": "nq", "file": "x"}], "rerankers": [{"name": "top", "kind": "topk"}]}
    config = BenchmarkConfig.model_validate({**base, "generation": {"no_repeat_ngram_size": 4, "stop": []}})
    params = config.generation_config().params("nq")
    assert params.no_repeat_ngram_size == 4 and params.stop == ()
    assert params.max_new_tokens == TASK_GENERATION["default"].max_new_tokens
    legacy = BenchmarkConfig.model_validate({**base, "answer_max_tokens": 48})
    assert legacy.generation_config().params("eli5").max_new_tokens == 48
    bad = tmp_path / "bad.yaml"
    bad.write_text(json.dumps({**base, "generation": {"no_repeat": 4}}))
    with pytest.raises(ValueError, match=r"bad.yaml: field 'generation.no_repeat'"):
        load_config(bad)
    bad.write_text(json.dumps({**base, "generation": {"stop": [""]}}))
    with pytest.raises(ValueError, match="bad.yaml: field 'generation'"):
        load_config(bad)
