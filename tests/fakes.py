"""A scripted backend: a reranker policy whose right answer is known, and an echo generator.

Used for unit tests of logic (reranker reduction, pipeline bookkeeping); end-to-end tests use
the real bundled model.
"""

from __future__ import annotations

import re

from dynamicrag.llm.base import Chat, Completion, SamplingParams

GOLD = re.compile(r"\[(\d+)\] [^\n]*\n[^\n]*GOLD-(\d+)")


class ScriptedBackend:
    """Reranker calls: output the ids of passages whose text holds ``GOLD-r``, by rank r.

    Generator calls: answer with the titles of the passages shown, joined by ``|``.
    ``outputs`` overrides the reranker's reply per call index, to script malformed output.
    """

    name = "scripted"
    model = "scripted"

    def __init__(self, outputs: dict[int, str] | None = None, fail_on: str | None = None):
        self.calls: list[Chat] = []
        self.outputs = outputs or {}
        self.fail_on = fail_on

    def count_tokens(self, chat: Chat) -> int:
        return sum(len(m["content"].split()) for m in chat)

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model}

    def generate(self, chats, params: SamplingParams):
        out = []
        for chat in chats:
            user = chat[-1]["content"]
            if self.fail_on and self.fail_on in user:
                raise RuntimeError("scripted failure")
            index = len(self.calls)
            self.calls.append(chat)
            if "document identifiers" in chat[0]["content"]:
                ranked = sorted(GOLD.findall(user), key=lambda m: int(m[1]))
                text = ", ".join(f"[{i}]" for i, _ in ranked) or "None"
                text = self.outputs.get(index, text)
            else:
                text = "|".join(re.findall(r"^\[\d+\] (.*)$", user, flags=re.M)) or "no passages"
            out.append([Completion(text, self.count_tokens(chat), len(text.split()))] * params.n)
        return out
