"""Solver step functions: convergence orders against the Gaussian field's exact flow map."""

import math

import pytest

from specdiff.plans import flow_times, full_plan
from specdiff.testbeds import GaussianField


@pytest.mark.parametrize("solver,order", [("euler", 1), ("heun", 2)])
def test_convergence_order_on_gaussian_oracle(solver, order):
    # the exact flow ODE maps noise z to sqrt(P) z per DCT coefficient
    field = GaussianField(20.0, 2.0, (8, 8))
    exact = field.variance().sqrt()
    errs = []
    for n in (16, 32, 64):
        plan = full_plan(flow_times(n, 1.0), (8, 8))
        g = field.output_variance(plan, solver).sqrt()
        errs.append((g - exact).abs().max().item())
    rates = [math.log2(errs[i] / errs[i + 1]) for i in range(2)]
    assert all(abs(r - order) < 0.25 for r in rates), rates


def test_dpmpp_2m_beats_first_order():
    # second order inside; its first (from t = 1) and last (onto 0) steps are first
    # order, which caps the observed global rate near 1.5 on a uniform grid
    field = GaussianField(20.0, 2.0, (8, 8))
    exact = field.variance().sqrt()
    errs = [(field.output_variance(full_plan(flow_times(n), (8, 8)), "dpmpp_2m").sqrt() - exact)
            .abs().max().item() for n in (16, 32, 64)]
    assert all(math.log2(errs[i] / errs[i + 1]) > 1.3 for i in range(2))
    euler = [(field.output_variance(full_plan(flow_times(n), (8, 8)), "euler").sqrt() - exact)
             .abs().max().item() for n in (16, 32, 64)]
    assert all(d < e for d, e in zip(errs, euler, strict=True))
