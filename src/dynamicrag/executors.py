"""Where a batch stage runs: in this process, or spread over the workers of a Ray cluster.

A stage (infer, label, sample, reward) maps a batch of items to a list of records. It needs a
heavy object first (an LLM backend, a teacher model, an index), so executors take a *factory*:
``fn_factory()`` builds the batch function once per worker, on that worker, which then runs it
on many batches. Batches come back in input order, so :func:`run_resumable` (the one resume
path of every stage and of the benchmark) appends them to a resumable JSONL file exactly as a
single process would, and a killed run, local or distributed, resumes after the last record
written, once it has checked that those records are this input's.

The factory is pickled and sent to every worker: make it a module-level function (or a
``functools.partial`` of one) that captures only small things (paths, configs, model names)
and loads the heavy ones when called.

Example:
    >>> from functools import partial
    >>> def make_labeller(scorer_name):  # runs once on each worker
    ...     teacher = make_scorer(scorer_name)
    ...     return lambda batch: [ex.model_dump(mode="json")
    ...                           for ex in label_examples(batch, teacher, LabelConfig())]
    >>> executor = make_executor("ray", address="auto", num_workers=4)
    >>> run_resumable(examples, "labelled.jsonl", 8, partial(make_labeller, "embedding"), executor)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from dynamicrag.run_settings import settings_path  # where run_resumable keeps an output's settings

logger = logging.getLogger(__name__)

T = TypeVar("T")
BatchFn = Callable[[list[Any]], Sequence[Any]]
FnFactory = Callable[[], BatchFn]


def _check_positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def batched(items: Iterable[T], batch_size: int) -> Iterator[list[T]]:
    """Consecutive lists of ``batch_size`` items (the last may be shorter).

    ``itertools.batched`` does this from Python 3.12 (yielding tuples); the package supports 3.10.
    """
    _check_positive("batch_size", batch_size)
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


class Executor:
    """Runs a batch function over items, one batch at a time, and yields the outputs in order.

    A context manager: leaving it calls :meth:`close`.
    """

    name = "base"

    def map_batches(self, fn_factory: FnFactory, items: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
        """Apply the batch function built by ``fn_factory`` to consecutive batches of ``items``.

        The function is built lazily, with the first batch: an empty input loads nothing. An
        exception of the factory or of a batch is raised at that batch's place in the output.

        Args:
            fn_factory: Builds the batch function (``list[item] -> records``); called once per
                worker, on that worker.
            items: The inputs. Batch ``i`` is ``items[i * batch_size : (i + 1) * batch_size]``.
            batch_size: Items per batch (the last batch may be smaller).

        Returns:
            An iterator over the output of each batch, as a list, in input order.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release what the executor started (nothing, unless said otherwise)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Run every batch in this process, one after the other (the default)."""

    name = "local"

    def map_batches(self, fn_factory: FnFactory, items: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
        """See :meth:`Executor.map_batches`."""
        fn: BatchFn | None = None
        for batch in batched(items, batch_size):
            if fn is None:
                fn = fn_factory()
            yield list(fn(batch))

    def __repr__(self) -> str:
        return "InProcessExecutor()"


class _Worker:
    """A Ray actor body: builds the batch function once, then runs it on each batch it is sent."""

    def __init__(self, fn_factory: FnFactory) -> None:
        # A failing factory is raised again with the first batch, as the local executor does,
        # so callers catch the same exception class either way (Ray would otherwise report a
        # dead actor).
        self.fn: BatchFn | None = None
        self.error: Exception | None = None
        try:
            self.fn = fn_factory()
        except Exception as err:
            self.error = err

    def run(self, batch: list[Any]) -> list[Any]:
        if self.error is not None:
            raise self.error
        return list(self.fn(batch))


class RayExecutor(Executor):
    """Spread batches over ``num_workers`` Ray actors; each loads the stage's model once.

    Why actors with an ordered window of futures, and not Ray Data or ``ActorPool``: Ray Data's
    ``map_batches`` with a callable class wants table blocks (our items are pydantic records),
    pulls in pandas and pyarrow, and keeps order only with ``preserve_order`` set on its
    context; ``ray.util.ActorPool.map`` keeps order but gives an actor its next batch only once
    that actor's result is *consumed* in order, so a fast actor idles behind a slow one. Here
    batches go round robin, each actor has up to ``prefetch`` queued (Ray runs an actor's calls
    one at a time, in submission order), and results are read in submission order: order kept,
    workers kept busy, at most ``num_workers * prefetch`` batches in flight.

    Args:
        address: Ray cluster to join: ``"auto"`` (the cluster this machine belongs to),
            ``"ray://host:10001"`` (Ray client), ``"host:6379"``; None does what ``ray.init()``
            does: join the cluster named by ``RAY_ADDRESS`` or started by ``ray start`` on this
            machine, else start a local instance (shut down again by :meth:`close`). Ignored,
            with a warning, when Ray is already initialised in the process.
        num_workers: Actors, i.e. copies of the stage's model.
        num_cpus_per_worker: CPUs Ray reserves for each actor (Ray also caps the actor's
            torch/OpenMP threads to it).
        num_gpus_per_worker: GPUs Ray reserves for each actor (1 for a model on its own GPU;
            Ray hides the GPUs from actors that reserve none).
        prefetch: Batches queued on each actor beyond the one it runs.
        runtime_env: Ray runtime environment of the actors, e.g. ``{"env_vars": {"HF_HOME":
            "/shared/hf"}}``; dynamicrag itself must be installed on every node.

    References:
        Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications" (OSDI 2018).
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        num_workers: int = 1,
        num_cpus_per_worker: float = 1,
        *,
        num_gpus_per_worker: float = 0,
        prefetch: int = 1,
        runtime_env: dict[str, Any] | None = None,
    ) -> None:
        _check_positive("num_workers", num_workers)
        _check_positive("prefetch", prefetch)
        if not (num_cpus_per_worker >= 0 and num_gpus_per_worker >= 0):
            raise ValueError(
                "num_cpus_per_worker and num_gpus_per_worker must be >= 0, "
                f"got {num_cpus_per_worker!r} and {num_gpus_per_worker!r}"
            )
        self.address = address
        self.num_workers = num_workers
        self.num_cpus_per_worker = num_cpus_per_worker
        self.num_gpus_per_worker = num_gpus_per_worker
        self.prefetch = prefetch
        self.runtime_env = runtime_env
        self._started_ray = False

    def __repr__(self) -> str:
        return (
            f"RayExecutor(address={self.address!r}, num_workers={self.num_workers}, "
            f"num_cpus_per_worker={self.num_cpus_per_worker}, num_gpus_per_worker={self.num_gpus_per_worker})"
        )

    def _ray(self) -> Any:
        """The ``ray`` module, initialised (started or joined) once."""
        try:
            import ray
        except ImportError as err:
            raise ImportError("the Ray executor needs Ray: pip install 'dynamicrag[ray]'") from err
        if ray.is_initialized():
            if self.address is not None and not self._started_ray:
                logger.warning("Ray is already initialised in this process; address=%r is ignored", self.address)
            return ray
        ray.init(address=self.address, include_dashboard=False)  # (used only by a new local instance)
        self._started_ray = True
        resources = ray.cluster_resources()
        logger.info("Ray initialised (address=%s): %s", self.address, resources)
        for what, each in (("CPU", self.num_cpus_per_worker), ("GPU", self.num_gpus_per_worker)):
            if each and self.num_workers * each > resources.get(what, 0):
                logger.warning(
                    "%d workers x %s %s exceed the cluster's %s: the extra workers wait for resources "
                    "(an autoscaling cluster adds nodes; otherwise use fewer workers)",
                    self.num_workers, each, what, resources.get(what, 0),
                )
        return ray

    def map_batches(self, fn_factory: FnFactory, items: Iterable[Any], batch_size: int) -> Iterator[list[Any]]:
        """See :meth:`Executor.map_batches`.

        A worker's exception is raised here as Ray's ``RayTaskError``, which is also an instance
        of the original class (``except ValueError`` still catches it; ``.cause`` is the original).
        """
        ray = None
        actors: list[Any] = []
        pending: deque[Any] = deque()  # object refs, in submission (= input) order
        try:
            for i, batch in enumerate(batched(items, batch_size)):
                if ray is None:  # the first batch: start the workers (none for an empty input)
                    ray = self._ray()
                    options: dict[str, Any] = {"num_cpus": self.num_cpus_per_worker, "num_gpus": self.num_gpus_per_worker}
                    if self.runtime_env is not None:
                        options["runtime_env"] = self.runtime_env
                    worker = ray.remote(_Worker).options(**options)
                    actors = [worker.remote(fn_factory) for _ in range(self.num_workers)]
                    logger.info("%d Ray workers started (%s)", len(actors), options)
                pending.append(actors[i % len(actors)].run.remote(batch))
                if len(pending) >= len(actors) * (1 + self.prefetch):
                    yield ray.get(pending.popleft())
            while pending:
                yield ray.get(pending.popleft())
        finally:
            # Also when the consumer stopped early or a batch failed: queued batches die with
            # their actor, and the models' memory is given back.
            for actor in actors:
                ray.kill(actor)

    def close(self) -> None:
        """Disconnect from Ray if this executor initialised it (a local instance it started stops;
        a joined cluster, or a Ray the caller initialised, stays up)."""
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False


