"""Denoiser wrappers: VP <-> flow frames, eps/v VP models and flow-velocity models as
flow-frame ``x0`` predictors, checked against the Gaussian field's exact denoiser."""

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
from specdiff.testbeds import GaussianField

f64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


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

