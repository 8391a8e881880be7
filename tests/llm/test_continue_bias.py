"""The continue bias: which tokens it moves, that decoding goes on or stops where the calibrated
margin says, how each backend sends it, and the rule that sets it on training prompts."""

from __future__ import annotations

import json

import pytest

from dynamicrag.data import load_examples
from dynamicrag.llm import SamplingParams, load_backend
from dynamicrag.llm.adapters import shipped_adapters
from dynamicrag.llm.base import continue_ids_in, continue_token_ids
from dynamicrag.llm.vllm_backend import to_vllm_sampling_kwargs
from dynamicrag.prompts import load_style, reranker_chat
from dynamicrag.rerank.parse import parse_selection


def test_the_continue_tokens_are_those_that_start_with_a_closing_bracket_and_comma():
    vocabulary = [(0, "],"), (1, " ],"), (2, "],["), (3, "]"), (4, ","), (5, "]]"), (6, "x],")]
    assert continue_ids_in(vocabulary) == [0, 1, 2]


@pytest.mark.parametrize("bias", [-100.5, 100.5])
def test_a_bias_outside_openais_range_is_refused(bias):
    with pytest.raises(ValueError, match="continue_bias must be in"):
        SamplingParams(continue_bias=bias)


def test_vllm_gets_the_bias_as_its_logit_bias_on_the_continue_tokens():
    kwargs = to_vllm_sampling_kwargs(SamplingParams(continue_bias=0.5), continue_ids=[7, 9])
    assert kwargs["logit_bias"] == {7: 0.5, 9: 0.5}
    assert "logit_bias" not in to_vllm_sampling_kwargs(SamplingParams())
    with pytest.raises(ValueError, match="continue tokens"):
        to_vllm_sampling_kwargs(SamplingParams(continue_bias=0.5))


def test_an_openai_server_gets_the_bias_only_when_it_is_dynamicrags_own():
    from dynamicrag.llm.openai_backend import OpenAIBackend

    ours = OpenAIBackend("http://127.0.0.1:9/v1", "m", guided_decoding="dynamicrag")
    assert ours.request_kwargs(SamplingParams(continue_bias=0.5))["extra_body"] == {"continue_bias": 0.5}
    theirs = OpenAIBackend("http://127.0.0.1:9/v1", "m")
    with pytest.raises(ValueError, match="server model's token ids"):
        theirs.request_kwargs(SamplingParams(continue_bias=0.5))
    assert "extra_body" not in theirs.request_kwargs(SamplingParams())


def test_llamacpp_sends_the_bias_as_its_logit_bias_on_the_continue_tokens_of_its_vocabulary():
    from dynamicrag.llm.llamacpp_backend import LlamaCppBackend

    class Llama:
        """llama_cpp.Llama as the backend calls it (the package is an optional extra, absent here)."""

        pieces = ["<s>", "</s>", "[", "1", "]", "],", " ],", "],[", ","]

        def __init__(self):
            self.requests = []

        def n_vocab(self):
            return len(self.pieces)

        def token_bos(self):
            return 0

        def token_eos(self):
            return 1

        def detokenize(self, ids):
            return "".join(self.pieces[i] for i in ids).encode()

        def create_chat_completion(self, messages, seed, **kwargs):
            self.requests.append(kwargs)
            return {"usage": {"prompt_tokens": 3, "completion_tokens": 3},
                    "choices": [{"message": {"content": "[1]"}, "finish_reason": "stop"}]}

    backend = object.__new__(LlamaCppBackend)  # without loading a GGUF
    backend.llm, backend._grammars, backend._continue_ids = Llama(), {}, None
    chat = [{"role": "user", "content": "ids?"}]
    backend.generate([chat], SamplingParams(continue_bias=0.49))
    backend.generate([chat], SamplingParams())
    assert backend.llm.requests[0]["logit_bias"] == {"5": 0.49, "6": 0.49, "7": 0.49}  # OpenAI's form
    assert "logit_bias" not in backend.llm.requests[1]


@pytest.mark.slow
def test_smollm2s_continue_tokens_are_the_one_its_id_lists_are_written_with(smollm):
    tok = smollm.tokenizer
    ids = continue_token_ids(tok)
    assert sorted(tok.convert_ids_to_tokens(ids)) == sorted(["],", "Ġ],", "],["])
    written = tok.encode("[1], [2]", add_special_tokens=False)
    assert written[2] in ids  # after "[", "1": the token that goes on


