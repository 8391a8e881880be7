"""The command line's options: groups shared by the commands, and options generated from the
stages' config classes (as trl's ``HfArgumentParser`` builds a parser from its argument
dataclasses).

A command lists its groups with :func:`with_options`; each group adds its options to the
command's signature (typer reads the signature) and hands the command one value made from
them: the examples to load, the executor, the role options, a config's fields. A config's
options come from its fields (:func:`config_options`): the flag is the field's name, the help
its ``metadata["help"]`` (dataclasses) or ``description`` (pydantic), written once, beside the
stage.

Example:
    >>> @app.command()
    ... @with_options(config=config_options(LabelConfig), logs=VERBOSE)
    ... def label(output: Path = typer.Option(...), *, config: dict, logs: None) -> None:
    ...     LabelConfig(**config)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import typer

from dynamicrag.console import announce_dtypes, console, fail, failing, setup_logging


@dataclasses.dataclass
class OptionGroup:
    """Options that go together, and what the command receives for them.

    Args:
        params: The options, as parameters of the command's signature.
        collect: Makes the command's value from the options' values (by parameter name); a
            ``ValueError`` it raises is shown as an error (exit status 2).
    """

    params: list[inspect.Parameter]
    collect: Callable[[dict[str, Any]], Any] = lambda values: values


def option(name: str, annotation: Any, default: Any, *decls: str, help: str = "", **kwargs: Any) -> inspect.Parameter:
    """One ``typer.Option`` as a parameter named ``name`` (``decls``: its flags; ``help`` is
    plain text: ``[1]`` is not read as markup)."""
    from rich.markup import escape

    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *decls, help=escape(help), **kwargs))


def with_options(**groups: OptionGroup) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Add each group's options to a command; the command gets one keyword argument per group."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in inspect.signature(command).parameters.items()
               if name not in groups]

        @functools.wraps(command)
        def run(**values: Any) -> Any:
            with failing(ValueError):
                made = {name: g.collect({p.name: values.pop(p.name) for p in g.params}) for name, g in groups.items()}
            return command(**values, **made)

        params = own + [p for g in groups.values() for p in g.params]
        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        hints = typing.get_type_hints(command)  # the command's own annotations may be strings
        run.__annotations__ = {**{p.name: hints[p.name] for p in own}, **{p.name: p.annotation for g in groups.values() for p in g.params}}
        return run

    return decorate


# ---------------------------------------------------------------- options from config classes


def _fields(cls: type) -> list[tuple[str, Any, Any, str]]:
    """(name, type, default, help) of each field of a dataclass or a pydantic model."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return [(f.name, hints[f.name], f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default,
                 f.metadata.get("help", "")) for f in dataclasses.fields(cls) if f.init]
    return [(name, info.annotation, info.get_default(call_default_factory=True), info.description or "")
            for name, info in cls.model_fields.items()]


