"""Transition objects: legacy strings, checks, entry times, and each kind against an
independent formula (numpy / scipy), all through the one resize primitive."""

import numpy as np
import pytest
import torch
from scipy.fft import dctn, idctn

from specdiff.spectral import pyramid_renoise, resize
from specdiff.transitions import LEGACY_KINDS, Pyramid, Spectral, X0Renoise, as_transition

f64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_legacy_strings_map_to_objects_and_back():
    assert as_transition("dct") == Spectral("dct")
    assert as_transition("haar") == Spectral("haar")
    assert as_transition("pyramid") == Pyramid()
    assert as_transition("x0_bicubic") == X0Renoise("bicubic")
    assert as_transition("x0_dct") == X0Renoise("dct")
    for kind in LEGACY_KINDS:
        assert as_transition(kind).kind == kind
    tr = X0Renoise("dct")
    assert as_transition(tr) is tr
    for bad in ("x0", "x0_cubic", "DCT", 3, None):
        with pytest.raises(ValueError, match="transition must be"):
            as_transition(bad)
    with pytest.raises(ValueError, match="Spectral basis"):
        Spectral("wavelet")
    with pytest.raises(ValueError, match="X0Renoise up"):
        X0Renoise("lanczos")


def test_what_each_kind_carries():
    assert Spectral().carries_state and Pyramid().carries_state
    assert not X0Renoise().carries_state
    assert Spectral("fft").coupling_basis == "fft"
    assert Pyramid().coupling_basis == "haar"  # pyramid renoise == haar given the same noise
    assert X0Renoise().coupling_basis is None
    # SPD Eq. 6 for a 2x-per-side expansion: rho = 2, t' = 2t / (1 + t)
    assert Spectral().entry_time(0.6, (8, 8), (16, 16)) == pytest.approx(1.2 / 1.6)
    assert Pyramid().entry_time(0.6, (8, 8), (16, 16)) == pytest.approx(1.2 / 1.6)
    # truncation 16 -> 8 per side: rho = 1/2, t' = 0.5 t / (1 - 0.5 t)
    assert Spectral().entry_time(0.6, (16, 16), (8, 8)) == pytest.approx(0.3 / 0.7)
    with pytest.raises(ValueError, match="no derived entry time"):
        X0Renoise().entry_time(0.6, (8, 8), (16, 16))


def test_checks_name_the_fix():
    Spectral("haar").check((8, 8), (16, 16))
    with pytest.raises(ValueError, match="exactly 2x"):
        Spectral("haar").check((8, 8), (12, 12))
    Pyramid().check((3, 8, 8), (3, 16, 16))
    with pytest.raises(ValueError, match="exactly 2x on the last two axes"):
        Pyramid().check((8, 8), (16, 8))
    Spectral("dct").check((8, 8), (13, 11))  # any ratio


def test_pyramid_basis_equals_the_pixel_formula_in_numpy():
    # Pyramid Flow (arXiv 2410.05954): x' = Up_nn(x) / (1 + t) + t' (z - blockmean(z)),
    # t' = 2 t / (1 + t); written here with numpy on the 2x2 blocks directly
    x = torch.randn(2, 3, 4, 6, dtype=f64, generator=gen(1))
    z = torch.randn(2, 3, 8, 12, dtype=f64, generator=gen(2))
    t = 0.55
    xn, zn = x.numpy(), z.numpy()
    up = np.kron(xn, np.ones((2, 2)))
    blocks = zn.reshape(2, 3, 4, 2, 6, 2).mean(axis=(3, 5))
    ref = up / (1 + t) + (2 * t / (1 + t)) * (zn - np.kron(blocks, np.ones((2, 2))))
    y, tn = Pyramid().apply(x, t, (8, 12), noise=z)
    assert tn == pytest.approx(2 * t / (1 + t))
    np.testing.assert_allclose(y.numpy(), ref, atol=1e-12)
    y2, _ = pyramid_renoise(x, t, noise=z)
    assert torch.equal(y, y2)
    with pytest.raises(ValueError, match="doubles the last two axes"):
        resize(x, t, (8, 8), noise=z[..., :8], basis="pyramid")


