"""One builder: a :class:`PipelineConfig` -> backends, reranker, generator and pipeline.

``infer``, ``ask``, ``chat``, ``serve``, ``sample`` and the benchmark runner all build their models here,
so a setting means the same thing everywhere. The config has one section per role: the
reranker and the generator each name their backend, model and LoRA adapter. When both roles
run the same base model on the transformers backend, the base is loaded once and each role's
backend switches its own adapter on per call (:mod:`dynamicrag.llm.lora`).

Adapters, per role (``RoleConfig.adapter``):

* ``"auto"`` (the reranker's default): the adapter shipped inside the package whose manifest
  names this role (or ``both``) and this base model; the base model when none ships.
* ``"none"`` (the generator's default): the untrained base model.
* a folder written by peft's ``save_pretrained`` (with a ``manifest.json``, see
  :mod:`dynamicrag.llm.adapters`), or the name of a shipped adapter.

The reranker adapter's manifest supplies the reranker's prompt settings (prompt style,
passage cap, constrained decoding, candidates) wherever the config leaves them unset (None):
an adapter runs with the prompts it was trained on. :func:`resolve_config` fills every unset
value once, so a resolved config says exactly what runs and can be shipped to Ray workers.

Example:
    >>> config = PipelineConfig(generator=RoleConfig(backend="openai", model="m", base_url="http://h:8000/v1"))
    >>> pipeline = build_pipeline(config)  # doctest: +SKIP
    >>> pipeline.settings["reranker"]["adapter_manifest"]  # the shipped adapter, once one ships
"""

from __future__ import annotations

import functools
import inspect
import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dynamicrag.generate import GenerationConfig, GenerationSpec
from dynamicrag.llm import adapters as shipped
from dynamicrag.llm.adapters import MANIFEST, AdapterManifest, read_manifest

logger = logging.getLogger(__name__)

AUTO = "auto"
"""Adapter choice: the shipped adapter for this role and base model, else the base model."""
NONE = "none"
"""Adapter choice: the untrained base model."""
ROLES = ("reranker", "generator")
LLM_RERANKERS = ("dynamic", "listwise")  # the reranker kinds that run the reranker role's LLM
DEFAULT_STYLE = "default"


class RoleConfig(BaseModel):
    """Which model plays one role, with which adapter, on which backend."""

    model_config = ConfigDict(extra="forbid")

    backend: str = Field("transformers", description="transformers | openai | vllm | llamacpp")
    model: str | None = Field(None, description="HF id, path, or the served name; None: the bundled SmolLM2")
    adapter: str = Field(NONE, description="auto | none | a LoRA adapter folder | a shipped adapter's name")
    base_url: str | None = Field(None, description="OpenAI-compatible server (backend openai)")
    backend_options: dict[str, Any] = Field(default_factory=dict, description="Passed to the backend")
    prompt_style: str | None = Field(None, description="None: the adapter manifest's, else default")


class RerankerRoleConfig(RoleConfig):
    """The reranker role: the shipped reranker adapter by default."""

    adapter: str = Field(AUTO, description="auto | none | a LoRA adapter folder | a shipped adapter's name")


class RoleOptions(BaseModel):
    """A role section as written in a config file: only what differs from the shorthands."""

    model_config = ConfigDict(extra="forbid")

    backend: str | None = None
    model: str | None = None
    adapter: str | None = None
    base_url: str | None = None
    backend_options: dict[str, Any] | None = None
    prompt_style: str | None = None


