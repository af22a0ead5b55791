"""Synthetic multi-digit addition/subtraction problems with a column-by-column reasoning trace.

The CPU demo needs a task a few-hundred-thousand-parameter model can learn in minutes, written exactly like
the real recipe's data: the problem text, then the DeepScaleR instruction, rendered with the chat template,
answered by ``<think>`` reasoning ``</think>`` and a ``\\boxed{}`` answer that the real math reward grades.

The trace works one column at a time from the units, so every step depends only on two digits, a carry
(or borrow) and the line above; each line ends with the digits of the result found so far:

    What is 347 + 589?  →  <think>
                           7+9=16 -> 6
                           4+8+1=13 -> 36
                           3+5+1=9 -> 936
                           </think>
                           \\boxed{936}

Held-out problems are a fixed subset of the problem space chosen by a stable hash of ``(a, op, b)``, so
training problems can never leak into the evaluation set, whatever the counts or seeds.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from deepscaler.data.problems import Problem

OPERATIONS = ("+", "-")


@dataclass(frozen=True)
class ArithmeticTaskConfig:
    """Which problems the generator draws."""

    min_digits: int = 2
    """Fewest digits of an operand (2 → operands start at 10)."""
    max_digits: int = 3
    """Most digits of an operand (3 → operands up to 999)."""
    operations: tuple[str, ...] = ("+", "-")
    """Operators to draw from, any of ``+`` and ``-``. Subtraction keeps the result non-negative (a ≥ b)."""
    held_out_fraction: float = 0.125
    """Share of the problem space (by a stable hash) reserved for evaluation and never drawn for training."""

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits:
            raise ValueError(f"min_digits/max_digits must satisfy 1 <= min_digits <= max_digits, "
                             f"got {self.min_digits}/{self.max_digits}")
        unknown = [op for op in self.operations if op not in OPERATIONS]
        if not self.operations or unknown:
            raise ValueError(f"operations must be a non-empty subset of {OPERATIONS}, got {self.operations}")
        if not 0.0 < self.held_out_fraction < 1.0:
            raise ValueError(f"held_out_fraction must be in (0, 1), got {self.held_out_fraction}")


@dataclass(frozen=True)
class ArithmeticProblem:
    """One problem ``a op b`` with its answer and the gold response (trace + boxed answer)."""

    a: int
    op: str
    b: int
    problem: str = field(init=False)
    answer: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "problem", f"What is {self.a} {self.op} {self.b}?")
        object.__setattr__(self, "answer", str(self.a + self.b if self.op == "+" else self.a - self.b))

    @property
    def key(self) -> str:
        """Stable identity, also the problem id: ``"347+589"``."""
        return f"{self.a}{self.op}{self.b}"

    def trace(self) -> str:
        """The column-by-column reasoning that goes between ``<think>`` and ``</think>``."""
        return column_trace(self.a, self.op, self.b)

    def gold_response(self) -> str:
        """What a perfect model writes after the chat template's assistant marker (EOS not included)."""
        return f"<think>\n{self.trace()}</think>\n\\boxed{{{self.answer}}}"


def column_trace(a: int, op: str, b: int) -> str:
    """Digit-by-digit working of ``a op b`` from the units column, one line per column of ``a``.

    Addition line: ``x+y[+1]=s -> partial``; subtraction line: ``x-y[-1]=d -> partial`` where a negative ``d``
    is written as ``x+10-y[-1]=d`` (a borrow from the next column). ``partial`` is the digits of the result
    found so far; the last line's partial (leading zeros dropped) is the answer.
    """
    if op not in OPERATIONS:
        raise ValueError(f"op must be one of {OPERATIONS}, got {op!r}")
    if op == "-" and a < b:
        raise ValueError(f"subtraction needs a >= b for a non-negative result, got {a} - {b}")
    digits_a, digits_b = str(a)[::-1], str(b)[::-1]
    width = max(len(digits_a), len(digits_b))
    carry, partial, lines = 0, "", []
    for column in range(width):
        x = int(digits_a[column]) if column < len(digits_a) else 0
        y = int(digits_b[column]) if column < len(digits_b) else 0
        carry_text = f"{op}1" if carry else ""
        if op == "+":
            total = x + y + carry
            expression = f"{x}+{y}{carry_text}={total}"
            digit, carry = total % 10, total // 10
        else:
            total = x - y - carry
            if total < 0:
                total += 10
                expression = f"{x}+10-{y}{carry_text}={total}"
                carry = 1
            else:
                expression = f"{x}-{y}{carry_text}={total}"
                carry = 0
            digit = total
        partial = str(digit) + partial
        if column == width - 1 and carry:
            partial = "1" + partial
        lines.append(f"{expression} -> {partial}\n")
    return "".join(lines)


def is_held_out(a: int, op: str, b: int, held_out_fraction: float = 0.125) -> bool:
    """Whether ``a op b`` belongs to the evaluation part of the problem space (stable across runs)."""
    digest = hashlib.blake2b(f"{a}{op}{b}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < held_out_fraction


def sample_problems(count: int, config: ArithmeticTaskConfig | None = None, *, split: str = "train",
                    seed: int = 0) -> list[ArithmeticProblem]:
    """``count`` distinct problems from the ``"train"`` or ``"test"`` part of the problem space.

    The split is decided by :func:`is_held_out`, so any train sample is disjoint from any test sample.
    Operand digit counts are drawn uniformly, then the operands uniformly within their digit count.
    """
    config = config or ArithmeticTaskConfig()
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    want_held_out = split == "test"
    rng = random.Random(f"arithmetic-{split}-{seed}")
    seen: set[str] = set()
    problems: list[ArithmeticProblem] = []
    attempts = 0
    while len(problems) < count:
        attempts += 1
        if attempts > 200 * count + 1000:
            raise ValueError(f"could not draw {count} distinct {split} problems from {config}; "
                             "lower the count or widen the digit range")
        op = rng.choice(config.operations)
        a = _draw_operand(rng, config)
        b = _draw_operand(rng, config)
        if op == "-" and a < b:
            a, b = b, a
        if is_held_out(a, op, b, config.held_out_fraction) != want_held_out:
            continue
        problem = ArithmeticProblem(a, op, b)
        if problem.key in seen:
            continue
        seen.add(problem.key)
        problems.append(problem)
    return problems


def _draw_operand(rng: random.Random, config: ArithmeticTaskConfig) -> int:
    digits = rng.randint(config.min_digits, config.max_digits)
    low = 10 ** (digits - 1) if digits > 1 else 0
    return rng.randint(low, 10**digits - 1)


def to_problems(problems: list[ArithmeticProblem], source: str = "arithmetic") -> list[Problem]:
    """The problems as :class:`deepscaler.data.Problem` records (what the training loop and evaluation take),
    with the gold response in ``extra['gold_response']``."""
    return [Problem(id=f"{source}-{p.key}", problem=p.problem, answers=[p.answer], source=source,
                    extra={"gold_response": p.gold_response(), "a": p.a, "op": p.op, "b": p.b})
            for p in problems]
