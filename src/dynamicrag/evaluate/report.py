"""The evaluation report: score ``infer`` outputs, tabulate runs, draw the k and top-N plots.

One run is one ``infer`` output JSONL. :func:`evaluate_records` scores a run's records (as a
whole or per value of a field such as ``task``); :func:`evaluate_files` does that for several
runs; :func:`render_table` / :func:`to_markdown` lay the summaries out one row per run and
group; :func:`plot_reports` draws how many passages the reranker chose, answer quality by that
number, and answer quality against the run's top-N. :func:`evaluate_report` is what
``dynamicrag evaluate`` calls: it also compares the runs with a baseline, question by question
(:mod:`dynamicrag.evaluate.compare`); :func:`evaluate_command` is the same without a baseline.

Failed records (an ``error`` set) are counted and score 0.0 on every answer metric: they are
reported, never dropped.

Example:
    >>> from dynamicrag.evaluate.report import evaluate_command  # doctest: +SKIP
    >>> summary = evaluate_command([Path("runs/top20.jsonl"), Path("runs/top40.jsonl")], "task", Path("eval"))
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from dynamicrag.data import atomic_write_json, atomic_write_text, read_jsonl
from dynamicrag.data.files import file_stem
from dynamicrag.evaluate.answer_metrics import score_record, task_metrics
from dynamicrag.evaluate.plots import new_figure, save_figure
from dynamicrag.evaluate.rerank_metrics import (
    CONTAINS_ANSWER,
    Qrels,
    gold_source,
    mean_rerank_scores,
    summarize_selections,
)

logger = logging.getLogger(__name__)

ALL = "all"
MISSING = "(missing)"  # group of the records without the ``by`` field
# Tasks whose answers are labels, not strings a passage could contain: answer containment
# says nothing about which passage is relevant (every passage "contains" SUPPORTS or not).
LABEL_TASKS = frozenset({"fever"})
# Reranker columns of the tables: (key in mean_rerank_scores, header).
RERANK_COLUMNS = (("f1", "selection F1"), ("recall@5", "recall@5"), ("ndcg@10", "NDCG@10"))

PLOT_K_HIST = "k_hist.png"
PLOT_QUALITY_BY_K = "quality_by_k.png"
PLOT_QUALITY_VS_TOP_N = "quality_vs_top_n.png"


def _task(record: Mapping[str, Any]) -> str:
    return record.get("task") or "qa"


def main_metric(task: str) -> str:
    """The headline metric of a task: the first of :func:`task_metrics` (``em``, ``accuracy``...)."""
    return task_metrics(task)[0]


def _main_score(record: dict[str, Any]) -> float:
    name = main_metric(_task(record))
    return score_record(record, [name])[name]


def _main_metric_name(records: Iterable[dict[str, Any]]) -> str:
    """``em``, or ``accuracy/em`` when the records mix tasks with different headline metrics."""
    return "/".join(sorted({main_metric(_task(r)) for r in records}))


def _is_failed(record: Mapping[str, Any]) -> bool:
    return record.get("error") is not None


def _k(record: Mapping[str, Any]) -> int:
    return len(record.get("selected") or [])


def _rerank_scorable(record: dict[str, Any], qrels: Qrels | None = None) -> bool:
    source = gold_source(record, qrels)
    return source is not None and not (source == CONTAINS_ANSWER and _task(record) in LABEL_TASKS)


def _answer_metrics(records: Sequence[dict[str, Any]]) -> tuple[dict[str, float], dict[str, int]]:
    """Each metric averaged over the records whose task reports it (failed ones as 0.0).

    A group mixing tasks (``by=None`` over NQ and FEVER) gets every metric of every task, each
    averaged over its own tasks' records; the counts say over how many.
    """
    sums: dict[str, float] = defaultdict(float)
    counts: Counter[str] = Counter()
    for record in records:
        for name, value in score_record(record).items():
            sums[name] += value
            counts[name] += 1
    return {name: sums[name] / counts[name] for name in sums}, dict(counts)


def _evaluate_group(records: Sequence[dict[str, Any]], qrels: Qrels | None = None) -> dict[str, Any]:
    answer, answer_counts = _answer_metrics(records)
    scorable = [r for r in records if _rerank_scorable(r, qrels)]
    rerank = mean_rerank_scores(scorable, qrels=qrels) if scorable else None
    return {
        "n": len(records),
        "failed": sum(_is_failed(r) for r in records),
        "tasks": dict(sorted(Counter(_task(r) for r in records).items())),
        "answer": answer,
        "answer_counts": answer_counts,
        "main_metric": _main_metric_name(records),
        "main_score": sum(_main_score(r) for r in records) / len(records),
        # Where relevance came from; "none" = unknown, so the record is not in ``rerank``.
        "gold_source": dict(
            sorted(Counter((gold_source(r, qrels) if _rerank_scorable(r, qrels) else None) or "none" for r in records).items())
        ),
        "rerank": rerank,
        "selection": summarize_selections(records),
    }


def _group_key(value: Any) -> str:
    return MISSING if value is None else str(value)


def evaluate_records(records: list[dict[str, Any]], by: str | None = None, qrels: Qrels | None = None) -> dict[str, Any]:
    """Score one run's ``infer`` records, as a whole or per value of the field ``by``.

    Args:
        records: Output records of ``infer`` (see :func:`dynamicrag.schema.to_record`).
        by: Record field to group by (e.g. ``"task"``); None for one group named ``"all"``.
            Records without the field form the group ``"(missing)"``.
        qrels: TREC judgments by record id (:func:`~dynamicrag.evaluate.rerank_metrics.load_qrels`),
            the only source of reranker relevance when given; records without any are unjudged.

    Returns:
        ``{"by", "n", "top_n", "reranker", "main_metric", "main_score", "groups"}`` where
        ``top_n`` is the most passages any record carried (what the reranker saw), ``reranker``
        the records' ``reranker`` field (None when absent), ``main_score`` the mean of each
        record's headline metric (:func:`main_metric`) over the run, and ``groups`` maps each
        group to: ``n``; ``failed`` (records with an error); ``tasks`` (task -> count);
        ``answer`` (metric -> mean over the group, failed records scoring 0.0);
        ``answer_counts`` (metric -> records averaged); ``main_metric`` / ``main_score``;
        ``gold_source`` (where reranker relevance came from -> count, ``"none"`` when
        unknown); ``rerank`` (:func:`mean_rerank_scores` over the records with known
        relevance, or None when there are none); ``selection`` (:func:`summarize_selections`:
        ``mean_k``, ``k_distribution``, ``none``, ``malformed`` and ``failed`` shares).

    Raises:
        ValueError: No records, or a record its task's metrics cannot score (an ASQA record
            without ``qa_pairs``).
    """
    if not records:
        raise ValueError("evaluate_records: no records to evaluate")
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        grouped[ALL if by is None else _group_key(record.get(by))].append(record)
    rerankers = Counter(r["reranker"] for r in records if r.get("reranker") is not None)
    if len(rerankers) > 1:
        logger.warning("records name several rerankers %s; the run is labelled with the most common", dict(rerankers))
    return {
        "by": by,
        "n": len(records),
        "top_n": max(len(r.get("passages") or []) for r in records),
        "reranker": str(rerankers.most_common(1)[0][0]) if rerankers else None,
        "main_metric": _main_metric_name(records),
        "main_score": sum(_main_score(r) for r in records) / len(records),
        "groups": {key: _evaluate_group(grouped[key], qrels) for key in sorted(grouped)},
    }


def _run_names(paths: Sequence[Path]) -> list[str]:
    """File stems; where two collide, ``parent/stem``; where those collide too, ``stem-2``..."""
    stems = [file_stem(p) for p in paths]
    stem_counts = Counter(stems)
    names = [f"{Path(p).parent.name}/{s}" if stem_counts[s] > 1 else s for p, s in zip(paths, stems)]
    seen: Counter[str] = Counter()
    unique = []
    for name in names:
        seen[name] += 1
        unique.append(name if seen[name] == 1 else f"{name}-{seen[name]}")
    return unique


def load_runs(paths: Sequence[Path]) -> dict[str, list[dict[str, Any]]]:
    """Read each ``infer`` output JSONL (``.gz`` too) under a unique run name.

    Args:
        paths: Output files of ``infer``.

    Returns:
        Run name (the file stem, made unique) -> its records, in the order of ``paths``.

    Raises:
        DataError: A line that is not a JSON object (naming file and line).
        ValueError: A file without records.
    """
    runs: dict[str, list[dict[str, Any]]] = {}
    for name, path in zip(_run_names(paths), paths):
        records = [record for _, record in read_jsonl(path)]
        if not records:
            raise ValueError(f"{path}: no records to evaluate")
        runs[name] = records
    return runs


def _evaluate_run(
    name: str, path: Path | None, records: list[dict[str, Any]], by: str | None, qrels: Qrels | None = None
) -> dict[str, Any]:
    try:
        summary = evaluate_records(records, by, qrels)
    except ValueError as err:
        raise ValueError(f"{path or name}: {err}") from err
    if summary["reranker"] is None:
        summary["reranker"] = name  # no reranker field in the records: the run labels itself
    unjudged = sum(str(r.get("id")) not in qrels for r in records) if qrels is not None else 0
    if unjudged:
        logger.warning("%s: %d of %d records have no judgment in the qrels: no reranker metrics for them",
                       path or name, unjudged, len(records))
    return {"path": str(path) if path is not None else None, **summary}


def evaluate_files(paths: Sequence[Path], by: str | None = None, qrels: Qrels | None = None) -> dict[str, dict[str, Any]]:
    """Evaluate several ``infer`` outputs.

    Args:
        paths: Output files of ``infer``, one per run.
        by: Record field to group each run by (see :func:`evaluate_records`).
        qrels: TREC judgments by record id (see :func:`evaluate_records`).

    Returns:
        Run name (file stem, made unique) -> :func:`evaluate_records` summary, plus ``path``;
        ``reranker`` falls back to the run name when the records do not carry one.
    """
    paths = [Path(p) for p in paths]
    runs = load_runs(paths)
    return {name: _evaluate_run(name, path, runs[name], by, qrels) for name, path in zip(runs, paths)}


def _answer_columns(summary: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Answer metric names present in any group, in first-seen order."""
    names: dict[str, None] = {}
    for run in summary.values():
        for group in run["groups"].values():
            names.update(dict.fromkeys(group["answer"]))
    return list(names)


