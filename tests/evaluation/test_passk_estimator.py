"""Pass@k against brute-force enumeration of k-subsets, and the metric/table helpers."""

from __future__ import annotations

import itertools
import math

import pytest

from deepscaler.evaluation import (
    average_row,
    dataset_metrics,
    default_ks,
    markdown_table,
    mean_pass_at_k,
    pass_at_k,
)


def _brute_force(n: int, c: int, k: int) -> float:
    outcomes = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
def test_matches_enumeration_of_all_subsets(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(_brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_stable_for_large_n_and_edge_cases():
    # Closed form with exact integers as the reference; the product form must not overflow or lose precision.
    n, c, k = 1000, 7, 64
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)
    assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12)
    assert pass_at_k(16, 0, 16) == 0.0 and pass_at_k(16, 1, 16) == 1.0 and pass_at_k(16, 4, 1) == 0.25
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_default_ks():
    assert default_ks(16) == [1, 2, 4, 8, 16]
    assert default_ks(12) == [1, 2, 4, 8, 12]
    assert default_ks(2) == [1, 2] and default_ks(1) == [1]


def test_pass_at_1_is_the_mean_over_samples_and_pass_at_n_any_correct():
    correct = [[True, False, False, False], [True, True, False, True], [False] * 4]
    metrics = mean_pass_at_k(correct)
    assert list(metrics) == ["pass@1", "pass@2", "pass@4"]
    assert metrics["pass@1"] == pytest.approx(4 / 12)
    assert metrics["pass@4"] == pytest.approx(2 / 3)
    assert metrics["pass@2"] == pytest.approx((_brute_force(4, 1, 2) + _brute_force(4, 3, 2) + 0) / 3)
    with pytest.raises(ValueError, match="same number of samples"):
        mean_pass_at_k([[True], [True, False]])


def test_dataset_metrics_average_and_table():
    a = dataset_metrics([[True, False], [False, False]], [[10, 20], [30, 40]], [["stop", "length"], ["stop"] * 2])
    b = dataset_metrics([[True, True]], [[5, 5]], [["stop", "stop"]])
    assert a == {"pass@1": 0.25, "pass@2": 0.5, "n": 2, "problems": 2, "mean_response_tokens": 25.0,
                 "truncated_fraction": 0.25}
    average = average_row({"a": a, "b": b})
    assert average == {"pass@1": pytest.approx(0.625), "pass@2": pytest.approx(0.75), "n": 2, "problems": 3}
    table = markdown_table({"a": a, "b": b, "average": average})
    assert "| a | 25.0 | 50.0 | 2 | 2 |" in table and "| average | 62.5 | 75.0 | 3 | 2 |" in table
