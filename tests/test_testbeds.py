"""Testbeds and denoiser wrappers (the plan search: test_optimize.py; the comparison:
test_analysis_testbed.py)."""

import math

import pytest
import torch

from specdiff.denoisers import (
    FlowDenoiser,
    VPDenoiser,
    flow_to_ve,
    flow_to_vp,
    ve_to_flow,
    vp_to_flow,
)
from specdiff.plans import SPECTRA, flow_times, flux_times, full_plan, spd_plan
from specdiff.spectral import dct, resize
from specdiff.testbeds import EmpiricalDenoiser, GaussianField

f64 = torch.float64
FLUX = SPECTRA["flux"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- Gaussian field -------------------------------------------------------------


def test_field_samples_have_the_stated_coefficient_variance():
    field = GaussianField(30.0, 2.0, (12, 10), channels=2)
    x = field.sample(4000, gen(0), dtype=f64)
    v = (dct(x) ** 2).mean((0, 1))
    assert ((v / field.variance()) - 1).abs().mean() < 0.03
    # consistent across grids: the coarse field is rho times the truncation
    coarse = resize(x, 0.0, (6, 5))[0]
    vc = (dct(coarse) ** 2).mean((0, 1))
    assert ((vc / field.variance((6, 5))) - 1).abs().mean() < 0.03
    assert torch.allclose(field.variance((6, 5)), field.variance()[:6, :5] * (30 / 120))


def test_wiener_denoiser_is_the_posterior_mean():
    field = GaussianField(30.0, 2.0, (8, 8))
    x0 = field.sample(20000, gen(1), dtype=f64)
    t = 0.6
    xt = (1 - t) * x0 + t * torch.randn(x0.shape, dtype=f64, generator=gen(2))
    d = field.denoiser(xt, torch.full((x0.shape[0],), t, dtype=f64))
    # orthogonality principle: the error is uncorrelated with the observation
    err, obs = dct(x0 - d), dct(xt)
    corr = (err * obs).mean(0) / ((err**2).mean(0).sqrt() * (obs**2).mean(0).sqrt())
    assert corr.abs().max() < 0.04


def test_closed_form_on_a_large_grid_equals_the_sampler():
    # 256^2 (FLUX's 2048^2 latent side): one noise vector pushed through sample() equals the
    # closed form's per-coefficient gain times that noise (a single sample is deterministic)
    from specdiff import sample
    from specdiff.spectral import idct

    field = GaussianField(FLUX.A, FLUX.beta, (256, 256))
    plan = spd_plan(flux_times(8, 16384), (256, 256), (0.5, 1.0), spectrum="flux", delta=0.05)
    z = torch.randn(1, 1, 256, 256, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    out = sample(field.denoiser, plan, noise=idct(z))
    gain = field.output_variance(plan).sqrt()
    assert (dct(out) - gain * z).abs().max() < 1e-8
    assert math.isfinite(field.w2(plan)) and field.w2(plan) > 0


def test_w2_and_kl_vanish_as_heun_converges_to_the_exact_law():
    field = GaussianField(30.0, 2.0, (8, 8))
    m200 = field.metrics(full_plan(flow_times(200), (8, 8)), "heun")
    m400 = field.metrics(full_plan(flow_times(400), (8, 8)), "heun")
    assert m400["w2"] < 1e-3 and m400["kl"] < 1e-7
    assert m200["w2"] / m400["w2"] == pytest.approx(4, rel=0.1)  # second order


# --- empirical denoiser ---------------------------------------------------------


def test_empirical_denoiser_limits_and_brute_force():
    ims = torch.randn(5, 2, 8, 8, dtype=f64, generator=gen(3))
    den = EmpiricalDenoiser(ims)
    # t -> 0: the nearest image
    x = ims[2:3] + 1e-3 * torch.randn(1, 2, 8, 8, dtype=f64, generator=gen(4))
    out = den(x, torch.tensor([1e-3], dtype=f64))
    assert (out - ims[2:3]).abs().max() < 1e-6
    # t = 1 - tiny: the mean of the set
    out = den(torch.randn(1, 2, 8, 8, dtype=f64), torch.tensor([1 - 1e-9], dtype=f64))
    assert (out - ims.mean(0, keepdim=True)).abs().max() < 1e-6
    # brute force posterior weights at a middle time
    t = 0.5
    x = torch.randn(1, 2, 8, 8, dtype=f64, generator=gen(5))
    logw = torch.stack([-((x - (1 - t) * im) ** 2).sum() / (2 * t**2) for im in ims])
    ref = (torch.softmax(logw, 0)[:, None, None, None] * ims).sum(0, keepdim=True)
    assert (den(x, torch.tensor([t], dtype=f64)) - ref).abs().max() < 1e-10
    # other grids: the images are brought to the grid by the consistent spectral resample
    xc = torch.randn(1, 2, 4, 4, dtype=f64)
    assert den(xc, torch.tensor([0.5], dtype=f64)).shape == xc.shape


# --- denoiser wrappers (VP <-> flow) --------------------------------------------


def test_frame_conversions_round_trip():
    x = torch.randn(2, 3, 4, 4, dtype=f64)
    a, s = 0.6, 0.8
    xf, t = vp_to_flow(x, a, s)
    assert t == pytest.approx(s / (a + s))
    assert torch.allclose(flow_to_vp(xf, t, a), x)
    xv, sigma = flow_to_ve(xf, t)
    xf2, t2 = ve_to_flow(xv, sigma)
    assert torch.allclose(xf2, xf) and t2 == pytest.approx(t)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_vp_wrapper_recovers_the_flow_denoiser(prediction):
    """An exact VP model of the Gaussian field, wrapped, equals the field's flow denoiser."""
    field = GaussianField(30.0, 2.0, (8, 8))
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=f64) ** 2
    abar = torch.cumprod(1 - betas, 0)

    def vp_model(x_vp, timestep):
        # exact eps / v prediction from the Wiener filter in the flow frame
        ts = timestep.to(f64)
        lo = ts.floor().long().clamp(0, 998)
        w = ts - lo
        ls = torch.log(torch.sqrt((1 - abar) / abar))
        sigma = torch.exp((1 - w) * ls[lo] + w * ls[lo + 1]).reshape(-1, 1, 1, 1)
        a = 1 / torch.sqrt(1 + sigma**2)
        s = a * sigma
        t = sigma / (1 + sigma)
        x = x_vp / (a + s)
        x0 = field.denoiser(x, t.flatten())
        eps = (x_vp - a * x0) / s
        return eps if prediction == "eps" else a * eps - s * x0

    den = VPDenoiser(vp_model, abar, prediction)
    x = torch.randn(3, 1, 8, 8, dtype=f64, generator=gen(6))
    t = torch.tensor([0.3, 0.6, 0.9], dtype=f64)
    # the timestep reaches the model in float32, hence ~1e-7 rather than 1e-15
    assert (den(x, t) - field.denoiser(x, t)).abs().max() < 1e-5
    with pytest.raises(ValueError, match="outside this VP model's range"):
        den(x, torch.tensor([0.999999, 0.5, 0.5], dtype=f64))


def test_flow_wrapper_velocity_and_dtype():
    def model(x, t):
        return -x  # v = eps - x0 with x0 = 2x... any linear map works for the algebra

    den = FlowDenoiser(model, "flow", time_scale=1000.0, dtype=torch.bfloat16)
    x = torch.randn(2, 1, 4, 4)
    out = den(x, torch.tensor([0.5, 0.25]))
    assert out.dtype == torch.float32
    expect = x + torch.tensor([0.5, 0.25]).reshape(2, 1, 1, 1) * x.bfloat16().float()
    assert (out - expect).abs().max() < 2e-2
    with pytest.raises(ValueError, match="prediction must be"):
        FlowDenoiser(model, "eps")
