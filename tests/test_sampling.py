"""The sampler and solvers: plain-solver equality, seed coupling, batch independence,
convergence orders on the Gaussian oracle, closed form vs Monte Carlo."""

import math

import pytest
import torch

from specdiff import sample
from specdiff.plans import (
    SPECTRA,
    Plan,
    Stage,
    bottleneck_plan,
    cascade_plan,
    flow_times,
    flux_times,
    full_plan,
    pyramidal_plan,
    spd_plan,
)
from specdiff.solvers import SOLVERS, get_solver
from specdiff.testbeds import EmpiricalDenoiser, GaussianField

f64 = torch.float64
FLUX = SPECTRA["flux"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def images():
    # a small structured image set: smooth blobs with different centres
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16, dtype=f64), torch.linspace(-1, 1, 16, dtype=f64),
                            indexing="ij")
    ims = []
    for i in range(6):
        cx, cy = math.cos(i), math.sin(2 * i)
        ims.append(torch.exp(-((xx - 0.5 * cx) ** 2 + (yy - 0.5 * cy) ** 2) * 4) * 2 - 0.5)
    return torch.stack(ims)[:, None].repeat(1, 2, 1, 1)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_one_stage_plan_equals_plain_solver(solver, images):
    den = EmpiricalDenoiser(images)
    times = flow_times(8, 2.0)
    noise = torch.randn(3, 2, 16, 16, dtype=f64, generator=gen(0))
    out = sample(den, full_plan(times, (16, 16)), solver=solver, noise=noise, generator=gen(1))
    sv = get_solver(solver)
    x, state, g = noise.clone(), None, gen(1)
    for t, tn in zip(times[:-1].tolist(), times[1:].tolist()):
        z = torch.randn(x.shape, generator=g).to(f64) if sv.stochastic else None
        x, state, _ = sv.step(den, x, t, tn, state=state, noise=z)
    assert torch.equal(out, x)


@pytest.mark.parametrize("coupled", [True, False])
def test_batch_independence_with_per_sample_generators(coupled, images):
    den = EmpiricalDenoiser(images)
    plan = spd_plan(flow_times(6, 2.0), (16, 16), (0.5, 1.0), spectrum=(30.0, 2.0), delta=0.1)
    out = sample(den, plan, generator=[gen(10 + i) for i in range(3)], channels=2, batch_size=3,
                 coupled=coupled)
    one = sample(den, plan, generator=[gen(11)], channels=2, batch_size=1, coupled=coupled)
    assert torch.allclose(out[1:2], one, atol=1e-6)


def test_seed_coupling_progressive_approaches_full_as_switch_moves_to_one():
    den = GaussianField(FLUX.A, FLUX.beta, (16, 16)).denoiser
    times = flow_times(10, 1.0)
    noise = torch.randn(2, 2, 16, 16, dtype=f64, generator=gen(2))
    full = sample(den, full_plan(times, (16, 16)), noise=noise)
    errs = []
    for eps in (1e-2, 1e-4, 1e-6):
        t_end = 1 - eps
        t_new = 2 * t_end / (1 + t_end)
        plan = Plan((Stage((8, 8), (1.0, t_end)), Stage((16, 16), (t_new, *times[1:].tolist()))))
        errs.append(((sample(den, plan, noise=noise) - full).abs().max() / full.abs().max()).item())
    # the difference is O(eps): progressive and full samples from one seed coincide in the limit
    assert errs[-1] < 1e-4
    assert errs[0] / errs[1] == pytest.approx(100, rel=0.2)
    assert errs[1] / errs[2] == pytest.approx(100, rel=0.2)


def test_fresh_noise_mode_differs_but_has_same_law():
    field = GaussianField(FLUX.A, FLUX.beta, (16, 16))
    plan = spd_plan(flux_times(8, 64), (16, 16), (0.5, 1.0), spectrum="flux", delta=0.05)
    noise = torch.randn(8000, 1, 16, 16, dtype=f64, generator=gen(3))
    a = sample(field.denoiser, plan, noise=noise)
    b = sample(field.denoiser, plan, noise=noise, coupled=False, generator=gen(4))
    assert not torch.allclose(a, b)
    exact = field.w2(plan)
    assert field.w2_from_samples(a) == pytest.approx(exact, rel=0.03)
    assert field.w2_from_samples(b) == pytest.approx(exact, rel=0.03)


