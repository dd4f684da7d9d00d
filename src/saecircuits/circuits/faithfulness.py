"""MIB faithfulness curves: f(k) over circuit sizes, CPR and CMD as MIB computes them, k*, bootstrap intervals.

Faithfulness of a circuit C is ``f = (m(C) - m(empty)) / (m(N) - m(empty))`` with m the task metric averaged
over prompts first (a ratio of means, as MIB does), N the full model and empty the model with everything
ablated. A method is scored over the sizes ``MIB_SIZES`` (percent of edges, or of heads):

- CPR, the area under f(k), higher is better; CMD, the area under |1 - f(k)|, 0 is perfect.
- Both as MIB's circuit track computes them (hannamw/MIB-circuit-track, commit b759df3,
  ``MIB_circuit_track/evaluation.py``, ``evaluate_area_under_curve`` lines 31 and 58-73, called with its
  default ``log_scale=False`` by ``run_evaluation.py``): the trapezoid rule over the points in order, on a
  LINEAR x axis of the fraction of items (0.001 ... 1, i.e. percent / 100); f is not clipped (an overshoot
  f > 1 adds to CPR and to CMD); no point at k = 0 is added, the curve starts at the first size and ends at
  the last; the area is not divided by the x range (0.999 for the MIB grid).
- k*, the smallest size with |1 - f| <= tol.

Torch only, no model code: the one home of the percentile bootstrap over prompts and of f's ratio of means,
which the sweep and the comparison use. Metric tensors are per prompt, [n] or [S, n] (S sizes, n prompts).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch

from saecircuits.core.errors import SaecircuitsError

MIB_SIZES: tuple[float, ...] = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
"""Circuit sizes in percent of edges (or heads); percent / 100 equals MIB's fractions exactly."""


