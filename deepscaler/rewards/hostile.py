"""Pathological model outputs for robustness checks of the reward path.

A policy under RL writes anything: answers with enormous exponents or factorials, ``\\boxed`` without braces or
nested ten thousand deep, megabyte strings, unbalanced LaTeX, control characters and odd Unicode, huge
matrices, towers of ``\\frac``. :func:`hostile_responses` returns a deterministic list of such responses (with a
category each), so tests and ``benchmarks/hostile_outputs.py`` can check that grading them neither hangs nor
crashes and that every answer stays within its time bound.
"""

from __future__ import annotations

import random
from collections.abc import Callable

Maker = Callable[[random.Random], str]


def _wrap(answer: str, rng: random.Random) -> str:
    """A response shell around a final answer, in the R1 format most of the time."""
    style = rng.randrange(4)
    if style == 0:
        return f"<think>\nLet me think.\n</think>\n\nThe answer is $\\boxed{{{answer}}}$."
    if style == 1:
        return f"<think>{'hmm ' * rng.randrange(1, 50)}</think>\\[\\boxed{{{answer}}}\\]"
    if style == 2:
        return f"<think>work</think>{answer}"
    return f"\\boxed{{{answer}}}"


def _exponent(rng: random.Random) -> str:
    base, levels = rng.choice(["10", "9", "2", "7", "99999"]), rng.randrange(2, 8)
    tower = base
    for _ in range(levels):
        tower = f"{base}^{{{tower}}}"
    return _wrap(rng.choice([tower, f"2^{{{10 ** rng.randrange(6, 30)}}}", "10^{10^{10^{10}}}+1",
                             f"({rng.randrange(2, 10)}^{{{rng.randrange(10**8, 10**9)}}})^{{{10**9}}}"]), rng)


def _factorial(rng: random.Random) -> str:
    return _wrap(rng.choice([f"{10 ** rng.randrange(5, 12)}!", "(10^{100})!", f"{rng.randrange(10**6, 10**7)}!!",
                             "((((5!)!)!)!)!", f"\\Gamma({10 ** rng.randrange(6, 20)})",
                             f"\\binom{{{10 ** 12}}}{{{10 ** 6}}}"]), rng)


def _unbraced_box(rng: random.Random) -> str:
    return rng.choice([f"<think>x</think>\\boxed {rng.randrange(100)}", "<think>x</think>\\boxed",
                       "<think>x</think>\\boxed\\boxed\\boxed", "<think>x</think>\\boxed}",
                       f"<think>x</think>$\\boxed {rng.randrange(100)}$.", "\\boxed " + "9" * 5000,
                       "<think>x</think>\\boxed" + " " * 10000 + "7", "\\fbox 7 \\boxed 8"])


def _deep_nesting(rng: random.Random) -> str:
    depth = rng.choice([1000, 5000, 10000])
    kind = rng.randrange(4)
    if kind == 0:
        return "<think>x</think>" + "\\boxed{" * depth + "1" + "}" * depth
    if kind == 1:
        return "<think>x</think>" + "\\boxed{" * depth + "1"  # never closed
    if kind == 2:
        return _wrap("{" * depth + "2" + "}" * depth, rng)
    return _wrap("(" * depth + "3" + ")" * depth, rng)


