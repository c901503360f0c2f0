"""Group-sequential boundaries: how much evidence a look at accumulating data needs.

A rollout looks at the same, growing evidence once per analysis interval. Testing every look
at the full ``significance`` would roll back a good candidate far more often than
``significance`` over a rollout; the old correction (``significance / k`` at look k) keeps
the total only below ``significance * (1 + 1/2 + ... + 1/K)``, which grows without bound with
the number of looks.

Here the looks are designed jointly (Lan and DeMets' alpha spending; Jennison and Turnbull,
*Group Sequential Methods*, ch. 7 and 19):

- A :class:`Design` names the level ``alpha`` and the information each planned look adds
  (for the error-rate test, proportional to ``w * (1 - w)`` at candidate share ``w``: the
  information of a two-sample comparison of rates). The rollout's steps give the plan.
- ``(1 - tail_share) * alpha`` is spent over the planned looks by the spending function
  ``alpha(t) = alpha * t ** rho`` (Kim and DeMets' power family; ``rho = 3`` is close to
  O'Brien and Fleming's boundary, ``rho = 1`` to Pocock's) at information fraction ``t``.
- ``tail_share * alpha`` is spent over the looks past the plan (a step held while evidence
  accumulates, an abTest that runs on): look ``K + j`` has spent ``tail * j / (K + j)`` of
  it. The total never reaches ``alpha``, however many looks there are.
- The boundaries are computed exactly, under the normal limit of the cumulative score, by
  the recursive numerical integration of Armitage, McPherson and Rowe (1969): the
  sub-density of "not stopped yet" is carried from look to look on a fine grid, and the
  boundary of look k is the point above which exactly the spending increment of look k lies.
- A look rejects when the *exact* one-sided p-value of the cumulative counts (the
  conditional test, :func:`.stats.rate_increase_test`) is below the boundary's nominal
  level ``1 - Phi(c_k)``. At small counts the exact test is conservative, so each look's
  real level is at most its nominal one, and the A/A rate stays within ``alpha``
  (``tests/unit/analysis``, and ``benchmarks/analysis`` on simulated traffic).

Boundaries are cached per design (:func:`nominal_levels`); one design takes a few
milliseconds to a few hundred for a 1000-look abTest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from scipy import stats
else:
    from ._lazy import scipy_stats as stats

# Grid step as a share of the smallest look's standard deviation, and how many standard
# deviations the grid and the kernels reach. The grid puts each look's crossing probability
# within about 0.5% of its target (tests/unit/analysis/test_sequential.py); spending 0.995 of
# it makes that error conservative.
_STEPS_PER_SD = 5
_REACH = 8.0
_SAFETY = 0.995
# Looks past the plan that get boundaries; later looks never reject (still within alpha).
_EXTRA_LOOKS = 200


@dataclass(frozen=True)
class Design:
    """A group-sequential design: level, planned information per look, spending shape."""

    alpha: float
    increments: tuple[float, ...]  # information each planned look adds (any positive scale)
    rho: float = 3.0
    tail_share: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError("alpha must be in (0, 1)")
        if not self.increments or min(self.increments) <= 0:
            raise ValueError("a design needs at least one look with positive information")
        if not 0 <= self.tail_share < 1 or self.rho <= 0:
            raise ValueError("tail_share must be in [0, 1) and rho positive")

    @property
    def planned_looks(self) -> int:
        return len(self.increments)

    @property
    def max_looks(self) -> int:
        """Looks that get a boundary: the plan and 200 past it."""
        return self.planned_looks + (_EXTRA_LOOKS if self.tail_share > 0 else 0)

    def spent(self, look: int) -> float:
        """Alpha spent up to and including ``look`` (1-based)."""
        k = self.planned_looks
        main = self.alpha * (1 - self.tail_share)
        if look <= 0:
            return 0.0
        if look <= k:
            fraction = sum(self.increments[:look]) / sum(self.increments)
            return main * math.pow(fraction, self.rho)
        j = look - k
        return main + self.alpha * self.tail_share * j / (k + j)

    def all_increments(self) -> tuple[float, ...]:
        """Information of every look with a boundary; past the plan, the last look's."""
        extra = self.max_looks - self.planned_looks
        return self.increments + (self.increments[-1],) * extra


def _normalised(design: Design) -> Design:
    """Designs that differ only in the scale of their information share one boundary set."""
    top = max(design.increments)
    return Design(
        alpha=round(design.alpha, 12),
        increments=tuple(round(x / top, 6) for x in design.increments),
        rho=design.rho,
        tail_share=design.tail_share,
    )


def nominal_levels(design: Design) -> tuple[float, ...]:
    """Nominal one-sided level of every look (``1 - Phi(c_k)``; 0 where nothing is spent).

    Cached per design. Looks past ``design.max_looks`` have level 0.
    """
    return _levels(_normalised(design))


