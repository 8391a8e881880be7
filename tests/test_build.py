"""The one builder: role sections, adapter choice, manifest defaults, one loaded base."""

from __future__ import annotations

import json

import pytest

from dynamicrag.build import (
    NONE, PipelineConfig, RoleConfig, build_pipeline, resolve_config, role_configs, role_settings,
)
from dynamicrag.llm import adapters
from tiny_lora import linked_copy, write_manifest_json


@pytest.fixture
def no_shipped(monkeypatch):
    """No adapter ships with the package (the state until the lead trains one)."""
    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {})


@pytest.fixture
def fake_adapter(tmp_path):
    """An adapter folder as far as resolution looks (config + manifest; nothing is loaded)."""
    folder = tmp_path / "shipped" / "tiny-reranker"
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text("{}")
    write_manifest_json(folder, passage_words=30, constrained=False, top_n=5, prompt_style="official")
    return folder


@pytest.fixture
def shipped(monkeypatch, fake_adapter):
    """The shipped-adapter lookup pointed at a temporary folder."""
    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {fake_adapter.name: fake_adapter})
    return fake_adapter


def test_until_an_adapter_ships_the_defaults_are_todays(no_shipped):
    infer = resolve_config(PipelineConfig())
    assert infer.reranker.adapter == NONE and infer.generator.adapter == NONE
    assert (infer.constrained, infer.passage_words, infer.top_n) == (False, 0, 40)
    assert infer.reranker.prompt_style == infer.generator.prompt_style == "default"
    ask = resolve_config(PipelineConfig(), top_n=10, constrained=True)  # ask and serve: constrained base model
    assert (ask.reranker.adapter, ask.constrained, ask.top_n) == (NONE, True, 10)
    settings = role_settings(ask)
    assert settings["reranker"]["adapter"] is None and settings["reranker"]["model"] == "smollm2-135m-instruct"


def test_the_shipped_adapter_plays_the_reranker_only_and_its_manifest_sets_the_defaults(shipped):
    config = resolve_config(PipelineConfig(), top_n=10, constrained=True)
    assert config.reranker.adapter == str(shipped.resolve())
    assert config.generator.adapter == NONE  # the generator stays the base model
    # The manifest's prompt settings win over the command's defaults...
    assert (config.constrained, config.passage_words, config.top_n) == (False, 30, 5)
    assert config.reranker.prompt_style == "official" and config.generator.prompt_style == "default"
    settings = role_settings(config)["reranker"]
    assert settings["adapter_manifest"] == "tiny-reranker" and settings["passage_words"] == 30
    # ... but not over the user's.
    mine = resolve_config(PipelineConfig(constrained=True, passage_words=0, top_n=8,
                                         reranker={"prompt_style": "default"}))
    assert (mine.constrained, mine.passage_words, mine.top_n, mine.reranker.prompt_style) == (True, 0, 8, "default")
    assert resolve_config(mine) == mine  # resolving twice changes nothing


def test_none_gives_the_untrained_base_model(shipped):
    config = resolve_config(PipelineConfig(reranker={"adapter": "none"}), constrained=True)
    assert config.reranker.adapter == NONE and config.constrained is True and config.passage_words == 0


def test_shipped_adapters_are_picked_by_role_and_base_model(monkeypatch, tmp_path, fake_adapter):
    generator_only = linked_copy(fake_adapter, tmp_path / "gen", role="generator")
    other_base = linked_copy(fake_adapter, tmp_path / "other", base_model="HuggingFaceTB/SmolLM2-360M-Instruct")
    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {"gen": generator_only, "other": other_base})
    assert resolve_config(PipelineConfig()).reranker.adapter == NONE
    both = linked_copy(fake_adapter, tmp_path / "both", role="both")
    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {"gen": generator_only, "both": both})
    config = resolve_config(PipelineConfig(generator={"adapter": "auto"}))
    assert config.reranker.adapter == str(both.resolve()) and config.generator.adapter == str(generator_only.resolve())


def test_a_released_checkpoint_plays_both_roles_without_the_shipped_adapter(shipped, tmp_path):
    checkpoint = tmp_path / "DynamicRAG-8B"  # any other model: the shipped adapter does not fit it
    checkpoint.mkdir()
    config = resolve_config(PipelineConfig(**role_configs(model=str(checkpoint), prompt_style="official")))
    assert config.reranker.adapter == NONE and config.generator.adapter == NONE
    assert config.reranker.model == config.generator.model == str(checkpoint)
    assert config.reranker.prompt_style == config.generator.prompt_style == "official"
    assert (config.passage_words, config.constrained) == (0, False)


def test_baselines_and_remote_rerankers_do_not_take_the_shipped_adapter(shipped):
    assert resolve_config(PipelineConfig(kind="listwise")).reranker.adapter == NONE
    remote = PipelineConfig(reranker={"backend": "openai", "model": "m", "base_url": "http://h/v1"})
    assert resolve_config(remote).reranker.adapter == NONE


