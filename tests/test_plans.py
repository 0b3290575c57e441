"""Plans, schedules and the cost model."""

import math

import numpy as np
import pytest
import torch

from specdiff.plans import (
    SPECTRA,
    Plan,
    Stage,
    activation_time,
    bottleneck_plan,
    cascade_plan,
    flow_times,
    flux_mu,
    flux_times,
    fraction_plan,
    full_plan,
    measure_eval_cost,
    pyramidal_plan,
    respace,
    scalewise_plan,
    spd_plan,
    spd_transition_time,
    stage_grids,
    staged_plan,
    wan_times,
)
from specdiff.transitions import Pyramid, Spectral, X0Renoise

FLUX = SPECTRA["flux"]


def test_flux_times_match_diffusers_scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    sched = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, base_shift=0.5,
                                            max_shift=1.15, base_image_seq_len=256,
                                            max_image_seq_len=4096)
    n = 50
    sched.set_timesteps(sigmas=np.linspace(1.0, 1 / n, n), mu=flux_mu(4096))
    ours = flux_times(n, 4096)
    assert flux_mu(4096) == pytest.approx(1.15)
    assert np.abs(sched.sigmas.double().numpy() - ours.numpy()).max() < 1e-6


def test_wan_times_match_unipc_flow_sigmas():
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    flow_shift=3.0, final_sigmas_type="zero")
    sched.set_timesteps(8)
    ours = wan_times(8, 3.0)
    # diffusers nudges the first sigma by -1e-6
    assert np.abs(sched.sigmas.double().numpy() - ours.numpy()).max() < 2e-6


def test_flow_times_formula():
    t = flow_times(10, 3.0)
    u = torch.linspace(1, 0, 11, dtype=torch.float64)
    assert torch.allclose(t, 3 * u / (1 + 2 * u))
    assert t[0] == 1 and t[-1] == 0


# SPD reference runs in SGLang (methods.md section 1): "18@64^2 + 32@128^2" at delta 0.01 and
# "28@64^2 + 22@128^2" at delta 0.05 for FLUX 1024^2, 50 steps
@pytest.mark.parametrize("delta,step", [(0.01, 18), (0.05, 28)])
def test_spd_plan_flux_switch_steps(delta, step):
    plan = spd_plan(flux_times(50, 4096), (128, 128), (0.5, 1.0), spectrum="flux", delta=delta)
    assert [s.grid for s in plan.stages] == [(64, 64), (128, 128)]
    assert plan.stages[0].steps == step and plan.steps == 50
    assert plan.evaluations() == [step, 50 - step]
    # the switch entry is replaced by the shifted time; the rest of the grid is kept
    t = flux_times(50, 4096)
    assert plan.stages[1].times[0] == pytest.approx(2 * t[step].item() / (1 + t[step].item()))
    assert plan.stages[1].times[1:] == tuple(t[step + 1 :].tolist())
    assert plan.cost("tokens") == pytest.approx(step * 0.25 + (50 - step))


def test_transition_time_table_from_methods_md():
    # methods.md section 1: (model/grid, scale) -> t* at delta 0.01 / 0.05 / 0.1
    cases = [(FLUX, 0.5, 128, (0.853, 0.718, 0.638)),
             (SPECTRA["wan"], 0.5, 60, (0.864, 0.737, 0.660)),
             (SPECTRA["pixelgen"], 0.5, 512, (0.618, 0.415, 0.328))]
    for spec, scale, side, expect in cases:
        for d, e in zip((0.01, 0.05, 0.1), expect, strict=True):
            assert spd_transition_time(spec.A, spec.beta, scale, side, d) == pytest.approx(e, abs=1e-3)


def test_activation_time_solves_the_snr_criterion():
    P, d = 7.3, 0.02
    t = activation_time(P, d)
    snr = ((1 - t) / t) ** 2 * P
    assert snr * (1 + P - d) == pytest.approx(d, rel=1e-12)


