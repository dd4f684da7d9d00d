"""MIB faithfulness curves: f(empty) = 0 and f(full) = 1 exactly; CPR and CMD equal a hand computation and MIB's
arithmetic (trapezoids on a linear axis of fractions); a perfect curve has CMD 0; k* is the smallest qualifying
size; bootstrap intervals contain the point estimate, are paired over prompts and shrink with more prompts;
bad input is one SaecircuitsError."""

from __future__ import annotations

import pytest
import torch

from saecircuits.circuits.faithfulness import (
    MIB_SIZES,
    bootstrap_areas,
    bootstrap_f,
    cmd,
    cpr,
    faithfulness,
    k_star,
    mib_counts,
)
from saecircuits.core.errors import SaecircuitsError

MIB_FRACTIONS = (.001, .002, .005, .01, .02, .05, .1, .2, .5, 1)  # MIB evaluation.py line 31


def metrics(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-prompt metrics [n] of a circuit (mean ~2), the empty circuit (~0) and the full model (~3)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(3, n, generator=g)
    return 2 + noise[0], noise[1], 3 + noise[2]


def test_empty_circuit_is_zero_and_full_model_is_one_exactly():
    circuit, empty, full = metrics(17)
    assert faithfulness(empty, empty, full).item() == 0.0
    assert faithfulness(full, empty, full).item() == 1.0
    curve = faithfulness(torch.stack([empty, circuit, full]), empty, full)  # [S, n] -> [S]
    assert curve.shape == (3,) and curve[0].item() == 0.0 and curve[2].item() == 1.0
    assert curve[1].item() == pytest.approx(((circuit.mean() - empty.mean()) / (full.mean() - empty.mean())).item())


def test_cpr_and_cmd_equal_a_hand_computation():
    sizes, f = [10, 50, 100], [0.2, 0.6, 1.4]  # x = 0.1, 0.5, 1.0 (fractions)
    # CPR = (0.5 - 0.1) * (0.2 + 0.6) / 2 + (1.0 - 0.5) * (0.6 + 1.4) / 2 = 0.4 * 0.4 + 0.5 * 1.0 = 0.66
    assert cpr(sizes, f) == pytest.approx(0.66, abs=1e-12)
    # |1 - f| = 0.8, 0.4, 0.4 (not clipped: the overshoot 1.4 counts)
    # CMD = 0.4 * (0.8 + 0.4) / 2 + 0.5 * (0.4 + 0.4) / 2 = 0.4 * 0.6 + 0.5 * 0.4 = 0.44
    assert cmd(sizes, f) == pytest.approx(0.44, abs=1e-12)


def test_cpr_and_cmd_are_mibs_arithmetic_bit_for_bit():
    f = torch.tensor([0.05, 0.1, 0.3, 0.5, 0.8, 0.97, 1.1, 1.02, 0.99, 1.0], dtype=torch.float32)
    under, from_1 = 0., 0.
    for i in range(len(f) - 1):  # MIB: trapezoids on the fractions, linear axis, python floats
        f1, f2 = f[i].item(), f[i + 1].item()
        under += (MIB_FRACTIONS[i + 1] - MIB_FRACTIONS[i]) * ((f1 + f2) / 2)
        from_1 += (MIB_FRACTIONS[i + 1] - MIB_FRACTIONS[i]) * ((abs(1. - f1) + abs(1. - f2)) / 2)
    assert cpr(MIB_SIZES, f) == under
    assert cmd(MIB_SIZES, f) == from_1


def test_perfect_curve_has_cmd_zero_and_cpr_the_x_range():
    assert cmd(MIB_SIZES, [1.0] * len(MIB_SIZES)) == 0.0
    assert cpr(MIB_SIZES, [1.0] * len(MIB_SIZES)) == pytest.approx(0.999, abs=1e-12)  # not normalised


def test_k_star_is_the_smallest_qualifying_size():
    f = [0.1, 0.3, 0.85, 0.95, 1.2, 1.05, 1.0, 1.0, 1.0, 1.0]  # |1 - f| first <= 0.1 at 1%
    assert k_star(MIB_SIZES, f) == 1
    assert k_star(MIB_SIZES, f, tol=0.2) == 0.5
    assert k_star([1, 2, 5], [0.5, 0.75, 1.0], tol=0.25) == 2  # the bound counts: |1 - 0.75| = 0.25 exactly
    assert k_star(MIB_SIZES, [1.5] * len(MIB_SIZES)) is None  # overshoot never qualifies


def test_mib_counts_round_down_like_mib():
    assert mib_counts(144) == [0, 0, 0, 1, 2, 7, 14, 28, 72, 144]
    assert mib_counts(32491) == [int(p * 32491) for p in MIB_FRACTIONS]


def test_bootstrap_f_contains_the_estimate_and_shrinks_with_more_prompts():
    widths = []
    for n in (30, 600):
        circuit, empty, full = metrics(n, seed=n)
        lo, hi = bootstrap_f(circuit, empty, full, n_boot=500, seed=0)
        assert lo <= faithfulness(circuit, empty, full).item() <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2


def test_bootstrap_resamples_the_three_metrics_paired():
    _, empty, full = metrics(25)
    assert bootstrap_f(full, empty, full, n_boot=200) == (1.0, 1.0)  # same prompts in every draw: f = 1 exactly
    assert bootstrap_f(empty, empty, full, n_boot=200) == (0.0, 0.0)


def test_bootstrap_areas_contain_the_curve_areas():
    sizes = [1, 10, 100]
    circuit, empty, full = metrics(80)
    m = torch.stack([(circuit + empty) / 2, circuit, full])  # [S, n]
    f = faithfulness(m, empty, full)
    ci = bootstrap_areas(sizes, m, empty, full, n_boot=300, seed=1)
    assert ci["cpr"][0] <= cpr(sizes, f) <= ci["cpr"][1]
    assert ci["cmd"][0] <= cmd(sizes, f) <= ci["cmd"][1]


@pytest.mark.parametrize(("call", "message"), [
    (lambda: cpr([], []), r"needs at least two sizes, got 0"),
    (lambda: cmd([10, 5, 100], [0.1, 0.2, 0.3]), r"strictly increasing percentages in \(0, 100\]"),
    (lambda: k_star([10, 10], [0.1, 0.2]), r"strictly increasing"),
    (lambda: cpr([10, 50, 100], [0.1, float("nan"), 1.0]), r"curve holds NaN"),
    (lambda: cpr([10, 50], [0.1, 0.2, 0.3]), r"3 faithfulness values for 2 sizes"),
    (lambda: faithfulness(torch.ones(4), torch.ones(4), torch.ones(4)), r"undefined: the full model and the empty"),
    (lambda: faithfulness(torch.tensor([1.0, float("nan")]), torch.zeros(2), torch.ones(2)),
     r"circuit metric holds NaN"),
    (lambda: faithfulness(torch.ones(3), torch.zeros(2), torch.ones(2)), r"different prompts: circuit 3"),
    (lambda: bootstrap_f(torch.ones(0), torch.zeros(0), torch.ones(0)), r"circuit metric on at least one prompt"),
    (lambda: bootstrap_f(torch.ones(3), torch.zeros(3), torch.ones(3), level=1.5), r"level must be between 0 and 1"),
])
def test_bad_input_is_one_clear_error(call, message):
    with pytest.raises(SaecircuitsError, match=message):
        call()
