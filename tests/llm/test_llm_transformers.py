"""The transformers backend on the bundled SmolLM2-135M-Instruct (real model, small outputs)."""

from __future__ import annotations

import json

import pytest
import torch

from dynamicrag.llm import SamplingParams, load_backend
from dynamicrag.llm.constrain import is_complete, is_valid_prefix
from dynamicrag.llm.transformers_backend import TransformersBackend, _IdListConstraint
from dynamicrag.runtime import cpu_bf16_flag

pytestmark = pytest.mark.slow

RERANKER_SYSTEM = (
    "You are an expert at dynamically generating document identifiers to answer a given query.\n"
    "I will provide you with a set of documents, each uniquely identified by a number within square "
    "brackets, e.g., [1], [2], etc.\n"
    "Your task is to identify and generate only the identifiers of the documents that contain "
    "sufficient information to answer the query.\n"
    'If no documents are required to answer the query, output "None".\n'
    'Output the identifiers as a comma-separated list, e.g., [1], [2] or "None" if no documents are needed.'
)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def reranker_chats(shared_data):
    """A reranker prompt over a real HotpotQA question and its 10 candidate paragraphs."""
    items = json.loads((shared_data / "hotpotqa" / "hotpotqa_train.json").read_text())[:1]
    chats = []
    for item in items:
        docs = "\n".join(
            f"{i}. Topic: {title}\nContent: {' '.join(sentences)[:200]}"
            for i, (title, sentences) in enumerate(item["context"], 1)
        )
        chats.append([
            {"role": "system", "content": RERANKER_SYSTEM},
            {"role": "user", "content": f"Query: {item['question']}\n\nRetrieved Content:\n{docs}"},
        ])
    return chats


def test_fixture_is_the_shared_transformers_backend(smollm):
    assert smollm.name == "transformers"
    assert load_backend("transformers", dtype="float32") is smollm
    # A second backend object on the same model shares the loaded weights.
    assert TransformersBackend(batch_size=2, dtype="float32").lm is smollm.lm
    assert "<|im_start|>" in smollm.tokenizer.chat_template
    described = smollm.describe()
    assert described["dtype"] == "float32" and described["dtype_reason"] == "fp32 (dtype=float32)"
    assert described["threads"] == torch.get_num_threads() and described["batch_size"] == 8
    assert described["prefix_cache"] is True and described["model"] == smollm.model
    json.dumps(described)  # plain values, for the run's settings file


def test_greedy_is_deterministic_and_batching_matches_one_by_one(smollm):
    chats = [
        user("What is the capital of France?"),
        user("Name three colors of the rainbow, in a numbered list, and say which one you like most."),
        user("Hi"),
    ]
    assert len({smollm.count_tokens(c) for c in chats}) == 3  # different lengths: padding matters
    params = SamplingParams(max_new_tokens=16)
    batch = smollm.generate(chats, params)
    single = [smollm.generate([chat], params)[0] for chat in chats]
    assert [c[0].text for c in batch] == [c[0].text for c in single]
    assert batch[0][0].text.startswith("The capital of France is Paris")
    # Near-zero temperature samples the argmax: the n samples (prompts encoded once, their
    # cache shared by the n rows) must all match greedy decoding.
    cold = smollm.generate(chats, SamplingParams(max_new_tokens=16, temperature=1e-4, n=2, seed=0))
    assert [[c.text for c in cs] for cs in cold] == [[c[0].text] * 2 for c in batch]


def test_greedy_n_gives_copies(smollm):
    [completions] = smollm.generate([user("Hi")], SamplingParams(max_new_tokens=6, n=2))
    assert len(completions) == 2 and completions[0].text == completions[1].text
    assert completions[0] is not completions[1]


def test_sampling_n_with_seed_varies_and_reproduces(smollm):
    chats = [user("Write one word that describes the sea."), user("Say something about cats.")]
    params = SamplingParams(temperature=1.0, n=3, seed=123, max_new_tokens=8)
    rng_before = torch.random.get_rng_state()
    first = smollm.generate(chats, params)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is untouched
    assert [len(c) for c in first] == [3, 3]
    assert any(len({c.text for c in completions}) > 1 for completions in first)
    again = smollm.generate(chats, params)
    assert [[c.text for c in cs] for cs in again] == [[c.text for c in cs] for cs in first]
    other = smollm.generate(chats, SamplingParams(temperature=1.0, n=3, seed=124, max_new_tokens=8))
    assert [[c.text for c in cs] for cs in other] != [[c.text for c in cs] for cs in first]


