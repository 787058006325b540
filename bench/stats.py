"""Statistics behind the leaderboards: seed aggregation, paired significance tests, confidence
intervals. ``docs/statistics.md`` is the user reference.

Design (also stated in every leaderboard):

- A model's value for a user is the mean of that user's test values over the model's seeds, so
  seeds reduce noise per user instead of multiplying the number of "samples".
- Two models are paired by user id: only users evaluated for both enter a test.
- The two-sided paired t-test decides the markers by default: it tests a zero mean difference,
  which is what a leaderboard compares, and keeps its Type-I error on per-user recommender
  metrics (Ihemelandu & Ekstrand, SIGIR 2023). The Wilcoxon signed-rank test is computed beside
  it and can decide instead; it tests symmetry about zero, which a skewed, zero-inflated
  difference with a zero mean violates, so it over-rejects on such data.
- Holm's step-down correction over the models compared with the same reference, on the same
  metric, with the same test (one family per reference x metric x test).
- A 95% confidence interval of the mean difference (model - reference): percentile bootstrap
  over users for the metrics asked (the board's primary metric), the t-interval otherwise.
- Effect sizes of the paired differences: Cohen's d_z (mean / sd) for the t-test and the
  matched-pairs rank-biserial correlation for Wilcoxon.
"""

from __future__ import annotations

import gc
import warnings
from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError

ALPHA = 0.05
TESTS = ("t", "wilcoxon")
DEFAULT_TEST = "t"
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000
# Fixed so that rebuilding a board draws the same resamples: byte-identical intervals.
BOOTSTRAP_SEED = 0
# Resamples are drawn in blocks of about this many user indices (~48 MB with the counts).
_BOOTSTRAP_BLOCK = 4_000_000

SIGNIFICANCE_COLUMNS = [
    "model",
    "reference",
    "role",
    "metric",
    "test",
    "n_users",
    "mean_model",
    "mean_reference",
    "mean_diff",
    "ci_low",
    "ci_high",
    "ci_method",
    "statistic",
    "p_value",
    "p_holm",
    "effect_size",
    "effect_size_kind",
    "significant",
]


def check_test(test: str) -> str:
    """``test`` if it names a test that can decide the markers, else a :class:`BenchError`."""
    if test not in TESTS:
        raise BenchError(f"unknown test {test!r} (choose from: {', '.join(TESTS)})")
    return test


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; NaN for fewer than two values) and count."""
    array = np.asarray([v for v in values if v is not None], dtype=float)
    array = array[~np.isnan(array)]
    if array.size == 0:
        return float("nan"), float("nan"), 0
    std = float(np.std(array, ddof=1)) if array.size > 1 else float("nan")
    return float(np.mean(array)), std, int(array.size)


def average_over_seeds(per_seed: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Per-user values averaged over seeds: one row per user id, one column per metric.

    Each frame is one seed, indexed by user id. A user missing from some seeds (sampled
    evaluation users) is averaged over the seeds that evaluated it.
    """
    if not per_seed:
        return pd.DataFrame()
    stacked = pd.concat(per_seed)
    return stacked.groupby(level=0, sort=True).mean()


def cohens_d(diff: np.ndarray) -> float:
    """Cohen's d_z of paired differences: mean / sample sd (0 when all are zero)."""
    diff = np.asarray(diff, dtype=float)
    if diff.size == 0:
        return float("nan")
    mean = float(np.mean(diff))
    sd = float(np.std(diff, ddof=1)) if diff.size > 1 else 0.0
    if sd == 0.0:
        # No spread: no effect at all, or a constant shift (an unbounded standardized effect).
        return 0.0 if mean == 0.0 else float(np.sign(mean) * np.inf)
    return mean / sd


def rank_biserial(diff: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-) in [-1, 1].

    Zero differences are dropped, as the Wilcoxon test here drops them; 0 when none is left.
    """
    from scipy.stats import rankdata

    diff = np.asarray(diff, dtype=float)
    diff = diff[diff != 0]
    if diff.size == 0:
        return 0.0
    ranks = rankdata(np.abs(diff))
    positive = float(ranks[diff > 0].sum())
    negative = float(ranks[diff < 0].sum())
    return (positive - negative) / (positive + negative)


def difference_tests(diff: np.ndarray) -> dict[str, np.ndarray]:
    """Two-sided one-sample t-test and Wilcoxon signed-rank test (zeros dropped) of paired
    differences against 0, along the last axis: one test per row of a 2-D array.

    Undefined p-values (no non-zero difference, zero variance) are reported as 1: such data
    carries no evidence of a difference.
    """
    from scipy.stats import ttest_1samp, wilcoxon

    diff = np.asarray(diff, dtype=float)
    with warnings.catch_warnings():
        # scipy warns on ties, zeros and zero variance; those give NaN, reported as p = 1.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        t = ttest_1samp(diff, 0.0, axis=-1, alternative="two-sided")
        w = wilcoxon(diff, axis=-1, zero_method="wilcox", alternative="two-sided")
    return {
        "t_statistic": np.asarray(t.statistic, dtype=float),
        "t_p": _p_or_one(t.pvalue),
        "wilcoxon_statistic": np.asarray(w.statistic, dtype=float),
        "wilcoxon_p": _p_or_one(w.pvalue),
    }


def _p_or_one(p: Any) -> np.ndarray:
    p = np.asarray(p, dtype=float)
    return np.where(np.isnan(p), 1.0, p)


def t_interval(diff: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t confidence interval of the mean of ``diff`` (NaN for fewer than two values)."""
    from scipy.stats import t as student_t

    diff = np.asarray(diff, dtype=float)
    if diff.size < 2:
        return float("nan"), float("nan")
    mean = float(np.mean(diff))
    half = float(student_t.ppf(0.5 + confidence / 2, diff.size - 1)) * float(
        np.std(diff, ddof=1) / np.sqrt(diff.size)
    )
    return mean - half, mean + half


