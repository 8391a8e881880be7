"""CPU runtime settings: OpenMP wait policy, thread count, native bf16 detection, dtype choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dynamicrag import runtime
from dynamicrag.llm.transformers_backend import choose_dtype


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", runtime.THREADS_ENV):
        # setenv first: delenv records nothing for an absent key, and what the code under test
        # then writes into os.environ would outlive the test.
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    return monkeypatch


def test_wait_policy_defaults_to_passive_but_the_users_setting_wins(clean_env):
    runtime.set_thread_env_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    runtime.set_thread_env_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    clean_env.setenv("OMP_WAIT_POLICY", "")  # empty: OpenMP's own default, kept as the user wants
    runtime.set_thread_env_defaults()
    assert os.environ["OMP_WAIT_POLICY"] == ""


def test_threads_setting_is_validated_and_recorded(clean_env):
    assert runtime.configured_threads() is None
    runtime.set_thread_env_defaults(3)
    assert os.environ[runtime.THREADS_ENV] == "3" and runtime.configured_threads() == 3
    assert "OMP_NUM_THREADS" not in os.environ  # torch is loaded in this process: too late for OpenMP
    with pytest.raises(ValueError, match="threads must be >= 1"):
        runtime.set_thread_env_defaults(0)
    clean_env.setenv(runtime.THREADS_ENV, "two")
    with pytest.raises(ValueError, match="DYNAMICRAG_THREADS must be a positive integer, got 'two'"):
        runtime.configured_threads()


def test_apply_threads_sets_torchs_thread_count(clean_env):
    before = torch.get_num_threads()
    try:
        clean_env.setenv(runtime.THREADS_ENV, "1")
        assert runtime.apply_threads() == 1 == torch.get_num_threads()
        assert runtime.apply_threads(2) == 2 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_decoding_uses_one_thread_only_under_passive_and_torch_threads_restores(clean_env):
    assert runtime.auto_decode_threads() is None  # OpenMP's own policy: leave the count
    clean_env.setenv("OMP_WAIT_POLICY", "passive")
    assert runtime.auto_decode_threads() == 1
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert runtime.auto_decode_threads() is None
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), runtime.torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("a failed generate still gives the threads back")
    assert torch.get_num_threads() == before
    with runtime.torch_threads(None):
        assert torch.get_num_threads() == before


def test_the_cli_sets_the_wait_policy_before_torch_loads(clean_env, tmp_path):
    """In a fresh interpreter: importing the CLI, then torch, leaves OpenMP PASSIVE, and
    ``--threads`` reaches torch's thread count through OMP_NUM_THREADS."""
    code = (
        "import os, sys\n"
        "from typer.testing import CliRunner\n"
        "from dynamicrag.cli import app\n"
        "assert 'torch' not in sys.modules\n"
        "CliRunner().invoke(app, ['--threads', '1', 'evaluate', '--help'])\n"
        "import torch\n"
        "print(os.environ['OMP_WAIT_POLICY'], os.environ['OMP_NUM_THREADS'], torch.get_num_threads())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         check=True, timeout=120)
    assert out.stdout.split() == ["PASSIVE", "1", "1"]


def test_cpu_bf16_flag_agrees_with_proc_cpuinfo():
    flags = set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    except OSError:
        pytest.skip("no /proc/cpuinfo")
    expected = next((f for f in runtime.BF16_FLAGS if f in flags), None)
    assert runtime.cpu_bf16_flag() == expected


def test_auto_dtype_is_bf16_only_with_native_bf16(monkeypatch):
    import dynamicrag.llm.transformers_backend as tb

    monkeypatch.setattr(tb, "cpu_bf16_flag", lambda: "avx512_bf16")
    assert choose_dtype("auto", "cpu") == (torch.bfloat16, "bf16 (CPU has avx512_bf16)")
    monkeypatch.setattr(tb, "cpu_bf16_flag", lambda: None)
    dtype, reason = choose_dtype("auto", "cpu")
    assert dtype is torch.float32 and reason.startswith("fp32 (no native bf16")
    # An explicit dtype overrides the choice whatever the CPU.
    assert choose_dtype("float32", "cpu") == (torch.float32, "fp32 (dtype=float32)")
    assert choose_dtype("bf16", "cpu")[0] is torch.bfloat16
    with pytest.raises(ValueError, match="dtype must be 'auto' or one of"):
        choose_dtype("float8", "cpu")