def _rows(
    summary: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Mapping[str, str]] | None = None
) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells shared by the rich and markdown tables (metrics as fractions);
    ``extra`` columns (header -> run -> cell) go last, ``-`` where a run has no cell."""
    metrics = _answer_columns(summary)
    headers = ["run", "group", "n", "failed", *metrics, "mean k", "None %", "malformed %"]
    headers += [header for _, header in RERANK_COLUMNS]
    headers += list(extra or {})
    rows = []
    for run_name, run in summary.items():
        for group_name, group in run["groups"].items():
            selection, rerank = group["selection"], group["rerank"] or {}
            row = [run_name, group_name, str(group["n"]), str(group["failed"])]
            row += [f"{group['answer'][m]:.3f}" if m in group["answer"] else "-" for m in metrics]
            row += [f"{selection['mean_k']:.2f}", f"{100 * selection['none']:.1f}", f"{100 * selection['malformed']:.1f}"]
            row += [f"{rerank[key]:.3f}" if key in rerank else "-" for key, _ in RERANK_COLUMNS]
            row += [cells.get(run_name, "-") for cells in (extra or {}).values()]
            rows.append(row)
    return headers, rows


def render_table(summary: Mapping[str, Mapping[str, Any]], title: str = "evaluation") -> Table:
    """A rich table of :func:`evaluate_files` output: one row per run and group.

    Args:
        summary: Run name -> run summary.
        title: Table title.

    Returns:
        Columns run, group, n, failed, each answer metric present, mean k, None %,
        malformed %, selection F1, recall@5, NDCG@10 (``-`` where a value does not apply).
    """
    headers, rows = _rows(summary)
    table = Table(title=title)
    for i, header in enumerate(headers):
        table.add_column(header, justify="left" if i < 2 else "right")
    for row in rows:
        table.add_row(*row)
    return table


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(summary: Mapping[str, Mapping[str, Any]], extra: Mapping[str, Mapping[str, str]] | None = None) -> str:
    """The table of :func:`render_table` as a GitHub markdown table (ends with a newline).

    Args:
        summary: Run name -> run summary.
        extra: Columns added at the right: header -> run name -> cell (``-`` where missing).
    """
    headers, rows = _rows(summary, extra)
    align = ["---" if i < 2 else "---:" for i in range(len(headers))]
    lines = [headers, align, *rows]
    return "".join("| " + " | ".join(_md_cell(c) for c in line) + " |\n" for line in lines)


def _integer_axis(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))  # k, counts and top-N are whole numbers


def _plot_k_hist(records_by_run: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    fig, ax = new_figure()
    ks = {run: [_k(r) for r in records if not _is_failed(r)] for run, records in records_by_run.items()}
    top = max((max(v) for v in ks.values() if v), default=0)
    bins = [b - 0.5 for b in range(top + 2)]  # one bin per integer k, centred on it
    data = list(ks.values())
    if any(data):
        ax.hist(data, bins=bins, label=list(ks))
    ax.set_xlabel("k (passages the reranker chose; 0 = None)")
    ax.set_ylabel("records")
    ax.set_title("How many passages the reranker chose (failed records left out)")
    _integer_axis(ax.xaxis)
    _integer_axis(ax.yaxis)
    if any(data):
        ax.legend()
    return save_figure(fig, path)


def _plot_quality_by_k(records_by_run: Mapping[str, Sequence[dict[str, Any]]], path: Path) -> Path:
    fig, ax = new_figure()
    names = set()
    for run, records in records_by_run.items():
        by_k: dict[int, list[float]] = defaultdict(list)
        for record in records:
            if not _is_failed(record):  # a failed record chose nothing: its k is not a choice
                by_k[_k(record)].append(_main_score(record))
                names.add(main_metric(_task(record)))
        xs = sorted(by_k)
        ax.plot(xs, [sum(by_k[k]) / len(by_k[k]) for k in xs], marker="o", label=run)
    ax.set_xlabel("k (passages the reranker chose)")
    _integer_axis(ax.xaxis)
    ax.set_ylabel("/".join(sorted(names)) or "main metric")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Answer quality by k (records without error)")
    ax.legend()
    return save_figure(fig, path)


def _plot_quality_vs_top_n(summary: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    fig, ax = new_figure()
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for run in summary.values():
        lines[str(run.get("reranker"))].append((run["top_n"], run["main_score"]))
    for reranker, points in lines.items():
        points.sort()
        ax.plot([x for x, _ in points], [y for _, y in points], marker="o", label=reranker)
    metrics = sorted({m for run in summary.values() for m in run["main_metric"].split("/")})
    ax.set_xlabel("top-N (passages the reranker saw)")
    _integer_axis(ax.xaxis)
    ax.set_ylabel("/".join(metrics))
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Answer quality against top-N (failed records count 0)")
    ax.legend()
    return save_figure(fig, path)


def plot_reports(
    summary: Mapping[str, Mapping[str, Any]],
    records_by_run: Mapping[str, Sequence[dict[str, Any]]],
    out_dir: Path,
) -> list[Path]:
    """Draw the evaluation plots as PNG files (matplotlib, Agg), each written atomically.

    Args:
        summary: :func:`evaluate_files` output (run name -> run summary).
        records_by_run: Run name -> its records (:func:`load_runs`).
        out_dir: Folder for the PNGs (created).

    Returns:
        The files written: ``k_hist.png`` (histogram of k per run), ``quality_by_k.png`` (mean
        headline metric of the records that chose k passages, per run) and, with two runs or
        more, ``quality_vs_top_n.png`` (run headline metric against its top-N, one line per
        reranker).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [
        _plot_k_hist(records_by_run, out_dir / PLOT_K_HIST),
        _plot_quality_by_k(records_by_run, out_dir / PLOT_QUALITY_BY_K),
    ]
    if len(summary) > 1:
        written.append(_plot_quality_vs_top_n(summary, out_dir / PLOT_QUALITY_VS_TOP_N))
    return written


