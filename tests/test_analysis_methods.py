"""specdiff.analysis.methods: one definition per method, shared by the bench and the testbed."""

import pytest

from specdiff.analysis import methods as M
from specdiff.plans import SPECTRA, flow_times, full_plan, spd_plan
from specdiff.testbeds import GaussianField
from specdiff.transitions import Pyramid, Spectral, X0Renoise

FLUX = SPECTRA["flux"]


def setting(exact=False, steps=50, grid=(32, 32)):
    return M.Setting(lambda n: flow_times(n, 2.0), steps, grid, FLUX, exact=exact)


def test_constants_build_the_documented_plans():
    s = setting()
    # bottleneck: full res for 10% of 50 steps, half res to 80%, full res to the end
    bot = M.bottleneck(s)
    assert [st.grid for st in bot.stages] == [(32, 32), (16, 16), (32, 32)]
    assert [st.steps for st in bot.stages] == [5, 35, 10]
    assert bot.stages[0].times[-1] == pytest.approx(float(flow_times(50, 2.0)[5]))
    # cascade: a complete half-size sample in 25 steps, re-noised to t = 0.7, 25 more steps
    cas = M.cascade(s)
    assert [st.grid for st in cas.stages] == [(16, 16), (32, 32)]
    assert [st.steps for st in cas.stages] == [25, 25]
    assert cas.stages[0].times[-1] == 0.0 and cas.stages[1].times[0] == 0.7
    # pyramidal: three equal time windows, 16/16/18 steps
    pyr = M.pyramidal(s)
    assert [st.grid for st in pyr.stages] == [(8, 8), (16, 16), (32, 32)]
    assert [st.steps for st in pyr.stages] == [16, 16, 18]
    assert pyr.stages[0].times[-1] == pytest.approx(2 / 3) and pyr.stages[1].times[-1] == pytest.approx(1 / 3)
    # SPD: the core constructor with the data spectrum
    ref = spd_plan(flow_times(50, 2.0), (32, 32), (0.25, 0.5, 1.0), spectrum=FLUX, delta=0.05)
    assert M.spd(s, "spd3", 0.05).stages == ref.stages
    with pytest.raises(ValueError, match="SPD variant"):
        M.spd(s, "spd4", 0.05)
    assert M.baseline(s).stages == full_plan(flow_times(50, 2.0), (32, 32)).stages


def test_only_the_transition_differs_between_model_and_testbed():
    model, exact = setting(), setting(exact=True)
    for make in (M.pyramidal, M.bottleneck, M.cascade):
        a, b = make(model), make(exact)
        assert [(st.grid, st.times) for st in a.stages] == [(st.grid, st.times) for st in b.stages]
    assert M.cascade(model).transitions == (X0Renoise("bicubic"),)
    assert M.cascade(exact).transitions == (X0Renoise("dct"),)
    assert M.bottleneck(model).transitions == (Spectral("dct"), Spectral("dct"))


def test_closed_form_flag_agrees_with_the_testbed():
    field = GaussianField(FLUX.A, FLUX.beta, (32, 32))
    s = setting()
    plans = [M.baseline(s), M.spd(s, "spd", 0.05), M.pyramidal(s), M.bottleneck(s), M.cascade(s),
             M.cascade(setting(exact=True)),
             spd_plan(flow_times(50, 2.0), (32, 32), (0.5, 1.0), spectrum=FLUX, transition=Pyramid())]
    for p in plans:
        try:
            field.w2(p)
            priced = True
        except ValueError:
            priced = False
        assert M.has_closed_form(p) == priced, p.name
    assert [k for k, m in M.METHODS.items() if not m.closed_form] == ["cascade"]
    with pytest.raises(ValueError, match="no closed form"):
        M.Method("x", "", X0Renoise("bicubic"), Spectral("fft"))


def test_matched_steps_buys_the_closest_cost():
    s = setting(steps=20)
    assert M.matched_steps(s, 12.3) == 12 and M.matched_steps(s, 12.7) == 13
    # Heun: n steps cost 2n - 1 evaluations (no corrector on the last step to 0)
    assert M.matched_steps(s, 23.0, solver="heun") == 12
    assert M.matched_steps(s, 0.2) == 1
    p = M.matched(s, 12.3)
    assert p.name == "full 12 steps" and p.stages == full_plan(flow_times(12, 2.0), (32, 32)).stages


def test_optimal_names_its_scales_and_filters_candidates():
    s = setting(steps=12, grid=(16, 16))
    assert M.optimal_scales(s) == (0.25, 0.375, 0.5, 0.625, 0.75)
    odd = M.Setting(lambda n: flow_times(n, 2.0), 12, (16, 16), FLUX, multiple=8)
    # on multiples of 8 a 16^2 grid has one coarse grid, 8^2; 0.75 rounds up to the full grid,
    # and 0.25 asks for a side of 4, below one multiple (it is not rounded up to twice that)
    assert M.optimal_scales(odd) == (0.375, 0.5, 0.625)
    p = M.optimal(s, max_stages=2, scales=(0.5,), deltas=(0.05, 0.2), refine=0, tolerance=0.5)
    assert p.meta.family == "optimal"
    assert p.name == "optimal " + "/".join(f"{st.grid[0] / 16:g}" for st in p.stages)
    assert M.has_closed_form(p)