def test_adapter_errors_name_the_folder_and_the_models(tmp_path, fake_adapter, no_shipped):
    with pytest.raises(FileNotFoundError, match=r"reranker adapter '/no/such/adapter': no such folder"):
        resolve_config(PipelineConfig(reranker={"adapter": "/no/such/adapter"}))
    with pytest.raises(ValueError, match=rf"generator adapter: {tmp_path} is not a LoRA adapter folder"):
        resolve_config(PipelineConfig(generator={"adapter": str(tmp_path)}))
    other = linked_copy(fake_adapter, tmp_path / "other-base", base_model="HuggingFaceTB/SmolLM2-360M-Instruct")
    with pytest.raises(ValueError, match=r"other-base: manifest.json says it was trained on base model "
                                         r"'HuggingFaceTB/SmolLM2-360M-Instruct'"):
        resolve_config(PipelineConfig(reranker={"adapter": str(other)}))
    with pytest.raises(ValueError, match="adapters run on the transformers backend, not 'openai'"):
        resolve_config(PipelineConfig(reranker={"adapter": str(fake_adapter), "backend": "openai", "model": "m"}))
    bad = linked_copy(fake_adapter, tmp_path / "bad-manifest", passage_words=0)
    with pytest.raises(ValueError, match=r"bad-manifest/manifest.json: field 'passage_words'"):
        resolve_config(PipelineConfig(reranker={"adapter": str(bad)}))
    with pytest.raises(ValueError, match="generator role: backend 'openai' needs the served model's name"):
        resolve_config(PipelineConfig(generator={"backend": "openai", "base_url": "http://h/v1"}))


def test_the_training_free_cuts_take_their_settings_from_the_config(no_shipped):
    from dynamicrag.build import build_reranker

    config = resolve_config(PipelineConfig(kind="threshold", scorer="retriever", threshold=0.5, max_drop=0.2))
    reranker = build_reranker(config)
    assert (type(reranker).__name__, reranker.threshold, reranker.max_drop) == ("ThresholdReranker", 0.5, 0.2)
    settings = role_settings(config)["reranker"]
    assert (settings["scorer"], settings["threshold"], settings["max_drop"]) == ("retriever", 0.5, 0.2)
    adaptive = build_reranker(resolve_config(PipelineConfig(kind="adaptive-k", scorer="retriever", buffer=2)))
    assert (type(adaptive).__name__, adaptive.buffer) == ("AdaptiveKReranker", 2)


def test_shorthands_describe_the_roles_without_a_backend_of_their_own():
    roles = role_configs(backend="transformers", model="m", backend_options={"batch_size": 16}, prompt_style="official",
                         generator={"backend": "openai", "model": "served", "base_url": "http://h/v1"})
    assert roles["reranker"].model_dump() == RoleConfig(
        model="m", adapter="auto", backend_options={"batch_size": 16}, prompt_style="official").model_dump()
    # The generator runs elsewhere: no local batch_size for it, its own model and URL.
    assert roles["generator"] == RoleConfig(backend="openai", model="served", base_url="http://h/v1",
                                            prompt_style="official")
    with pytest.raises(ValueError, match="reranker role: backend 'transformers'.*no_such"):
        resolve_config(PipelineConfig(reranker={"backend_options": {"no_such": 1}}))


@pytest.mark.slow
def test_one_base_serves_both_roles_with_the_shipped_adapter_on_for_the_reranker(monkeypatch, smollm, tiny_adapter):
    from dynamicrag.schema import Example, Passage

    monkeypatch.setattr(adapters, "shipped_adapters", lambda: {"tiny-reranker": tiny_adapter})
    fp32 = {"backend_options": {"dtype": "float32"}}  # the fixture's base (the default is bf16 on CPUs with it)
    pipeline = build_pipeline(PipelineConfig(reranker=fp32, generator=fp32, reranker_max_tokens=12, answer_max_tokens=8))
    reranker, generator = pipeline.reranker, pipeline.generator
    assert reranker.backend.lm is generator.backend.lm is smollm.lm  # one base in memory
    assert reranker.backend.adapter_name == "tiny-reranker" and generator.backend is smollm
    assert (reranker.passage_words, reranker.constrained, pipeline.top_n) == (30, True, 5)  # from the manifest
    assert pipeline.settings["reranker"]["adapter_manifest"] == "tiny-reranker"
    assert json.loads(json.dumps(pipeline.settings)) == pipeline.settings  # recordable as is
    passages = [Passage(id=str(i), title=f"t{i}", text=f"Passage {i} " + "word " * 50) for i in range(1, 8)]
    [record] = pipeline.run([Example(id="q", question="Which passage?", passages=passages)])
    assert len(record["passages"]) == 5 and record["well_formed"]  # top_n 5, constrained
    untrained = build_pipeline(PipelineConfig(reranker={"adapter": "none", **fp32}, generator=fp32))
    assert untrained.reranker.backend is smollm and untrained.reranker.passage_words is None
    # Query likelihood orders the candidates on the same base, with the adapter off.
    ordered = build_pipeline(PipelineConfig(reranker=fp32, generator=fp32, order_by="query-likelihood"))
    assert ordered.reranker.order_by.backend is smollm and ordered.settings["reranker"]["order_by"] == "query-likelihood"


