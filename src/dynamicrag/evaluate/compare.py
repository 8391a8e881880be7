"""Paired comparison of runs on the same questions: is a difference a gain or noise?

Every run is scored per question (:func:`per_question`), questions are matched by ``id``
(never by position), and each run is compared with a baseline on the questions both have
(:func:`compare_runs`): the mean difference with a paired bootstrap confidence interval, a
p-value from a paired test suited to the metric (exact McNemar for per-question 0/1 scores, a
paired permutation test otherwise), the p-values Holm-corrected across the runs, and win / tie
/ loss counts. :func:`diff_runs` lists the questions one run gets right and another wrong,
with both answers and selections. The statistics are scipy's.

Example:
    >>> from dynamicrag.evaluate.report import load_runs  # doctest: +SKIP
    >>> runs = load_runs([Path("runs/topk.jsonl"), Path("runs/dynamic.jsonl")])
    >>> result = compare_runs(runs["topk"], {"dynamic": runs["dynamic"]}, baseline_name="topk")
    >>> print(comparison_markdown(result))
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dynamicrag.data import atomic_write_json, atomic_write_text
from dynamicrag.evaluate.answer_metrics import METRICS, score_record, task_metrics

logger = logging.getLogger(__name__)

# Each record's own headline metric (match for open QA, accuracy for FEVER...): what runs
# mixing tasks are compared on.
MAIN = "main"
MIN_RESAMPLES = 2000  # fewer make the CI ends noisy at the second decimal
COMPARISON_STEM = "paired_comparison"  # paired_comparison.md / .json / .png
DIFF_STEM = "diff"  # diff.md / diff.json


def _task(record: Mapping[str, Any]) -> str:
    return record.get("task") or "qa"


def _main_metric(record: Mapping[str, Any]) -> str:
    return task_metrics(_task(record))[0]  # as report.main_metric: the task's first metric


def _check_metric(metric: str) -> None:
    if metric != MAIN and metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {sorted([*METRICS, MAIN])}")


def _by_id(records: Sequence[Mapping[str, Any]], run: str) -> dict[str, Mapping[str, Any]]:
    """Records keyed by ``str(id)``, in order; a missing or repeated id names the run."""
    out: dict[str, Mapping[str, Any]] = {}
    for n, record in enumerate(records, 1):
        if record.get("id") is None:
            raise ValueError(f"run {run!r}: record {n} has no 'id'; questions are matched by id")
        key = str(record["id"])
        if key in out:
            raise ValueError(f"run {run!r}: question id {key!r} appears more than once (record {n})")
        out[key] = record
    return out


def _score(record: Mapping[str, Any], metric: str) -> float:
    name = _main_metric(record) if metric == MAIN else metric
    return score_record(dict(record), [name])[name]


def per_question(records: Sequence[Mapping[str, Any]], metric: str, *, run: str = "run") -> dict[str, float]:
    """The per-question score of one answer metric.

    Scoring is :func:`~dynamicrag.evaluate.answer_metrics.score_record`'s: a failed record
    (an ``error``, or no answer) scores 0.0, as in the evaluation table.

    Args:
        records: One run's ``infer`` records.
        metric: A key of :data:`~dynamicrag.evaluate.answer_metrics.METRICS`, or ``"main"``
            for each record's task headline metric.
        run: The run's name, for error messages.

    Returns:
        Question id (as a string) -> score, in record order.

    Raises:
        ValueError: An unknown metric, a record without ``id``, an id repeated in the run
            (naming the run), or a record the metric cannot score.
    """
    _check_metric(metric)
    return {key: _score(record, metric) for key, record in _by_id(records, run).items()}


def default_metrics(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The answer metrics every record reports (its ``metrics`` field or its task's), in order;
    ``["main"]`` when the records' tasks share none (e.g. NQ with FEVER)."""
    common: list[str] | None = None
    for record in records:
        names = list(record.get("metrics") or task_metrics(_task(record)))
        common = names if common is None else [m for m in common if m in names]
    return common or [MAIN]