def test_constrained_decoding_gives_valid_id_lists(smollm, reranker_chats):
    copy = [user("Copy this list exactly, with nothing else: [3], [3], [9], [1]"),
            user("Write the list [1], [2], [3], [4], [5]")]
    # Unconstrained, the small model answers in prose (and would repeat [3] and write [9]).
    free = smollm.generate(copy[:1], SamplingParams(max_new_tokens=16))
    assert not is_complete(free[0][0].text, 3)
    [[reranked]] = smollm.generate(reranker_chats, SamplingParams(max_new_tokens=16, id_list_max=10))
    assert is_complete(reranked.text, 10) and reranked.finish_reason == "stop"
    greedy = smollm.generate(copy, SamplingParams(max_new_tokens=16, id_list_max=3))
    sampled = smollm.generate(copy, SamplingParams(max_new_tokens=16, id_list_max=3, temperature=1.0, n=3, seed=0))
    outputs = [c for cs in greedy + sampled for c in cs]
    for c in outputs:
        assert is_complete(c.text, 3), c.text  # ids distinct and in 1..3, or None
        assert c.finish_reason == "stop"
    assert sum(c.text.startswith("[") for c in outputs) >= 3  # lists, not only "None"


def test_constraint_steps(smollm):
    constraint = _IdListConstraint(smollm.tokenizer, smollm.eos_ids)
    pieces = constraint.pieces
    assert 20 < len(pieces) < 1000  # grammar characters only, out of 49k tokens
    eos = set(smollm.eos_ids)
    start = {pieces.get(t) for t in constraint.allowed("", 3)}
    assert {"[", "None"} <= start and not eos & set(constraint.allowed("", 3))
    after_one = constraint.allowed("[1]", 3)
    assert eos <= set(after_one)
    assert all(is_valid_prefix("[1]" + pieces[t], 3) for t in after_one if t in pieces)
    # The only id is used: nothing may follow but the end.
    assert set(constraint.allowed("[1]", 1)) == eos
    assert all(not (pieces[t].startswith("2") or pieces[t] == "[2]") for t in constraint.allowed("[2], [", 3)
               if t in pieces)


def test_stop_strings_cut_the_text(smollm):
    chat = user("Name three colors of the rainbow, please, in a list.")
    [[full]] = smollm.generate([chat], SamplingParams(max_new_tokens=16))
    assert "\n" in full.text
    [[cut]] = smollm.generate([chat], SamplingParams(max_new_tokens=16, stop=("\n",)))
    assert cut.text == full.text.split("\n")[0]
    assert cut.finish_reason == "stop"
    assert cut.completion_tokens < full.completion_tokens


def test_token_counts_and_finish_reasons(smollm):
    chat = user("Explain in detail how photosynthesis works.")
    [[short]] = smollm.generate([chat], SamplingParams(max_new_tokens=5))
    assert short.prompt_tokens == smollm.count_tokens(chat) > 10
    assert short.completion_tokens == 5 and short.finish_reason == "length"
    [[done]] = smollm.generate([user("Hi")], SamplingParams(max_new_tokens=24))
    assert done.finish_reason == "stop"
    # The end-of-turn token is counted but not part of the text.
    assert 1 < done.completion_tokens < 24
    assert "<|im_end|>" not in done.text
    assert smollm.generate([], SamplingParams()) == []


@pytest.fixture(scope="module")
def nq_chats(shared_data):
    """Reranker and generator prompts of the project's default style over 8 real NQ questions
    (BM25 top 5, passages cut to 30 words to keep the prompts short: 300-400 tokens)."""
    from dynamicrag.data import load_corpus, load_examples
    from dynamicrag.pipeline import with_passages
    from dynamicrag.prompts import generator_chat, load_style, reranker_chat
    from dynamicrag.retrieve import BM25Retriever

    nq = shared_data / "nq"
    examples = load_examples(nq / "nq-open-oracle.jsonl.gz")[:8]
    corpus = load_corpus(nq / "nq-open-oracle.jsonl.gz")[:500] + load_corpus(nq / "flashrag_wiki_sample.jsonl")[:500]
    examples = with_passages(examples, BM25Retriever.build(corpus, show_progress=False), 5, retrieve=True)
    style = load_style("default")
    rerank = [reranker_chat(style, ex.question, ex.passages, passage_words=30) for ex in examples]
    short = [[p.model_copy(update={"text": " ".join(p.text.split()[:30])}) for p in ex.passages] for ex in examples]
    generate = [generator_chat(style, ex.question, short[i][: 1 + i % 3], ex.task) for i, ex in enumerate(examples)]
    return rerank, generate


