"""Equivalence conventions (deepscaler.rewards.normalize) and the three graders on the labelled set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepscaler.rewards import is_equivalent

CASES = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "grader_cases.jsonl"


@pytest.mark.parametrize(
    ("pred", "gold", "expected"),
    [
        ("2/4", r"\frac{1}{2}", True),  # value over form
        (r"\frac{\sqrt2}{2}", r"\frac{1}{\sqrt{2}}", True),
        ("0.333", r"\frac13", False),  # approximation
        ("0.5000004", "1/2", False),
        ("0.0833333333333333", r"\frac{1}{12}", True),  # float rendering
        (r"0.\overline{3}", r"\frac13", True),
        ("0.1", r"10\%", True),
        ("10", "0.1", False),  # no % on either side: no x100
        (r"5\text{ cm}", "5", True),
        ("4t", "4", False),  # a variable is not a unit
        ("(1,2)", "[1,2]", False),
        (r"-2\le x\le 7", r"x\in[-2,7]", True),
        ("-2,1", "1,-2", True),
        ("1728", r"1331 \text{ and } 1728", False),  # subset of a list
        ("(3,2)", "(2,3)", False),
        ("x=3", "3", True),
        ("7 = 11a+c", "11a+c", False),
        (r"\text{(B)}", "B", True),
        ("1,000", "1000", True),
        ("32, 349", "32349", False),
        ("12345678901234567891", "12345678901234567890", False),
        (r"e^{i\pi}", "-1", True),
        (r"\begin{pmatrix}1&2\\3&4\end{pmatrix}", r"\left[\begin{array}{cc}1&2\\3&4\end{array}\right]", True),
    ],
)
def test_conventions(pred, gold, expected):
    assert is_equivalent(pred, gold) is expected


def test_whole_responses_and_list_golds():
    response = "<think>maybe \\boxed{5}</think>So \\boxed{4}."
    assert is_equivalent(response, "4")
    assert not is_equivalent(response, "5")
    assert is_equivalent(response, ["3", "4"])
    assert not is_equivalent("<think>the answer is \\boxed{4}", "4")


def test_graders_by_name_differ_where_documented():
    # DeepScaleR rejects unreduced fractions by design; math-verify alone strips single-letter "units".
    assert is_equivalent("2/4", "1/2") and not is_equivalent("2/4", "1/2", grader="deepscaler")
    assert is_equivalent("4t", "4", grader="math_verify") and not is_equivalent("4t", "4")
    with pytest.raises(ValueError, match="grader"):
        is_equivalent("1", "1", grader="nope")


def test_labelled_set_accuracy():
    cases = [json.loads(line) for line in CASES.read_text().splitlines() if line.strip()]
    assert len(cases) >= 150
    wrong = [c["id"] for c in cases if is_equivalent(c["pred"], c["gold"]) != c["label"]]
    assert len(wrong) / len(cases) <= 0.03, wrong
