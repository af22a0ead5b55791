"""Pass@k: the unbiased estimator of Chen et al. (2021), computed without huge binomials."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def pass_at_k(num_samples: int, num_correct: int, k: int) -> float:
    """Probability that at least one of k samples drawn without replacement from n is correct.

    ``1 - C(n-c, k) / C(n, k)``, evaluated as ``1 - prod_{i=n-c+1}^{n} (1 - k/i)`` so that n in the
    thousands stays exact to float precision.
    """
    n, c = num_samples, num_correct
    if not 0 <= c <= n:
        raise ValueError(f"num_correct={c} must be between 0 and num_samples={n}")
    if not 1 <= k <= n:
        raise ValueError(f"k={k} must be between 1 and num_samples={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def default_ks(num_samples: int) -> list[int]:
    """Powers of two up to n, and n itself: n=16 → [1, 2, 4, 8, 16]; n=12 → [1, 2, 4, 8, 12]."""
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples} must be at least 1")
    ks, k = [], 1
    while k <= num_samples:
        ks.append(k)
        k *= 2
    if ks[-1] != num_samples:
        ks.append(num_samples)
    return ks


def mean_pass_at_k(correct: Sequence[Sequence[bool]], ks: Sequence[int] | None = None) -> dict[str, float]:
    """Mean over problems of pass@k. correct: [problems][samples] booleans, the same n for every problem.

    Returns {"pass@1": ..., "pass@2": ..., ...} as fractions in [0, 1]; pass@1 is the mean over all samples.
    """
    if not correct:
        return {}
    sizes = {len(row) for row in correct}
    if len(sizes) != 1:
        raise ValueError(f"every problem needs the same number of samples, got {sorted(sizes)}")
    n = sizes.pop()
    ks = default_ks(n) if ks is None else list(ks)
    counts = [sum(bool(x) for x in row) for row in correct]
    return {f"pass@{k}": float(np.mean([pass_at_k(n, c, k) for c in counts])) for k in ks}
