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