def test_prefix_cache_and_row_prefill_give_the_plain_batchs_greedy_outputs(smollm, nq_chats):
    """Reusing the shared system-prompt KV and encoding each prompt alone must not change a
    greedy token (fp32): the same text as generate over the left-padded batch, batched and
    one by one, with and without the id grammar."""
    rerank, generate = nq_chats
    plain = TransformersBackend(dtype="float32", prefix_cache=False, prefill="batch")
    cached = TransformersBackend(dtype="float32", batch_size=4)  # defaults: prefix cache, rows
    assert cached.lm is plain.lm
    cached.clear_prefix_cache()  # one cache per loaded model: earlier tests' prompts are in it
    ids = SamplingParams(max_new_tokens=12, id_list_max=5)
    text = SamplingParams(max_new_tokens=16)
    expected_ids = [c[0].text for c in plain.generate(rerank, ids)]
    expected_text = [c[0].text for c in plain.generate(generate, text)]
    assert [c[0].text for c in cached.generate(rerank, ids)] == expected_ids
    assert [c[0].text for c in cached.generate(generate, text)] == expected_text
    prefixes = cached._prefixes
    assert len(prefixes) == 2 and prefixes.misses == 2  # one shared prefix per role, computed once
    # The reranker's prefix is its system prompt and chat header, not a question's words.
    lengths = sorted(len(e.tokens) for entries in prefixes._entries.values() for e in entries)
    system = cached.encode(rerank[0][:1] + [{"role": "user", "content": ""}])
    assert lengths[-1] >= len(system) - 8 and lengths[-1] < min(len(cached.encode(c)) for c in rerank)
    # One prompt at a time (a batch of one), the cached prefixes serve every call.
    hits = prefixes.hits
    assert [cached.generate([c], text)[0][0].text for c in generate[:3]] == expected_text[:3]
    assert prefixes.hits == hits + 3 and prefixes.misses == 2
    # Token counts are those of the prompts, whatever the layout.
    [[one]] = cached.generate(rerank[:1], ids)
    assert one.prompt_tokens == cached.count_tokens(rerank[0])


def test_static_kv_cache_gives_the_same_greedy_outputs(smollm, nq_chats):
    rerank, generate = nq_chats
    static = TransformersBackend(dtype="float32", kv_cache="static")
    params = SamplingParams(max_new_tokens=16)
    assert [c[0].text for c in static.generate(generate[:4], params)] == \
        [c[0].text for c in smollm.generate(generate[:4], params)]


def test_a_batch_drops_its_finished_rows_without_changing_any_rows_output(smollm, nq_chats):
    """Decoding on without the rows that have ended (the default) gives each row the text,
    token count and finish reason of a batch decoded to its longest answer, with the stop
    strings, the completion-only n-gram ban and the id grammar, from the row-prefilled cache
    and from the padded batch; and it decodes fewer row-steps."""
    rerank, generate = nq_chats
    shrink = TransformersBackend(dtype="float32")
    full = TransformersBackend(dtype="float32", shrink_batch=False)
    assert shrink.describe()["shrink_batch"] is True and full.describe()["shrink_batch"] is False

    def outputs(backend, chats, params):
        before = backend.decoded_row_steps
        out = [(c[0].text, c[0].completion_tokens, c[0].finish_reason) for c in backend.generate(chats, params)]
        return out, backend.decoded_row_steps - before

    answers = SamplingParams(max_new_tokens=64, no_repeat_ngram_size=3)
    expected, full_steps = outputs(full, generate, answers)
    assert len({tokens for _, tokens, _ in expected}) > 2  # answers of several lengths: rows end apart
    got, steps = outputs(shrink, generate, answers)
    assert got == expected
    assert steps < full_steps == 8 * max(tokens for _, tokens, _ in expected)
    assert steps >= sum(tokens for _, tokens, _ in expected)

    lines = SamplingParams(max_new_tokens=40, stop=("\n", "."))  # rows ended by a stop string
    expected, _ = outputs(full, generate, lines)
    assert any(reason == "stop" and tokens < 40 for _, tokens, reason in expected)
    assert outputs(shrink, generate, lines)[0] == expected

    ids = SamplingParams(max_new_tokens=12, id_list_max=5)
    assert outputs(shrink, rerank, ids)[0] == outputs(full, rerank, ids)[0]
    padded = TransformersBackend(dtype="float32", prefix_cache=False, prefill="batch")  # generate encodes
    assert outputs(padded, generate, answers)[0] == outputs(full, generate, answers)[0]

    # Several samples per prompt (each row repeated n times in the cache, or by generate's
    # num_return_sequences when the prompts are not encoded once for their samples): each one
    # still a valid id list, the same ones again under the same seed.
    sampled = SamplingParams(max_new_tokens=24, id_list_max=5, temperature=1.0, n=2, seed=3)  # room for 5 ids
    padded.share_prefill = False
    for backend in (shrink, padded):
        first = backend.generate(rerank[:4], sampled)
        assert [len(c) for c in first] == [2] * 4
        assert all(is_complete(c.text, 5) for cs in first for c in cs)
        assert [[c.text for c in cs] for cs in backend.generate(rerank[:4], sampled)] == \
            [[c.text for c in cs] for cs in first]