def test_respace_removes_the_long_step():
    t = flux_times(50, 4096)
    keep = spd_plan(t, (128, 128), (0.5, 1), spectrum="flux", delta=0.01)
    resp = spd_plan(t, (128, 128), (0.5, 1), spectrum="flux", delta=0.01, continuation="respace")
    assert resp.evaluations() == keep.evaluations()
    gap_keep = keep.stages[1].times[0] - keep.stages[1].times[1]
    gap_resp = resp.stages[1].times[0] - resp.stages[1].times[1]
    assert gap_resp < 0.5 * gap_keep
    assert resp.stages[1].times[-1] == 0.0


def test_respace_follows_reference_profile():
    ref = flow_times(20, 3.0)
    out = respace(ref, 1.0, 0.0, 20)
    assert np.allclose(out, ref.numpy(), atol=1e-12)
    out = respace(3.0, 0.8, 0.2, 5)
    assert out[0] == 0.8 and out[-1] == 0.2 and all(a > b for a, b in zip(out, out[1:]))


def test_three_stage_and_video_plans():
    t = wan_times(50, 5.0)
    plan = spd_plan(t, (21, 60, 104), (0.25, 0.5, 1.0), spectrum="wan", delta=0.05, multiple=2)
    grids = [s.grid for s in plan.stages]
    assert grids == [(21, 16, 26), (21, 30, 52), (21, 60, 104)]
    assert plan.steps == 50
    assert all(g[0] == 21 for g in grids)  # time axis untouched


def test_other_plans_are_valid():
    t = flux_times(30, 1024)
    g = (64, 64)
    for p in [fraction_plan(t, g, (0.5, 1), (0.4,)),
              pyramidal_plan(g, (0.25, 0.5, 1), (5, 5, 5)),
              pyramidal_plan(g, (0.25, 0.5, 1), (5, 5, 5), transition="dct", profile=t),
              bottleneck_plan(t, g),
              cascade_plan(t, g, (0.5, 1), renoise_at=(0.6,)),
              scalewise_plan(g, (0.5, 0.625, 0.75, 1.0), (1.0, 0.8956, 0.7363, 0.6007, 0.0))]:
        assert p.full_grid == g
        assert p.stages[-1].times[-1] == 0
        assert p.cost() > 0
    bn = bottleneck_plan(t, g)
    assert [s.grid for s in bn.stages] == [g, (32, 32), g]
    assert bn.stages[1].times[0] < bn.stages[0].times[-1]  # truncation lowers t
    # SwD's FLUX 4-step sigmas (methods.md section 2, from the SwD reference configs)
    sw = scalewise_plan(g, (0.5, 0.625, 0.75, 1.0), (1.0, 0.8956, 0.7363, 0.6007, 0.0))
    assert sw.evaluations() == [1, 1, 1, 1]
    # SwD's token cost is (32^2 + 40^2 + 48^2 + 64^2) / 64^2 = 0.55 * 4 full evaluations
    assert sw.cost() == pytest.approx((32**2 + 40**2 + 48**2 + 64**2) / 64**2)


def test_cost_models_and_solver_evaluations():
    t = flux_times(10, 256)
    plan = spd_plan(t, (32, 32), (0.5, 1), spectrum="flux", delta=0.1)
    n0, n1 = plan.evaluations()
    assert plan.cost("attention") == pytest.approx(n0 / 16 + n1)
    assert plan.evaluations("heun") == [2 * n0, 2 * n1 - 1]
    assert plan.speedup_bound() == pytest.approx(10 / (n0 / 4 + n1))
    assert plan.cost({(16, 16): 1.0, (32, 32): 2.0}) == pytest.approx(n0 / 2 + n1)
    with pytest.raises(ValueError, match="no entry for grid"):
        plan.cost({(32, 32): 1.0})


def test_measured_flops_scale_with_pixels():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def den(x, t):
        return conv(x)[:, :3]

    flops = measure_eval_cost(den, [(16, 16), (32, 32)], channels=3)
    assert flops[(32, 32)] == pytest.approx(4 * flops[(16, 16)])
    assert flops[(16, 16)] == 2 * 3 * 8 * 9 * 16 * 16