def nominal_level(design: Design, look: int) -> float:
    """Nominal level of look ``look`` (1-based); 0 past the looks with boundaries."""
    levels = nominal_levels(design)
    if look < 1 or look > len(levels):
        return 0.0
    return levels[look - 1]


def z_boundaries(design: Design) -> tuple[float, ...]:
    """The boundaries on the z scale (``inf``: this look cannot reject)."""
    return tuple(math.inf if p <= 0 else float(stats.norm.isf(p)) for p in nominal_levels(design))


@lru_cache(maxsize=256)
def _levels(design: Design) -> tuple[float, ...]:
    increments = np.asarray(design.all_increments(), dtype=float)
    info = np.cumsum(increments)
    h = math.sqrt(float(increments.min())) / _STEPS_PER_SD
    # Grid on the score scale S_k (sum of independent N(0, increment) steps), fixed spacing h.
    top = _REACH * math.sqrt(float(info[-1])) + _REACH
    zero = math.ceil(top / h)
    n = 2 * zero + 1
    x = h * (np.arange(n) - zero)  # x[zero] == 0 exactly
    density = np.zeros(n)  # sub-density of "not stopped yet", times h (a probability per cell)
    density[zero] = 1.0
    levels: list[float] = []
    spent_before = 0.0
    lo_idx, hi_idx = zero, zero + 1  # support of density
    kernels: dict[float, np.ndarray] = {}
    for k, d in enumerate(increments, start=1):
        sd = math.sqrt(float(d))
        kernel = kernels.get(float(d))
        if kernel is None:
            half = math.ceil(_REACH * sd / h)
            offsets = h * np.arange(-half, half + 1)
            kernel = stats.norm.pdf(offsets / sd)
            kernel = kernel / kernel.sum()
            kernels[float(d)] = kernel
        half = (len(kernel) - 1) // 2
        lo_new = max(0, lo_idx - half)
        hi_new = min(n, hi_idx + half)
        if k == 1:
            # The first look is exact: the cell masses of N(0, d), not a smoothed point mass.
            edges = (x[lo_new : hi_new + 1] - h / 2) / sd
            density = np.zeros(n)
            density[lo_new:hi_new] = np.diff(stats.norm.cdf(edges))
        else:
            spread = np.convolve(density[lo_idx:hi_idx], kernel)
            cut_lo = lo_new - (lo_idx - half)
            density = np.zeros(n)
            density[lo_new:hi_new] = spread[cut_lo : cut_lo + (hi_new - lo_new)]
        lo_idx, hi_idx = lo_new, hi_new
        spent = _SAFETY * design.spent(k)
        target = spent - spent_before
        if target <= 1e-15:
            levels.append(0.0)
            continue
        # Tail mass above each cell (cumulative from the top); find where it equals target.
        tail = np.cumsum(density[::-1])[::-1]
        above = np.nonzero(tail >= target)[0]
        if len(above) == 0:  # more to spend than is left: reject everywhere left
            boundary_idx = lo_idx
            crossed = float(tail[lo_idx])
        else:
            boundary_idx = int(above[-1])
            crossed = float(tail[boundary_idx])
        # Split the boundary cell so the crossing probability is the target exactly.
        excess = crossed - target
        cell = float(density[boundary_idx])
        frac = excess / cell if cell > 0 else 0.0  # share of the cell that stays
        # The tail falls off about exponentially inside a cell: place the boundary by
        # interpolating log(tail), not the tail itself (half a percent of alpha closer).
        upper = crossed - cell
        if upper > 0 and target > upper:
            pos = math.log(crossed / target) / math.log(crossed / upper)
        else:
            pos = frac
        b = x[boundary_idx] - h / 2 + h * pos
        density[boundary_idx + 1 :] = 0.0
        density[boundary_idx] = cell * frac
        hi_idx = min(hi_idx, boundary_idx + 1)
        spent_before += target
        c = b / math.sqrt(float(info[k - 1]))
        levels.append(float(stats.norm.sf(c)))
    return tuple(levels)


def crossing_probability(design: Design, looks: int, paths: int, seed: int = 0) -> float:
    """Monte-Carlo check of a design under the null (normal scores): share of paths that
    cross a boundary within ``looks`` looks. For tests and the benchmark."""
    rng = np.random.default_rng(seed)
    inc = np.asarray(design.all_increments(), dtype=float)
    inc = np.concatenate([inc, np.full(max(0, looks - len(inc)), inc[-1])])[:looks]
    info = np.cumsum(inc)
    levels = np.asarray(nominal_levels(design) + (0.0,) * max(0, looks - design.max_looks))
    levels = levels[:looks]
    with np.errstate(divide="ignore"):
        bounds = np.where(levels > 0, stats.norm.isf(np.maximum(levels, 1e-300)), np.inf)
    crossed = np.zeros(paths, dtype=bool)
    score = np.zeros(paths)
    for k in range(looks):
        score += rng.normal(0.0, math.sqrt(inc[k]), paths)
        crossed |= score / math.sqrt(info[k]) > bounds[k]
    return float(crossed.mean())