def metric_label(metric: str, records: Sequence[Mapping[str, Any]]) -> str:
    """The metric's name; for ``main``, the headline metrics it stands for (``accuracy/match``)."""
    if metric != MAIN:
        return metric
    return "/".join(sorted({_main_metric(r) for r in records}))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of a family of p-values (controls the family-wise error).

    Written here because scipy offers only Benjamini-Hochberg/Yekutieli
    (``scipy.stats.false_discovery_control``, false discovery rate, not family-wise error)
    and statsmodels would be a large dependency for these few lines.

    Args:
        pvalues: p-values, one per hypothesis (here: per run, for one metric).

    Returns:
        Adjusted p-values in the same order: the i-th smallest p times (m - i + 1), made
        non-decreasing in that order and capped at 1.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    m = len(pvalues)
    adjusted = [0.0] * m
    running = 0.0
    for rank, i in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def _mean_diff(base: np.ndarray, run: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(run - base, axis=axis)


def _bootstrap_ci(base: np.ndarray, run: np.ndarray, resamples: int, seed: int, confidence: float) -> tuple[float, float, str]:
    from scipy import stats

    diffs = run - base
    if np.all(diffs == diffs[0]):
        # Every resample has the same mean: the interval is that point (scipy's BCa would be NaN).
        return float(diffs[0]), float(diffs[0]), "constant"
    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            # BCa can be undefined on very lopsided 0/1 data; then the percentile interval.
            warnings.simplefilter("ignore", RuntimeWarning)
            warnings.simplefilter("ignore", stats.DegenerateDataWarning)
            res = stats.bootstrap(
                (base, run), _mean_diff, paired=True, vectorized=True, n_resamples=resamples,
                confidence_level=confidence, method=method, rng=np.random.default_rng(seed),
            )
        low, high = res.confidence_interval
        if math.isfinite(low) and math.isfinite(high):
            return float(low), float(high), method
    raise ValueError("bootstrap confidence interval is undefined")  # pragma: no cover - percentile always is


def _paired_test(base: np.ndarray, run: np.ndarray, wins: int, losses: int, resamples: int, seed: int) -> tuple[float, str]:
    from scipy import stats

    if np.isin(base, (0.0, 1.0)).all() and np.isin(run, (0.0, 1.0)).all():
        # Exact McNemar: under no difference, each discordant pair (one right, one wrong) is
        # the run's win or loss with probability 1/2, so wins ~ Binomial(wins + losses, 1/2).
        discordant = wins + losses
        p = stats.binomtest(wins, discordant, 0.5).pvalue if discordant else 1.0
        return float(p), "mcnemar_exact"
    if wins + losses == 0:
        return 1.0, "permutation"
    # Paired randomisation: swapping a question's two scores flips the sign of its difference.
    res = stats.permutation_test(
        (base, run), _mean_diff, permutation_type="samples", vectorized=True, n_resamples=resamples,
        alternative="two-sided", rng=np.random.default_rng(seed),
    )
    return float(res.pvalue), "permutation"


def paired_stats(
    base: Sequence[float], run: Sequence[float], *, resamples: int = MIN_RESAMPLES, seed: int = 0, confidence: float = 0.95
) -> dict[str, Any]:
    """Compare two aligned vectors of per-question scores (the same questions, same order).

    Args:
        base: The baseline's scores.
        run: The run's scores.
        resamples: Bootstrap resamples, and permutations for the permutation test (when
            there are fewer distinct sign patterns than this, scipy enumerates them: exact).
        seed: Seed of both; each call starts from it, so a result does not depend on what
            else is compared.
        confidence: Confidence level of the interval.

    Returns:
        ``n``, ``baseline`` and ``run`` means, ``diff`` (run - baseline), ``ci`` ([low, high]
        of the paired bootstrap), ``ci_method`` (``BCa``, ``percentile`` when BCa is
        undefined, ``constant`` when every question differs by the same amount), ``p``,
        ``test`` (``mcnemar_exact`` or ``permutation``), ``wins`` / ``ties`` / ``losses``
        (questions where the run scores higher / the same / lower).
    """
    b, r = np.asarray(base, dtype=float), np.asarray(run, dtype=float)
    if b.shape != r.shape or b.ndim != 1 or not len(b):
        raise ValueError(f"paired scores must be two non-empty vectors of one length, got {b.shape} and {r.shape}")
    diffs = r - b
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    low, high, method = _bootstrap_ci(b, r, resamples, seed, confidence)
    p, test = _paired_test(b, r, wins, losses, resamples, seed)
    return {
        "n": len(b), "baseline": float(b.mean()), "run": float(r.mean()), "diff": float(diffs.mean()),
        "ci": [low, high], "ci_method": method, "p": p, "test": test,
        "wins": wins, "ties": len(b) - wins - losses, "losses": losses,
    }


def compare_runs(
    baseline: list[dict],
    runs: dict[str, list[dict]],
    metrics: list[str] | None = None,
    *,
    resamples: int = MIN_RESAMPLES,
    seed: int = 0,
    confidence: float = 0.95,
    baseline_name: str = "baseline",
) -> dict:
    """Compare each run with the baseline, question by question, on each answer metric.

    Questions are matched by ``id``. Those in only one of the two are named in the result
    (``only_in_baseline``, ``only_in_run``) and left out of that comparison.

    Args:
        baseline: The baseline's ``infer`` records.
        runs: Run name -> its records.
        metrics: Answer metrics (keys of ``METRICS``, or ``"main"``); default
            :func:`default_metrics` of the baseline.
        resamples: Bootstrap resamples and permutations (:func:`paired_stats`).
        seed: Seed of the resampling.
        confidence: Confidence level of the intervals.
        baseline_name: The baseline's name in the result.

    Returns:
        ``{"baseline", "metrics", "labels" (metric -> label), "resamples", "seed",
        "confidence", "runs"}``; ``runs`` maps each run to ``{"n", "only_in_baseline",
        "only_in_run", "metrics"}``, and ``metrics`` each metric to :func:`paired_stats`
        plus ``p_holm``: its p-value Holm-corrected across the runs, for that metric.

    Raises:
        ValueError: An unknown metric; a record without id, or an id repeated within a run
            (naming the run); a run sharing no question with the baseline; bad resamples or
            confidence.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be positive, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    metrics = list(metrics) if metrics else default_metrics(baseline)
    base = {m: per_question(baseline, m, run=baseline_name) for m in metrics}
    result_runs: dict[str, Any] = {}
    for name, records in runs.items():
        scores = {m: per_question(records, m, run=name) for m in metrics}
        run_ids, base_ids = scores[metrics[0]], base[metrics[0]]
        common = [i for i in base_ids if i in run_ids]
        only_base = [i for i in base_ids if i not in run_ids]
        only_run = [i for i in run_ids if i not in base_ids]
        if not common:
            raise ValueError(f"run {name!r} shares no question id with the baseline {baseline_name!r}")
        if only_base or only_run:
            logger.warning("%s vs %s: %d questions only in the baseline, %d only in the run; left out",
                           name, baseline_name, len(only_base), len(only_run))
        result_runs[name] = {
            "n": len(common),
            "only_in_baseline": only_base,
            "only_in_run": only_run,
            "metrics": {
                m: paired_stats([base[m][i] for i in common], [scores[m][i] for i in common],
                                resamples=resamples, seed=seed, confidence=confidence)
                for m in metrics
            },
        }
    for m in metrics:  # Holm across the runs compared on this metric
        names = list(result_runs)
        for name, p in zip(names, holm([result_runs[n]["metrics"][m]["p"] for n in names])):
            result_runs[name]["metrics"][m]["p_holm"] = p
    return {
        "baseline": baseline_name,
        "metrics": metrics,
        "labels": {m: metric_label(m, baseline) for m in metrics},
        "resamples": resamples,
        "seed": seed,
        "confidence": confidence,
        "runs": result_runs,
    }


def format_p(p: float) -> str:
    """A p-value for a table: three decimals, or scientific notation below 0.001."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


LEFT_COLUMNS = ("run", "metric", "test")  # text columns of the comparison table; the others are numbers


def comparison_rows(result: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and string cells of the comparison table: one row per run and metric
    (:data:`LEFT_COLUMNS` are text, the others numbers)."""
    level = f"{100 * result['confidence']:g}% CI"
    headers = ["run", "metric", "baseline", "run mean", "diff", level, "p", "p Holm", "test", "W/T/L", "n"]
    rows = []
    for name, run in result["runs"].items():
        for metric, s in run["metrics"].items():
            low, high = s["ci"]
            rows.append([
                name, result["labels"][metric], f"{s['baseline']:.3f}", f"{s['run']:.3f}", f"{s['diff']:+.3f}",
                f"[{low:+.3f}, {high:+.3f}]", format_p(s["p"]), format_p(s["p_holm"]),
                "McNemar" if s["test"] == "mcnemar_exact" else "permutation",
                f"{s['wins']}/{s['ties']}/{s['losses']}", str(run["n"]),
            ])
    return headers, rows


def _md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = [list(headers), ["---" if h in LEFT_COLUMNS else "---:" for h in headers], *rows]
    return "".join("| " + " | ".join(str(c).replace("|", "\\|") for c in line) + " |\n" for line in lines)


def _ids(ids: Sequence[str], most: int = 20) -> str:
    shown = ", ".join(f"`{i}`" for i in ids[:most])
    return shown + (f" and {len(ids) - most} more (all in the JSON)" if len(ids) > most else "")


def comparison_markdown(result: Mapping[str, Any]) -> str:
    """The comparison as a markdown table, with how it was computed and the unmatched ids."""
    headers, rows = comparison_rows(result)
    text = _md_table(headers, rows)
    text += (
        f"\nEach run against `{result['baseline']}` on the questions both answered, matched by id. "
        f"diff = run - baseline; CI: paired bootstrap ({result['resamples']} resamples, seed {result['seed']}); "
        "p: exact McNemar for 0/1 scores, else a paired permutation test; p Holm: Holm-corrected across the "
        f"{len(result['runs'])} run(s), per metric. W/T/L: questions where the run scores higher / the same / lower. "
        "Failed records score 0.\n"
    )
    unmatched = [
        f"- `{name}`: {len(run['only_in_baseline'])} only in the baseline ({_ids(run['only_in_baseline'])}), "
        f"{len(run['only_in_run'])} only in the run ({_ids(run['only_in_run'])})\n"
        for name, run in result["runs"].items() if run["only_in_baseline"] or run["only_in_run"]
    ]
    if unmatched:
        text += "\nLeft out, present in one run only:\n\n" + "".join(unmatched)
    return text


def plot_comparison(result: Mapping[str, Any], path: Path) -> Path:
    """A forest plot: each run's difference from the baseline with its interval, per metric.

    Args:
        result: :func:`compare_runs` output.
        path: The PNG to write (atomically).

    Returns:
        ``path``.
    """
    from dynamicrag.evaluate.plots import new_figure, save_figure

    fig, ax = new_figure()
    runs, metrics = list(result["runs"]), result["metrics"]
    fig.set_size_inches(6.4, max(2.5, 1.2 + 0.35 * len(runs) * len(metrics)))
    rows = len(runs)
    step = 0.8 / len(metrics)  # each run a band; its metrics side by side within it
    for j, metric in enumerate(metrics):
        stats = [result["runs"][name]["metrics"][metric] for name in runs]
        ys = [rows - 1 - i + 0.4 - step * (j + 0.5) for i in range(rows)]  # first run, first metric on top
        xs = [s["diff"] for s in stats]
        err = [[s["diff"] - s["ci"][0] for s in stats], [s["ci"][1] - s["diff"] for s in stats]]
        ax.errorbar(xs, ys, xerr=err, fmt="o", capsize=3, label=result["labels"][metric])
    ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
    ax.set_yticks(range(rows))
    ax.set_yticklabels(list(reversed(runs)))
    ax.set_ylim(-0.6, rows - 0.4)
    ax.set_xlabel(f"difference from {result['baseline']} (run - baseline)")
    ax.set_title(f"Paired differences from {result['baseline']}, {100 * result['confidence']:g}% bootstrap CI")
    ax.legend(fontsize="small")
    return save_figure(fig, Path(path))


def write_comparison(result: Mapping[str, Any], out_dir: Path, stem: str = COMPARISON_STEM) -> list[Path]:
    """Write ``{stem}.json``, ``{stem}.md`` (the table and the plot) and ``{stem}.png``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_comparison(result, out_dir / f"{stem}.png")
    atomic_write_json(out_dir / f"{stem}.json", result)
    body = f"# Paired comparison against {result['baseline']}\n\n{comparison_markdown(result)}\n![{stem}]({png.name})\n"
    atomic_write_text(out_dir / f"{stem}.md", body)
    return [out_dir / f"{stem}.json", out_dir / f"{stem}.md", png]


# ---------------------------------------------------------------- per-question diff


def _selection(record: Mapping[str, Any]) -> list[dict[str, Any]]:
    passages = record.get("passages") or []
    out = []
    for pos in record.get("selected") or []:
        p = passages[pos - 1] if isinstance(pos, int) and 1 <= pos <= len(passages) else {}
        out.append({"position": pos, "id": p.get("id"), "title": p.get("title")})
    return out


def _side(record: Mapping[str, Any], score: float) -> dict[str, Any]:
    return {
        "score": score, "answer": record.get("answer"), "error": record.get("error"),
        "selected": _selection(record), "reranker_output": record.get("reranker_output"),
    }


def diff_runs(
    a: Sequence[Mapping[str, Any]],
    b: Sequence[Mapping[str, Any]],
    metric: str = MAIN,
    *,
    a_name: str = "A",
    b_name: str = "B",
) -> dict[str, Any]:
    """The questions on which two runs disagree: A scores higher, or B does.

    For a 0/1 metric these are the questions A gets right and B wrong, and the reverse.

    Args:
        a: Run A's ``infer`` records.
        b: Run B's records.
        metric: Answer metric (a key of ``METRICS``, or ``"main"``).
        a_name: A's name.
        b_name: B's name.

    Returns:
        ``{"metric", "label", "binary", "a", "b", "n", "ties", "only_in_a", "only_in_b",
        "a_better", "b_better"}``; each of the last two lists ``{"id", "question",
        "answers", "a", "b"}`` in A's order, where ``a`` / ``b`` hold ``score``, ``answer``,
        ``error``, ``selected`` (``position``, passage ``id`` and ``title`` per chosen
        passage, in order) and ``reranker_output``.

    Raises:
        ValueError: As :func:`per_question` (naming the run).
    """
    a_scores, b_scores = per_question(a, metric, run=a_name), per_question(b, metric, run=b_name)
    a_by, b_by = _by_id(a, a_name), _by_id(b, b_name)
    common = [i for i in a_scores if i in b_scores]
    entries: dict[str, list[dict[str, Any]]] = {"a_better": [], "b_better": []}
    for i in common:
        sa, sb = a_scores[i], b_scores[i]
        if sa == sb:
            continue
        ra, rb = a_by[i], b_by[i]
        entry = {"id": i, "question": ra.get("question"), "answers": ra.get("answers"), "a": _side(ra, sa), "b": _side(rb, sb)}
        entries["a_better" if sa > sb else "b_better"].append(entry)
    values = {*a_scores.values(), *b_scores.values()}
    return {
        "metric": metric, "label": metric_label(metric, a), "binary": values <= {0.0, 1.0},
        "a": a_name, "b": b_name, "n": len(common),
        "ties": len(common) - len(entries["a_better"]) - len(entries["b_better"]),
        "only_in_a": [i for i in a_scores if i not in b_scores],
        "only_in_b": [i for i in b_scores if i not in a_scores],
        **entries,
    }


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())


def _side_markdown(name: str, side: Mapping[str, Any], label: str) -> str:
    answer = f"*failed: {_one_line(side['error'])}*" if side["error"] is not None else _one_line(side["answer"] or "")
    chosen = ", ".join(
        f"[{s['position']}] {_one_line(s['title'] or '')}" + (f" (`{s['id']}`)" if s["id"] is not None else "")
        for s in side["selected"]
    ) or "None"
    return f"- **{name}** ({label} {side['score']:g}): {answer}\n  - selected: {chosen}\n"


def diff_markdown(diff: Mapping[str, Any]) -> str:
    """:func:`diff_runs` as markdown, readable as plain text in a terminal too."""
    a, b, label = diff["a"], diff["b"], diff["label"]
    better, worse = ("right", "wrong") if diff["binary"] else ("higher", "lower")
    titles = {
        "a_better": f"{better.capitalize()} in {a}, {worse} in {b}",
        "b_better": f"{better.capitalize()} in {b}, {worse} in {a}",
    }
    text = f"# {a} vs {b} on {label}\n\n"
    text += (f"{diff['n']} questions in both: {len(diff['a_better'])} {better} in {a} only, "
             f"{len(diff['b_better'])} {better} in {b} only, {diff['ties']} the same.\n")
    if diff["only_in_a"] or diff["only_in_b"]:
        text += (f"Left out: {len(diff['only_in_a'])} only in {a} ({_ids(diff['only_in_a'])}), "
                 f"{len(diff['only_in_b'])} only in {b} ({_ids(diff['only_in_b'])}).\n")
    for key in ("a_better", "b_better"):
        text += f"\n## {titles[key]} ({len(diff[key])})\n"
        for e in diff[key]:
            gold = "; ".join(_one_line(x) for x in e["answers"] or []) or "-"
            text += f"\n### `{e['id']}` {_one_line(e['question'] or '')}\n\n- gold: {gold}\n"
            text += _side_markdown(a, e["a"], label) + _side_markdown(b, e["b"], label)
    return text


def write_diff(diff: Mapping[str, Any], out_dir: Path, stem: str = DIFF_STEM) -> list[Path]:
    """Write ``{stem}.json`` and ``{stem}.md`` into ``out_dir`` (created)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / f"{stem}.json", diff)
    atomic_write_text(out_dir / f"{stem}.md", diff_markdown(diff))
    return [out_dir / f"{stem}.json", out_dir / f"{stem}.md"]
