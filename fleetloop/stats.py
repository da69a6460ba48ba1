"""Statistics of success rates: Wilson intervals and the exact McNemar test of paired outcomes.

Used wherever fleetloop reports a success rate (the evaluator, `fleetloop eval`, the benches).
"""

from __future__ import annotations

import math


def wilson(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """Wilson score 95 % interval [low, high] of a binomial rate."""
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def mcnemar_exact(a: list[bool], b: list[bool]) -> float:
    """Two-sided exact McNemar p-value of paired outcomes ``a`` and ``b`` (binomial test on the
    discordant pairs)."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return round(min(1.0, 2 * tail), 6)