def test_x0_renoise_dct_is_the_t0_resize_plus_fresh_noise_in_scipy():
    # DCT upsample of a clean image = orthonormal zero-padding times rho (kappa at t = 0)
    x0 = torch.randn(1, 2, 6, 6, dtype=f64, generator=gen(3))
    z = torch.randn(1, 2, 12, 12, dtype=f64, generator=gen(4))
    t = 0.4
    c = dctn(x0.numpy(), axes=(-2, -1), norm="ortho")
    pad = np.zeros((1, 2, 12, 12))
    pad[..., :6, :6] = c
    up = idctn(pad, axes=(-2, -1), norm="ortho") * 2.0
    ref = (1 - t) * up + t * z.numpy()
    out = X0Renoise("dct").apply(x0, t, (12, 12), noise=z)
    np.testing.assert_allclose(out.numpy(), ref, atol=1e-12)
    # at t_new = 0 nothing is injected and no randomness is needed
    np.testing.assert_allclose(X0Renoise("dct").apply(x0, 0.0, (12, 12)).numpy(), up, atol=1e-12)
    with pytest.raises(ValueError, match="needs fresh noise"):
        X0Renoise("bicubic").apply(x0, 0.3, (12, 12))


def test_spectral_apply_is_resize_in_its_basis():
    x = torch.randn(2, 1, 8, 8, dtype=f64, generator=gen(5))
    z = torch.randn(2, 1, 16, 16, dtype=f64, generator=gen(6))
    for basis in ("dct", "fft", "haar"):
        a, ta = Spectral(basis).apply(x, 0.7, (16, 16), noise=z)
        b, tb = resize(x, 0.7, (16, 16), noise=z, basis=basis)
        assert torch.equal(a, b) and ta == tb
    # the haar expansion and the pyramid jump agree given the same noise
    h, _ = Spectral("haar").apply(x, 0.7, (16, 16), noise=z)
    p, _ = Pyramid().apply(x, 0.7, (16, 16), noise=z)
    assert (h - p).abs().max() < 1e-12


def test_fresh_noise_rules():
    from specdiff.spectral import fresh_noise

    a = fresh_noise((2, 3), 0.5, generator=gen(7))
    assert torch.equal(a, torch.randn(2, 3, generator=gen(7)))
    assert torch.equal(fresh_noise((2, 3), 0.0), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="needs fresh noise"):
        fresh_noise((2, 3), 0.5)
    with pytest.raises(ValueError, match="target shape"):
        fresh_noise((2, 3), 0.5, noise=torch.zeros(3, 2))
    with pytest.raises(ValueError, match="NaN"):
        fresh_noise((2, 3), 0.5, noise=torch.full((2, 3), float("nan")))


def test_broadcast_time_by_rank():
    from specdiff.spectral import broadcast_time

    img, vid = torch.zeros(3, 2, 4, 4), torch.zeros(3, 2, 5, 4, 4)
    t = torch.tensor([0.1, 0.2, 0.3], dtype=f64)
    assert broadcast_time(t, img).shape == (3, 1, 1, 1)
    assert broadcast_time(t, vid).shape == (3, 1, 1, 1, 1)
    assert broadcast_time(t, vid).dtype == torch.float32
    assert broadcast_time(0.25, img) == 0.25 and isinstance(broadcast_time(0.25, img), float)
    # each sample's time multiplies its own sample
    y = torch.ones_like(vid) * broadcast_time(t, vid)
    assert torch.allclose(y[:, 0, 0, 0, 0], t.float())
    with pytest.raises(ValueError, match=r"\(B,\) tensor"):
        broadcast_time(torch.zeros(3, 1), img)
    with pytest.raises(ValueError, match=r"\(B,\) tensor"):
        broadcast_time(torch.zeros(2), img)