@pytest.mark.parametrize("solver", sorted(SOLVERS))
def test_closed_form_law_matches_monte_carlo(solver):
    field = GaussianField(FLUX.A, FLUX.beta, (16, 16))
    times = flux_times(10, 64)
    plans = [full_plan(times, (16, 16)),
             spd_plan(times, (16, 16), (0.5, 1.0), spectrum="flux", delta=0.05),
             spd_plan(times, (16, 16), (0.25, 0.5, 1.0), spectrum="flux", delta=0.05,
                      continuation="respace"),
             bottleneck_plan(times, (16, 16)),
             cascade_plan(times, (16, 16), (0.5, 1.0), renoise_at=(0.7,), up="dct")]
    noise = torch.randn(4000, 1, 16, 16, dtype=f64, generator=gen(5))
    for plan in plans:
        x = sample(field.denoiser, plan, noise=noise, solver=solver, generator=gen(6))
        v_exact = field.output_variance(plan, solver)
        from specdiff.spectral import dct

        v_mc = (dct(x) ** 2).mean((0, 1))
        rel = (v_mc / v_exact - 1).abs()
        assert rel.mean() < 0.03, (plan.name, rel.mean())
        # MC W2 carries the sampling error of the noise's own variance (~1.5% per bin)
        assert field.w2_from_samples(x) == pytest.approx(field.w2(plan, solver), abs=0.05)


def test_closed_form_rejects_non_diagonal_transitions():
    field = GaussianField(FLUX.A, FLUX.beta, (16, 16))
    with pytest.raises(ValueError, match="diagonal in the DCT basis"):
        field.w2(pyramidal_plan((16, 16), (0.25, 0.5, 1), (2, 2, 2)))


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


def test_gain_path_through_sampler_equals_closed_form_for_one_sample():
    # a single noise vector pushed through sample() equals gain * noise per coefficient
    from specdiff.spectral import dct, idct

    field = GaussianField(FLUX.A, FLUX.beta, (16, 16))
    plan = spd_plan(flux_times(12, 64), (16, 16), (0.5, 1.0), spectrum="flux", delta=0.02)
    z = torch.randn(1, 1, 16, 16, dtype=f64, generator=gen(7))
    out = sample(field.denoiser, plan, noise=idct(z))
    gain = field.output_variance(plan).sqrt()
    assert (dct(out) - gain * z).abs().max() < 1e-10


def test_video_sampling_keeps_time_axis():
    field = GaussianField(50.0, 2.4, (3, 16, 16))
    plan = spd_plan(flow_times(6, 3.0), (3, 16, 16), (0.5, 1.0), spectrum=(50.0, 2.4), delta=0.05)
    noise = torch.randn(2, 1, 3, 16, 16, generator=gen(8))
    out = sample(field.denoiser, plan, noise=noise)
    assert out.shape == noise.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert field.w2(plan) > 0


@pytest.mark.parametrize("transition", ["fft", "haar", "pyramid"])
def test_other_transitions_run_and_match_law_roughly(transition):
    field = GaussianField(FLUX.A, FLUX.beta, (16, 16))
    times = flux_times(10, 64)
    plan = spd_plan(times, (16, 16), (0.5, 1.0), spectrum="flux", delta=0.05,
                    transition=transition)
    ref = spd_plan(times, (16, 16), (0.5, 1.0), spectrum="flux", delta=0.05)
    noise = torch.randn(3000, 1, 16, 16, dtype=f64, generator=gen(9))
    x = sample(field.denoiser, plan, noise=noise)
    # same time grid, marginal-equivalent transitions: W2 close to the dct plan's exact law
    assert field.w2_from_samples(x) == pytest.approx(field.w2(ref), rel=0.15)


def test_callback_sees_every_step_and_can_replace_x(images):
    den = EmpiricalDenoiser(images)
    plan = spd_plan(flow_times(6, 2.0), (16, 16), (0.5, 1.0), spectrum=(30.0, 2.0), delta=0.1)
    seen = []

    def cb(info):
        seen.append((info["stage"], info["grid"], info["t"]))
        return info["x"] * 1.0

    sample(den, plan, noise=torch.randn(1, 2, 16, 16, dtype=f64, generator=gen(0)), callback=cb)
    assert len(seen) == plan.steps
    assert {s for s, _, _ in seen} == {0, 1}


def test_sampler_bad_input(images):
    den = EmpiricalDenoiser(images)
    plan = full_plan(flow_times(4), (16, 16))
    with pytest.raises(ValueError, match="match the plan's full grid"):
        sample(den, plan, noise=torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match="noise= .* or generator="):
        sample(den, plan)
    with pytest.raises(ValueError, match="NaN"):
        sample(den, plan, noise=torch.full((1, 2, 16, 16), float("nan")))
    with pytest.raises(ValueError, match="pass generator="):
        sample(den, plan, noise=torch.randn(1, 2, 16, 16), solver="stochastic")
    with pytest.raises(ValueError, match="unknown solver"):
        sample(den, plan, noise=torch.randn(1, 2, 16, 16), solver="rk4")
    with pytest.raises(ValueError, match="must be a specdiff.plans.Plan"):
        sample(den, [1.0, 0.0], noise=torch.randn(1, 2, 16, 16))

    def bad(x, t):
        return x[..., :4]

    with pytest.raises(ValueError, match="must return x0_hat of the input's shape"):
        sample(bad, plan, noise=torch.randn(1, 2, 16, 16))
