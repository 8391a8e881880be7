"""``ask`` keeps its models loaded for the next ``ask``, as ``ollama run`` does.

A fresh ``ask`` process spends ~3.6 s importing torch, transformers and peft and loading the
model before it reads the question (``benchmarks/ask_phases.py``), as long as the question
takes. So ``ask`` hands its question to a background process that loaded the same pipeline,
starting one when none runs; that process answers every later ``ask`` with the same settings
and exits after ``keep_alive`` seconds without a question (``ask --keep-alive 0``: nothing is
kept, the question is answered in the asking process; ``dynamicrag stop`` ends them all).

A kept process is found by a key of everything its answers depend on (:meth:`KeptPipeline.key`)
through the state file ``cache_dir()/kept/KEY.json`` (mode 0600: the port and the secret). The
transport is the standard library's :mod:`multiprocessing.connection` on a loopback port: a
connection proves it knows the secret (an HMAC challenge) before anything is read, so only a
reader of the state file can ask; the messages are JSON, not pickles.

Example:
    >>> kept = KeptPipeline(config.model_dump(mode="json"), None, "bm25")  # doctest: +SKIP
    >>> process = kept_process(kept, keep_alive_s=300)  # started once, reused after  # doctest: +SKIP
    >>> process.ask("How is the reranker trained?", keep_alive_s=300).text  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import AuthenticationError, Client, Listener
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

KEEP_ALIVE_ENV = "DYNAMICRAG_KEEP_ALIVE"
DEFAULT_KEEP_ALIVE = "5m"  # ollama's default
START_TIMEOUT_S = 900.0  # a first start may convert the bundled model and build the index
HOST = "127.0.0.1"
# Environment a kept process inherits that changes its answers or speed: part of its key.
_KEYED_ENV = ("DYNAMICRAG_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# What the connection errors of a process that is gone, or is not the one we knew, look like.
_GONE = (OSError, EOFError, AuthenticationError)


def parse_keep_alive(text: str | float) -> float:
    """Seconds of ``--keep-alive``: ``0`` (keep nothing), ``300``, ``90s``, ``5m`` or ``1h``.

    Raises:
        ValueError: Anything else (the message shows the forms).
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smh]?)\s*", str(text))
    if match is None:
        raise ValueError(f"--keep-alive: expected seconds or a duration such as 90s, 5m or 1h (0: keep nothing); got {text!r}")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def format_keep_alive(seconds: float) -> str:
    """``300`` -> ``5 min``, ``90`` -> ``90 s``, ``3600`` -> ``1 h`` (the messages that name it)."""
    for unit, size in (("h", 3600), ("min", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g} {unit}"
    return f"{seconds:g} s"


def kept_dir() -> Path:
    """The kept processes' state files and logs: ``cache_dir()/kept``."""
    from dynamicrag.llm.models import cache_dir

    return cache_dir() / "kept"


def _code_stamp() -> str:
    """This package's version, place and newest file time: an edited checkout starts afresh."""
    from dynamicrag import __version__

    root = Path(__file__).resolve().parents[1]
    newest = max((p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts), default=0)
    return f"{__version__}|{root}|{newest}"


@dataclass(frozen=True)
class KeptPipeline:
    """What a kept process answers with: ``ask``'s resolved config over the index of a corpus.

    Args:
        config: The resolved :class:`~dynamicrag.build.PipelineConfig` as JSON
            (``model_dump(mode="json")``).
        corpus: The corpus as ``ask --corpus`` takes it, absolute; None: the bundled docs.
        retriever: The index kind.
    """

    config: dict[str, Any]
    corpus: str | None
    retriever: str

    def key(self) -> str:
        """Equal keys, equal answers: the config, the corpus (its files' paths, sizes and times,
        as its index cache keys it), the retriever, this package's code, the Python environment, the
        project cache and the thread settings.

        Raises:
            FileNotFoundError: The corpus does not exist.
        """
        from dynamicrag.llm.models import cache_dir
        from dynamicrag.retrieve.corpus_index import corpus_key, default_corpus

        corpus = Path(self.corpus) if self.corpus else default_corpus()
        if not corpus.exists():
            raise FileNotFoundError(f"corpus not found: {corpus}")
        parts = {"kept": asdict(self), "corpus": corpus_key(corpus, self.retriever), "code": _code_stamp(),
                 "python": sys.prefix, "cache": str(cache_dir()), "env": {k: os.environ.get(k) for k in _KEYED_ENV}}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class KeptProcess:
    """A running kept process, as its state file describes it.

    Attributes:
        pid: Its process id.
        port: The loopback port it listens on.
        secret: The key each connection proves it knows (hex).
        announced: The lines it printed while loading (the backend's dtype), for the asking
            process to show.
        started: This call started it (the asking process says so once).
    """

    pid: int
    port: int
    secret: str = field(repr=False)
    announced: list[str] = field(default_factory=list)
    started: bool = False

    def _send(self, message: dict[str, Any], timeout_s: float | None = None) -> dict[str, Any]:
        with Client((HOST, self.port), authkey=bytes.fromhex(self.secret)) as conn:
            conn.send_bytes(json.dumps(message).encode())
            if timeout_s is not None and not conn.poll(timeout_s):
                raise TimeoutError(f"kept process {self.pid} did not reply within {timeout_s:.0f} s")
            return json.loads(conn.recv_bytes())

    def ask(self, question: str, keep_alive_s: float) -> Any:
        """Its :class:`~dynamicrag.api.Answer` to ``question``; it stays ``keep_alive_s`` after.

        Raises:
            ConnectionError: The process is gone (ended or killed since it was found).
            RuntimeError: The question failed there (the message is its exception's).
        """
        from dynamicrag.api import Answer

        try:
            reply = self._send({"question": question, "keep_alive_s": keep_alive_s})
        except _GONE as err:
            raise ConnectionError(f"kept process {self.pid} is gone: {type(err).__name__}: {err}") from None
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return Answer.model_validate(reply["answer"])

    def alive(self) -> bool:
        """It answers a connection with our secret (a refused port or another secret: gone)."""
        try:
            return bool(self._send({"ping": True}, timeout_s=30).get("pong", False))
        except (*_GONE, TimeoutError, ValueError):
            return False

    def stop(self) -> bool:
        """Ask it to exit; False when it was already gone."""
        try:
            self._send({"stop": True}, timeout_s=30)
        except (*_GONE, TimeoutError):
            return False
        return True


def _read_state(path: Path) -> KeptProcess | None:
    try:
        state = json.loads(path.read_text())
        return KeptProcess(int(state["pid"]), int(state["port"]), state["secret"], list(state.get("announced", [])))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically, readable by this user only (the secret is in it)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)