def test_stage_grids_rounding_and_errors():
    assert stage_grids((128, 96), (0.5, 1.0), multiple=2) == [(64, 48), (128, 96)]
    with pytest.raises(ValueError, match="same grid"):
        stage_grids((4, 4), (0.9, 1.0), multiple=2)
    with pytest.raises(ValueError, match="not divisible"):
        stage_grids((63, 64), (0.5, 1.0), multiple=2)


@pytest.mark.parametrize("scales", [(0.5,), (1.0, 0.5), (0.5, 0.5, 1.0), (0.0, 1.0), (0.5, 1.2)])
def test_scales_must_increase_to_one(scales):
    with pytest.raises(ValueError, match="scales must"):
        spd_plan(flux_times(10, 256), (32, 32), scales, spectrum="flux")


@pytest.mark.parametrize("delta", [0.0, 1.0, -0.1, 1.5])
def test_delta_out_of_range(delta):
    with pytest.raises(ValueError, match=r"delta .* must lie in \(0, 1\)"):
        spd_plan(flux_times(10, 256), (32, 32), (0.5, 1), spectrum="flux", delta=delta)


def test_plan_validation():
    with pytest.raises(ValueError, match="strictly decreasing"):
        full_plan([1.0, 0.5, 0.6, 0.0], (8, 8))
    with pytest.raises(ValueError, match="end at t = 0"):
        Plan((Stage((8, 8), (1.0, 0.5)),))
    with pytest.raises(ValueError, match="transition from t=0.5 gives"):
        Plan((Stage((4, 4), (1.0, 0.5)), Stage((8, 8), (0.5, 0.0))))
    good = 2 * 0.5 / 1.5
    Plan((Stage((4, 4), (1.0, 0.5)), Stage((8, 8), (good, 0.0))))
    with pytest.raises(ValueError, match="exactly 2x"):
        pyramidal_plan((48, 48), (0.5, 0.75, 1.0), (2, 2, 2))
    with pytest.raises(ValueError, match="A= and beta="):
        spd_plan(flux_times(10, 256), (32, 32), (0.5, 1))
    with pytest.raises(ValueError, match="unknown spectrum"):
        spd_plan(flux_times(10, 256), (32, 32), (0.5, 1), spectrum="sdxl")


def test_pixelgen_cost_bound_is_sane():
    t = flow_times(25, 3.0)
    plan = spd_plan(t, (512, 512), (0.5, 1.0), spectrum="pixelgen", delta=0.01)
    assert 1.0 < plan.speedup_bound() < 4.0
    assert math.isclose(plan.speedup_bound("tokens"), 25 / plan.cost("tokens"))


def _mixed_plan(models=None):
    """8^2 -> 16^2 by a spectral carry, 16^2 -> 32^2 by an x0 re-noise to t = 0.5."""
    return staged_plan([(8, 8), (16, 16), (32, 32)], [(1.0, 0.7), (None, 0.4), (0.5, 0.0)],
                       [2, 2, 3], 1.0, [Spectral("dct"), X0Renoise("dct")], "mixed",
                       models=models)