@dataclass
class EvaluationReport:
    """What :func:`evaluate_report` computed and wrote.

    Args:
        summary: Run name -> :func:`evaluate_records` summary (as :func:`evaluate_files`).
        comparison: :func:`~dynamicrag.evaluate.compare.compare_runs` against the baseline,
            or None without one.
        files: Every file written.
    """

    summary: dict[str, dict[str, Any]]
    comparison: dict[str, Any] | None = None
    files: list[Path] = field(default_factory=list)


def _with_baseline(paths: list[Path], baseline: Path | None) -> tuple[list[Path], int | None]:
    """The runs to evaluate (the baseline first when it is not one of them) and its index."""
    if baseline is None:
        return paths, None
    baseline = Path(baseline)
    for i, path in enumerate(paths):
        if path.resolve() == baseline.resolve():
            return paths, i
    return [baseline, *paths], 0


def evaluate_report(
    paths: Sequence[Path],
    by: str | None = None,
    out_dir: Path = Path("evaluation"),
    *,
    qrels: Path | Qrels | None = None,
    baseline: Path | None = None,
    metrics: Sequence[str] | None = None,
    resamples: int = 2000,
    seed: int = 0,
) -> EvaluationReport:
    """What ``dynamicrag evaluate`` runs: evaluate, compare with a baseline, write the report.

    Args:
        paths: ``infer`` output files, one per run.
        by: Record field to group by (e.g. ``"task"``), or None.
        out_dir: Folder for ``evaluation.json``, ``evaluation.md`` and the PNGs (created);
            with a baseline also ``paired_comparison.json`` / ``.md`` / ``.png``.
        qrels: A TREC qrels file (or loaded judgments), the source of reranker relevance.
        baseline: An ``infer`` output to compare every other run with, paired by question
            id (:func:`~dynamicrag.evaluate.compare.compare_runs`); evaluated too when it is
            not one of ``paths``.
        metrics: Answer metrics of the comparison; default: those every baseline record reports.
        resamples: Bootstrap resamples and permutations of the comparison.
        seed: Their seed.

    Returns:
        The summary, the comparison and the files written.

    Raises:
        DataError: An unreadable run or qrels file.
        ValueError: A run without records, a record its metrics cannot score, a baseline
            with no other run to compare, or a comparison error (naming the run).
    """
    from dynamicrag.evaluate.compare import COMPARISON_STEM, compare_runs, comparison_markdown, write_comparison
    from dynamicrag.evaluate.rerank_metrics import load_qrels

    paths, base_index = _with_baseline([Path(p) for p in paths], baseline)
    if base_index is not None and len(paths) < 2:
        raise ValueError("--baseline: give at least one other run to compare with it")
    if qrels is not None and not isinstance(qrels, Mapping):
        qrels = load_qrels(qrels)
    out_dir = Path(out_dir)
    runs = load_runs(paths)
    summary = {name: _evaluate_run(name, path, runs[name], by, qrels) for name, path in zip(runs, paths)}
    atomic_write_json(out_dir / "evaluation.json", summary)
    plots = plot_reports(summary, runs, out_dir)
    body = "# Evaluation\n\n" + to_markdown(summary)
    body += "\nAnswer metrics are means over all records; failed records count 0.0.\n\n"
    body += "".join(f"![{p.stem}]({p.name})\n" for p in plots)
    files = [out_dir / "evaluation.json", *plots]
    comparison = None
    if base_index is not None:
        names = list(runs)
        base_name = names[base_index]
        comparison = compare_runs(
            runs[base_name], {n: runs[n] for n in names if n != base_name}, list(metrics) if metrics else None,
            resamples=resamples, seed=seed, baseline_name=base_name,
        )
        files += write_comparison(comparison, out_dir)
        body += f"\n## Paired comparison against {base_name}\n\n{comparison_markdown(comparison)}"
        body += f"\n![{COMPARISON_STEM}]({COMPARISON_STEM}.png)\n"
    atomic_write_text(out_dir / "evaluation.md", body)
    files.append(out_dir / "evaluation.md")
    logger.info("wrote %s", ", ".join(str(f) for f in files))
    return EvaluationReport(summary, comparison, files)


def evaluate_command(
    paths: Sequence[Path], by: str | None, out_dir: Path, *, qrels: Path | Qrels | None = None
) -> dict[str, dict[str, Any]]:
    """Evaluate, write ``evaluation.json``, ``evaluation.md`` and the plots (no comparison).

    Args:
        paths: ``infer`` output files, one per run.
        by: Record field to group by (e.g. ``"task"``), or None.
        out_dir: Folder for the report files (created).
        qrels: A TREC qrels file (or loaded judgments), the source of reranker relevance.

    Returns:
        The summary (as in :func:`evaluate_files`), also written to ``evaluation.json``.
    """
    return evaluate_report(paths, by, out_dir, qrels=qrels).summary