def _megabyte(rng: random.Random) -> str:
    size = rng.choice([100_000, 500_000, 1_000_000])
    kind = rng.randrange(5)
    if kind == 0:
        return _wrap("9" * size, rng)
    if kind == 1:
        return "<think>" + "a" * size + "</think>\\boxed{7}"
    if kind == 2:
        return "<think>x</think>" + "\\boxed{1}" * (size // 9)
    if kind == 3:
        return _wrap("0." + "3" * size, rng)
    return "x" * size  # no think, no box


def _unbalanced(rng: random.Random) -> str:
    return rng.choice(["<think>x</think>\\boxed{\\frac{1}{2}", _wrap("\\left( \\frac{1}{2} \\right]", rng),
                       _wrap("}}}{{{", rng), _wrap("\\begin{pmatrix} 1 & 2", rng), "<think>x</think>\\boxed{}}}}}",
                       _wrap("\\sqrt{\\sqrt{\\sqrt{", rng), _wrap("$$$", rng), "</think></think><think>\\boxed{1}",
                       _wrap("\\frac{}{}", rng), _wrap("\\\\\\\\\\\\", rng), _wrap("\\end{matrix}", rng),
                       _wrap("1/0", rng), _wrap("0^{-1}", rng), _wrap("\\log(0)", rng)])


_ODD = ["\x00", "\x07", "\x1b[31m", "\u202e", "\u200b", "\u200d", "\ufeff", "\ufffd", "\U0001d7d5", "１２３",
        "\u0301", "\u0663", "ℵ₀", "∞", "\U0001f600", "\ud800", "\r\n", "\t", "\x7f", "Ⅻ"]


def _odd_text(rng: random.Random) -> str:
    noise = "".join(rng.choice(_ODD) for _ in range(rng.randrange(1, 40)))
    return rng.choice([_wrap(noise, rng), _wrap(f"7{noise}", rng), f"<think>{noise}</think>\\boxed{{{noise}}}",
                       noise + "\\boxed{7}" + noise, _wrap("\U0001d7d5", rng), _wrap("١٢", rng)])


def _matrix(rng: random.Random) -> str:
    size = rng.choice([50, 150, 300])
    rows = " \\\\ ".join(" & ".join(str(rng.randrange(-9, 10)) for _ in range(size)) for _ in range(size))
    environment = rng.choice(["pmatrix", "bmatrix", "matrix"])
    return _wrap(f"\\begin{{{environment}}} {rows} \\end{{{environment}}}", rng)


def _repeated_frac(rng: random.Random) -> str:
    count = rng.choice([100, 1000, 5000])
    kind = rng.randrange(3)
    if kind == 0:
        return _wrap("+".join(["\\frac{1}{2}"] * count), rng)
    if kind == 1:
        return _wrap("\\frac{1}{" * count + "2" + "}" * count, rng)
    return _wrap("\\frac12" * count, rng)


def _symbolic_bomb(rng: random.Random) -> str:
    return _wrap(rng.choice(["x^{x^{x^{x^{x}}}}", "(x+y+z)^{200}", "\\sum_{n=1}^{10^{10}} n^{n}",
                             "\\prod_{k=1}^{10^{9}} k", "\\int_0^\\infty e^{-x^{x}} dx", "\\sin(10^{10^{10}})",
                             "e^{e^{e^{e^{100}}}}", "\\sqrt[10^{9}]{2}", "10^{-10^{10}}",
                             "1" + "+1" * 20000]), rng)


CATEGORIES: dict[str, Maker] = {
    "exponent": _exponent,
    "factorial": _factorial,
    "unbraced_box": _unbraced_box,
    "deep_nesting": _deep_nesting,
    "megabyte": _megabyte,
    "unbalanced": _unbalanced,
    "odd_text": _odd_text,
    "matrix": _matrix,
    "repeated_frac": _repeated_frac,
    "symbolic_bomb": _symbolic_bomb,
}


def hostile_responses(count: int = 1000, seed: int = 0) -> list[tuple[str, str]]:
    """``count`` ``(category, response)`` pairs, the categories in turn, deterministic for ``seed``."""
    rng = random.Random(seed)
    makers = list(CATEGORIES.items())
    return [(makers[i % len(makers)][0], makers[i % len(makers)][1](rng)) for i in range(count)]


GOLDS = ("7", "\\frac{1}{2}", "1000", "x+1", "\\begin{pmatrix} 1 & 0 \\\\ 0 & 1 \\end{pmatrix}")
"""Gold answers paired with the hostile responses in turn."""