def bootstrap(values: torch.Tensor, stat, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI over prompts (the last dim of ``values``) of ``stat(values[..., idx])``.

    ``stat`` maps [..., n_boot, n] (prompts resampled) to [n_boot].
    """
    n = values.shape[-1]
    if n < 2:
        v = float(stat(values[..., None, :])[0])
        return v, v
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(n, (n_boot, n), generator=g)
    stats = stat(values[..., idx]).double()
    stats = stats[torch.isfinite(stats)]
    if len(stats) == 0:
        return float("nan"), float("nan")
    lo, hi = torch.quantile(stats, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64))
    return float(lo), float(hi)


def normalised(m: torch.Tensor, full: torch.Tensor, none: torch.Tensor) -> torch.Tensor:
    """(mean m - mean none) / (mean full - mean none) along the last dim."""
    return (m.mean(-1) - none.mean(-1)) / (full.mean(-1) - none.mean(-1))


def mib_counts(n_items: int, sizes: Sequence[float] = MIB_SIZES) -> list[int]:
    """Number of items (edges, heads) kept at each size, as MIB counts them: ``int(fraction * n_items)``
    (rounded down, so 0.1% of 144 heads is 0 heads)."""
    return [int(s / 100 * n_items) for s in sizes]


def _check_metrics(m_circuit: torch.Tensor, m_empty: torch.Tensor, m_full: torch.Tensor) -> None:
    """Raise one SaecircuitsError unless the three per-prompt metrics ([..., n]) are non-empty, finite, over
    the same number of prompts, and the full model's mean differs from the empty circuit's."""
    for name, m in (("circuit", m_circuit), ("empty", m_empty), ("full", m_full)):
        if m.dim() == 0 or m.shape[-1] == 0:
            raise SaecircuitsError(f"faithfulness needs the {name} metric on at least one prompt",
                                   hint="pass one value per prompt, shape [n] or [sizes, n]")
        if not bool(torch.isfinite(m).all()):
            raise SaecircuitsError(f"the {name} metric holds NaN or infinite values",
                                   hint="check the runs that produced it")
    if m_empty.dim() != 1 or m_full.dim() != 1:
        raise SaecircuitsError(f"the empty and full metrics must be one value per prompt, shape [n], got "
                               f"{list(m_empty.shape)} and {list(m_full.shape)}")
    if not m_circuit.shape[-1] == m_empty.shape[-1] == m_full.shape[-1]:
        raise SaecircuitsError(
            f"the metrics cover different prompts: circuit {m_circuit.shape[-1]}, empty {m_empty.shape[-1]}, "
            f"full {m_full.shape[-1]}", hint="score the circuit, the empty circuit and the full model on the same prompts")
    if bool(m_full.mean(-1) == m_empty.mean(-1)):
        raise SaecircuitsError("faithfulness is undefined: the full model and the empty circuit have the same mean metric",
                               hint="ablating everything must change the metric")


def faithfulness(m_circuit: torch.Tensor, m_empty: torch.Tensor, m_full: torch.Tensor) -> torch.Tensor:
    """f = (mean m_circuit - mean m_empty) / (mean m_full - mean m_empty), means over prompts (the last dim).

    m_circuit [n] or [S, n] per-prompt metric; m_empty, m_full [n]. Returns f, [] or [S]. The empty circuit gives
    0 and the full model 1 exactly. The bootstrap resamples prompts and takes f of the resampled means."""
    _check_metrics(m_circuit, m_empty, m_full)
    return normalised(m_circuit, m_full, m_empty)


def _check_level(level: float) -> None:
    """Raise unless the interval's coverage is strictly between 0 and 1."""
    if not 0 < level < 1:
        raise SaecircuitsError(f"the bootstrap level must be between 0 and 1, got {level}", hint="e.g. 0.95")


def _check_curve(sizes: Sequence[float], f: Sequence[float] | torch.Tensor) -> tuple[list[float], torch.Tensor]:
    """Validate a curve (sizes in percent, strictly increasing, in (0, 100]; finite f, one per size).
    Returns the x axis as MIB's fractions (percent / 100) and f as float64 [S]."""
    sizes = [float(s) for s in sizes]
    f = torch.as_tensor(f, dtype=torch.float64).flatten()
    if len(sizes) < 2:
        raise SaecircuitsError(f"a faithfulness curve needs at least two sizes, got {len(sizes)}",
                               hint="score the circuit at the MIB sizes (MIB_SIZES)")
    if len(f) != len(sizes):
        raise SaecircuitsError(f"the curve has {len(f)} faithfulness values for {len(sizes)} sizes",
                               hint="give one value per size")
    increasing = all(math.isfinite(s) for s in sizes) and all(b > a for a, b in itertools.pairwise(sizes))
    if not increasing or not 0 < sizes[0] <= sizes[-1] <= 100:
        raise SaecircuitsError(f"curve sizes must be strictly increasing percentages in (0, 100], got {sizes}")
    if not bool(torch.isfinite(f).all()):
        raise SaecircuitsError("the faithfulness curve holds NaN or infinite values",
                               hint="check that the full model and the empty circuit differ")
    return [s / 100 for s in sizes], f


def _trapezoid(x: list[float], y: torch.Tensor) -> torch.Tensor:
    """Trapezoid area of y ([..., S], float64) over x ([S], fractions), summed left to right in MIB's order:
    area += (x2 - x1) * ((y1 + y2) / 2). Returns [...]."""
    area = torch.zeros(y.shape[:-1], dtype=torch.float64)
    for i in range(len(x) - 1):
        area = area + (x[i + 1] - x[i]) * ((y[..., i] + y[..., i + 1]) / 2)
    return area


def _cpr(x: list[float], f: torch.Tensor) -> torch.Tensor:
    """Area under f ([..., S] float64) over x: [...]."""
    return _trapezoid(x, f)


def _cmd(x: list[float], f: torch.Tensor) -> torch.Tensor:
    """Area under |1 - f| ([..., S] float64) over x: [...]."""
    return _trapezoid(x, (1.0 - f).abs())


def cpr(sizes: Sequence[float], f: Sequence[float] | torch.Tensor) -> float:
    """CPR, the area under f(k) (higher is better), as MIB computes ``area_under`` (evaluation.py lines 58-73 at
    hannamw/MIB-circuit-track b759df3): trapezoids on a linear axis of fractions (sizes in percent / 100), f not
    clipped, no k = 0 point, not normalised. For f = 1 everywhere on MIB_SIZES it is 0.999."""
    x, f = _check_curve(sizes, f)
    return float(_cpr(x, f))


def cmd(sizes: Sequence[float], f: Sequence[float] | torch.Tensor) -> float:
    """CMD, the area under |1 - f(k)| (lower is better, 0 is perfect), as MIB computes ``area_from_1``
    (evaluation.py lines 58-73 at hannamw/MIB-circuit-track b759df3), on the same axis and rule as ``cpr``."""
    x, f = _check_curve(sizes, f)
    return float(_cmd(x, f))


def k_star(sizes: Sequence[float], f: Sequence[float] | torch.Tensor, tol: float = 0.1) -> float | None:
    """The smallest size (percent) with |1 - f| <= tol, or None when no size qualifies."""
    _, f = _check_curve(sizes, f)
    for size, value in zip(sizes, f.tolist()):
        if abs(1.0 - value) <= tol:
            return size
    return None


def bootstrap_f(m_circuit: torch.Tensor, m_empty: torch.Tensor, m_full: torch.Tensor, n_boot: int = 1000,
                seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval (lo, hi) of one circuit's f over prompts: each draw resamples the prompt
    indices once and uses them for all three metrics (paired), then takes f of the resampled means.

    m_circuit, m_empty, m_full [n] per prompt. The same seed draws the same prompts for every size, so the
    intervals of a curve (one call per size) are paired across sizes too."""
    _check_metrics(m_circuit, m_empty, m_full)
    _check_level(level)
    if m_circuit.dim() != 1:
        raise SaecircuitsError(f"bootstrap_f takes one circuit's metric, shape [n], got {list(m_circuit.shape)}",
                               hint="call it once per size")
    values = torch.stack([m_circuit, m_empty, m_full])  # [3, n]
    return bootstrap(values, lambda x: normalised(x[0], x[2], x[1]), n_boot, seed, level)


def bootstrap_areas(sizes: Sequence[float], m_circuit: torch.Tensor, m_empty: torch.Tensor, m_full: torch.Tensor,
                    n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of CPR and CMD over prompts: {"cpr": (lo, hi), "cmd": (lo, hi)}.

    m_circuit [S, n] (one row per size); m_empty, m_full [n]. Each draw resamples the prompts once for every
    size and both baselines, recomputes the curve f(k) and its areas."""
    _check_level(level)
    x, _ = _check_curve(sizes, faithfulness(m_circuit, m_empty, m_full))
    n_sizes = len(x)
    values = torch.cat([m_circuit, m_empty[None], m_full[None]])  # [S + 2, n]

    def curves(v: torch.Tensor) -> torch.Tensor:
        """Resampled values [S + 2, n_boot, n] -> f [n_boot, S] float64."""
        return normalised(v[:n_sizes], v[n_sizes + 1][None], v[n_sizes][None]).T.double()

    return {"cpr": bootstrap(values, lambda v: _cpr(x, curves(v)), n_boot, seed, level),
            "cmd": bootstrap(values, lambda v: _cmd(x, curves(v)), n_boot, seed, level)}
