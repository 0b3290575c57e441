"""Spectral transforms and the exact flow-state resize, against independent references."""

import math

import numpy as np
import pytest
import scipy.fft as sfft
import torch

from specdiff.spectral import (
    dct,
    fit_power_law,
    idct,
    project_noise,
    pyramid_renoise,
    rapsd,
    resize,
    resolution_shift,
    upsample,
    x0_renoise,
)

f64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- DCT ---------------------------------------------------------------------


@pytest.mark.parametrize("shape,dims", [((3, 7, 10), (-2, -1)), ((2, 1, 4, 6, 9), (-3, -2, -1)),
                                        ((5, 11), (-1,)), ((2, 3, 8, 8), (-2,))])
def test_dct_matches_scipy(shape, dims):
    x = torch.randn(shape, dtype=f64, generator=gen(0))
    ref = sfft.dctn(x.numpy(), type=2, norm="ortho", axes=dims)
    assert np.abs(dct(x, dims).numpy() - ref).max() < 1e-10
    ref_i = sfft.idctn(x.numpy(), type=2, norm="ortho", axes=dims)
    assert np.abs(idct(x, dims).numpy() - ref_i).max() < 1e-10


def test_dct_float32_and_half_inputs():
    x = torch.randn(2, 3, 16, 16, generator=gen(1))
    y = dct(x)
    assert y.dtype == torch.float32
    assert (idct(y) - x).abs().max() < 1e-5
    assert dct(x.half()).dtype == torch.float32  # computed in float32, never half


def test_dct_rejects_repeated_dims():
    with pytest.raises(ValueError, match="repeat"):
        dct(torch.zeros(2, 4, 4), (-1, 2))


# --- resize: independent scipy reference ---------------------------------------