def test_more_prompts_than_rows_take_the_places_of_finished_rows_without_changing_any_output(smollm, nq_chats):
    """A call with more prompts than ``batch_size`` decodes them as one queue: a row that ends
    gives its place to the next prompt (continuous batching). Every prompt gets the text, token
    count and finish reason of batches decoded one after the other to their longest answer:
    the n-gram ban, the frequency penalty, the stop strings and the id grammar read each row's
    completion from its own column. It takes fewer forward passes than the same prompts batch
    by batch, and n samples per prompt come back n each, the same again under the same seed."""
    rerank, generate = nq_chats
    queue = TransformersBackend(dtype="float32", batch_size=3)
    full = TransformersBackend(dtype="float32", batch_size=3, shrink_batch=False)
    forwards = []
    hook = queue.lm.register_forward_pre_hook(lambda module, args: forwards.append(1))

    def texts(backend, chats, params):
        return [(c[0].text, c[0].completion_tokens, c[0].finish_reason) for c in backend.generate(chats, params)]

    try:
        answers = SamplingParams(max_new_tokens=48, no_repeat_ngram_size=3, frequency_penalty=0.3, stop=("\n\n",))
        expected = texts(full, generate, answers)
        assert len({tokens for _, tokens, _ in expected}) > 2  # rows end at different steps
        forwards.clear()
        assert texts(queue, generate, answers) == expected
        queued = len(forwards)
        forwards.clear()
        one_batch_at_a_time = [t for i in range(0, 8, 3) for t in texts(queue, generate[i:i + 3], answers)]
        assert one_batch_at_a_time == expected
        assert queued < len(forwards)

        ids = SamplingParams(max_new_tokens=12, id_list_max=5)
        assert texts(queue, rerank, ids) == texts(full, rerank, ids)
    finally:
        hook.remove()

    sampled = SamplingParams(max_new_tokens=24, id_list_max=5, temperature=1.0, n=2, seed=3)
    first = queue.generate(rerank[:5], sampled)  # one prompt's 2 rows join at a time
    assert [len(c) for c in first] == [2] * 5
    assert all(is_complete(c.text, 5) and c.prompt_tokens == queue.count_tokens(rerank[i])
               for i, cs in enumerate(first) for c in cs)
    assert [[c.text for c in cs] for cs in queue.generate(rerank[:5], sampled)] == [[c.text for c in cs] for cs in first]


