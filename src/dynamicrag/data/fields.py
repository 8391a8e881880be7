"""Checks shared by the format modules: each turns a bad field into a DataError naming it."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from dynamicrag.data.errors import Loc
from dynamicrag.data.files import file_stem
from dynamicrag.schema import KNOWN_TASKS, Example, Passage

M = TypeVar("M", bound=BaseModel)

# Names some datasets go by, mapped to the task names of schema.KNOWN_TASKS.
TASK_ALIASES = {"2wikimultihopqa": "2wikimqa"}


def task_from_name(name: str) -> str | None:
    """A known task named by a token of ``name`` (tokens split on non-alphanumerics), or None.

    ``"nq-open-oracle"`` -> ``"nq"``, ``"flashrag_nq_test"`` -> ``"nq"``, ``"unqualified"`` ->
    None. ``qa`` is not a signal (it is the default), so ``"hotpot_qa"`` gives None.
    """
    for token in re.split(r"[^0-9a-z]+", name.lower()):
        token = TASK_ALIASES.get(token, token)
        if token in KNOWN_TASKS and token != "qa":
            return token
    return None


def kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def type_error(loc: Loc, field: str, expected: str, value: Any) -> Exception:
    return loc.error(field, f"expected {expected}, got {kind(value)}")


def required_str(record: dict[str, Any], key: str, loc: Loc) -> str:
    """``record[key]`` as a non-blank string."""
    if key not in record:
        raise loc.error(key, "missing")
    value = record[key]
    if not isinstance(value, str):
        raise type_error(loc, key, "a string", value)
    if not value.strip():
        raise loc.error(key, "empty")
    return value


def answer_list(value: Any, field: str, loc: Loc) -> list[str]:
    """Gold answers as a list of strings: a str becomes a one-element list, None an empty one."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(a, str) for a in value):
        what = kind(value)
        if isinstance(value, list):
            what = "a list containing " + next(kind(a) for a in value if not isinstance(a, str))
        raise loc.error(field, f"expected a list of strings, got {what}")
    return value


def example_id(record: dict[str, Any], loc: Loc, keys: tuple[str, ...] = ("id", "_id")) -> tuple[str, str | None]:
    """The source id (stringified) and the key it came from, else ``"{file stem}-{n}"``."""
    for key in keys:
        value = record.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise type_error(loc, key, "a string or an integer", value)
        if not str(value).strip():
            raise loc.error(key, "empty id")
        return str(value), key
    return f"{file_stem(loc.path)}-{loc.n}", None


def unique_passage_ids(passages: list[Passage], loc: Loc, key: str) -> list[Passage]:
    """``passages`` unchanged, or a DataError naming both places of a repeated passage id.

    Outputs, metrics and training pairs name passages by id, so two passages of one example
    sharing an id would be confused there.
    """
    first: dict[str, int] = {}
    for i, p in enumerate(passages):
        j = first.setdefault(p.id, i)
        if j != i:
            raise loc.error(f"{key}[{i}].id", f"duplicate passage id {p.id!r} (also {key}[{j}])")
    return passages


def unique_examples(
    items: Iterable[tuple[Loc, dict[str, Any]]],
    to_example: Callable[[dict[str, Any], Loc], Example],
    id_keys: tuple[str, ...] = ("id", "_id"),
) -> Iterator[Example]:
    """Examples of ``(location, record)`` pairs; a repeated example id is a DataError naming both places.

    Outputs are joined to their inputs by example id (evaluation, training pairs), so a file
    must not use one id twice. Only the ids are kept, so files of any size stream.
    """
    seen: dict[str, Loc] = {}
    for loc, record in items:
        example = to_example(record, loc)
        first = seen.setdefault(example.id, loc)
        if first is not loc:
            key = next((k for k in id_keys if record.get(k) is not None), None)
            raise loc.error(key, f"duplicate example id {example.id!r} (first at {first.where})")
        yield example


def record_task(record: dict[str, Any]) -> str | None:
    """The record's own ``task`` (or ``dataset``) field, mapped to a known task when it names one."""
    for key in ("task", "dataset"):
        value = record.get(key)
        if isinstance(value, str) and value.strip():
            return task_from_name(value) or value.strip().lower()
    return None


def build(model: type[M], loc: Loc, prefix: str, **fields: Any) -> M:
    """Construct a schema model; a validation error becomes a DataError naming the field."""
    try:
        return model(**fields)
    except ValidationError as err:
        first = err.errors()[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        field = (prefix + path).lstrip(".") or None
        raise loc.error(field, f"{first['msg']}, got {kind(first.get('input'))}") from err


def _score(value: Any) -> float | None:
    # Contriever-style retrieval outputs (Self-RAG's eval files) store scores as strings.
    if isinstance(value, bool):
        return None
    try:
        score = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer past 1e308
        return None
    return score if math.isfinite(score) else None


def passage(ctx: Any, loc: Loc, field: str, default_id: str, extra: dict[str, Any] | None = None) -> Passage:
    """A :class:`Passage` from a ``{id?, title?, text, score?, ...}`` dict; other keys go to extra.

    Args:
        ctx: The source dict.
        loc: Where the record is, for errors.
        field: JSON path of ``ctx`` in its record (``ctxs[3]``), or "" for a top-level record.
        default_id: Id used when ``ctx`` has none.
        extra: Fields to add to ``Passage.extra``.
    """
    at = f"{field}." if field else ""
    if not isinstance(ctx, dict):
        raise type_error(loc, field or None, "a JSON object", ctx)
    if "text" not in ctx:
        raise loc.error(f"{at}text", "missing")
    if isinstance(ctx["text"], str) and not ctx["text"].strip():
        raise loc.error(f"{at}text", "empty passage text")
    pid = ctx.get("id")
    if pid is None:
        pid = default_id
    elif isinstance(pid, bool) or not isinstance(pid, (str, int)):
        raise type_error(loc, f"{at}id", "a string or an integer", pid)
    elif not str(pid).strip():
        raise loc.error(f"{at}id", "empty id")
    score = _score(ctx.get("score"))
    # An unreadable score stays in extra as it was; a null one is simply no score.
    consumed = ("id", "title", "text", "score") if score is not None or ctx.get("score", 0) is None else ("id", "title", "text")
    rest = {k: v for k, v in ctx.items() if k not in consumed}
    if isinstance(rest.get("extra"), dict):  # this package's own Passage dump: its extra, flat again
        rest = {**rest.pop("extra"), **rest}
    title = ctx.get("title")
    return build(
        Passage,
        loc,
        field,
        id=str(pid),
        title="" if title is None else title,  # a wrong type (0, [], false) is an error, not ""
        text=ctx["text"],
        score=score,
        extra={**rest, **(extra or {})},
    )