def test_mixed_plan_validates_and_prices():
    plan = _mixed_plan(models=("coarse", "coarse", "fine"))
    assert plan.transitions == (Spectral("dct"), X0Renoise("dct"))
    assert plan.transition == "mixed" and not plan.carries_state
    # carried switch: stage 1 starts at 2 t / (1 + t) of stage 0's end (rho = 2)
    assert plan.stages[1].times[0] == pytest.approx(1.4 / 1.7)
    assert plan.stages[2].times[0] == 0.5  # x0 re-noise: the stage's own start
    assert plan.model_keys == ("coarse", "fine")
    # the x0 estimate at t = 0.4 > 0 costs one more evaluation of stage 1's model
    assert plan.evaluations() == [2, 3, 3]
    assert plan.cost() == pytest.approx(2 / 16 + 3 / 4 + 3)
    assert plan.speedup_bound() == pytest.approx(8 / (2 / 16 + 3 / 4 + 3))
    # a cost table per (model, grid): the fine model is twice as dear per element
    table = {("coarse", (8, 8)): 1.0, ("coarse", (16, 16)): 4.0, ("fine", (32, 32)): 32.0}
    assert plan.cost(table) == pytest.approx(2 / 32 + 3 * 4 / 32 + 3)
    rows = plan.describe()
    assert [r["transition"] for r in rows] == ["-", "dct", "x0_dct"]
    assert [r["model"] for r in rows] == ["coarse", "coarse", "fine"]
    assert [r["evaluations"] for r in rows] == [2, 3, 3]
    # the same plan written by hand equals the constructor's
    by_hand = Plan((Stage((8, 8), plan.stages[0].times, None, "coarse"),
                    Stage((16, 16), plan.stages[1].times, Spectral(), "coarse"),
                    Stage((32, 32), plan.stages[2].times, "x0_dct", "fine")))
    assert by_hand.stages == plan.stages


def test_legacy_transition_argument_builds_the_object_form():
    t = flux_times(20, 1024)
    a = spd_plan(t, (32, 32), (0.5, 1.0), spectrum="flux", delta=0.05, transition="haar")
    b = spd_plan(t, (32, 32), (0.5, 1.0), spectrum="flux", delta=0.05, transition=Spectral("haar"))
    assert a.stages == b.stages and a.transitions == (Spectral("haar"),)
    assert a.meta.family == "spd" and a.meta.t_star and a.meta.switch_steps
    p = pyramidal_plan((32, 32), (0.5, 1.0), (4, 4))
    assert p.transitions == (Pyramid(),) and p.coupling_basis() == "haar"
    c = cascade_plan(t, (32, 32), (0.5, 1.0), renoise_at=(0.6,))
    assert c.transitions == (X0Renoise("bicubic"),) and c.meta.renoise_at == (0.6,)
    # Plan(stages, "x0_bicubic") fills every later stage's transition
    st = (Stage((16, 16), (1.0,)), Stage((32, 32), (0.6, 0.0)))
    assert Plan(st, "x0_bicubic").transitions == (X0Renoise("bicubic"),)
    assert full_plan(t, (32, 32)).transition == "dct" and full_plan(t, (32, 32)).meta.family == "full"


def test_mixed_plan_errors():
    with pytest.raises(ValueError, match="SPD carries the state"):
        spd_plan(flux_times(10, 256), (32, 32), (0.5, 1), spectrum="flux", transition=X0Renoise())
    with pytest.raises(ValueError, match="first stage has no entering transition"):
        Plan((Stage((8, 8), (1.0, 0.0), Spectral()),))
    with pytest.raises(ValueError, match="model key"):
        Stage((8, 8), (1.0, 0.0), None, "")
    with pytest.raises(ValueError, match="one transition per stage switch"):
        staged_plan([(8, 8), (16, 16)], [(1.0, 0.5), (None, 0.0)], [2, 2], 1.0,
                    [Spectral(), Spectral()])
    with pytest.raises(ValueError, match="needs its own start time"):
        staged_plan([(8, 8), (16, 16)], [(1.0, 0.5), (None, 0.0)], [2, 2], 1.0, X0Renoise())
    with pytest.raises(ValueError, match="one model key per stage"):
        _mixed_plan(models=("a", "b"))
    mixed_bases = staged_plan([(8, 8), (16, 16), (32, 32)], [(1.0, 0.7), (None, 0.4), (None, 0.0)],
                              [2, 2, 2], 1.0, [Spectral("dct"), Spectral("haar")])
    with pytest.raises(ValueError, match="coupled=False"):
        mixed_bases.coupling_basis()
    with pytest.raises(ValueError, match="no entry for grid"):
        _mixed_plan().cost({(8, 8): 1.0, (16, 16): 2.0})
