"""How sure an accuracy is: a bootstrap interval of one model's accuracy, and a paired test of two models
scored on the same items (a compressed model against the teacher).

Pure functions of per-item correctness (a sequence of bools, one per test item, in the same order for every
model). Plain numpy; deterministic for a seed.

- `accuracy_interval`: the percentile bootstrap 95% interval of an accuracy, from RESAMPLES (2000) resamples
  of the items with replacement. The number of correct items in a resample of n items of which k are correct
  is Binomial(n, k/n), so the resamples are drawn as that count: the same distribution as resampling the
  items one by one, in O(RESAMPLES) rather than O(RESAMPLES * n) memory.
- `mcnemar`: the exact two-sided McNemar test. Only the discordant items tell two models apart: b, the items
  only the model gets right, and c, the items only the reference gets right. Under "equally accurate" each
  discordant item is a fair coin, so p = min(1, 2 P(X <= min(b, c))) for X ~ Binomial(b + c, 1/2).
- `difference_interval`: the percentile bootstrap 95% interval of the paired accuracy difference (model minus
  reference), resampling items (a multinomial draw over the four right/wrong combinations).
- `compare`: all of it for one model against the reference; `within_noise` when p >= ALPHA (0.05).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

RESAMPLES = 2000  # bootstrap resamples: between seeds the ends of an interval move by about 1/n (one item)
LEVEL = 0.95  # the intervals' coverage
ALPHA = 0.05  # a McNemar p at or above this: the difference from the reference is within noise


def _as_bools(correct: Sequence[bool] | np.ndarray, what: str = "correct") -> np.ndarray:
    array = np.asarray(correct)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"{what}: expected a non-empty sequence of per-item correctness, got shape {array.shape}")
    return array.astype(bool)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def accuracy_interval(correct: Sequence[bool] | np.ndarray, seed: int, resamples: int = RESAMPLES,
                      level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap `level` interval (lo, hi) of the accuracy mean(correct)."""
    items = _as_bools(correct)
    n = items.size
    rng = np.random.default_rng(seed)
    accuracies = rng.binomial(n, items.mean(), size=resamples) / n
    return _percentiles(accuracies, level)


def discordant(model: Sequence[bool] | np.ndarray, reference: Sequence[bool] | np.ndarray) -> tuple[int, int]:
    """(b, c): the items only `model` gets right, and those only `reference` gets right."""
    m, r = _as_bools(model, "model"), _as_bools(reference, "reference")
    if m.shape != r.shape:
        raise ValueError(f"paired comparison needs the same items: {m.size} against {r.size}")
    return int(np.sum(m & ~r)), int(np.sum(~m & r))


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p of b against c discordant items: min(1, 2 P(X <= min(b, c))), X ~ Bin(b+c, 1/2);
    1.0 when there is no discordant item."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers; the one division rounds correctly


def difference_interval(model: Sequence[bool] | np.ndarray, reference: Sequence[bool] | np.ndarray, seed: int,
                        resamples: int = RESAMPLES, level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap `level` interval of accuracy(model) - accuracy(reference), resampling items."""
    b, c = discordant(model, reference)
    n = len(model)
    rng = np.random.default_rng(seed)
    # only-model, only-reference, and the rest (both right or both wrong: no effect on the difference)
    counts = rng.multinomial(n, [b / n, c / n, (n - b - c) / n], size=resamples)
    return _percentiles((counts[:, 0] - counts[:, 1]) / n, level)


def compare(model: Sequence[bool] | np.ndarray, reference: Sequence[bool] | np.ndarray, seed: int) -> dict[str, Any]:
    """`model` against `reference` on the same items: b, c, the McNemar p, the accuracy difference (model minus
    reference) and its bootstrap interval, and whether the difference is within noise (p >= ALPHA)."""
    b, c = discordant(model, reference)
    p = mcnemar_p(b, c)
    return {"b": b, "c": c, "p_mcnemar": p, "diff": (b - c) / len(model),
            "diff_ci95": list(difference_interval(model, reference, seed)), "within_noise": p >= ALPHA}
