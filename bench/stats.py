"""Statistics behind the leaderboards: seed aggregation and paired significance tests.

Design (also stated in every leaderboard):

- A model's value for a user is the mean of that user's test values over the model's seeds, so
  seeds reduce noise per user instead of multiplying the number of "samples".
- Two models are paired by user id: only users evaluated for both enter a test.
- Two-sided Wilcoxon signed-rank test (per-user ranking metrics are zero-inflated and far from
  normal; this is the test that decides the markers) and the paired t-test beside it.
- Holm's step-down correction over the models compared with the same reference, on the same
  metric, with the same test (one family per reference x metric x test).
- Effect sizes of the paired differences (model - reference): Cohen's d_z (mean / sd) for the
  t-test and the matched-pairs rank-biserial correlation for Wilcoxon.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

ALPHA = 0.05

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
    "statistic",
    "p_value",
    "p_holm",
    "effect_size",
    "effect_size_kind",
    "significant",
]


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


def paired_tests(model: pd.Series, reference: pd.Series) -> dict[str, Any]:
    """Wilcoxon signed-rank and paired t-test of ``model - reference``, paired by index.

    Missing or undefined p-values (no users, no non-zero difference, zero variance) are
    reported as 1: such data carries no evidence of a difference.
    """
    from scipy.stats import ttest_rel, wilcoxon

    common = model.index.intersection(reference.index)
    a = model.loc[common].to_numpy(dtype=float)
    b = reference.loc[common].to_numpy(dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    diff = a - b
    out: dict[str, Any] = {
        "n_users": int(diff.size),
        "mean_model": float(np.mean(a)) if a.size else float("nan"),
        "mean_reference": float(np.mean(b)) if b.size else float("nan"),
        "mean_diff": float(np.mean(diff)) if diff.size else float("nan"),
        "wilcoxon_statistic": float("nan"),
        "wilcoxon_p": 1.0,
        "t_statistic": float("nan"),
        "t_p": 1.0,
        "rank_biserial": rank_biserial(diff),
        "cohens_d": cohens_d(diff),
    }
    if diff.size < 2 or not np.any(diff != 0):
        return out
    with warnings.catch_warnings():
        # scipy warns on ties, zeros and zero variance; those cases are handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)
        w = wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        t = ttest_rel(a, b, alternative="two-sided")
    out["wilcoxon_statistic"] = float(w.statistic)
    out["wilcoxon_p"] = _p_or_one(w.pvalue)
    out["t_statistic"] = float(t.statistic)
    out["t_p"] = _p_or_one(t.pvalue)
    return out


def _p_or_one(p: Any) -> float:
    p = float(p)
    return 1.0 if np.isnan(p) else p


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


def compare(
    per_user: dict[str, pd.DataFrame],
    references: Sequence[tuple[str, str]],
    metrics: Sequence[str],
    alpha: float = ALPHA,
) -> pd.DataFrame:
    """Every model against each ``(reference model, role)`` on each metric, both tests.

    ``per_user`` maps a model to its seed-averaged per-user values (index: user id). Returns
    one row per (model, reference, metric, test) with :data:`SIGNIFICANCE_COLUMNS`; Holm runs
    over the models within each (reference, metric, test).
    """
    rows: list[dict[str, Any]] = []
    for reference, role in references:
        if reference not in per_user:
            continue
        ref_frame = per_user[reference]
        for metric in metrics:
            if metric not in ref_frame:
                continue
            family: list[dict[str, Any]] = []
            for model, frame in per_user.items():
                if model == reference or metric not in frame:
                    continue
                r = paired_tests(frame[metric], ref_frame[metric])
                base = {
                    "model": model,
                    "reference": reference,
                    "role": role,
                    "metric": metric,
                    "n_users": r["n_users"],
                    "mean_model": r["mean_model"],
                    "mean_reference": r["mean_reference"],
                    "mean_diff": r["mean_diff"],
                }
                family.append(
                    {
                        **base,
                        "test": "wilcoxon",
                        "statistic": r["wilcoxon_statistic"],
                        "p_value": r["wilcoxon_p"],
                        "effect_size": r["rank_biserial"],
                        "effect_size_kind": "rank_biserial",
                    }
                )
                family.append(
                    {
                        **base,
                        "test": "t",
                        "statistic": r["t_statistic"],
                        "p_value": r["t_p"],
                        "effect_size": r["cohens_d"],
                        "effect_size_kind": "cohens_d",
                    }
                )
            for test in ("wilcoxon", "t"):
                group = [row for row in family if row["test"] == test]
                reject, adjusted = holm([row["p_value"] for row in group], alpha)
                for row, rej, adj in zip(group, reject, adjusted, strict=True):
                    row["p_holm"] = float(adj)
                    row["significant"] = bool(rej)
                rows.extend(group)
    return pd.DataFrame(rows, columns=SIGNIFICANCE_COLUMNS)
