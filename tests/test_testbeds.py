"""Testbeds (the denoiser wrappers: test_denoisers.py; the plan search: test_optimize.py; the comparison:
test_analysis_testbed.py)."""

import math

import pytest
import torch

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