def test_the_decoding_cache_appends_in_place_and_holds_what_concatenation_would(smollm):
    """The KV cache the backend decodes from writes each step's keys and values into spare
    room (no copy of the whole cache per step, as ``DynamicCache``'s concatenation makes) and
    holds exactly the concatenated tensors, also after rows are dropped or the cache cropped."""
    from dynamicrag.llm.transformers_backend import _decoding_cache

    cache = _decoding_cache(smollm.lm.config)
    torch.manual_seed(0)
    steps = [torch.randn(3, 3, n, 64) for n in (40, 1, 1, 1)]
    first = cache.update(steps[0], -steps[0], 0)[0].data_ptr()
    for step in steps[1:]:
        keys, _ = cache.update(step, -step, 0)
    assert keys.data_ptr() == first  # every step wrote into the room the prompt's update made
    assert torch.equal(keys, torch.cat(steps, dim=2)) and torch.equal(cache.layers[0].values, -keys)
    cache.batch_select_indices(torch.tensor([0, 2]))
    keys, _ = cache.update(steps[1][:2], -steps[1][:2], 0)
    assert torch.equal(keys, torch.cat([*(s[[0, 2]] for s in steps), steps[1][:2]], dim=2))
    cache.crop(-2)
    assert torch.equal(cache.update(steps[2][:2], -steps[2][:2], 0)[0], torch.cat([*(s[[0, 2]] for s in steps[:3]), steps[2][:2]], dim=2))


def test_a_sequence_alone_decodes_and_prefills_by_the_fast_paths_with_the_same_outputs(smollm, nq_chats, monkeypatch):
    """The backend's models run their own attention: a lone decoding position without a mask is
    one SDPA product per key/value head, and a long causal prompt alone (after a cached prefix
    or not) is prefilled in blocks over the keys each block can see. In fp32 each prompt
    decoded alone gives the greedy text and token count of transformers' own SDPA, for answers
    and for id lists; the function equals SDPA's on every case, including a padded mask of the
    same shape and a short prompt, which it leaves to SDPA; in bf16 its prefill is as close to
    fp32 as SDPA's. (The backend takes that path for bf16 prompts from 512 tokens; here fp32
    ones from 64 tokens in blocks of 48 take it, so that the comparison is exact and these short
    prompts are prefilled in several blocks.)"""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    import dynamicrag.llm.transformers_backend as tb
    from dynamicrag.llm.transformers_backend import FAST_ATTENTION, _sdpa_fast_paths

    rerank, generate = nq_chats
    backend = TransformersBackend(dtype="float32")
    assert backend.describe()["attention"] == FAST_ATTENTION
    assert smollm.describe()["attention"] == FAST_ATTENTION  # the default backend's model too
    monkeypatch.setattr(tb, "_CHUNKED_MIN_POSITIONS", 64)
    monkeypatch.setattr(tb, "_CAUSAL_CHUNK", 48)
    monkeypatch.setattr(tb, "_CHUNKED_DTYPES", (torch.float32, torch.bfloat16))
    calls = []
    real = tb._chunked_causal_attention
    monkeypatch.setattr(tb, "_chunked_causal_attention", lambda *a: calls.append(a[0].shape[2]) or real(*a))

    def one_by_one(chats, params):
        done = [backend.generate([chat], params)[0][0] for chat in chats]
        return [(c.text, c.completion_tokens) for c in done]

    answers = SamplingParams(max_new_tokens=48, no_repeat_ngram_size=3)
    ids = SamplingParams(max_new_tokens=12, id_list_max=5)
    fast = one_by_one(generate, answers), one_by_one(rerank[:4], ids)
    assert calls and min(calls) >= 64 and max(calls) > 2 * 48  # prompts were prefilled in blocks
    backend.lm.set_attn_implementation("sdpa")
    try:
        backend.clear_prefix_cache()
        assert (one_by_one(generate, answers), one_by_one(rerank[:4], ids)) == fast
    finally:
        backend.lm.set_attn_implementation(FAST_ATTENTION)

    class Layer(torch.nn.Module):
        num_key_value_groups = 3
        is_causal = True

    layer = Layer().eval()
    torch.manual_seed(0)
    n = 64 + 90  # not a whole number of blocks
    cached = 40
    causal = torch.ones(n, cached + n, dtype=torch.bool).tril(cached)[None, None]
    padded = causal.clone()
    padded[..., :3] = False  # a left-padded row: same shape, not plain causal
    cases = [(2, 1, 40, None), (2, 1, 40, torch.rand(2, 1, 1, 40) > 0.3), (2, 5, 5, None),  # decoding, SDPA's
             (1, n, cached + n, causal), (1, n, n, None), (1, n, cached + n, padded), (1, 30, 70, None)]
    calls.clear()
    for batch, positions, keys, mask in cases:
        key, value = torch.randn(batch, 3, keys, 64), torch.randn(batch, 3, keys, 64)
        query = torch.randn(batch, 9, positions, 64)
        got, _ = _sdpa_fast_paths(layer, query, key, value, mask, scaling=0.125)
        want, _ = sdpa_attention_forward(layer, query, key, value, mask, scaling=0.125)
        assert got.shape == want.shape == (batch, positions, 9, 64)
        torch.testing.assert_close(got, want)
        if positions == n and batch == 1:  # bf16: no further from fp32 than SDPA's bf16 product
            low = [t.bfloat16() for t in (query, key, value)]
            fast_bf16 = _sdpa_fast_paths(layer, *low, mask, scaling=0.125)[0].float()
            sdpa_bf16 = sdpa_attention_forward(layer, *low, mask, scaling=0.125)[0].float()
            assert (fast_bf16 - want).abs().mean() <= 1.5 * (sdpa_bf16 - want).abs().mean()
    assert calls == [n] * 4  # the two causal cases, in fp32 and bf16; not the padded one or the short prompt