def _remove_state(path: Path, pid: int) -> None:
    """Remove ``path`` if it still describes process ``pid`` (a newer process may have replaced it)."""
    state = _read_state(path)
    if state is not None and state.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def kept_process(kept: KeptPipeline, keep_alive_s: float, *,
                 loading: Callable[[str], contextlib.AbstractContextManager] = lambda what: contextlib.nullcontext(),
                 ) -> KeptProcess | None:
    """The running process that answers with ``kept``, started and waited for when none runs.

    Args:
        kept: What it answers with.
        keep_alive_s: Seconds it stays after a question.
        loading: Entered around the wait for a start, with what loads (the CLI's status line).

    Returns:
        The process, or None when one could not be started (the warning names its log, which
        says why; the caller answers in its own process, where the same error shows).

    Raises:
        FileNotFoundError: The corpus does not exist.
    """
    from filelock import FileLock

    folder = kept_dir()
    folder.mkdir(parents=True, exist_ok=True)
    key = kept.key()
    path = folder / f"{key}.json"
    # One start per key when several `ask`s race; the others then find it running.
    with FileLock(str(folder / f"{key}.lock"), timeout=START_TIMEOUT_S):
        state = _read_state(path)
        if state is not None:
            if state.alive():
                return state
            _remove_state(path, state.pid)  # killed, or the machine restarted
        kept_for = format_keep_alive(keep_alive_s)
        with loading(f"loading the models in a background process (kept {kept_for} after each question)"):
            return _start(kept, keep_alive_s, path)