EXECUTORS: dict[str, type[Executor]] = {InProcessExecutor.name: InProcessExecutor, RayExecutor.name: RayExecutor}


class ResumeError(ValueError):
    """An output already holds records of another input or of other settings: resuming onto it
    would mix two runs in one file."""


def _item_id(item: Any) -> Any:
    return item.get("id") if isinstance(item, dict) else getattr(item, "id", None)


def check_resumed_ids(items: Sequence[Any], written_ids: Sequence[str | None], output: str | Path) -> None:
    """Resuming is by position: the records already written must be those of the first items,
    or the new records would be appended to another input's (a changed file, another skip).

    Args:
        items: This run's inputs (dicts or objects with an ``id``).
        written_ids: Ids of the records already in the output, in file order (None: no id).
        output: The output file, for the message.

    Raises:
        ResumeError: The first line whose record id is not that of the input at its position.
    """
    for line, (written, item) in enumerate(zip(written_ids, items), 1):
        want = _item_id(item)
        if written is not None and want is not None and written != str(want):
            raise ResumeError(
                f"{output}, line {line}: record id {written!r}, but input record {line} of this run is {want!r}: "
                "the output was written from other input (or another --skip); choose another output"
            )


def _check_settings(output: Path, settings: Mapping[str, Any], done: int, todo: int) -> None:
    """Refuse to append to records written with settings that decide the records differently;
    write this run's settings when it has work to do (see :mod:`dynamicrag.run_settings`)."""
    from dynamicrag.data import atomic_write_json
    from dynamicrag.run_settings import changed_settings, compared_settings, legacy_settings_path

    # Through JSON and back, so that what is compared is what the file holds (tuples -> lists).
    wanted = json.loads(json.dumps(settings, sort_keys=True))
    path = settings_path(output)
    if done:
        stored_at = path if path.exists() else legacy_settings_path(output)
        if not stored_at.exists():
            raise ResumeError(
                f"{output}: {done} records written without {path.name}, so their settings are unknown; "
                "move the file away (or choose another output) to run it again"
            )
        stored = json.loads(stored_at.read_text("utf-8"))
        changed = changed_settings(compared_settings(stored), compared_settings(wanted))
        if changed:
            raise ResumeError(
                f"{output}: {done} records written with other settings ({'; '.join(changed)}); "
                "move the file away (or choose another output) to run it with these"
            )
        recorded = changed_settings(stored, wanted)
        if recorded and todo:
            logger.warning("%s: resuming with other recorded settings than the run before (%s); they change "
                           "speed, not records; %s now holds this run's", output, "; ".join(recorded), path.name)
    if todo or not done:
        atomic_write_json(path, wanted)