def test_decoding_reads_int8_weights_and_prefill_the_models():
    """``decode_weights``: "auto" gives a bf16 model on CPU an int8 copy of every linear layer's
    weights and leaves fp32 (the exact fallback) alone; a product of at most 4 rows (decoding)
    reads the int8 copy, which stays within its rounding of the bf16 product, and a product of
    more rows (prefill) is the bf16 one exactly; the state dict has no int8 entries; the shipped
    reranker adapter's LoRA layers wrap layers that have the copy; bad values are refused."""
    from dynamicrag.llm.lora import attach_adapter
    from dynamicrag.llm.adapters import shipped_adapters
    from dynamicrag.llm.transformers_backend import choose_decode_weights

    assert TransformersBackend(dtype="float32").describe()["decode_weights"] == "model"
    backend = TransformersBackend(dtype="bfloat16")
    assert choose_decode_weights("auto", torch.bfloat16, "cpu") == backend.describe()["decode_weights"] == "int8"
    # The model's own layers (an adapter attached by an earlier test adds LoRA's A and B, which
    # run on top of the wrapped layer and have no copy).
    linears = [m for name, m in backend.lm.named_modules() if type(m) is torch.nn.Linear and "lora_" not in name]
    assert len(linears) == 30 * 7 + 1 and all(m.int8_weight.dtype is torch.int8 for m in linears)
    assert not any("int8" in name for name in backend.lm.state_dict())
    down = backend.lm.model.layers[3].mlp.down_proj
    torch.manual_seed(0)
    with torch.inference_mode():
        for rows in (1, 4, 5, 64):
            x = torch.randn(rows, down.in_features, dtype=torch.bfloat16)
            exact = torch.nn.functional.linear(x, down.weight)
            got = down(x)
            if rows > 4:
                assert torch.equal(got, exact)
            else:  # int8 keeps 7 bits a weight: relative error of a 1536-term sum ~1 %
                assert not torch.equal(got, exact)
                assert ((got - exact).float().norm() / exact.float().norm()) < 0.03
    with pytest.raises(ValueError, match="decode_weights"):
        TransformersBackend(dtype="bfloat16", decode_weights="int4")

    attach_adapter(backend.lm, next(iter(shipped_adapters().values())))
    wrapped = [m.base_layer for m in backend.lm.modules() if hasattr(m, "lora_A")]
    assert wrapped and all(type(m) is torch.nn.Linear and hasattr(m, "int8_weight") for m in wrapped)