class PipelineConfig(BaseModel):
    """Everything :func:`build_pipeline` needs: the two roles and the method's settings.

    ``None`` means "not set": the reranker adapter's manifest decides, else the command's
    default (see :func:`resolve_config`).
    """

    model_config = ConfigDict(extra="forbid")

    reranker: RerankerRoleConfig = Field(default_factory=RerankerRoleConfig)
    generator: RoleConfig = Field(default_factory=RoleConfig)
    kind: str = Field(
        "dynamic", description="Reranker: dynamic (the method) | none | topk | pointwise | listwise (baselines) | "
        "adaptive-k | threshold (training-free cuts of --scorer scores) | gold (a ceiling)"
    )
    k: int = Field(5, ge=0, description="Passages kept by topk, pointwise and listwise")
    window: int | None = Field(None, ge=2, description="Passages per reranker call (dynamic: 40, listwise: 20)")
    stride: int = Field(10, ge=1, description="Listwise sliding-window step")
    scorer: str = Field(
        "embedding", description="Scorer of pointwise | adaptive-k | threshold: embedding | monot5:MODEL | "
        "cross-encoder:MODEL | causal:[MODEL] | retriever (the index's scores)"
    )
    buffer: int = Field(0, ge=0, description="adaptive-k: extra passages kept below the largest score gap")
    threshold: float | None = Field(None, description="threshold: lowest --scorer score kept")
    max_drop: float | None = Field(
        None, ge=0, description="threshold: largest drop from the top score kept, as a share of it (0.2: within 20 %)"
    )
    constrained: bool | None = Field(
        None, description="Constrain reranker decoding to the id grammar ([i], [j] or None) (default: the reranker "
        "adapter's; without one: on in ask, chat and serve, where the base model is not trained as a reranker; "
        "off in infer)"
    )
    passage_words: int | None = Field(
        None, ge=0, description="Words of each passage shown to the reranker, 0: all (default: the reranker adapter's, else all)"
    )
    order_by: str | None = Field(
        None, description="dynamic: a scorer (as --scorer) that orders the candidates before the reranker reads them, "
        "e.g. query-likelihood; none: the retriever's order (default: the reranker adapter's, else none)"
    )
    continue_bias: float | None = Field(
        None, ge=-100, le=100, description="dynamic: logit bias on going on after an id (`],`); positive reads more "
        "passages (default: the reranker adapter's calibrated value, else 0)"
    )
    reranker_max_tokens: int | None = Field(
        None, ge=1, description="Cap on an LLM reranker's output (default: dynamic 100 as in the paper; listwise: a full permutation)"
    )
    answer_max_tokens: int | None = Field(
        None, ge=1, description="Cap on every answer (default per task: 64 short answers, 8 labels, 200 paragraphs; paper: 200)"
    )
    generation: GenerationSpec = Field(
        default_factory=GenerationSpec, description="The generator's decoding overrides (n-gram ban, stop, labels)"
    )
    top_n: int | None = Field(
        None, ge=1, description="Candidates the reranker sees (default: the reranker adapter's, else 40; ask, chat and serve: 10)"
    )
    retrieve: bool = Field(
        False, description="Retrieve from --index even for examples with their own passages (their gold marks the retrieved ones)"
    )

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        from dynamicrag.rerank import RERANKERS

        if kind not in RERANKERS:
            raise ValueError(f"unknown reranker {kind!r}; choose one of {sorted(RERANKERS)}")
        return kind


def role_configs(
    *,
    backend: str = "transformers",
    model: str | None = None,
    base_url: str | None = None,
    backend_options: dict[str, Any] | None = None,
    prompt_style: str | None = None,
    reranker: RoleOptions | dict[str, Any] | None = None,
    generator: RoleOptions | dict[str, Any] | None = None,
) -> dict[str, RoleConfig]:
    """The two role sections from the both-roles shorthands and each role's own options.

    A role's own values win. The shorthands ``backend``, ``model``, ``base_url`` and
    ``backend_options`` describe every role that does not name a backend of its own (or names
    the same one); ``prompt_style`` applies to both roles.

    Returns:
        ``{"reranker": RerankerRoleConfig, "generator": RoleConfig}``, for :class:`PipelineConfig`.
    """
    out: dict[str, RoleConfig] = {}
    for name, own, cls in (("reranker", reranker, RerankerRoleConfig), ("generator", generator, RoleConfig)):
        own = own.model_dump(exclude_none=True) if isinstance(own, RoleOptions) else {
            k: v for k, v in (own or {}).items() if v is not None
        }
        fields: dict[str, Any] = {"backend": own.get("backend", backend)}
        if fields["backend"] == backend:  # the shorthands describe this role
            fields.update(model=model, base_url=base_url, backend_options=dict(backend_options or {}))
        fields["prompt_style"] = prompt_style
        fields.update(own)
        out[name] = cls(**fields)
    return out


def same_base_model(a: str | None, b: str | None) -> bool:
    """True when two model names (alias, folder, ``.gguf`` or hub id) load the same checkpoint."""
    from dynamicrag.llm.models import DEFAULT_MODEL, resolve_model

    a, b = a or DEFAULT_MODEL, b or DEFAULT_MODEL
    if a.lower() == b.lower():
        return True
    try:
        return resolve_model(a) == resolve_model(b)
    except (FileNotFoundError, ValueError):
        return False