def test_the_package_ships_the_recipes_reranker_adapter_and_every_command_uses_it():
    from dynamicrag.llm.models import DEFAULT_MODEL
    from dynamicrag.train.recipe import HELD_APART

    folder = adapters.shipped_adapters()["smollm2-135m-reranker"]
    manifest = adapters.read_manifest(folder)
    # What it is and how it must run: the manifest's settings are those it was trained with.
    assert (manifest.base_model, manifest.role, manifest.prompt_style) == (DEFAULT_MODEL, "reranker", "default")
    assert (manifest.passage_words, manifest.top_n, manifest.constrained) == (60, 10, False)
    assert manifest.order_by == "query-likelihood"  # trained and run on candidates in that order
    # Its stop, calibrated on its training prompts by the recipe's calibrate stage.
    assert manifest.continue_bias > 0 and manifest.training["calibrate"]["continue_bias"] == manifest.continue_bias
    # How it was made, and that its training questions stay clear of the held-apart ones.
    assert "dynamicrag train recipe --config" in manifest.training["command"]
    for data, (start, stop) in manifest.training["slices"].items():
        held = HELD_APART[data]
        assert stop <= start or stop <= held[0] or start >= held[1], data
    # Its evaluation on the held-apart questions, free decoding.
    nq = manifest.evaluation["nq"]
    assert nq["dynamic"]["n"] == 200 and nq["dynamic"]["well_formed"] >= 0.99 and "top-1" in nq
    # A few MB of LoRA weights inside the package.
    assert (folder / "adapter_model.safetensors").stat().st_size < 12e6
    # The one builder (ask, chat, serve, infer, benchmark, DynamicRAG) picks it by default.
    config = resolve_config(PipelineConfig(), top_n=10, constrained=True)
    assert config.reranker.adapter == str(folder.resolve()) and config.generator.adapter == NONE
    assert role_settings(config)["reranker"]["adapter_manifest"] == "smollm2-135m-reranker"
    assert config.order_by == "query-likelihood" and role_settings(config)["reranker"]["order_by"] == "query-likelihood"
    assert config.continue_bias == manifest.continue_bias == role_settings(config)["reranker"]["continue_bias"]


def test_the_candidate_order_comes_from_the_config_else_the_adapter_manifest(tmp_path, fake_adapter, no_shipped):
    from dynamicrag.build import build_reranker
    from dynamicrag.rerank.pointwise import RetrieverScorer

    assert resolve_config(PipelineConfig(reranker={"adapter": "none"})).order_by == NONE  # retrieval order
    ordered = linked_copy(fake_adapter, tmp_path / "ordered", order_by="retriever")
    config = resolve_config(PipelineConfig(reranker={"adapter": str(ordered)}))
    assert config.order_by == "retriever" and role_settings(config)["reranker"]["order_by"] == "retriever"
    mine = resolve_config(PipelineConfig(reranker={"adapter": str(ordered)}, order_by="none"))
    assert mine.order_by == NONE and "order_by" not in role_settings(mine)["reranker"]
    with pytest.raises(ValueError, match="order_by: unknown scorer 'bm42'"):
        resolve_config(PipelineConfig(order_by="bm42"))
    reranker = build_reranker(resolve_config(PipelineConfig(kind="dynamic", reranker={"adapter": "none"}, order_by="retriever")),
                              backend=object())
    assert isinstance(reranker.order_by, RetrieverScorer)


def test_the_continue_bias_comes_from_the_config_else_the_adapter_manifest(tmp_path, fake_adapter, no_shipped):
    from dynamicrag.build import build_reranker

    assert resolve_config(PipelineConfig(reranker={"adapter": "none"})).continue_bias == 0.0
    calibrated = linked_copy(fake_adapter, tmp_path / "calibrated", continue_bias=0.49)
    config = resolve_config(PipelineConfig(reranker={"adapter": str(calibrated)}))
    assert config.continue_bias == 0.49 and role_settings(config)["reranker"]["continue_bias"] == 0.49
    assert build_reranker(config, backend=object()).continue_bias == 0.49  # what its decoding is given
    mine = resolve_config(PipelineConfig(reranker={"adapter": str(calibrated)}, continue_bias=0))
    assert mine.continue_bias == 0 and "continue_bias" not in role_settings(mine)["reranker"]
    with pytest.raises(ValueError, match="continue_bias"):
        resolve_config(PipelineConfig(continue_bias=101))


def test_an_adapter_without_a_manifest_is_warned_about_once_however_often_it_is_resolved(tmp_path, caplog, no_shipped):
    folder = tmp_path / "trained-here"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    with caplog.at_level("WARNING", logger="dynamicrag.build"):
        for _ in range(3):  # a benchmark resolves each row once per data set
            assert resolve_config(PipelineConfig(reranker={"adapter": str(folder)})).reranker.adapter == str(folder)
    warned = [r.getMessage() for r in caplog.records if "has no manifest.json" in r.getMessage()]
    assert len(warned) == 1 and str(folder) in warned[0]