def test_one_sequence_decodes_on_one_thread_under_passive_then_threads_are_restored(smollm, nq_chats, monkeypatch):
    """After the prompt is encoded on every thread, decoding one sequence runs on one thread
    under PASSIVE (a batch, or another policy, keeps them all), gives the same greedy tokens,
    and the process's thread count is back afterwards."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    _, generate = nq_chats
    seen: list[int] = []

    class Threads(StoppingCriteria):  # called once per decoded token
        def __call__(self, input_ids, scores, **kwargs):
            seen.append(torch.get_num_threads())
            return torch.zeros(input_ids.shape[0], dtype=torch.bool)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
        backend = TransformersBackend(dtype="float32")
        assert backend.describe()["decode_threads"] == "auto"
        params = SamplingParams(max_new_tokens=12)
        prompts = [backend.encode(c) for c in generate[:2]]

        def threads_seen(rows: list[list[int]]) -> set[int]:
            seen.clear()
            with torch.inference_mode():
                backend._generate_batch(rows, params, stopping_criteria=StoppingCriteriaList([Threads()]))
            return set(seen)

        assert threads_seen(prompts[:1]) == {1} and torch.get_num_threads() == 2
        assert threads_seen(prompts) == {2}  # a batch decodes on every thread
        long = backend.encode([{"role": "user", "content": " ".join(["Paris is the capital of France."] * 100)}])
        assert len(long) > 512 and threads_seen([long]) == {2}  # attention over a long cache needs them too
        monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # spinning threads: keep them all
        assert threads_seen(prompts[:1]) == {2}
        every = TransformersBackend(dtype="float32", decode_threads="none")  # as --backend-option gives it
        assert every.decode_threads is None
        monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
        assert [backend.generate([c], params)[0][0].text for c in generate[:3]] == \
            [every.generate([c], params)[0][0].text for c in generate[:3]]
        with pytest.raises(ValueError, match="decode_threads must be"):
            TransformersBackend(dtype="float32", decode_threads=0)
    finally:
        torch.set_num_threads(before)


def test_a_prefix_cached_without_the_adapter_is_not_reused_with_it(smollm, nq_chats, tiny_adapter, tmp_path):
    """The roles design: one loaded base, a generator view without adapter and a reranker view
    with a LoRA adapter switched on per call, sharing the model's prefix cache. The prefix KV
    depends on the weights: computed by the generator's view (adapter off), it must not serve
    the reranker's view (adapter on), else its answers mix two models."""
    from tiny_lora import linked_copy

    rerank, _ = nq_chats
    folder = linked_copy(tiny_adapter, tmp_path / "prefix-reranker", name="prefix-reranker")
    params = SamplingParams(max_new_tokens=8)
    # References without any cache: the base model, and the base with the adapter on.
    without = [c[0].text for c in TransformersBackend(dtype="float32", prefix_cache=False, prefill="batch")
               .generate(rerank[:2], params)]
    uncached = TransformersBackend(dtype="float32", prefix_cache=False, prefill="batch", adapter=str(folder))
    with_adapter = [c[0].text for c in uncached.generate(rerank[:2], params)]
    assert with_adapter != without  # the adapter matters for these prompts

    generator = TransformersBackend(dtype="float32", batch_size=4)  # no adapter; prefix cache on
    reranker = TransformersBackend(dtype="float32", adapter=str(folder))
    assert reranker.lm is generator.lm is smollm.lm and reranker._prefixes is generator._prefixes
    generator.clear_prefix_cache()
    assert [c[0].text for c in generator.generate(rerank[:2], params)] == without
    assert [c[0].text for c in reranker.generate(rerank[:2], params)] == with_adapter
    assert [c[0].text for c in generator.generate(rerank[:2], params)] == without
    prefixes = generator._prefixes
    assert prefixes.misses == 2 and prefixes.hits == 1  # one prefix per adapter state, each computed once
    assert sorted(prefixes._entries) == [(), (("prefix-reranker",),)]
    assert reranker._prefix_cache_key() == ()  # at rest every adapter is off

    # Keyed on nothing, the generator's prefix would serve the reranker's calls.
    generator.clear_prefix_cache()
    unkeyed = TransformersBackend(dtype="float32", adapter=str(folder), batch_size=2)
    unkeyed._prefix_cache_key = generator._prefix_cache_key = lambda: None
    try:
        generator.generate(rerank[:2], params)
        assert [c[0].text for c in unkeyed.generate(rerank[:2], params)] != with_adapter
    finally:
        del generator._prefix_cache_key
        generator.clear_prefix_cache()


