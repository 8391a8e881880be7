"""``dynamicrag chat`` as a person uses it: in a terminal (a pseudo-terminal here), on the
bundled model and docs, typing questions and leaving with Ctrl-D or Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import sys

import pexpect
import pytest

from dynamicrag.generate import Generator
from dynamicrag.llm import SamplingParams, stream_text
from dynamicrag.schema import Example, Passage, Selection
from fakes import ScriptedBackend

PROMPT = r"question>(?:\x1b\[[0-9;]*m)* "  # rich may style it (NO_COLOR keeps bold)
# Small caps keep the turns short; the chosen passages and k do not depend on the answer's length.
CHAT = [sys.executable, "-m", "dynamicrag.cli", "chat", "--top-n", "3", "--reranker-max-tokens", "20", "--max-new-tokens", "12"]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def start_chat() -> pexpect.spawn:
    env = {**os.environ, "NO_COLOR": "1", "TERM": "xterm", "COLUMNS": "160"}
    # Ctrl-C as in a person's terminal: a test run started in the background (`pytest &` from a
    # script) ignores SIGINT, and the chat would inherit that.
    return pexpect.spawn(CHAT[0], CHAT[1:], env=env, encoding="utf-8", timeout=120, dimensions=(50, 160),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def turn(chat: pexpect.spawn, question: str) -> tuple[int, list[str], str]:
    """Ask ``question``; return k, the ids in the passages table and the answer as shown."""
    chat.sendline(question)
    chat.expect(r"k = (\d+) of 3 retrieved")
    k = int(chat.match.group(1))
    chat.expect(r"answered in [\d.]+ s")
    shown = ANSI.sub("", chat.before)
    ids = re.findall(r"│ \d+ │ (\S+\.md:\d+) ", shown)
    answer = [line.strip() for line in shown.splitlines() if line.strip()][-1]
    chat.expect(PROMPT)
    return k, ids, answer


@pytest.mark.slow
def test_chat_answers_questions_in_a_loop_and_ends_on_ctrl_d():
    chat = start_chat()
    try:
        chat.expect(PROMPT)
        loaded = ANSI.sub("", chat.before)
        assert "loading the model" in loaded and "✓" in loaded  # progress while loading, then done
        for question in ("How does DynamicRAG choose the number of passages?", "Which backends can run the models?"):
            k, ids, answer = turn(chat, question)
            assert 0 <= k <= 3 and len(ids) == k  # one table row, with its passage id, per chosen passage
            assert re.search(r"[A-Za-z]{2}", answer) and "reranker output" not in answer
        chat.sendeof()
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0, chat.before


@pytest.mark.slow
def test_ctrl_c_at_the_prompt_ends_the_chat_cleanly():
    chat = start_chat()
    try:
        chat.expect(PROMPT)
        chat.sendintr()
        chat.expect(pexpect.EOF)
    finally:
        chat.close()
    assert chat.exitstatus == 0 and "Traceback" not in chat.before


def test_backends_without_streaming_answer_in_one_piece():
    backend = ScriptedBackend()
    example = Example(id="q", question="q", passages=[Passage(id="a", title="Paris", text="GOLD-1")])
    pieces = list(Generator(backend).stream(example, Selection(ids=[1])))
    assert pieces == ["Paris"] == Generator(backend).answer([example], [Selection(ids=[1])])
    with pytest.raises(ValueError, match="n=2"):
        list(stream_text(backend, [{"role": "user", "content": "q"}], SamplingParams(n=2)))


@pytest.mark.slow
def test_transformers_streams_the_same_text_as_generate_and_stops_when_closed(smollm):
    chat = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
    params = SamplingParams(max_new_tokens=16)
    pieces = list(smollm.stream(chat, params))
    assert len([p for p in pieces if p]) > 1  # token by token, not one piece at the end
    assert "".join(pieces) == smollm.generate([chat], params)[0][0].text
    long = smollm.stream(chat, SamplingParams(max_new_tokens=400))
    assert next(long) is not None
    long.close()  # stops the generation thread (it holds the model's lock until then)
    assert smollm._lock.acquire(timeout=5)
    smollm._lock.release()


@pytest.mark.slow
def test_a_streamed_answer_has_the_tasks_decoding_settings_as_the_answer_does(smollm):
    """Generator.stream sends the same per-task SamplingParams as answer (n-gram ban, stop
    strings, cap), and the transformers stream ends where generate cuts at a stop string."""
    from dynamicrag.generate import GenerationConfig

    example = Example(id="q", question="Why is the sky blue?", task="eli5", passages=[
        Passage(id="a", title="Sky", text="Sunlight is scattered by the air; blue light is scattered more than red light.")])
    selection = Selection(ids=[1])
    loose = Generator(smollm, config=GenerationConfig(max_new_tokens=24, no_repeat_ngram_size=0, stop=[]))
    free = loose.answer([example], [selection])[0]
    word = free.split()[3]
    for config in (GenerationConfig(max_new_tokens=24, no_repeat_ngram_size=1, stop=[]),  # no token twice
                   GenerationConfig(max_new_tokens=24, no_repeat_ngram_size=0, stop=[word])):  # a stop string
        generator = Generator(smollm, config=config)
        answer = generator.answer([example], [selection])[0]
        streamed = "".join(generator.stream(example, selection)).strip()
        assert streamed == answer != free
    assert answer == free[:free.index(word)].strip() and word not in streamed
