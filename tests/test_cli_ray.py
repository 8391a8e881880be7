"""`--executor ray` writes the records the in-process run writes, and resumes the same way.

One local Ray (2 CPUs) serves the module; the stages run with the real bundled models
(MiniLM teacher, SmolLM2) and retrieve from a BM25 index on the Ray workers.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from dynamicrag.cli import app
from dynamicrag.data import read_jsonl

runner = CliRunner()
FAST = ["--reranker-max-tokens", "24", "--max-new-tokens", "24"]  # as in tests/test_cli.py


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def records(path) -> list[dict]:
    return [r for _, r in read_jsonl(path)]


def assert_same(a, b, where: str = "records") -> None:
    """Equal JSON values; floats (teacher scores) to 1e-5: the same model in another process."""
    if isinstance(a, float) or isinstance(b, float):
        assert b == pytest.approx(a, abs=1e-5), where
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def local_then_ray(args, tmp_path, request) -> tuple[list[dict], list[dict]]:
    """The records of ``args`` run in process, then on 2 Ray workers with nothing loaded here."""
    local, on_ray = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    invoke(*args, "--output", local)
    request.getfixturevalue("nothing_loads_here")
    invoke(*args, "--output", on_ray, "--executor", "ray", "--workers", "2")
    return records(local), records(on_ray)


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    # Worker logs stay in Ray's log files: CliRunner swaps sys.stdout while a command runs.
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="warning")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def wiki_index(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "wiki"
    invoke("index", shared_data / "nq" / "flashrag_wiki_sample.jsonl", "--out", out)
    return out


@pytest.fixture
def nothing_loads_here(monkeypatch):
    """Fail any model or index load in this process: on Ray, the workers load them."""

    def refuse(*args, **kwargs):
        raise AssertionError("loaded in the driver process, not on a Ray worker")

    monkeypatch.setattr("dynamicrag.retrieve.load_index", refuse)
    monkeypatch.setattr("dynamicrag.llm.load_backend", refuse)
    monkeypatch.setattr("dynamicrag.rerank.pointwise.make_scorer", refuse)


@pytest.mark.slow
def test_label_on_two_ray_workers_gives_the_local_records_and_resumes(shared_data, wiki_index, local_ray, tmp_path, request):
    questions = shared_data / "nq" / "flashrag_nq_test.jsonl"  # no passages of their own: retrieved
    args = ["label", "--input", questions, "--index", wiki_index, "--top-n", "5", "--batch-size", "1"]
    local = tmp_path / "local.jsonl"
    invoke(*args, "--output", local, "--limit", "6")

    request.getfixturevalue("nothing_loads_here")
    on_ray = tmp_path / "ray.jsonl"  # as a run killed after two records left it
    on_ray.write_text("".join(local.read_text().splitlines(keepends=True)[:2]) + '{"id": "half a rec')
    result = invoke(*args, "--output", on_ray, "--limit", "6", "--executor", "ray", "--workers", "2")
    assert "resuming: 2 of 6" in result.output  # the Ray workers label only the last four

    expected = records(local)
    assert len(expected) == 6 and all(len(r["passages"]) == 5 for r in expected)
    assert_same(expected, records(on_ray))


def test_retrieve_on_ray_gives_the_local_records(shared_data, wiki_index, local_ray, tmp_path, request):
    questions = shared_data / "nq" / "flashrag_nq_test.jsonl"
    args = ["retrieve", "--input", questions, "--index", wiki_index, "--top-n", "7", "--batch-size", "2", "--limit", "8"]
    expected, on_ray = local_then_ray(args, tmp_path, request)
    assert len(expected) == 8 and all(len(r["passages"]) == 7 for r in expected)
    assert_same(expected, on_ray)


@pytest.fixture
def one_torch_thread():
    """Ray gives a 1-CPU worker one torch thread; the local run matches it, so both sum the
    same floats in the same order and greedy decoding cannot flip on a near tie. The KV caches
    of shared prompt prefixes that earlier tests left (computed with other thread counts) are
    dropped for the same reason: the workers start without any."""
    import torch

    from dynamicrag.llm.transformers_backend import clear_prefix_caches

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    clear_prefix_caches()
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_infer_on_ray_gives_the_local_records(shared_data, wiki_index, local_ray, tmp_path, request, one_torch_thread):
    questions = shared_data / "nq" / "flashrag_nq_test.jsonl"
    # Without the prefix cache: a batch of one learns its cached prefix from the prompts its
    # process saw before, and the two workers see other prompts than the local run. A prompt
    # encoded as cached prefix + rest rounds differently in bf16 from one encoded whole, which
    # flipped a greedy token on the AMD host (avx512_bf16); the executor is what is tested here.
    args = ["infer", "--input", questions, "--index", wiki_index, "--top-n", "3", "--batch-size", "1", "--limit", "3",
            "--backend-option", "prefix_cache=false", *FAST]
    expected, on_ray = local_then_ray(args, tmp_path, request)
    assert len(expected) == 3 and all(len(r["passages"]) == 3 for r in expected)
    assert_same(expected, on_ray)  # greedy decoding: the same answers


def test_ray_options_need_the_ray_executor(shared_data, tmp_path):
    result = runner.invoke(app, [
        "label", "--input", str(shared_data / "hotpotqa" / "hotpotqa_train.json"), "--output", str(tmp_path / "o.jsonl"),
        "--workers", "2",
    ])
    assert result.exit_code == 2 and "--executor ray" in result.output
    assert not (tmp_path / "o.jsonl").exists()