@pytest.mark.skipif(cpu_bf16_flag() is None, reason="no native bf16 here: the default dtype is fp32")
def test_default_bf16_stays_within_tolerance_of_fp32(smollm, nq_chats):
    """The default dtype (bf16 on this CPU, with int8 weights for products of at most 4 rows:
    the last position's output projection here, every decoding step) against fp32 on 16 real
    prompts.

    Tolerance: bf16 keeps 8 mantissa bits (relative rounding 2^-9 per operation). Over 30
    layers the next-token log-probabilities move by about 0.1-0.3 nats (measured on NQ
    prompts; computing in fp32 between the bf16 products, as autocast does, measured no
    better), so (1) fp32's 20 most likely next tokens keep their log-probabilities within
    0.75 nats, and (2) the most likely token is the same wherever fp32 ranks it first by more
    than that. (3) Greedy decoding follows one branch: where the two best tokens are closer
    than the rounding, bf16 may take the other one, and everything after it differs. The
    untrained model's id lists are full of such near ties (stop after ``[2]`` or go on), so
    on these 8 short reranker prompts the first token (``None`` or the first id) must agree
    on all and the whole list on at least 5; ``benchmarks/dtype_quality.py`` measures the
    share of identical selections on NQ 0-199 (the target: >= 95 %).
    """
    rerank, generate = nq_chats
    bf16 = TransformersBackend()
    assert bf16.dtype is torch.bfloat16 and bf16.describe()["dtype_reason"].startswith("bf16 (CPU has")
    for chat in rerank + generate:
        ids = torch.tensor([smollm.encode(chat)])
        with torch.inference_mode():
            ref = smollm.lm(input_ids=ids, logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
            low = bf16.lm(input_ids=ids, logits_to_keep=1).logits[0, -1].float().log_softmax(-1)
        top = ref.topk(20)
        assert (ref - low)[top.indices].abs().max() <= 0.75
        if top.values[0] - top.values[1] > 0.75:
            assert low.argmax() == top.indices[0]
    params = SamplingParams(max_new_tokens=12, id_list_max=5)
    pairs = [(a[0].text, b[0].text) for a, b in zip(smollm.generate(rerank, params), bf16.generate(rerank, params))]
    assert all(a[:3] == b[:3] for a, b in pairs), pairs  # "Non" or "[i]": keep anything, and what first
    assert sum(a == b for a, b in pairs) >= 5, pairs


def test_prefix_cache_learns_each_roles_shared_prefix_and_encodes_it_once():
    """The cache's bookkeeping on token lists (no model): what is encoded, when, under which key."""
    from dynamicrag.llm.transformers_backend import _PrefixCache

    encoded = []

    def encode(tokens, base):
        start = len(base.tokens) if base else 0
        encoded.append((len(tokens), start))
        kv = torch.arange(len(tokens), dtype=torch.float32).view(1, 1, -1, 1)
        return [(kv, kv)]

    role_a = list(range(100, 160))  # 60 shared tokens (a system prompt)
    role_b = list(range(500, 540))  # another role's 40
    a = [role_a + [1000 + i, 7, 8, i] for i in range(6)]
    b = [role_b + [2000 + i, 9, i] for i in range(6)]
    cache = _PrefixCache(min_tokens=32)
    # A batch: its common prefix is encoded once and serves it.
    first = cache.lookup("base", a[:2], encode)
    assert first.tokens == tuple(role_a) and encoded == [(60, 0)]
    assert cache.lookup("base", a[2:4], encode) is first and cache.hits == 1
    # Batches of one, roles alternating: each role's prefix is learnt from its last prompts.
    assert cache.lookup("base", [b[0]], encode) is None  # nothing to compare with yet
    assert cache.lookup("base", [a[4]], encode) is first
    entry_b = cache.lookup("base", [b[1]], encode)
    assert entry_b.tokens == tuple(role_b) and encoded[-1] == (40, 0)
    assert cache.lookup("base", [b[2]], encode) is entry_b and len(cache) == 2
    # Another weights state (adapter) never sees these entries.
    assert cache.lookup("adapter", b[3:5], encode).tokens == tuple(role_b) and encoded[-1] == (40, 0)
    # A batch that shares less than an entry holds cuts it back, without encoding anything.
    shorter = [role_a[:45] + [3000 + i] * 5 for i in range(2)]
    n = len(encoded)
    cut = cache.lookup("base", shorter, encode)
    assert cut.tokens == tuple(role_a[:45]) and cut.kv[0][0].shape[2] == 45 and len(encoded) == n
    # Prompts that share more than the entry extend it: only the new part is encoded.
    longer = cache.lookup("base", [role_a + list(range(40)) + [i] for i in range(2)], encode)
    assert len(longer.tokens) == 100 and encoded[-1] == (100, 45)
    # A prompt shares at most all but its last token; too little shared: no prefix.
    assert cache.lookup("base", [[1, 2, 3], [1, 2, 4]], encode) is None
    # Bounded: the least recently used entries go first.
    for k in range(4):
        cache.lookup(f"other{k}", [[k] * 40 + [1], [k] * 40 + [2]], encode)
    assert len(cache) == 4 and not cache._entries["base"]
