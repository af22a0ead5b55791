"""DeepScaleR's mathd-or-sympy decision reproduces the behaviour of its reward code
(agentica-project/rllm)."""

from __future__ import annotations

import pytest

from deepscaler.rewards.deepscaler_rules import (
    deepscaler_equal,
    deepscaler_is_correct,
    grade_mathd,
    grade_sympy,
)


@pytest.mark.parametrize(
    ("given", "gold", "mathd", "sympy"),
    [
        (r"\frac{1}{2}", "0.5", True, True),
        ("142", "142.0", False, True),
        ("x=5", "5", True, False),
        (r"\text{(A)}", "A", False, True),
        (r"\sqrt{2}/2", r"\frac{\sqrt2}{2}", False, True),
        (r"4\sqrt{3}", r"\sqrt{48}", False, True),
        ("x^2+2x+1", "(x+1)^2", False, True),
        ("1,000", "1000", False, True),
        ("5 cm", "5", False, True),
        (r"\$5", "5", True, True),
        (r"10\%", "10", True, True),
        ("3", "3.0000001", False, True),
        ("Yes", "yes", False, True),
        ("2/4", "1/2", False, False),
        ("[1,2)", "(1,2)", False, False),
        ("0.333", "1/3", False, False),
    ],
)
def test_spec_table(given, gold, mathd, sympy):
    assert grade_mathd(given, gold) is mathd
    assert grade_sympy(given, gold) is sympy
    assert deepscaler_equal(given, gold) is (mathd or sympy)


def test_deepscaler_format_rules():
    assert deepscaler_is_correct("<think>a</think>\\boxed{12} no \\boxed{13}", "13") is True
    assert deepscaler_is_correct("a</think>\\boxed{13}", "13") is None  # needs both tags
    assert deepscaler_is_correct("<think>a</think>\\fbox{13}", "13") is None  # \fbox rejected
    assert deepscaler_is_correct("<think>\\boxed{13}</think>13", "13") is None
    assert deepscaler_is_correct("<think>a</think>\\boxed{13}", ["\\boxed{12}", 13.0]) is True