def bootstrap_intervals(
    diffs: Sequence[np.ndarray],
    confidence: float = CONFIDENCE,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> list[tuple[float, float]]:
    """Percentile bootstrap confidence interval of the mean of each array in ``diffs``.

    Users are resampled with replacement. Arrays of the same length share one set of
    resamples, drawn once from a generator seeded by ``(seed, length)`` and applied to all of
    them by one matrix product (resample counts x values), so an array's interval depends on
    its values alone (up to floating-point rounding), never on the other arrays, and a rebuild
    gives the same numbers.
    """
    intervals = [(float("nan"), float("nan"))] * len(diffs)
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, diff in enumerate(diffs):
        by_length[len(diff)].append(i)
    quantiles = [0.5 - confidence / 2, 0.5 + confidence / 2]
    for n, members in sorted(by_length.items()):
        if n == 0:
            continue
        values = np.column_stack([np.asarray(diffs[i], dtype=float) for i in members])
        means = _bootstrap_means(values, resamples, np.random.default_rng([seed, n]))
        low, high = np.quantile(means, quantiles, axis=0)
        for column, i in enumerate(members):
            intervals[i] = (float(low[column]), float(high[column]))
    return intervals


def _bootstrap_means(values: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``resamples`` bootstrap resamples of the rows of ``values`` (users x arrays)."""
    n = values.shape[0]
    means = np.empty((resamples, values.shape[1]))
    block = max(1, _BOOTSTRAP_BLOCK // n)
    for start in range(0, resamples, block):
        rows = min(block, resamples - start)
        drawn = rng.integers(0, n, size=(rows, n), dtype=np.int32)
        # How often each user is drawn in each resample; then every array's resampled mean
        # is one matrix product (a row's bincount is faster than gathering values per array).
        counts = np.empty((rows, n))
        for row in range(rows):
            counts[row] = np.bincount(drawn[row], minlength=n)
        means[start : start + rows] = (counts @ values) / n
    return means


def paired_values(model: pd.Series, reference: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The values of the users both series hold (paired by index), NaN pairs dropped."""
    common = model.index.intersection(reference.index)
    a = model.loc[common].to_numpy(dtype=float)
    b = reference.loc[common].to_numpy(dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    return a[keep], b[keep]


def paired_tests(model: pd.Series, reference: pd.Series) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test of ``model - reference``, paired by index,
    with the t confidence interval of the mean difference.

    Missing or undefined p-values (no users, no non-zero difference, zero variance) are
    reported as 1: such data carries no evidence of a difference.
    """
    return _tests_of_pairs(*paired_values(model, reference))


def _tests_of_pairs(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    diff = a - b
    t_low, t_high = t_interval(diff)
    out: dict[str, Any] = {
        "n_users": int(diff.size),
        "mean_model": float(np.mean(a)) if a.size else float("nan"),
        "mean_reference": float(np.mean(b)) if b.size else float("nan"),
        "mean_diff": float(np.mean(diff)) if diff.size else float("nan"),
        "t_ci_low": t_low,
        "t_ci_high": t_high,
        "wilcoxon_statistic": float("nan"),
        "wilcoxon_p": 1.0,
        "t_statistic": float("nan"),
        "t_p": 1.0,
        "rank_biserial": rank_biserial(diff),
        "cohens_d": cohens_d(diff),
    }
    if diff.size < 2 or not np.any(diff != 0):
        return out
    tests = difference_tests(diff)
    out.update({key: float(value) for key, value in tests.items()})
    return out


def holm(pvalues: Sequence[float], alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values and the rejections at ``alpha`` (NaN p counts as 1)."""
    from statsmodels.stats.multitest import multipletests

    p = np.asarray(pvalues, dtype=float)
    if p.size == 0:
        return np.zeros(0, dtype=bool), np.zeros(0)
    p = np.where(np.isnan(p), 1.0, p)
    # statsmodels' Holm branch runs gc.collect() on every call: ~0.2 s each once torch and
    # RecBole are loaded (a leaderboard makes dozens). Frozen objects are skipped by it.
    gc.freeze()
    try:
        reject, adjusted, _, _ = multipletests(p, alpha=alpha, method="holm")
    finally:
        gc.unfreeze()
    return np.asarray(reject, dtype=bool), np.asarray(adjusted, dtype=float)


def _test_rows(
    model: str, reference: str, role: str, metric: str, a: np.ndarray, b: np.ndarray
) -> list[dict[str, Any]]:
    """The Wilcoxon and t rows of one paired comparison (p-values not yet adjusted)."""
    r = _tests_of_pairs(a, b)
    base = {
        "model": model,
        "reference": reference,
        "role": role,
        "metric": metric,
        "n_users": r["n_users"],
        "mean_model": r["mean_model"],
        "mean_reference": r["mean_reference"],
        "mean_diff": r["mean_diff"],
        "ci_low": r["t_ci_low"],
        "ci_high": r["t_ci_high"],
        "ci_method": "t",
    }
    return [
        {
            **base,
            "test": "wilcoxon",
            "statistic": r["wilcoxon_statistic"],
            "p_value": r["wilcoxon_p"],
            "effect_size": r["rank_biserial"],
            "effect_size_kind": "rank_biserial",
        },
        {
            **base,
            "test": "t",
            "statistic": r["t_statistic"],
            "p_value": r["t_p"],
            "effect_size": r["cohens_d"],
            "effect_size_kind": "cohens_d",
        },
    ]


def _adjust_family(family: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Holm over one family of rows, each test on its own; the rows, Wilcoxon's first."""
    out: list[dict[str, Any]] = []
    for test in ("wilcoxon", "t"):
        group = [row for row in family if row["test"] == test]
        reject, adjusted = holm([row["p_value"] for row in group], alpha)
        for row, rej, adj in zip(group, reject, adjusted, strict=True):
            row["p_holm"] = float(adj)
            row["significant"] = bool(rej)
        out.extend(group)
    return out


def _bootstrap_into(to_bootstrap: list[tuple[list[dict[str, Any]], np.ndarray]]) -> None:
    """Replace the t-intervals of these (rows, differences) by bootstrap intervals, resampled
    together."""
    intervals = bootstrap_intervals([diff for _, diff in to_bootstrap])
    for (pair, _), (low, high) in zip(to_bootstrap, intervals, strict=True):
        for row in pair:
            row["ci_low"], row["ci_high"], row["ci_method"] = low, high, "bootstrap"


def _compare_families(
    per_user: dict[str, pd.DataFrame],
    families: list[list[tuple[str, str, str]]],
    metrics: Sequence[str],
    alpha: float,
    bootstrap_metrics: Collection[str],
) -> pd.DataFrame:
    """Both tests of every (model, reference, role) of each family on each metric both models
    have; Holm within each (family, metric, test)."""
    rows: list[dict[str, Any]] = []
    # (rows to fill, differences) of the bootstrapped metrics: resampled together at the end.
    to_bootstrap: list[tuple[list[dict[str, Any]], np.ndarray]] = []
    for members in families:
        for metric in metrics:
            family: list[dict[str, Any]] = []
            for model, reference, role in members:
                if metric not in per_user[model] or metric not in per_user[reference]:
                    continue
                a, b = paired_values(per_user[model][metric], per_user[reference][metric])
                pair = _test_rows(model, reference, role, metric, a, b)
                family.extend(pair)
                if metric in bootstrap_metrics:
                    to_bootstrap.append((pair, a - b))
            rows.extend(_adjust_family(family, alpha))
    _bootstrap_into(to_bootstrap)
    return pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)


def compare(
    per_user: dict[str, pd.DataFrame],
    references: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    alpha: float = ALPHA,
    bootstrap_metrics: Collection[str] = (),
) -> pd.DataFrame:
    """Every model against each ``(reference model, role)`` on each metric, both tests.

    ``per_user`` maps a model to its seed-averaged per-user values (index: user id). Returns
    one row per (model, reference, metric, test) with :data:`SIGNIFICANCE_COLUMNS`; Holm runs
    over the models within each (reference, metric, test). The confidence interval of the
    mean difference is the percentile bootstrap for ``bootstrap_metrics`` and the t-interval
    for the other metrics.
    """
    families = [
        [(model, reference, role) for model in per_user if model != reference]
        for reference, role in references
        if reference in per_user
    ]
    return _compare_families(per_user, families, metrics, alpha, bootstrap_metrics)


def compare_pairs(
    per_user: dict[str, pd.DataFrame],
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    alpha: float = ALPHA,
    bootstrap_metrics: Collection[str] = (),
) -> pd.DataFrame:
    """Chosen ``(model, reference)`` pairs, both tests, on each metric both have: the questions
    a study asks (a model against its ablations, say) rather than every row against one
    reference. Rows as :func:`compare`'s with ``role`` ``"pair"``; Holm runs over the pairs
    within each (metric, test). Raises :class:`BenchError` for a model without per-user values.
    """
    for model in dict.fromkeys(m for pair in pairs for m in pair):
        if model not in per_user:
            raise BenchError(f"no per-user test values for {model!r}: it cannot be paired")
    families = [[(model, reference, "pair") for model, reference in pairs]]
    return _compare_families(per_user, families, metrics, alpha, bootstrap_metrics)
