"""The exact testbed comparison (specdiff.analysis.testbed): rows are closed-form prices of
the shared methods."""

import math

import pytest

from specdiff.analysis.testbed import (
    compare_on_testbed,
    long_step_study,
    markdown_table,
    run_testbed,
    stage_summary,
    study_table,
    times_for_schedule,
)
from specdiff.plans import SPECTRA, bottleneck_plan, cascade_plan, flow_times, flux_times, full_plan
from specdiff.testbeds import GaussianField

FLUX = SPECTRA["flux"]


def test_long_step_weak_point_and_respace_fix():
    # DESIGN/issue: on a 64^2 grid at 200 steps SPD-keep's W2 stays ~3x the baseline's
    field = GaussianField(FLUX.A, FLUX.beta, (64, 64))
    rows = long_step_study(field, lambda n: flux_times(n, 1024), (50, 200))
    assert rows[-1]["keep_ratio"] > 2.0
    assert rows[-1]["keep_ratio"] > rows[0]["keep_ratio"]  # does not shrink with steps
    assert all(r["respace_ratio"] < 1.0 for r in rows)
    assert rows[0]["baseline"] == pytest.approx(field.w2(full_plan(flux_times(50, 1024), (64, 64))))


def test_compare_on_testbed_rows_price_the_core_constructors():
    field = GaussianField(FLUX.A, FLUX.beta, (16, 16))
    times_fn = lambda n: flux_times(n, 64)
    rows = compare_on_testbed(field, times_fn, 10, solvers=("euler",), deltas=(0.05,),
                              optimal=False)
    fams = [r.family for r in rows]
    assert {"baseline", "spd keep", "spd respace", "pyramidal", "bottleneck", "cascade",
            "fewer steps"} == set(fams)
    base = full_plan(times_fn(10), (16, 16))
    by_family = {r.family: r for r in rows}
    # the cascade is priced with its closed-form stand-in, the dct upsample; the bottleneck
    # with the shared constants (low stage from 10% to 80% of the steps)
    cas = cascade_plan(times_fn(10), (16, 16), (0.5, 1.0), renoise_at=(0.7,), up="dct", steps=(5, 5))
    bot = bottleneck_plan(times_fn(10), (16, 16), low_scale=0.5, fractions=(0.1, 0.8))
    for fam, plan in (("cascade", cas), ("bottleneck", bot)):
        r = by_family[fam]
        assert r.stages == stage_summary(plan)
        assert r.w2 == pytest.approx(field.w2(plan), rel=1e-12)
        assert r.w2_ratio == pytest.approx(field.w2(plan) / field.w2(base), rel=1e-12)
        assert r.cost_ratio == pytest.approx(plan.cost() / base.cost(), rel=1e-12)
    assert by_family["bottleneck"].stages == "16^2x1 > 8^2x7 > 16^2x2"
    # fewer steps at the two-stage SPD plan's cost: the closest full-resolution step count
    two_stage = [r for r in rows if r.family == "spd keep" and r.stages.count(">") == 1]
    spd_cost = two_stage[0].cost_ratio * 10
    fewer = [r for r in rows if r.family == "fewer steps"]
    assert len(fewer) == 1 and fewer[0].evaluations == round(spd_cost)
    for r in rows:
        assert r.cost_ratio > 0 and math.isfinite(r.w2) and r.kl >= 0
    assert markdown_table(rows).count("\n") == len(rows) + 1


def test_schedule_times_and_errors():
    assert times_for_schedule("flux", (32, 32))(8).tolist() == flux_times(8, 256).tolist()
    assert times_for_schedule("shift:3", (32, 32))(8).tolist() == flow_times(8, 3.0).tolist()
    with pytest.raises(ValueError, match="'flux' or 'shift:S'"):
        times_for_schedule("karras", (32, 32))
    with pytest.raises(ValueError, match="needs a number"):
        times_for_schedule("shift:x", (32, 32))


def test_run_testbed_adds_the_half_size_study():
    res = run_testbed(FLUX, (16, 16), 8, solvers=("euler",), deltas=(0.05,), optimal=False)
    assert res["study_side"] == 8 and [r["steps"] for r in res["study"]] == [50, 100, 200]
    small = GaussianField(FLUX.A, FLUX.beta, (8, 8))
    assert res["study"][0]["baseline"] == pytest.approx(
        small.w2(full_plan(flux_times(50, 16), (8, 8))), rel=1e-12)
    assert res["rows"][0].plan == "full 8 steps (baseline)"
    assert study_table(res["study"]).splitlines()[2].startswith("| 50 | ")