def run_resumable(
    items: Sequence[Any],
    output: str | Path,
    batch_size: int,
    fn_factory: FnFactory,
    executor: Executor | None = None,
    *,
    settings: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """Run a stage's batch function over the items not yet in ``output``, appending the records
    in input order; a killed run, local or on Ray, resumes after the records already written.

    The one resume path of every stage (``retrieve``, ``infer``, ``label``, ``sample``,
    ``reward``) and of the benchmark runs. Before anything runs, the records already written
    are checked to be those of the first items (by id) and, when ``settings`` are given, to
    have been written with the same settings where they decide the records (kept beside the
    output with the run's other settings, see :mod:`dynamicrag.run_settings`).

    Args:
        items: The inputs, in output order (dicts or objects with an ``id``).
        output: Plain JSONL output (created, or resumed if it exists).
        batch_size: Items per batch.
        fn_factory: Builds the batch function where the batches run (see :class:`Executor`).
        executor: Where the batches run (closed at the end); None: this process.
        settings: The run's settings (JSON-serialisable; see
            :func:`~dynamicrag.run_settings.run_settings`), written to
            ``<output>.settings.json``. Those that decide the records
            (:func:`~dynamicrag.run_settings.compared_settings`) must equal the stored ones when
            resuming; the recorded-only ones (version, command, threads, speed options) may
            change. A callable is called only when there are items to run (describing a run
            may load its model); then a finished output is not checked. None: not checked.
        on_progress: Called with (records in the output, len(items)) once before the first
            batch and after each batch.

    Returns:
        How many items this run processed.

    Raises:
        ResumeError: The output holds records of other input or of other settings; it is
            left untouched.
    """
    from dynamicrag.data import ResumableJsonlWriter

    output = Path(output)
    with executor or InProcessExecutor() as running, ResumableJsonlWriter(output) as writer:
        check_resumed_ids(items, writer.ids, output)
        todo = items[writer.done :]
        if callable(settings):
            settings = settings() if todo else None
        if settings is not None:
            _check_settings(output, settings, writer.done, len(todo))
        if on_progress:
            on_progress(writer.done, len(items))
        for records in running.map_batches(fn_factory, todo, batch_size):
            for record in records:
                writer.write(record)
            if on_progress:
                on_progress(writer.done, len(items))
    return len(todo)


def make_executor(name: str = "local", **options: Any) -> Executor:
    """Build an executor by registry name.

    Args:
        name: ``"local"`` (this process) or ``"ray"``.
        **options: The executor's constructor arguments (for ``"ray"``: ``address``,
            ``num_workers``, ``num_cpus_per_worker``, ``num_gpus_per_worker``, ``prefetch``,
            ``runtime_env``); None values are dropped, so options left unset keep defaults.

    Returns:
        The executor (a context manager; ``close()`` releases what it started).

    Raises:
        ValueError: Unknown name (the known names are listed), or a bad option value.
        TypeError: An option the executor does not take.
    """
    if name not in EXECUTORS:
        raise ValueError(f"unknown executor {name!r}; choose from {sorted(EXECUTORS)}")
    options = {k: v for k, v in options.items() if v is not None}
    try:
        return EXECUTORS[name](**options)
    except TypeError as err:
        raise TypeError(f"executor {name!r}: {err}") from err


__all__ = [
    "EXECUTORS", "Executor", "InProcessExecutor", "RayExecutor", "ResumeError", "batched", "check_resumed_ids",
    "make_executor", "run_resumable", "settings_path",
]
