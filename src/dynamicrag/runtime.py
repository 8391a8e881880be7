"""CPU runtime settings: OpenMP's wait policy, torch's thread count, native bf16 support.

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch (its OpenMP library) loads, so
:func:`set_thread_env_defaults` must run before ``import torch``; the ``dynamicrag`` command
calls it first thing. Nothing here imports torch at module level.

Why ``PASSIVE`` by default: torch's threads otherwise spin while they wait for each other. On a
machine shared with other processes a spinning thread burns its time slice while the thread it
waits for is descheduled, and every parallel step waits for the slowest; ``benchmarks/speed_work.py``
measures ACTIVE against PASSIVE on an idle and on a loaded machine (the "threads" rows). Set
``OMP_WAIT_POLICY`` yourself to override it; an empty value (``OMP_WAIT_POLICY=``) keeps
OpenMP's own default.

Example:
    >>> set_thread_env_defaults()       # before torch is imported
    >>> import torch
    >>> apply_threads()                 # torch.set_num_threads($DYNAMICRAG_THREADS) if set
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

THREADS_ENV = "DYNAMICRAG_THREADS"
"""Environment variable with the number of CPU threads torch uses (``--threads`` sets it)."""

DEFAULT_WAIT_POLICY = "PASSIVE"

# CPU flags with which bf16 matrix products run natively (as /proc/cpuinfo and torch name them).
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def configured_threads() -> int | None:
    """The thread count of ``$DYNAMICRAG_THREADS``, or None when unset.

    Raises:
        ValueError: The variable is set but not a positive integer.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(f"{THREADS_ENV} must be a positive integer, got {value!r}")
    return threads


def set_thread_env_defaults(threads: int | None = None) -> None:
    """Set the OpenMP environment before torch loads.

    ``OMP_WAIT_POLICY`` becomes ``PASSIVE`` unless the user set it (to anything, even empty).
    ``threads`` (or ``$DYNAMICRAG_THREADS``) is stored in ``$DYNAMICRAG_THREADS`` and, while torch
    is not loaded yet, also in ``OMP_NUM_THREADS``, so every OpenMP user of the process (torch,
    faiss) and its child processes (Ray workers) start with that many threads.

    Args:
        threads: CPU threads; None keeps ``$DYNAMICRAG_THREADS`` or torch's default (one per
            physical core).

    Raises:
        ValueError: ``threads`` or ``$DYNAMICRAG_THREADS`` is not a positive integer.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_WAIT_POLICY)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        os.environ[THREADS_ENV] = str(threads)
    threads = configured_threads()
    if threads is not None and "torch" not in sys.modules:
        os.environ["OMP_NUM_THREADS"] = str(threads)


def apply_threads(threads: int | None = None) -> int:
    """Give torch ``threads`` (else ``$DYNAMICRAG_THREADS``) intra-op threads; return torch's count.

    ``torch.set_num_threads`` is process-wide: every torch user of the process follows.

    Args:
        threads: CPU threads; None: ``$DYNAMICRAG_THREADS`` when set, else leave torch's count.

    Raises:
        ValueError: ``threads`` or ``$DYNAMICRAG_THREADS`` is not a positive integer.
    """
    import torch

    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    threads = threads if threads is not None else configured_threads()
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def auto_decode_threads() -> int | None:
    """Threads for token-by-token decoding on CPU: 1 under ``OMP_WAIT_POLICY=PASSIVE``, else None
    (keep the process's count).

    A decoding step of a small model is hundreds of tiny matrix-vector products; under PASSIVE
    each OpenMP region wakes its sleeping threads, and one thread decodes a single sequence
    faster than two (bf16 SmolLM2-135M on 2 cores: 1.17x; ``benchmarks/speed_work.py``, group
    ``decode``). The prompt's prefill, a few large products per layer, still runs on every
    thread; the backend applies this to one sequence after a short prompt only.
    """
    return 1 if os.environ.get("OMP_WAIT_POLICY", "").strip().upper() == "PASSIVE" else None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` torch intra-op threads (None: unchanged), then restore.

    ``torch.set_num_threads`` is process-wide and cheap to switch (under a microsecond here).
    """
    import torch

    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def thread_settings() -> dict[str, object]:
    """What decides the CPU threads' behaviour in this process (for run settings)."""
    settings: dict[str, object] = {
        k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", THREADS_ENV)
    }
    if "torch" in sys.modules:
        settings["torch_threads"] = sys.modules["torch"].get_num_threads()
    return settings


def cpu_bf16_flag() -> str | None:
    """The CPU flag that makes bf16 matrix products native here (``amx_bf16``,
    ``avx512_bf16``), or None.

    Asks torch's own CPU feature detection (``torch.cpu.get_capabilities``, torch >= 2.7) and
    falls back to the flags of ``/proc/cpuinfo``. Without one of these flags bf16 is emulated
    and slower than fp32.
    """
    try:
        import torch

        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError, ImportError):
        caps = None
    if isinstance(caps, dict):
        return next((flag for flag in BF16_FLAGS if caps.get(flag)), None)
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
    return next((flag for flag in BF16_FLAGS if flag in flags), None)
