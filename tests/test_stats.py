"""Statistics on synthetic per-user values with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import stats


def _users(values, ids=None) -> pd.Series:
    ids = ids if ids is not None else [f"u{i}" for i in range(len(values))]
    return pd.Series(np.asarray(values, dtype=float), index=pd.Index(ids, name="user"))


def test_identical_values_are_not_significant():
    rng = np.random.default_rng(0)
    a = _users(rng.random(100))
    result = stats.paired_tests(a, a.copy())
    # scipy gives NaN for the t-test of identical samples: reported as p = 1.
    assert result["wilcoxon_p"] == 1.0 and result["t_p"] == 1.0
    assert result["mean_diff"] == 0.0 and result["n_users"] == 100
    assert result["cohens_d"] == 0.0 and result["rank_biserial"] == 0.0
    table = stats.compare({"A": a.to_frame("m"), "B": a.to_frame("m")}, [("A", "best")], ["m"])
    assert not table["significant"].any()
    assert (table["p_holm"] == 1.0).all()


def test_a_clear_shift_is_significant_after_correction():
    rng = np.random.default_rng(1)
    base = rng.random(200)
    ref = _users(base)
    frames = {
        "ref": ref.to_frame("m"),
        "better": _users(base + 0.2 + rng.normal(0, 0.05, 200)).to_frame("m"),
        "same": _users(base + rng.normal(0, 0.05, 200)).to_frame("m"),
    }
    table = stats.compare(frames, [("ref", "best")], ["m"])
    assert set(table["test"]) == {"wilcoxon", "t"}
    better = table[table["model"] == "better"].set_index("test")
    assert better["significant"].all() and (better["p_holm"] < 1e-10).all()
    assert better.loc["wilcoxon", "effect_size"] == pytest.approx(1.0)  # every user improves
    assert better.loc["t", "effect_size"] > 3  # shift 0.2 against noise sd ~0.05
    assert better.loc["t", "mean_diff"] == pytest.approx(0.2, abs=0.02)
    same = table[table["model"] == "same"]
    assert not same["significant"].any()
    # Holm runs per test over the models compared with the same reference.
    for test in ("wilcoxon", "t"):
        group = table[table["test"] == test]
        _, expected = stats.holm(group["p_value"].tolist())
        assert group["p_holm"].tolist() == pytest.approx(list(expected))


def test_holm_matches_a_hand_computation():
    # sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone: 0.06
    reject, adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert reject.tolist() == [True, False, False, True]
    reject, adjusted = stats.holm([float("nan"), 0.001])
    assert adjusted == pytest.approx([1.0, 0.002]) and reject.tolist() == [False, True]


def test_effect_sizes_sign_and_magnitude():
    assert stats.cohens_d(np.array([1.0, 2.0, 3.0])) == pytest.approx(2.0)  # mean 2 / sd 1
    assert stats.cohens_d(np.array([-1.0, -2.0, -3.0])) == pytest.approx(-2.0)
    # |d| ranks 1..4; R+ = 1 + 3 + 4 = 8, R- = 2 -> (8 - 2) / 10
    assert stats.rank_biserial(np.array([1.0, -2.0, 3.0, 4.0])) == pytest.approx(0.6)
    assert stats.rank_biserial(np.array([-1.0, 2.0, -3.0, -4.0])) == pytest.approx(-0.6)
    assert stats.rank_biserial(np.array([0.0, 0.0, 5.0])) == pytest.approx(1.0)  # zeros dropped
    worse = stats.paired_tests(_users([0.1, 0.2, 0.3, 0.4]), _users([0.3, 0.5, 0.4, 0.9]))
    assert worse["mean_diff"] < 0 and worse["cohens_d"] < 0 and worse["rank_biserial"] == -1.0


def test_pairing_is_by_user_id_over_common_users():
    a = _users([0.5, 0.1, 0.9, 0.3], ids=["u3", "u1", "u9", "u2"])
    b = _users([0.2, 0.3, 0.0], ids=["u1", "u2", "u3"])
    result = stats.paired_tests(a, b)
    assert result["n_users"] == 3  # u9 has no partner
    assert result["mean_diff"] == pytest.approx(np.mean([0.1 - 0.2, 0.3 - 0.3, 0.5 - 0.0]))


def test_mean_std_equal_numpy_and_count_seeds():
    values = [0.1, 0.25, 0.3]
    mean, std, n = stats.mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert n == 3
    mean, std, n = stats.mean_std([0.4])
    assert mean == 0.4 and np.isnan(std) and n == 1


def test_seed_average_per_user():
    seed0 = pd.DataFrame({"m": [1.0, 0.0, 0.5]}, index=["a", "b", "c"])
    seed1 = pd.DataFrame({"m": [0.0, 1.0]}, index=["b", "a"])  # other order, c not evaluated
    averaged = stats.average_over_seeds([seed0, seed1])
    assert averaged["m"].to_dict() == {"a": 1.0, "b": 0.0, "c": 0.5}


def test_difference_tests_run_row_wise_and_match_the_paired_tests():
    rng = np.random.default_rng(2)
    a, b = rng.random((3, 80)), rng.random((3, 80))
    a[2] = b[2]  # a row without any difference: p = 1, as in paired_tests
    batch = stats.difference_tests(a - b)
    for row in range(3):
        one = stats.paired_tests(_users(a[row]), _users(b[row]))
        assert batch["t_p"][row] == pytest.approx(one["t_p"])
        assert batch["wilcoxon_p"][row] == pytest.approx(one["wilcoxon_p"])
    assert batch["t_p"][2] == 1.0 and batch["wilcoxon_p"][2] == 1.0


def test_t_interval_is_the_textbook_interval():
    from scipy.stats import sem, t

    diff = np.array([0.1, -0.2, 0.4, 0.0, 0.3, 0.05])
    expected = t.interval(0.95, diff.size - 1, loc=diff.mean(), scale=sem(diff))
    assert stats.t_interval(diff) == pytest.approx(expected)
    assert np.isnan(stats.t_interval(np.array([0.5]))).all()
    assert stats.t_interval(np.full(5, 0.2)) == pytest.approx((0.2, 0.2))


def test_bootstrap_interval_is_seeded_and_depends_on_its_own_values_only():
    rng = np.random.default_rng(3)
    x, y, z = rng.normal(0.1, 1.0, 500), rng.exponential(1.0, 500), rng.normal(0, 1, 300)
    together = stats.bootstrap_intervals([x, y, z])
    assert together == stats.bootstrap_intervals([x, y, z])  # a rebuild: the same numbers
    # Each interval is the same alone as beside others (same resamples per length; BLAS may
    # sum a one-column product in another order, hence approx).
    assert together[0] == pytest.approx(stats.bootstrap_intervals([x])[0], rel=1e-12)
    assert together[2] == pytest.approx(stats.bootstrap_intervals([z])[0], rel=1e-12)
    # Another seed draws other resamples.
    assert stats.bootstrap_intervals([x], seed=1)[0] != together[0]
    # Normal data, 500 users: the percentile interval is close to the t-interval.
    t_low, t_high = stats.t_interval(x)
    low, high = together[0]
    assert low == pytest.approx(t_low, abs=0.02) and high == pytest.approx(t_high, abs=0.02)
    # Skewed data: the interval is skewed too (longer towards the long tail).
    low, high = together[1]
    assert high - y.mean() > y.mean() - low
    assert stats.bootstrap_intervals([np.full(10, 0.3), np.array([])]) == [
        pytest.approx((0.3, 0.3)),
        (pytest.approx(np.nan, nan_ok=True), pytest.approx(np.nan, nan_ok=True)),
    ]


def test_compare_bootstraps_the_asked_metric_and_t_intervals_the_others():
    rng = np.random.default_rng(4)
    ref = pd.DataFrame({"m": rng.random(200), "k": rng.random(200)})
    better = ref + rng.normal(0.1, 0.05, (200, 2))
    frames = {"ref": ref, "better": better}
    table = stats.compare(frames, [("ref", "best")], ["m", "k"], bootstrap_metrics=["m"])
    methods = table.groupby("metric")["ci_method"].unique()
    assert list(methods["m"]) == ["bootstrap"] and list(methods["k"]) == ["t"]
    m = table[table["metric"] == "m"]
    diff = (better["m"] - ref["m"]).to_numpy()
    assert (m["ci_low"] == stats.bootstrap_intervals([diff])[0][0]).all()
    k = table[table["metric"] == "k"].iloc[0]
    low, high = stats.t_interval((better["k"] - ref["k"]).to_numpy())
    assert (k["ci_low"], k["ci_high"]) == pytest.approx((low, high))
    assert (table["ci_low"] < table["mean_diff"]).all()
    assert (table["mean_diff"] < table["ci_high"]).all()


def test_an_unknown_test_is_a_bench_error():
    from bench.errors import BenchError

    assert stats.check_test("t") == "t" and stats.check_test("wilcoxon") == "wilcoxon"
    with pytest.raises(BenchError, match="sign"):
        stats.check_test("sign")


def _zero_mean_skewed_differences(rng, draws: int, users: int) -> np.ndarray:
    """Per-user differences shaped like real NDCG differences: 70% of users 0; of the others,
    70% gain a little (exponential, mean 0.05) and 30% lose more (exponential, mean 0.35 / 3),
    so the mean is exactly 0 (0.7 * 0.05 = 0.3 * 0.35 / 3) while the distribution is skewed."""
    nonzero = rng.random((draws, users)) < 0.3
    gains = rng.random((draws, users)) < 0.7
    size = rng.exponential(1.0, (draws, users))
    diff = np.where(gains, 0.05 * size, -(0.35 / 3) * size)
    return np.where(nonzero, diff, 0.0)


def test_t_test_keeps_its_level_where_wilcoxon_does_not():
    # 2,000 draws of 1,000 users under a zero-mean null (about 0.5 s): the t-test rejects
    # about alpha of them; Wilcoxon tests symmetry about 0, which this skewed null violates.
    rng = np.random.default_rng(2023)
    diff = _zero_mean_skewed_differences(rng, draws=2000, users=1000)
    assert abs(diff.mean()) < 1e-3  # the population mean is 0
    tests = stats.difference_tests(diff)
    t_rate = float(np.mean(tests["t_p"] < stats.ALPHA))
    wilcoxon_rate = float(np.mean(tests["wilcoxon_p"] < stats.ALPHA))
    assert 0.03 <= t_rate <= 0.07, t_rate
    assert wilcoxon_rate > 0.5, wilcoxon_rate


def test_compare_pairs_tests_the_chosen_pairs_with_holm_over_them():
    from bench.errors import BenchError

    rng = np.random.default_rng(5)
    base = pd.DataFrame({"m": rng.random(300)})
    frames = {
        "A": base + rng.normal(0.05, 0.05, (300, 1)),
        "A-ablated": base,
        "B": base + rng.normal(0.0, 0.05, (300, 1)),
    }
    pairs = [("A", "A-ablated"), ("B", "A-ablated")]
    table = stats.compare_pairs(frames, pairs, ["m"], bootstrap_metrics=["m"])
    assert set(table["role"]) == {"pair"} and len(table) == 4  # two pairs x two tests
    t = table[table["test"] == "t"].set_index("model")
    raw = [stats.paired_tests(frames[m]["m"], frames[r]["m"])["t_p"] for m, r in pairs]
    assert list(t["p_holm"]) == pytest.approx(list(stats.holm(raw)[1]))
    assert t.loc["A", "significant"] and not t.loc["B", "significant"]
    assert (table["ci_method"] == "bootstrap").all()
    with pytest.raises(BenchError, match="'C'"):
        stats.compare_pairs(frames, [("A", "C")], ["m"])
