"""One loaded base model, LoRA adapters switched on per call (real bundled model, tiny adapters)."""

from __future__ import annotations

import threading
import time

import psutil
import pytest
import torch

from dynamicrag.llm import SamplingParams
from dynamicrag.llm.constrain import is_complete
from dynamicrag.llm.lora import attached_adapters, check_adapter_folder
from dynamicrag.llm.transformers_backend import TransformersBackend
from tiny_lora import linked_copy

pytestmark = pytest.mark.slow

CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Name three colors of the rainbow."}],
]
GREEDY = SamplingParams(max_new_tokens=12)


def texts(backend, params=GREEDY) -> list[str]:
    return [c[0].text for c in backend.generate(CHATS, params)]


def base_logits(lm, tokenizer) -> torch.Tensor:
    ids = tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        return lm(input_ids=ids).logits


@pytest.fixture(scope="module")
def base_before(smollm):
    """The base model's outputs, taken before this module attaches any adapter."""
    return texts(smollm), base_logits(smollm.lm, smollm.tokenizer)


@pytest.fixture(scope="module")
def reranker_view(smollm, base_before, tiny_adapter, tmp_path_factory):
    # Its own folder: other modules of the session may have attached the shared one already.
    folder = linked_copy(tiny_adapter, tmp_path_factory.mktemp("lora") / "timed", name="timed-reranker")
    rss = psutil.Process().memory_info().rss
    start = time.perf_counter()
    view = TransformersBackend(adapter=str(folder), dtype="float32")  # the fixture's base
    seconds = time.perf_counter() - start
    return view, seconds, psutil.Process().memory_info().rss - rss


def test_one_base_in_memory_and_loading_the_adapter_is_fast(smollm, reranker_view, tiny_adapter):
    view, seconds, rss_growth = reranker_view
    assert view.lm is smollm.lm and view.tokenizer is smollm.tokenizer  # the same loaded base
    assert view._lock is smollm._lock  # and one generate lock, so switching is serialised
    assert view.adapter_name == "timed-reranker" and smollm.adapter_name is None
    # A second copy of the fp32 base would add ~540 MB; the rank-16 adapter is ~20 MB.
    assert rss_growth < 150e6, rss_growth
    print(f"\nattaching a {tiny_adapter.joinpath('adapter_model.safetensors').stat().st_size / 1e6:.1f} MB "
          f"adapter took {seconds:.2f} s, RSS +{rss_growth / 1e6:.0f} MB")
    assert seconds < 5  # the target is 1 s on idle cores; generous on a shared machine


def test_scoring_a_batch_with_an_adapter_attached_hands_the_head_contiguous_rows(smollm, reranker_view):
    # A strided input would make torch expand the 49k-word projection to every row of the batch
    # (a 113 MB copy per fp32 row per call, where peft leaves the weights without gradient).
    view, _, _ = reranker_view
    seen = []
    hook = smollm.lm.get_output_embeddings().register_forward_hook(
        lambda module, args, out: seen.append((args[0].shape, args[0].is_contiguous())))
    try:
        prompts = ["Passage: Paris is the capital of France.\nQuestion:", "Passage: Rome.\nQuestion:", "Passage: x\nQuestion:"]
        base = smollm.loglikelihood(prompts, [" What is the capital of France?"] * 3, batch_size=3)
        adapted = view.loglikelihood(prompts, [" What is the capital of France?"] * 3, batch_size=3)
    finally:
        hook.remove()
    assert seen and all(contiguous for _, contiguous in seen), seen
    assert any(shape[0] == 3 for shape, _ in seen)  # the batch went through in one pass
    assert base != adapted and base[0] > base[2]  # still the two models' own scores


def test_adapter_changes_outputs_only_in_its_view(smollm, base_before, reranker_view):
    view, _, _ = reranker_view
    before, logits = base_before
    adapted = texts(view)
    assert adapted != before  # the adapter matters
    assert texts(smollm) == before  # the base view is exactly the base model (adapter off)
    # The shared model at rest is the base model, for code that calls it directly.
    assert torch.equal(base_logits(smollm.lm, smollm.tokenizer), logits)
    assert texts(view) == adapted  # greedy, switched on again: the same adapted outputs


def test_interleaved_calls_from_two_threads_keep_each_views_weights(smollm, base_before, reranker_view):
    view, _, _ = reranker_view
    before, _ = base_before
    adapted = texts(view)
    results: dict[str, list[list[str]]] = {"base": [], "view": []}

    def run(name, backend):
        for _ in range(3):
            results[name].append(texts(backend, SamplingParams(max_new_tokens=6)))

    threads = [threading.Thread(target=run, args=("base", smollm)), threading.Thread(target=run, args=("view", view))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    short_base = texts(smollm, SamplingParams(max_new_tokens=6))
    short_view = texts(view, SamplingParams(max_new_tokens=6))
    assert results["base"] == [short_base] * 3 and results["view"] == [short_view] * 3
    assert short_view != short_base and texts(smollm) == before and texts(view) == adapted


def test_constrained_decoding_and_sampling_run_with_the_adapter(reranker_view):
    view, _, _ = reranker_view
    [[constrained]] = view.generate(CHATS[:1], SamplingParams(max_new_tokens=16, id_list_max=4))
    assert is_complete(constrained.text, 4), constrained.text
    sampled = view.generate(CHATS[:1], SamplingParams(temperature=0.7, max_new_tokens=6, n=3, seed=1))
    assert len(sampled[0]) == 3


def test_a_streamed_answer_runs_the_adapter_too(smollm, base_before, reranker_view):
    from dynamicrag.llm import stream_text

    view, _, _ = reranker_view
    before, _ = base_before
    streamed = "".join(stream_text(view, CHATS[0], GREEDY))
    assert streamed.strip() == texts(view)[0].strip() != before[0].strip()  # the adapter's answer, not the base's
    assert "".join(stream_text(smollm, CHATS[0], GREEDY)).strip() == before[0].strip()  # and off again after


def test_two_adapters_on_one_base_each_with_its_own_name(smollm, base_before, reranker_view, tiny_adapter, tmp_path):
    from safetensors.torch import load_file, save_file

    view, _, _ = reranker_view
    other = tmp_path / "negated"
    other.mkdir()
    (other / "adapter_config.json").write_text((tiny_adapter / "adapter_config.json").read_text())
    weights = load_file(str(tiny_adapter / "adapter_model.safetensors"))
    save_file({k: -v if "lora_B" in k else v for k, v in weights.items()}, str(other / "adapter_model.safetensors"))
    second = TransformersBackend(adapter=str(other), dtype="float32")
    assert second.lm is smollm.lm and second.adapter_name == "negated"
    assert attached_adapters(smollm.lm)[str(other.resolve())] == "negated"
    assert TransformersBackend(adapter=str(other), dtype="float32").adapter_name == "negated"  # attached once
    outputs = texts(second)
    assert outputs != texts(view) and outputs != base_before[0]
    assert texts(smollm) == base_before[0]


def test_not_an_adapter_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter folder not found: .*missing"):
        check_adapter_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match=f"{tmp_path}.*no adapter_config.json"):
        TransformersBackend(adapter=str(tmp_path), dtype="float32")
