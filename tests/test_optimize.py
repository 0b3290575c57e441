"""The plan search (specdiff.analysis.optimize) on the exact Gaussian testbed."""

import pytest

from specdiff.analysis import optimal_plan
from specdiff.plans import SPECTRA, flux_times, full_plan
from specdiff.testbeds import GaussianField

FLUX = SPECTRA["flux"]


def test_optimal_plan_meets_target_and_is_cheaper():
    field = GaussianField(FLUX.A, FLUX.beta, (32, 32))
    times = flux_times(20, 256)
    base = full_plan(times, (32, 32))
    plan = optimal_plan(field, times, scales=(0.5,), deltas=(0.01, 0.05, 0.2), max_stages=2,
                        quality="w2+kl")
    m = field.metrics(plan)
    bm = field.metrics(base)
    assert m["w2"] <= bm["w2"] * (1 + 1e-9) and m["kl"] <= bm["kl"] * (1 + 1e-9)
    assert plan.cost() < base.cost()
    assert plan.meta.w2 == pytest.approx(m["w2"])
    assert plan.meta.baseline_w2 == pytest.approx(bm["w2"])
    # the recorded scales are the stage grids' sides over the full side
    assert plan.meta.scales == tuple(st.grid[0] / 32 for st in plan.stages)
    # a spectrum works in place of a field
    plan2 = optimal_plan(FLUX, times, grid=(32, 32), scales=(0.5,), deltas=(0.05,), max_stages=2,
                         refine=0)
    assert plan2.full_grid == (32, 32)


def test_a_looser_target_never_costs_more():
    field = GaussianField(FLUX.A, FLUX.beta, (32, 32))
    times = flux_times(20, 256)
    kw = dict(scales=(0.25, 0.5), deltas=(0.01, 0.05, 0.2), max_stages=3, refine=1)
    tight = optimal_plan(field, times, tolerance=0.0, **kw)
    loose = optimal_plan(field, times, tolerance=0.5, **kw)
    assert loose.cost() <= tight.cost() + 1e-12
    assert field.w2(loose) <= field.w2(full_plan(times, (32, 32))) * 1.5 * (1 + 1e-9)


def test_optimal_plan_reports_impossible_targets():
    field = GaussianField(FLUX.A, FLUX.beta, (16, 16))
    with pytest.raises(ValueError, match="no plan reached"):
        optimal_plan(field, flux_times(6, 64), target_w2=1e-9, scales=(0.5,), deltas=(0.05,),
                     max_stages=2, refine=0)
    with pytest.raises(ValueError, match="max_stages"):
        optimal_plan(field, flux_times(6, 64), max_stages=5)
    with pytest.raises(ValueError, match="quality must be"):
        optimal_plan(field, flux_times(6, 64), quality="psnr")
    with pytest.raises(ValueError, match="differs from the testbed"):
        optimal_plan(field, flux_times(6, 64), grid=(8, 8))