def _cli_type(annotation: Any) -> Any:
    """The type typer parses for a field's type (``X | None`` -> ``Optional[X]``); None when
    the command line cannot give it (a mapping, a union of two types)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return Optional[_cli_type(args[0])] if len(args) == 1 and _cli_type(args[0]) is not None else None
    if annotation in (str, int, float, bool, Path) or (isinstance(annotation, type) and issubclass(annotation, enum.Enum)):
        return annotation
    if typing.get_origin(annotation) is list and args in ([str], [int]):
        return annotation
    return None


def config_options(
    cls: type,
    *,
    only: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    flags: dict[str, str] | None = None,
    unset: bool = False,
) -> OptionGroup:
    """One option per field of ``cls`` (a dataclass or a pydantic model).

    Args:
        cls: The config class.
        only: These fields only (default: every field the command line can give).
        exclude: Fields left out.
        flags: Field -> its flags, where they differ from ``--field-name`` (e.g.
            ``"--constrained/--free"``, or another name).
        unset: Every option defaults to None, meaning "not given" (the config, or a config
            file read first, keeps its value); the help names the field's default.

    Returns:
        The group; the command receives ``{field: value}`` of the options (with ``unset``, only
        those given).
    """
    flags = flags or {}
    params = []
    for name, annotation, default, help_text in _fields(cls):
        kind = _cli_type(annotation)
        if name in exclude or (only is not None and name not in only) or kind is None:
            continue
        if unset:
            kind, help_text = Optional[kind], f"{help_text} (default: {_shown(default)})"
            default = None
        decls = flags.get(name, f"--{name.replace('_', '-')}")
        params.append(option(name, kind, default, *decls.split(" "), help=help_text, show_default=not unset))

    def collect(values: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in values.items() if not (unset and v is None)}

    return OptionGroup(params, collect)


def _shown(value: Any) -> str:
    return str(value.value if isinstance(value, enum.Enum) else value)


# ---------------------------------------------------------------- groups shared by the commands


def _logs(values: dict[str, Any]) -> None:
    setup_logging(values["verbose"])


VERBOSE = OptionGroup([option("verbose", bool, False, "--verbose", "-v", help="Log what happens (INFO)")], _logs)
TRAINING_LOGS = OptionGroup(
    [option("verbose", bool, True, "--verbose/--quiet", "-v", help="Log each stage and the trainers' loss and progress")],
    _logs,
)


def _examples(values: dict[str, Any]) -> Callable[[], list]:
    from dynamicrag.data import load_examples

    return functools.partial(load_examples, values["input"], task=values["task"], limit=values["limit"], skip=values["skip"])


EXAMPLES = OptionGroup([
    option("input", Path, ..., "--input", help="Questions: any supported examples format"),
    option("task", Optional[str], None, "--task", help="Task of every example (default: detected)"),
    option("limit", Optional[int], None, "--limit", help="Only N examples (the first N after --skip)"),
    option("skip", int, 0, "--skip", min=0, help="Leave out the first N examples (e.g. a held-apart slice)"),
], _examples)
"""The input examples: the command gets a function that loads them (``DataError`` names the line)."""


def _index_folder(index_dir: str | None) -> str | None:
    """The index folder, checked (``meta.json`` read) and made absolute; the stage loads it where it runs."""
    if index_dir is None:
        return None
    from dynamicrag.retrieve.storage import read_meta

    folder = Path(index_dir).expanduser().resolve()
    try:
        read_meta(folder)
    except (FileNotFoundError, ValueError) as err:
        raise typer.BadParameter(str(err)) from None
    return str(folder)


def index_option(required: bool = False, help: str | None = None) -> Any:
    """``--index``: an index folder, checked when the options are read."""
    return typer.Option(... if required else None, "--index", callback=_index_folder,
                        help=help or ("Index to search" if required else "Index for examples without their own passages"))


OUTPUT = typer.Option(..., "--output", help="Output JSONL (resumed if it exists)")
RETRIEVE = typer.Option(False, "--retrieve", help="Retrieve from --index even for examples with their own passages")


def batch_size_option(default: int, help: str) -> Any:
    """``--batch-size``: items per batch and per write of a resumable stage."""
    return typer.Option(default, "--batch-size", min=1, help=help)


def checked_examples(inputs: Callable[[], list], index_dir: str | None, retrieve: bool, need_passages: bool = True) -> list:
    """The examples of a stage that may retrieve: loaded, ``--retrieve`` checked, a warning when
    some have no passages and there is no index to give them some."""
    with failing():
        examples = inputs()
    if retrieve and index_dir is None:
        fail("--retrieve needs --index")
    if need_passages and index_dir is None and any(not ex.passages for ex in examples):
        console.print("[yellow]warning:[/yellow] some examples have no passages and no --index was given")
    return examples


class ExecutorKind(str, enum.Enum):  # dynamicrag.executors.EXECUTORS
    local = "local"
    ray = "ray"


@dataclasses.dataclass
class ExecutorChoice:
    """Where a stage's batches run (``--executor`` and the Ray options)."""

    kind: ExecutorKind
    address: str | None
    workers: int
    worker_gpus: float

    @property
    def local(self) -> bool:
        return self.kind is ExecutorKind.local

    def make(self) -> Any:
        """The executor (:func:`dynamicrag.executors.make_executor`)."""
        from dynamicrag.executors import make_executor

        if self.local:
            return make_executor("local")
        return make_executor("ray", address=self.address, num_workers=self.workers, num_gpus_per_worker=self.worker_gpus)

    def settings(self, batch_size: int) -> dict[str, Any]:
        """The ``run`` section of the run settings (recorded, never compared)."""
        return {"batch_size": batch_size, "executor": self.kind.value, "workers": self.workers}