def scipy_resize(x, t, shape, noise):
    """Reference implementation of DESIGN.md section 3 with scipy, float64, joint DCT."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(range(2, x.ndim))
    old = x.shape[2:]
    X = sfft.dctn(x, norm="ortho", axes=axes)
    big = t * sfft.dctn(np.asarray(noise), norm="ortho", axes=axes)
    sl = (slice(None), slice(None)) + tuple(slice(0, min(a, b)) for a, b in zip(old, shape))
    out = np.zeros(x.shape[:2] + tuple(shape))
    out[...] = big
    out[sl] = X[sl]
    y = sfft.idctn(out, norm="ortho", axes=axes)
    rho = math.sqrt(np.prod(shape) / np.prod(old))
    kappa = rho / (1 + (rho - 1) * t)
    return y * kappa, rho * t / (1 + (rho - 1) * t)


@pytest.mark.parametrize("old,new,t", [
    ((8, 8), (16, 16), 0.7), ((16, 16), (8, 8), 0.4), ((6, 10), (9, 25), 0.9),
    ((12, 9), (7, 14), 0.55), ((3, 8, 10), (3, 16, 20), 0.8), ((60, 107), (90, 160), 0.85),
])
def test_resize_matches_scipy_reference(old, new, t):
    x = torch.randn(2, 3, *old, dtype=f64, generator=gen(2))
    noise = torch.randn(2, 3, *new, dtype=f64, generator=gen(3))
    y, tn = resize(x, t, new, noise=noise)
    ref, tref = scipy_resize(x.numpy(), t, new, noise.numpy())
    assert np.abs(y.numpy() - ref).max() < 1e-10
    assert tn == pytest.approx(tref, abs=1e-14)


def test_rho_from_actual_sizes_not_nominal_ratio():
    # Wan 720p: 60x107 -> 90x160 is not exactly 1.5x per side
    x = torch.zeros(1, 1, 60, 107, dtype=f64)
    _, tn = resize(x, 0.5, (90, 160), noise=torch.zeros(1, 1, 90, 160, dtype=f64))
    rho = math.sqrt(90 * 160 / (60 * 107))
    assert tn == pytest.approx(rho * 0.5 / (1 + (rho - 1) * 0.5), abs=1e-15)
    assert abs(tn - resolution_shift(0.5, 1.5)) > 3e-4  # the nominal ratio would be off


def test_flux_check_value():
    from specdiff.plans import SPECTRA, spd_transition_time

    # DESIGN.md section 4 / methods.md section 1 table: FLUX 1024^2, scale 0.5, delta 0.01
    s = SPECTRA["flux"]
    t_star = spd_transition_time(s.A, s.beta, 0.5, 128, 0.01)
    assert t_star == pytest.approx(0.853, abs=5e-4)
    x = torch.zeros(1, 1, 64, 64, dtype=f64)
    _, tn = resize(x, t_star, (128, 128), noise=torch.zeros(1, 1, 128, 128, dtype=f64))
    assert tn == pytest.approx(0.920, abs=5e-4)


@pytest.mark.parametrize("basis", ["dct", "fft", "haar"])
@pytest.mark.parametrize("old", [(8, 12), (7, 10), (5, 9)])
def test_expand_then_truncate_is_identity(basis, old):
    if basis == "haar":
        new = tuple(2 * s for s in old)
    else:
        new = (old[0] * 2 + 1, old[1] + 3)
    x = torch.randn(2, 3, *old, dtype=f64, generator=gen(4))
    t = torch.tensor([0.3, 0.9], dtype=f64)
    noise = torch.randn(2, 3, *new, dtype=f64, generator=gen(5))
    y, tn = resize(x, t, new, noise=noise, basis=basis)
    z, tb = resize(y, tn, old, basis=basis)
    assert (z - x).abs().max() < 1e-12
    assert torch.allclose(tb, t, atol=1e-14)


def test_video_resizes_only_changed_axes():
    x = torch.randn(1, 2, 5, 8, 8, dtype=f64, generator=gen(6))
    noise = torch.randn(1, 2, 5, 16, 16, dtype=f64, generator=gen(7))
    y, tn = resize(x, 0.6, (5, 16, 16), noise=noise)
    # equals resizing every frame as a 4-D batch
    frames = x.permute(0, 2, 1, 3, 4).reshape(5, 2, 8, 8)
    nf = noise.permute(0, 2, 1, 3, 4).reshape(5, 2, 16, 16)
    yf, tf = resize(frames, 0.6, (16, 16), noise=nf)
    assert (y.permute(0, 2, 1, 3, 4).reshape(5, 2, 16, 16) - yf).abs().max() < 1e-12
    assert tn == pytest.approx(tf)


@pytest.mark.parametrize("basis", ["fft", "dct", "haar"])
@pytest.mark.parametrize("old", [(8, 8), (7, 9)])
def test_constant_image_stays_constant(basis, old):
    if basis == "haar" and old[0] % 2:
        old = (8, 8)
    new = tuple(2 * s for s in old) if basis == "haar" else (old[0] + 5, old[1] * 2)
    x = torch.full((1, 1, *old), 0.7, dtype=f64)
    y, tn = resize(x, 0.0, new, basis=basis, noise=torch.randn(1, 1, *new, dtype=f64))
    assert tn == 0.0
    assert (y - 0.7).abs().max() < 1e-12


# --- exactness of the marginal (Monte Carlo on the Gaussian field) --------------


def test_expansion_gives_exact_flow_marginal_on_low_band():
    from specdiff.testbeds import GaussianField

    field = GaussianField(50.0, 2.0, (16, 16))
    n, t = 20000, 0.6
    x0_fine = field.sample(n, gen(8), dtype=f64)  # (n, 1, 16, 16)
    x0_coarse = resize(x0_fine, 0.0, (8, 8))[0]  # rho * truncation: the coarse field
    eps = torch.randn(n, 1, 8, 8, dtype=f64, generator=gen(9))
    xc = (1 - t) * x0_coarse + t * eps
    y, tn = resize(xc, t, (16, 16), generator=gen(10))
    c = dct(y)
    c0 = dct(x0_fine)
    p = field.variance()
    low = (slice(0, 8), slice(0, 8))
    # variance of the state on the low band = exact flow marginal at tn
    var = (c**2).mean((0, 1))
    expect = (1 - tn) ** 2 * p + tn**2
    rel = (var[low] / expect[low] - 1).abs()
    assert rel.max() < 0.06 and rel.mean() < 0.015  # MC error ~ sqrt(2/n) per bin
    # signal coefficient: E[x_k x0_k] = (1 - tn) P_k
    cov = (c * c0).mean((0, 1))
    assert ((cov[low] / ((1 - tn) * p[low])) - 1).abs().mean() < 0.02
    # new bins are white noise at tn (the noise-dominated approximation)
    high = torch.ones(16, 16, dtype=torch.bool)
    high[low] = False
    assert ((var[high] / tn**2) - 1).abs().mean() < 0.02
    assert cov[high].abs().max() < 0.05 * (p[high].sqrt() * tn).max()


def test_haar_and_dct_give_the_same_marginal_for_r2():
    # state = t * white noise: both expansions must give white noise of variance t_new^2,
    # with the same t_new; and a smooth signal at t = 0 is carried by both
    n, t = 4000, 0.5
    x = t * torch.randn(n, 1, 8, 8, dtype=f64, generator=gen(11))
    covs, tns = [], []
    for basis in ("dct", "haar"):
        y, tn = resize(x, t, (16, 16), basis=basis, generator=gen(12))
        f = y.reshape(n, -1)
        covs.append(f.T @ f / n)
        tns.append(tn)
    assert tns[0] == tns[1] == pytest.approx(2 * t / (1 + t))
    for cov in covs:
        assert (torch.diag(cov) / tns[0] ** 2 - 1).abs().mean() < 0.03
        off = cov - torch.diag(torch.diag(cov))
        assert off.abs().max() < 0.1 * tns[0] ** 2
    assert (covs[0] - covs[1]).abs().max() < 0.1 * tns[0] ** 2


def test_pyramid_renoise_is_white_and_equals_haar():
    n, t = 4000, 0.4
    x = t * torch.randn(n, 1, 4, 4, dtype=f64, generator=gen(13))
    y, tn = pyramid_renoise(x, t, generator=gen(14))
    assert tn == pytest.approx(2 * t / (1 + t))
    f = y.reshape(n, -1)
    cov = f.T @ f / n
    assert (torch.diag(cov) / tn**2 - 1).abs().max() < 0.1
    # no within-block correlation left (nearest upsampling would give correlation 1)
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 0.1 * tn**2
    # identical to the haar expansion given the same noise
    x1 = torch.randn(2, 3, 5, 6, dtype=f64, generator=gen(15))
    z = torch.randn(2, 3, 10, 12, dtype=f64, generator=gen(16))
    a, ta = pyramid_renoise(x1, 0.7, noise=z)
    b, tb = resize(x1, 0.7, (10, 12), noise=z, basis="haar")
    assert (a - b).abs().max() < 1e-12 and ta == pytest.approx(tb)


def test_fft_padding_noise_is_white():
    n, t = 4000, 0.8
    x = t * torch.randn(n, 1, 6, 6, dtype=f64, generator=gen(17))
    y, tn = resize(x, t, (9, 12), basis="fft", generator=gen(18))
    f = y.reshape(n, -1)
    cov = f.T @ f / n
    assert (torch.diag(cov) / tn**2 - 1).abs().mean() < 0.03
    assert (cov - torch.diag(torch.diag(cov))).abs().max() < 0.1 * tn**2


def test_project_noise_keeps_white_unit_variance():
    z = torch.randn(3000, 1, 16, 16, dtype=f64, generator=gen(19))
    for basis in ("dct", "fft", "haar"):
        p = project_noise(z, (8, 8), basis)
        f = p.reshape(3000, -1)
        cov = f.T @ f / 3000
        assert (torch.diag(cov) - 1).abs().mean() < 0.03
        assert (cov - torch.diag(torch.diag(cov))).abs().max() < 0.1


def test_per_sample_time_and_batch_independence():
    x = torch.randn(3, 2, 8, 8, dtype=f64, generator=gen(20))
    noise = torch.randn(3, 2, 16, 16, dtype=f64, generator=gen(21))
    t = torch.tensor([0.2, 0.5, 0.95], dtype=f64)
    y, tn = resize(x, t, (16, 16), noise=noise)
    for i in range(3):
        yi, ti = resize(x[i : i + 1], float(t[i]), (16, 16), noise=noise[i : i + 1])
        assert (y[i : i + 1] - yi).abs().max() < 1e-12
        assert float(tn[i]) == pytest.approx(ti)


def test_per_sample_generators_are_batch_independent():
    x = torch.randn(3, 1, 8, 8, generator=gen(22))
    gens = [gen(100 + i) for i in range(3)]
    y, _ = resize(x, 0.5, (16, 16), generator=gens)
    y1, _ = resize(x[1:2], 0.5, (16, 16), generator=[gen(101)])
    assert torch.equal(y[1:2], y1)


def test_dtype_preserved():
    x = torch.randn(1, 1, 8, 8)
    y, _ = resize(x, 0.5, (16, 16), generator=gen(0))
    assert y.dtype == torch.float32
    y, _ = resize(x.double(), 0.5, (16, 16), generator=gen(0))
    assert y.dtype == f64


# --- x0 renoise and upsample -----------------------------------------------------


def test_x0_renoise_mixes_upsampled_estimate_and_noise():
    x0 = torch.randn(2, 3, 8, 8, dtype=f64, generator=gen(23))
    z = torch.randn(2, 3, 16, 16, dtype=f64, generator=gen(24))
    out = x0_renoise(x0, 0.3, (16, 16), noise=z, mode="bicubic")
    up = torch.nn.functional.interpolate(x0, size=(16, 16), mode="bicubic", align_corners=False)
    assert (out - (0.7 * up + 0.3 * z)).abs().max() < 1e-12
    const = torch.full((1, 1, 8, 8), 0.25, dtype=f64)
    for mode in ("bicubic", "dct", "nearest", "bilinear"):
        assert (upsample(const, (16, 16), mode) - 0.25).abs().max() < 1e-12


# --- spectra -------------------------------------------------------------------


def test_rapsd_white_noise_is_flat_and_fit_recovers_power_law():
    z = 0.5 * torch.randn(64, 1, 32, 32, dtype=f64, generator=gen(25))
    f, p = rapsd(z)
    assert (p.mean() / 0.25 - 1).abs() < 0.02
    from specdiff.testbeds import GaussianField

    field = GaussianField(120.0, 2.2, (64, 64))
    x = field.sample(64, gen(26), dtype=f64)
    f, p = rapsd(x)
    A, beta = fit_power_law(f, p, fmin=1.0)
    assert A == pytest.approx(120.0, rel=0.08)
    assert beta == pytest.approx(2.2, abs=0.05)


def test_fit_power_law_exact_on_exact_data():
    f = torch.linspace(1, 50, 100, dtype=f64)
    A, beta = fit_power_law(f, 3.0 * f**-1.7)
    assert A == pytest.approx(3.0, rel=1e-9) and beta == pytest.approx(1.7, rel=1e-9)


# --- bad input -------------------------------------------------------------------


def test_bad_input_raises_clear_errors():
    x = torch.zeros(1, 1, 8, 8)
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        resize(x, 1.5, (16, 16), generator=gen(0))
    with pytest.raises(ValueError, match=r"t must lie in \[0, 1\]"):
        resize(x, float("nan"), (16, 16), generator=gen(0))
    with pytest.raises(ValueError, match="one size per grid axis"):
        resize(x, 0.5, (16, 16, 4), generator=gen(0))
    with pytest.raises(ValueError, match="noise must have the target shape"):
        resize(x, 0.5, (16, 16), noise=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="exactly 2x"):
        resize(x, 0.5, (24, 24), basis="haar", generator=gen(0))
    with pytest.raises(ValueError, match="NaN"):
        resize(torch.full((1, 1, 4, 4), float("nan")), 0.5, (8, 8), generator=gen(0))
    with pytest.raises(ValueError, match="needs fresh noise"):
        resize(x, 0.5, (16, 16))
    with pytest.raises(ValueError, match="basis must be"):
        resize(x, 0.5, (16, 16), basis="wavelet", generator=gen(0))
    with pytest.raises(ValueError, match=r"\(B, C, \*grid\)"):
        resize(torch.zeros(8, 8), 0.5, (16, 16), generator=gen(0))
    with pytest.raises(ValueError, match="generators for a batch"):
        resize(torch.zeros(2, 1, 4, 4), 0.5, (8, 8), generator=[gen(0)])
    with pytest.raises(ValueError, match="doubles the last two axes"):
        pyramid_renoise(x, 0.5, (24, 24), generator=gen(0))