def _start(kept: KeptPipeline, keep_alive_s: float, path: Path) -> KeptProcess | None:
    secret = secrets.token_hex(32)
    log = path.with_suffix(".log")
    detach = {"start_new_session": True} if os.name == "posix" else {
        "creationflags": subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP}  # type: ignore[attr-defined]
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "dynamicrag.serve.keep_alive"], stdin=subprocess.PIPE,
                                   stdout=out, stderr=subprocess.STDOUT, **detach)
    # The request goes through stdin, not argv: a backend option may hold an API key.
    request = {"kept": asdict(kept), "secret": secret, "keep_alive_s": keep_alive_s, "state": str(path)}
    process.stdin.write(json.dumps(request).encode())
    process.stdin.close()
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        state = _read_state(path)
        if state is not None and state.pid == process.pid:
            state.started = True
            return state
        if process.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            logger.warning("the background process could not start (exit %s; %s: %s); answering here",
                           process.returncode, log, tail[0])
            return None
        time.sleep(0.05)
    process.kill()
    logger.warning("the background process did not start within %.0f s (%s); answering here", START_TIMEOUT_S, log)
    return None


def stop_all() -> int:
    """Stop every kept process of this project cache; how many were running."""
    stopped = 0
    for path in sorted(kept_dir().glob("*.json")):  # none when the folder does not exist
        state = _read_state(path)
        if state is None:
            continue
        stopped += state.stop()
        _remove_state(path, state.pid)
    return stopped


class _IdleClock:
    """Ends the process ``keep_alive_s`` after its last question (never during one)."""

    def __init__(self, keep_alive_s: float, on_exit: Callable[[], None]) -> None:
        self.keep_alive_s, self._on_exit = keep_alive_s, on_exit
        self._last, self._busy, self._lock = time.monotonic(), False, threading.Lock()
        threading.Thread(target=self._watch, name="dynamicrag-keep-alive", daemon=True).start()

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        with self._lock:
            self._busy = True
        try:
            yield
        finally:
            with self._lock:
                self._busy, self._last = False, time.monotonic()

    def _watch(self) -> None:
        while True:
            time.sleep(0.5)
            with self._lock:
                if not self._busy and time.monotonic() - self._last >= self.keep_alive_s:
                    self._on_exit()


def serve_kept(request: dict[str, Any]) -> None:
    """The kept process: load ``ask``'s pipeline, announce the state file, answer until idle."""
    from dynamicrag.runtime import set_thread_env_defaults

    set_thread_env_defaults()  # as `ask` does, before torch loads
    from dynamicrag.api import DynamicRAG
    from dynamicrag.build import PipelineConfig, backend_specs
    from dynamicrag.console import dtype_lines

    kept, path = KeptPipeline(**request["kept"]), Path(request["state"])
    config = PipelineConfig.model_validate(kept.config)
    announced = dtype_lines(backend_specs(config))
    rag = DynamicRAG.from_documents(kept.corpus, retriever=kept.retriever, config=config)
    listener = Listener((HOST, 0), authkey=bytes.fromhex(request["secret"]))

    def leave() -> None:
        _remove_state(path, os.getpid())
        logger.info("kept process %d: exiting", os.getpid())
        logging.shutdown()
        os._exit(0)  # skips the teardown of torch's modules (1.4 s, see dynamicrag.cli.run)

    clock = _IdleClock(float(request["keep_alive_s"]), leave)
    _write_state(path, {"pid": os.getpid(), "port": listener.address[1], "secret": request["secret"],
                        "announced": announced})
    logger.info("kept process %d: ready on port %d", os.getpid(), listener.address[1])
    while True:
        try:
            conn = listener.accept()
        except _GONE:  # a client that left mid-handshake, or knew another secret
            continue
        with conn, clock.busy():
            try:
                message = json.loads(conn.recv_bytes())
                if message.get("stop"):
                    conn.send_bytes(b'{"stopped": true}')
                    leave()
                if message.get("ping"):
                    conn.send_bytes(b'{"pong": true}')
                    continue
                clock.keep_alive_s = float(message.get("keep_alive_s", clock.keep_alive_s))
                try:
                    reply = {"answer": rag.ask(message["question"]).model_dump(mode="json")}
                except Exception as err:  # noqa: BLE001 - one failed question must not end the process
                    logger.exception("question failed")
                    reply = {"error": f"{type(err).__name__}: {err}"}
                conn.send_bytes(json.dumps(reply).encode())
            except (*_GONE, ValueError):  # the asking process left, or sent no JSON
                continue


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    serve_kept(json.loads(sys.stdin.read()))