def _executor(values: dict[str, Any]) -> ExecutorChoice:
    choice = ExecutorChoice(values["executor"], values["ray_address"], values["workers"], values["worker_gpus"])
    if choice.local and (choice.address is not None or choice.workers != 1 or choice.worker_gpus):
        raise ValueError("--ray-address, --workers and --worker-gpus need --executor ray")
    return choice


EXECUTOR = OptionGroup([
    option("executor", ExecutorKind, ExecutorKind.local, "--executor",
           help="local: batches run in this process | ray: spread over Ray workers, one model copy each"),
    option("ray_address", Optional[str], None, "--ray-address",
           help="Ray cluster to join (auto | HOST:6379 | ray://HOST:10001); default: $RAY_ADDRESS or `ray start` "
           "here, else a new local Ray"),
    option("workers", int, 1, "--workers", min=1, help="Ray workers (--executor ray); each loads its own model and index"),
    option("worker_gpus", float, 0.0, "--worker-gpus", min=0.0,
           help="GPUs Ray reserves per worker (--executor ray), e.g. 1 to give each model a GPU"),
], _executor)


def backend_options(pairs: Sequence[str] | None) -> dict[str, Any]:
    """``--backend-option KEY=VALUE`` pairs as a dict (16 -> int, true -> bool, text stays text)."""
    import yaml

    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--backend-option takes KEY=VALUE, got {pair!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def _role_options(role: str) -> list[inspect.Parameter]:
    adapter_help = {
        "reranker": "auto (default): the reranker adapter shipped for this base model, if one ships | none: the "
                    "untrained base model | a LoRA adapter folder | a shipped adapter's name",
        "generator": "none (default): the base model | auto | a LoRA adapter folder | a shipped adapter's name",
    }[role]
    return [
        option(f"{role}_model", Optional[str], None, f"--{role}-model", help=f"The {role}'s model (default: --model)"),
        option(f"{role}_adapter", Optional[str], None, f"--{role}-adapter", help=adapter_help),
        option(f"{role}_backend", Optional[str], None, f"--{role}-backend", help=f"The {role}'s backend (default: --backend)"),
        option(f"{role}_base_url", Optional[str], None, f"--{role}-base-url", help=f"OpenAI-compatible server for the {role}"),
    ]


def _roles(values: dict[str, Any]) -> dict[str, Any]:
    def role(name: str) -> dict[str, Any]:
        return {field: values[f"{name}_{field}"] for field in ("model", "adapter", "backend", "base_url")}

    return {"backend": values["backend"], "model": values["model"], "base_url": values["base_url"],
            "backend_options": backend_options(values["backend_option"]), "prompt_style": values["prompt_style"],
            "reranker": role("reranker"), "generator": role("generator")}


ROLES = OptionGroup([
    option("backend", str, "transformers", "--backend", help="transformers | openai | vllm | llamacpp (both roles)"),
    option("model", Optional[str], None, "--model", help="HF id or path (both roles); default: the bundled SmolLM2-135M-Instruct"),
    option("base_url", Optional[str], None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1"),
    option("backend_option", Optional[list[str]], None, "--backend-option",
           help="KEY=VALUE passed to the backend, repeatable (e.g. batch_size=16, guided_decoding=grammar)"),
    *_role_options("reranker"), *_role_options("generator"),
    option("prompt_style", Optional[str], None, "--prompt-style",
           help="default | official (released checkpoints) | a YAML path (default: the reranker adapter's, else default)"),
], _roles)
"""What plays each role: the both-roles shorthands and each role's own model, adapter, backend
(:func:`dynamicrag.build.role_configs`)."""


def pipeline_options(*fields: str) -> OptionGroup:
    """Options of :class:`~dynamicrag.build.PipelineConfig` fields (the method's settings)."""
    from dynamicrag.build import PipelineConfig

    return config_options(PipelineConfig, only=fields, flags={
        "kind": "--reranker", "constrained": "--constrained/--free", "answer_max_tokens": "--max-new-tokens",
    })


ASK_METHOD = ("top_n", "constrained", "passage_words", "order_by", "continue_bias", "reranker_max_tokens",
              "answer_max_tokens")
"""The settings ``ask``, ``chat`` and ``serve`` take; ``infer`` takes every reranker's too."""


def decoding_options(labels: bool) -> OptionGroup:
    """The generator's decoding (:class:`~dynamicrag.generate.GenerationSpec`; unset options keep
    each task's default); ``labels``: with ``--label-choices/--free-labels``."""
    from dynamicrag.generate import GenerationSpec

    group = config_options(GenerationSpec, only=("no_repeat_ngram_size", "frequency_penalty", "stop", "constrain_labels")
                           if labels else ("no_repeat_ngram_size", "frequency_penalty", "stop"), flags={
        "no_repeat_ngram_size": "--no-repeat-ngram", "stop": "--answer-stop",
        "constrain_labels": "--label-choices/--free-labels"})
    def collect(values: dict[str, Any]) -> GenerationSpec:
        import codecs

        stop = values.get("stop")
        if stop is not None:
            stop = [] if [s.lower() for s in stop] == ["none"] else [codecs.decode(s, "unicode_escape") for s in stop]
            if any(not s for s in stop):
                raise ValueError("--answer-stop takes non-empty strings (or 'none')")
        return GenerationSpec(**{**values, "stop": stop})

    return OptionGroup(group.params, collect)


def resolve_pipeline(roles: dict[str, Any], fallbacks: dict[str, Any] | None = None, *, announce_dtype: bool = True,
                     **method: Any) -> Any:
    """The commands' role and method options as one resolved :class:`~dynamicrag.build.PipelineConfig`.

    Checked here, before any model loads (adapter folders, manifests, backend options), so a bad
    option fails at once wherever the stage then runs; ``fallbacks`` are the command's defaults
    for what neither the options nor the reranker adapter's manifest set. Prints each role's
    adapter, the candidate order of the dynamic reranker when it is not retrieval order, its
    continue bias when not 0, and
    (unless ``announce_dtype`` is False: ``ask`` through a kept model, which prints its process's
    line and keeps torch out of this one) the dtype its transformers backend runs in.
    """
    from dynamicrag.build import PipelineConfig, backend_specs, resolve_config, role_configs

    with failing(FileNotFoundError, ValueError):  # pydantic's ValidationError is a ValueError
        config = resolve_config(PipelineConfig(**role_configs(**roles), **method), **(fallbacks or {}))
        for role in ("reranker", "generator"):
            adapter = getattr(config, role).adapter
            if adapter != "none":
                console.print(f"{role}: adapter {adapter}")
        if config.kind == "dynamic" and config.order_by != "none":
            console.print(f"reranker: candidates ordered by {config.order_by} first")
        if config.kind == "dynamic" and config.continue_bias:
            console.print(f"reranker: continue bias {config.continue_bias:+.2f} (--continue-bias; 0: greedy as trained)")
        if announce_dtype:
            announce_dtypes(backend_specs(config))
    return config


__all__ = [
    "ASK_METHOD", "EXAMPLES", "EXECUTOR", "OUTPUT", "RETRIEVE", "ROLES", "TRAINING_LOGS", "VERBOSE", "ExecutorChoice",
    "ExecutorKind", "OptionGroup", "backend_options", "batch_size_option", "checked_examples", "config_options",
    "decoding_options", "index_option", "option",
    "pipeline_options", "resolve_pipeline", "with_options",
]