def default_adapter(role: str, model: str | None) -> Path | None:
    """The shipped adapter for ``role`` on base ``model``: manifest role ``role`` or ``both``.

    Returns:
        Its folder, or None when no shipped adapter fits (then the role runs the base model).
    """
    for name, folder in shipped.shipped_adapters().items():
        try:
            manifest = read_manifest(folder)
        except (FileNotFoundError, ValueError) as err:
            logger.warning("skipping the shipped adapter %s: %s", name, err)
            continue
        if manifest.role in (role, "both") and same_base_model(manifest.base_model, model):
            logger.info("%s role: the shipped adapter %s (%s)", role, manifest.name, folder)
            return folder
    logger.info("%s role: no shipped adapter for base model %s; running the base model", role, model or "(bundled)")
    return None


def adapter_manifest(folder: str | None) -> AdapterManifest | None:
    """The manifest of a resolved adapter folder (None: no adapter, or a folder without one)."""
    if folder in (None, NONE) or not (Path(folder) / MANIFEST).is_file():
        return None
    return read_manifest(folder)


def backend_spec(
    what: str, name: str, model: str | None, base_url: str | None = None, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``load_backend``'s arguments, checked before any model loads, so a bad option fails at
    once wherever the stage then runs (this process or Ray workers).

    Args:
        what: What the backend is for, for the message (``"reranker role"``, ``"judge"``).
        name: The backend's name.
        model: Its model; a local folder is made absolute (a Ray worker may not share the
            working directory).
        base_url: Its server (backend ``openai``).
        options: Its constructor's other arguments.

    Raises:
        ValueError: An unknown backend, or an option its constructor does not take.
    """
    from dynamicrag.llm import BACKENDS, backend_class

    kwargs = {**(options or {}), **({"base_url": base_url} if base_url else {})}
    try:
        if kwargs or name not in BACKENDS:  # no options: nothing to check, and no backend module (torch) to import
            inspect.signature(backend_class(name)).bind_partial(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what}: backend {name!r}: {err}") from None
    if model and Path(model).expanduser().exists():
        model = str(Path(model).expanduser().resolve())
    return {"name": name, "model": model, **kwargs}


def _resolve_adapter(role: str, config: RoleConfig, kind: str) -> str:
    """The role's adapter as an absolute folder, or :data:`NONE`; checks it fits the base model."""
    from dynamicrag.llm.lora import check_adapter_folder

    spec = config.adapter
    if spec == AUTO:
        # The shipped adapter was trained for the dynamic reranker's prompt; other kinds and
        # other backends run the base model.
        if config.backend != "transformers" or (role == "reranker" and kind != "dynamic"):
            return NONE
        folder = default_adapter(role, config.model)
        return str(folder) if folder else NONE
    if spec == NONE:
        return NONE
    if config.backend != "transformers":
        raise ValueError(
            f"{role} adapter {spec!r}: LoRA adapters run on the transformers backend, not {config.backend!r} "
            f"(serve the adapter on that server instead, or pass adapter 'none')"
        )
    available = shipped.shipped_adapters()
    folder = available[spec] if spec in available and not Path(spec).exists() else Path(spec)
    try:
        path = check_adapter_folder(folder)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{role} adapter {spec!r}: no such folder (give a LoRA adapter folder, a shipped adapter's name "
            f"{sorted(available)}, '{AUTO}' or '{NONE}')"
        ) from None
    except ValueError as err:
        raise ValueError(f"{role} adapter: {err}") from None
    manifest = adapter_manifest(str(path))
    if manifest is None:
        _warn_unchecked(role, str(path))
        return str(path)
    if not same_base_model(manifest.base_model, config.model):
        raise ValueError(
            f"{role} adapter {path}: {MANIFEST} says it was trained on base model {manifest.base_model!r}, but the "
            f"{role} role runs {config.model or 'the bundled model'!r}; give that model to the {role} role "
            f"(--{role}-model) or another adapter"
        )
    if manifest.role not in (role, "both"):
        logger.warning("%s adapter %s was trained for the %s role", role, path, manifest.role)
    return str(path)


@functools.cache  # once per process: a benchmark resolves each row's roles again for every data set
def _warn_unchecked(role: str, path: str) -> None:
    logger.warning("%s adapter %s has no %s: its base model and prompt settings are unchecked", role, path, MANIFEST)


def _resolve_role(role: str, config: RoleConfig, kind: str) -> RoleConfig:
    spec = backend_spec(f"{role} role", config.backend, config.model, config.base_url, config.backend_options)
    if config.backend == "openai" and not config.model:
        raise ValueError(f"{role} role: backend 'openai' needs the served model's name (--{role}-model or --model)")
    config = config.model_copy(update={"model": spec["model"]})
    return config.model_copy(update={"adapter": _resolve_adapter(role, config, kind)})


def _style(name: str) -> str:
    """A prompt style name, checked (it loads), with a YAML path made absolute."""
    from dynamicrag.prompts import BUILTIN_STYLES, load_style

    load_style(name)
    return name if name in BUILTIN_STYLES else str(Path(name).resolve())


def resolve_config(config: PipelineConfig, *, top_n: int | None = 40, constrained: bool = False) -> PipelineConfig:
    """Every unset value filled in, adapters found and checked; nothing is loaded.

    Unset reranker settings come from the reranker adapter's manifest, else from the command's
    defaults given here. Resolving a resolved config changes nothing.

    Args:
        config: As built from options, YAML or Python.
        top_n: Candidates when neither the config nor the manifest sets them (None: leave unset).
        constrained: Constrained decoding when neither the config nor the manifest sets it
            (``ask`` and ``serve`` pass True: the base model is not trained as a reranker).

    Returns:
        A copy with absolute adapter folders (or ``"none"``), prompt styles, ``constrained``,
        ``passage_words`` (0: all), ``top_n``, ``order_by`` (``"none"``: retrieval order) and
        ``continue_bias`` set.

    Raises:
        FileNotFoundError: An adapter folder does not exist (the message names it).
        ValueError: A bad backend or option, an adapter trained on another base model, a bad manifest,
            a generator decoding setting no task can run with.
    """
    reranker = _resolve_role("reranker", config.reranker, config.kind)
    generator = _resolve_role("generator", config.generator, config.kind)
    try:
        generation_config(config)  # checked for every task now, not at the first answer
    except ValueError as err:
        raise ValueError(f"generator decoding: {err}") from None
    manifest = adapter_manifest(reranker.adapter)
    gen_manifest = adapter_manifest(generator.adapter)
    reranker = reranker.model_copy(update={
        "prompt_style": _style(reranker.prompt_style or (manifest.prompt_style if manifest else DEFAULT_STYLE))})
    generator = generator.model_copy(update={
        "prompt_style": _style(generator.prompt_style or (gen_manifest.prompt_style if gen_manifest else DEFAULT_STYLE))})
    if config.constrained is not None:
        constrained = config.constrained
    elif manifest is not None:
        constrained = manifest.constrained
    passage_words = config.passage_words
    if passage_words is None:
        passage_words = (manifest.passage_words if manifest else None) or 0
    top_n = config.top_n or (manifest.top_n if manifest else None) or top_n
    order_by = config.order_by or (manifest.order_by if manifest else None) or NONE
    continue_bias = config.continue_bias
    if continue_bias is None:
        continue_bias = manifest.continue_bias if manifest else 0.0
    if order_by != NONE:
        from dynamicrag.rerank.pointwise import check_scorer

        try:
            check_scorer(order_by)
        except ValueError as err:
            raise ValueError(f"order_by: {err}, or 'none'") from None
    return config.model_copy(update={
        "reranker": reranker, "generator": generator, "constrained": constrained,
        "passage_words": passage_words, "top_n": top_n, "order_by": order_by, "continue_bias": continue_bias,
    })


def role_settings(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """What each role runs, as JSON-ready values (for run records and reports).

    Args:
        config: Resolved by :func:`resolve_config` (resolved here otherwise).

    Returns:
        ``{"reranker": {...}, "generator": {...}}``: backend, model, base URL, adapter folder and
        manifest name, prompt style; the reranker adds its kind, ``constrained``,
        ``passage_words`` (None: all), ``top_n`` and output cap.
    """
    from dynamicrag.llm.models import DEFAULT_MODEL

    config = resolve_config(config)
    out: dict[str, dict[str, Any]] = {}
    for role in ROLES:
        section: RoleConfig = getattr(config, role)
        manifest = adapter_manifest(section.adapter)
        out[role] = {
            "backend": section.backend,
            "model": section.model or (DEFAULT_MODEL if section.backend == "transformers" else None),
            "base_url": section.base_url,
            "adapter": None if section.adapter == NONE else section.adapter,
            "adapter_manifest": manifest.name if manifest else None,
            "prompt_style": section.prompt_style,
        }
    out["reranker"].update(
        kind=config.kind, constrained=config.constrained, passage_words=config.passage_words or None,
        top_n=config.top_n, max_new_tokens=config.reranker_max_tokens,
    )
    if config.kind == "dynamic" and config.order_by not in (None, NONE):
        # Only when set: records of runs in retrieval order stay comparable with older ones.
        out["reranker"].update(order_by=config.order_by)
    elif config.kind == "pointwise":
        out["reranker"].update(scorer=config.scorer)
    elif config.kind == "adaptive-k":
        out["reranker"].update(scorer=config.scorer, buffer=config.buffer)
    elif config.kind == "threshold":
        out["reranker"].update(scorer=config.scorer, threshold=config.threshold, max_drop=config.max_drop)
    if config.kind == "dynamic" and config.continue_bias:
        out["reranker"].update(continue_bias=config.continue_bias)  # as order_by: only when set
    out["generator"]["max_new_tokens"] = config.answer_max_tokens
    out["generator"]["decoding"] = generation_config(config).to_dict()
    return out


def generation_config(config: PipelineConfig) -> GenerationConfig:
    """The generator role's decoding settings: each task's defaults with ``config``'s overrides."""
    return config.generation.to_config(config.answer_max_tokens)


def backend_specs(config: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Role -> backend name and options, for the roles whose model ``config`` loads (what
    :func:`~dynamicrag.console.announce_dtypes` takes)."""
    return {role: {"name": getattr(config, role).backend, **getattr(config, role).backend_options}
            for role in ("reranker", "generator") if role == "generator" or config.kind in LLM_RERANKERS}


def models_label(config: PipelineConfig) -> str:
    """The models that will load, for a status line: ``the model M`` when both roles run the
    same model (the reranker's adapter named after it), else ``the reranker M1 and the generator M2``."""
    names = {}
    for role in ROLES:
        section: RoleConfig = getattr(config, role)
        names[role] = section.model or "(bundled SmolLM2-135M-Instruct)"
        if section.adapter not in (NONE, AUTO):
            names[role] += f" + adapter {Path(section.adapter).name}"
    if names["reranker"].split(" + ")[0] == names["generator"].split(" + ")[0]:
        return "the model " + names["reranker"]
    return f"the reranker {names['reranker']} and the generator {names['generator']}"


def role_backend(config: RoleConfig) -> Any:
    """The backend of one resolved role: one per (backend, model, adapter, options) per process.

    Roles on the same transformers model share the loaded base; each backend runs its own
    adapter (see :class:`~dynamicrag.llm.transformers_backend.TransformersBackend`).
    """
    from dynamicrag.llm import load_backend

    if config.adapter == AUTO:
        raise ValueError("role_backend needs a resolved role (resolve_config), got adapter 'auto'")
    kwargs = dict(config.backend_options)
    if config.base_url:
        kwargs["base_url"] = config.base_url
    if config.adapter != NONE:
        kwargs["adapter"] = config.adapter
    return load_backend(config.backend, config.model, **kwargs)


def build_reranker(config: PipelineConfig, backend: Any = None) -> Any:
    """The reranker of ``config`` (its role's backend is loaded only for LLM rerankers)."""
    from dynamicrag.prompts import load_style
    from dynamicrag.rerank import make_reranker

    config = resolve_config(config)
    if backend is None and config.kind in LLM_RERANKERS:
        backend = role_backend(config.reranker)
    return make_reranker(
        config.kind, backend, load_style(config.reranker.prompt_style), k=config.k, window=config.window,
        stride=config.stride, constrained=bool(config.constrained), scorer=config.scorer,
        max_new_tokens=config.reranker_max_tokens, passage_words=config.passage_words or None,
        buffer=config.buffer, threshold=config.threshold, max_drop=config.max_drop, order_by=_order_scorer(config),
        continue_bias=config.continue_bias or 0.0,
    )


def _order_scorer(config: PipelineConfig) -> Any:
    """The dynamic reranker's ``order_by``: query likelihood without a model of its own runs on
    the reranker role's base model with the adapter off (the same loaded weights and dtype);
    any other scorer is built by name."""
    kind, _, model = (config.order_by or NONE).partition(":")
    if config.kind != "dynamic" or kind == NONE:
        return None
    if kind == "query-likelihood" and not model and config.reranker.backend == "transformers":
        from dynamicrag.rerank.pointwise import QueryLikelihoodScorer

        return QueryLikelihoodScorer(role_backend(config.reranker.model_copy(update={"adapter": NONE})))
    return config.order_by


def build_generator(config: PipelineConfig, backend: Any = None) -> Any:
    """The generator of ``config``."""
    from dynamicrag.generate import Generator
    from dynamicrag.prompts import load_style

    config = resolve_config(config)
    backend = backend or role_backend(config.generator)
    return Generator(backend, load_style(config.generator.prompt_style), generation_config(config))


def build_pipeline(
    config: PipelineConfig | None = None, retriever: Any = None, *, generator: Any = None, backend: Any = None
) -> Any:
    """The pipeline of ``config``: its reranker, generator and settings, with ``retriever``.

    Args:
        config: What to build (None: every default); resolved here if it is not yet, with the
            defaults of ``infer`` (resolve it first to use another command's defaults).
        retriever: The index that fills examples without passages (or all, with ``retrieve``).
        generator: A generator already built for the generator role (e.g. the benchmark's
            :class:`~dynamicrag.evaluate.answer_cache.CachedGenerator`); None: built from ``config``.
        backend: A backend already loaded, used by both roles instead of the configured ones
            (a scripted one in tests); None: each role's own.

    Returns:
        A :class:`~dynamicrag.pipeline.Pipeline` whose ``settings`` are :func:`role_settings`.
    """
    from dynamicrag.pipeline import Pipeline

    config = resolve_config(config or PipelineConfig())
    return Pipeline(
        build_reranker(config, backend), generator or build_generator(config, backend), retriever=retriever,
        top_n=config.top_n or 40,
        retrieve=config.retrieve, settings=role_settings(config),
    )


# The stages' batch functions are built by factories where the batches run: in this process or
# once on each Ray worker (dynamicrag.executors). They are pickled to the workers, so they take
# only small arguments (names, paths, configs) and load models and indexes when called;
# load_backend and load_index keep one copy per process.


def pipeline_batch_fn(config: PipelineConfig, index_dir: str | None) -> Any:
    """The batch function of ``dynamicrag infer``: the pipeline of ``config`` over the index at
    ``index_dir`` (None: the examples' own passages), ``examples -> records``."""
    from dynamicrag.retrieve import load_index

    retriever = load_index(index_dir) if index_dir else None
    return build_pipeline(config, retriever).run


def stage_settings(config: PipelineConfig, local: bool, fn_factory: Any = None, **sections: Any) -> dict[str, Any]:
    """A stage's run settings (see :mod:`dynamicrag.run_settings`) for the roles of ``config``.

    Where the batches run in this process, each role's backend is loaded here once and
    described (``load_backend`` and ``load_index`` hand the same objects to the batches), with
    the reranker's and the generator's own settings when ``fn_factory()`` returns a pipeline's
    ``run``; on Ray, each role's backend spec is recorded (the workers load it). An LLM that
    no row runs (the reranker of ``top-k``) is left out.

    Args:
        config: The resolved pipeline config.
        local: The batches run in this process.
        fn_factory: The stage's batch-function factory (only called when ``local``).
        **sections: The stage's other sections (its config, ``run=`` batch size and executor).

    Raises:
        ValueError: A backend that cannot be built (``TypeError`` and missing files too).
    """
    from dynamicrag.run_settings import run_settings

    specs = {}
    for role in ROLES:
        section: RoleConfig = getattr(config, role)
        specs[role] = {"name": section.backend, "model": section.model, "base_url": section.base_url,
                       "adapter": None if section.adapter == NONE else section.adapter, **section.backend_options}
    if config.kind not in LLM_RERANKERS:
        del specs["reranker"]  # no reranker LLM runs (top-k, pointwise, ...): nothing to describe
    sections = {"roles": role_settings(config), **sections}
    if not local:
        return run_settings(backends={role: {**spec, "described": "no (loaded on the Ray workers)"}
                                      for role, spec in specs.items()}, **sections)
    try:
        backends = {role: role_backend(getattr(config, role)) for role in specs}
        pipeline = getattr(fn_factory(), "__self__", None) if fn_factory is not None else None
    except (TypeError, FileNotFoundError) as err:
        raise ValueError(str(err)) from err
    if pipeline is not None:
        sections = {"reranker": pipeline.reranker, "generator": pipeline.generator, **sections}
    return run_settings(backends=backends, **sections)


__all__ = [
    "AUTO", "NONE", "PipelineConfig", "RerankerRoleConfig", "RoleConfig", "RoleOptions", "adapter_manifest", "backend_spec",
    "backend_specs", "build_generator", "build_pipeline", "build_reranker", "default_adapter", "generation_config", "models_label",
    "pipeline_batch_fn", "resolve_config", "stage_settings",
    "role_backend", "role_configs", "role_settings", "same_base_model",
]