@pytest.fixture(scope="module")
def reranker(shared_data):
    """The shipped reranker adapter in fp32, and its prompt for a held-apart HotpotQA question."""
    backend = load_backend("transformers", adapter=str(shipped_adapters()["smollm2-135m-reranker"]), dtype="float32")
    example = load_examples(shared_data / "hotpotqa" / "hotpotqa_train.json", task="hotpotqa", skip=70, limit=1)[0]
    chat = reranker_chat(load_style("default"), example.question, example.passages[:10], 60)
    return backend, chat


def ids_written(backend, chat, bias: float) -> list[int]:
    params = SamplingParams(max_new_tokens=30, continue_bias=bias)
    return parse_selection(backend.generate([chat], params)[0][0].text, 10).ids


@pytest.mark.slow
def test_decoding_goes_on_exactly_when_the_margin_plus_the_bias_is_above_zero(reranker):
    from dynamicrag.train.calibrate import continue_margins

    backend, chat = reranker
    first = ids_written(backend, chat, 0.0)
    assert first, "the shipped adapter writes an id list"
    [margin] = continue_margins(backend, [chat], [first[0]])
    assert (margin > 0) == (len(first) > 1)
    # Just past the margin either way: decoding follows it.
    assert ids_written(backend, chat, -margin - 0.05) == first[:1]
    more = ids_written(backend, chat, -margin + 0.05)
    assert more[0] == first[0] and len(more) >= 2


@pytest.mark.slow
def test_the_calibrated_bias_keeps_every_one_id_training_target_stopping(reranker, tmp_path):
    from dynamicrag.train.calibrate import calibrate_continue_bias, continue_margins, sft_reranker_prompts

    backend, chat = reranker
    # Three training records: two stop after one id, one goes on.
    rows = [{"id": f"q{i}", "role": "reranker", "messages": [*chat, {"role": "assistant", "content": target}]}
            for i, target in enumerate(["[1]", "[2]", "[1], [3]"])]
    rows.append({"id": "q9", "role": "generator", "messages": [*chat, {"role": "assistant", "content": "Paris"}]})
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps(r) + "\n" for r in rows))
    chats, targets = sft_reranker_prompts(sft)
    assert targets == [[1], [2], [1, 3]]
    calibration = calibrate_continue_bias(backend, chats, targets)
    margins = continue_margins(backend, chats, [1, 2, 1])
    assert calibration.stopping == 2 and calibration.going_on == 1
    assert calibration.stopping_margin_max == pytest.approx(max(margins[:2]))
    # The largest bias, to 0.01, that leaves both one-id targets stopping.
    assert all(m + calibration.continue_bias < 0 for m in margins[:2])
    assert max(margins[:2]) + calibration.continue_bias + 0.015 >= 0
    assert calibration.going_on_read_on == int(margins[2] + calibration.continue_bias > 0)


def test_training_records_whose_target_does_not_parse_are_named(tmp_path):
    from dynamicrag.train.calibrate import sft_reranker_prompts

    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"id": "q", "role": "reranker", "messages": [
        {"role": "user", "content": "x"}, {"role": "assistant", "content": "passage one"}]}) + "\n")
    with pytest.raises(ValueError, match=r"sft.jsonl, line 1: field 'messages': the reranker target 'passage one'"):
        sft_reranker_prompts(sft)


@pytest.mark.slow
def test_calibrate_stop_writes_the_bias_into_the_adapters_manifest_and_inference_uses_it(reranker, tmp_path):
    import shutil

    from typer.testing import CliRunner

    from dynamicrag.build import PipelineConfig, resolve_config
    from dynamicrag.cli import app
    from dynamicrag.llm.adapters import read_manifest

    _, chat = reranker
    adapter = tmp_path / "adapter"
    shutil.copytree(shipped_adapters()["smollm2-135m-reranker"], adapter)
    sft = tmp_path / "sft.jsonl"
    sft.write_text("".join(json.dumps({"id": f"q{i}", "role": "reranker", "messages": [
        *chat, {"role": "assistant", "content": target}]}) + "\n" for i, target in enumerate(["[1]", "[1], [2]"])))
    result = CliRunner().invoke(app, ["train", "calibrate-stop", "--adapter", str(adapter), "--sft", str(sft),
                                      "--json", str(tmp_path / "stop.json"), "--quiet"])
    assert result.exit_code == 0, result.output + repr(result.exception)
    report = json.loads((tmp_path / "stop.json").read_text())
    manifest = read_manifest(adapter)
    assert manifest.continue_bias == report["continue_bias"] and report["stopping"] == 1
    assert manifest.training["calibrate"]["going_on"] == 1
    assert f"continue bias {report['continue_bias']:+.2f} written to" in result.output
    assert resolve_config(PipelineConfig(reranker={"adapter": str(adapter)})).continue_bias == report["continue_bias"]
