"""Every prompt of the package, defined once as data (``prompts/*.yaml``), with its parser pattern.

The method's prompts come in styles: ``default`` (the project's one format for training and
inference) and ``official`` (byte-for-byte what the released DynamicRAG-7B/8B checkpoints were
trained on). A style is a YAML file; pass a path to use your own. The baselines' and the
judge's prompts are YAML files too (``listwise``, ``pointwise``, ``judge``), read by
:func:`load_prompt`. Placeholders are checked when a prompt loads, so a typo fails at start-up,
not in the middle of a run.

Example:
    >>> style = load_style("official")
    >>> chat = reranker_chat(style, "who wrote hamlet", passages)
    >>> chat[1]["content"].startswith("Query: who wrote hamlet")
    True
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dynamicrag.llm.base import Chat
from dynamicrag.schema import Passage

BUILTIN_STYLES = ("default", "official")
"""The prompt styles that ship (the other YAML files here are single prompts, see :func:`load_prompt`)."""

# Placeholders each template must use, exactly: a missing or unknown one is an error at load.
_PLACEHOLDERS = {
    ("reranker", "user"): {"query", "passages"},
    ("reranker", "passage"): {"n", "title", "text"},
    ("generator", "user"): {"task_line", "query", "retrieved"},
    ("generator", "retrieved"): {"passages"},
    ("generator", "no_passages"): set(),
    ("generator", "passage"): {"n", "title", "text"},
}
# Which task line a task gets; every other task gets the style's "default" line.
_TASK_LINE_KEYS = {"fever": "fever", "eli5": "eli5"}


@dataclass(frozen=True)
class RoleTemplate:
    system: str
    user: str
    passage: str
    separator: str
    retrieved: str = "{passages}"
    no_passages: str = ""


@dataclass(frozen=True)
class PromptStyle:
    """A complete set of prompts: reranker and generator templates, task lines, id pattern."""

    name: str
    reranker: RoleTemplate
    generator: RoleTemplate
    task_lines: dict[str, str]
    id_pattern: str
    none_word: str

    def task_line(self, task: str) -> str:
        return self.task_lines[_TASK_LINE_KEYS.get(task.lower(), "default")]


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def check_placeholders(source: str, key: str, template: str, expected: set[str]) -> None:
    """Raise when ``template`` does not use exactly the ``expected`` placeholders.

    Raises:
        ValueError: Naming ``source`` (the file), ``key`` and both sets.
    """
    found = _fields(template)
    if found != expected:
        raise ValueError(f"{source}: {key} must use placeholders {sorted(expected)}, found {sorted(found)}")


def load_prompt(name: str, placeholders: dict[str, set[str]]) -> dict[str, str]:
    """A prompt file of the package (``prompts/<name>.yaml``), its templates checked.

    Args:
        name: The file's name without ``.yaml`` (``listwise``, ``pointwise``, ``judge``).
        placeholders: Each key the caller needs -> the placeholders its template must use.

    Returns:
        The file's keys and values (strings).

    Raises:
        ValueError: A missing key or a template with other placeholders (file and key named).
    """
    source = f"{name}.yaml"
    data = yaml.safe_load(resources.files(__package__).joinpath(source).read_text("utf-8"))
    for key, expected in placeholders.items():
        if key not in data:
            raise ValueError(f"{source}: missing key {key!r}")
        check_placeholders(source, key, data[key], expected)
    return data


def _check(source: str, section: str, key: str, template: str) -> None:
    check_placeholders(source, f"{section}.{key}", template, _PLACEHOLDERS[(section, key)])


def parse_style(data: dict[str, Any], source: str = "<dict>") -> PromptStyle:
    """Build and validate a :class:`PromptStyle` from its YAML mapping."""
    try:
        rr, gen, lines = data["reranker"], data["generator"], data["task_lines"]
        for section, values in (("reranker", rr), ("generator", gen)):
            for key in [k for (s, k) in _PLACEHOLDERS if s == section]:
                _check(source, section, key, values[key])
        if "default" not in lines:
            raise ValueError(f"{source}: task_lines needs a 'default' entry")
        re.compile(rr["id_pattern"])
        return PromptStyle(
            name=data.get("name", Path(source).stem),
            reranker=RoleTemplate(rr["system"], rr["user"], rr["passage"], rr["separator"]),
            generator=RoleTemplate(
                gen["system"], gen["user"], gen["passage"], gen["separator"],
                gen["retrieved"], gen["no_passages"],
            ),
            task_lines=dict(lines),
            id_pattern=rr["id_pattern"],
            none_word=rr.get("none_word", "None"),
        )
    except KeyError as err:
        raise ValueError(f"{source}: missing key {err}") from None


@lru_cache(maxsize=None)
def load_style(name_or_path: str = "default") -> PromptStyle:
    """Load a built-in style by name (``default``, ``official``) or a YAML file by path."""
    if name_or_path in BUILTIN_STYLES:
        text = resources.files(__package__).joinpath(f"{name_or_path}.yaml").read_text("utf-8")
        source = f"{name_or_path}.yaml"
    else:
        path = Path(name_or_path)
        if not path.is_file():
            raise ValueError(
                f"unknown prompt style {name_or_path!r}: use one of {sorted(BUILTIN_STYLES)} "
                "or the path of a YAML file"
            )
        text, source = path.read_text("utf-8"), str(path)
    return parse_style(yaml.safe_load(text), source)


def cap_words(text: str, max_words: int | None) -> str:
    """The first ``max_words`` whitespace-separated words of ``text`` (all of it when None).

    Words rather than tokens so that a cap means the same prompt on every backend and tokenizer,
    in training and at inference alike (an OpenAI-compatible server has no local tokenizer).
    """
    if max_words is None:
        return text
    words = text.split()
    return text if len(words) <= max_words else " ".join(words[:max_words])


def _format_passages(role: RoleTemplate, passages: list[Passage], max_words: int | None = None) -> str:
    return role.separator.join(
        role.passage.format(n=i, title=p.title, text=cap_words(p.text, max_words)) for i, p in enumerate(passages, 1)
    )


def reranker_chat(style: PromptStyle, query: str, passages: list[Passage], passage_words: int | None = None) -> Chat:
    """The reranker's chat: system prompt, then the query and passages numbered from 1.

    Args:
        style: The prompt style.
        query: The question.
        passages: The candidates, shown as ``[1]``, ``[2]``, ... in this order.
        passage_words: Show at most this many words of each passage's text (None: all). It
            shortens the prompt (the reranker's cost is almost all prefill); a reranker must be
            run with the cap it was trained with, which its adapter's manifest records.
    """
    if passage_words is not None and passage_words < 1:
        raise ValueError(f"passage_words must be >= 1 or None, got {passage_words}")
    user = style.reranker.user.format(
        query=query, passages=_format_passages(style.reranker, passages, passage_words)
    )
    return [{"role": "system", "content": style.reranker.system}, {"role": "user", "content": user}]


def generator_chat(style: PromptStyle, query: str, passages: list[Passage], task: str) -> Chat:
    """The generator's chat over the selected passages (renumbered 1..k in the chosen order).

    An empty ``passages`` (the reranker said ``None``) gives the no-passage prompt.
    """
    gen = style.generator
    if passages:
        retrieved = gen.retrieved.format(passages=_format_passages(gen, passages))
    else:
        retrieved = gen.no_passages
    user = gen.user.format(task_line=style.task_line(task), query=query, retrieved=retrieved)
    return [{"role": "system", "content": gen.system}, {"role": "user", "content": user}]


def reranker_target(style: PromptStyle, ids: list[int]) -> str:
    """The reranker's expected output for ``ids`` (1-based): ``[3], [1]`` or ``None``."""
    return ", ".join(f"[{i}]" for i in ids) if ids else style.none_word
