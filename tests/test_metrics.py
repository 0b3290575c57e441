"""Metrics on inputs with known answers."""

import math

import pytest
import torch

from specdiff.analysis import metrics as M


def imgs(n=6, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g)
    return torch.nn.functional.avg_pool2d(x, 3, 1, 1)  # some spatial correlation


def test_swd_of_a_set_to_itself_is_zero():
    a = imgs()
    r = M.swd(a, a, projections=64, repeats=2)
    assert r["mean"] == 0.0 and all(v == 0.0 for v in r["levels"])
    assert r["sizes"] == [32, 16]


def test_swd_reference_object_and_growth_with_distortion():
    a, b = imgs(seed=0), imgs(seed=1)
    kw = dict(projections=64, repeats=2)
    ref = M.SlicedWasserstein(a, **kw)
    assert ref(b)["mean"] == M.swd(a, b, **kw)["mean"] > 0
    assert ref(b[:3])["mean"] > 0  # set sizes may differ
    # same-law sets are much closer than a distorted one; roughly symmetric
    assert M.swd(b, a, **kw)["mean"] == pytest.approx(ref(b)["mean"], rel=0.3)
    g = torch.Generator().manual_seed(5)
    small = M.swd(a, a + 0.1 * torch.randn(a.shape, generator=g), **kw)["mean"]
    large = M.swd(a, a + 1.0 * torch.randn(a.shape, generator=g), **kw)["mean"]
    assert 0 < small < large


def test_swd_ignores_global_contrast_rapsd_sees_it():
    # descriptors are normalised per set (ProGAN): structure counts, a global gain does not
    a = imgs()
    assert M.swd(a, 0.5 * a + 0.1, projections=64, repeats=2)["mean"] < 1e-5
    assert M.rapsd_distance(0.5 * a, a) == pytest.approx(10 * math.log10(4), rel=1e-9)


def test_laplacian_pyramid_reconstructs():
    x = imgs(2, 32).double()
    levels = M.laplacian_pyramid(x, min_size=8)
    assert [lv.shape[-1] for lv in levels] == [32, 16, 8]
    rec = levels[-1]
    for lv in reversed(levels[:-1]):
        rec = lv + M._pyr_up(rec, lv.shape[-2:])
    torch.testing.assert_close(rec, x)


def test_psnr_of_known_noise():
    x = torch.zeros(2, 3, 8, 8)
    sigma = 0.1
    sign = torch.where(torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.5,
                       -1.0, 1.0)
    y = x + sigma * sign  # MSE exactly sigma^2
    assert M.psnr(x, y, data_range=2.0) == pytest.approx(10 * math.log10(4 / sigma**2))
    assert M.psnr(x, y, data_range=1.0) == pytest.approx(20.0)
    assert torch.isinf(M.psnr(x, x, reduction="none")).all()


def test_ssim_identity_and_ordering():
    a = imgs(2, 32).clamp(-1, 1)
    assert M.ssim(a, a) == pytest.approx(1.0)
    g = torch.Generator().manual_seed(1)
    s1 = M.ssim(a, a + 0.05 * torch.randn(a.shape, generator=g))
    s2 = M.ssim(a, a + 0.5 * torch.randn(a.shape, generator=g))
    assert 1 > s1 > s2


def test_rapsd_distance_of_a_scaled_set():
    a = imgs()
    assert M.rapsd_distance(a, a) == 0.0
    # power x4 at every frequency: 10 log10(4) dB everywhere
    assert M.rapsd_distance(2 * a, a) == pytest.approx(10 * math.log10(4), rel=1e-9)


def test_frechet_from_stats_known_values():
    mu = torch.tensor([1.0, 2.0])
    s1 = torch.diag(torch.tensor([4.0, 1.0]))
    s2 = torch.diag(torch.tensor([1.0, 9.0]))
    assert M.frechet_from_stats(mu, s1, mu, s1) == pytest.approx(0.0, abs=1e-9)
    assert M.frechet_from_stats(mu, s1, mu + 3, s1) == pytest.approx(18.0)
    # diagonal: sum (sqrt(a) - sqrt(b))^2 = (2-1)^2 + (1-3)^2
    assert M.frechet_from_stats(mu, s1, mu, s2) == pytest.approx(5.0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_frechet_distance_with_pluggable_extractors(tmp_path):
    a, b = imgs(16, 16, 0), imgs(16, 16, 1)

    def pooled(x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    assert M.frechet_distance(a, a, pooled) == pytest.approx(0.0, abs=1e-8)
    assert M.frechet_distance(a, b + 1, pooled) > M.frechet_distance(a, b, pooled)

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)

    path = tmp_path / "feat.pt"
    torch.jit.script(Net()).save(str(path))
    ext = M.load_feature_extractor(path)
    assert ext(a).shape == (16, 12)
    assert M.frechet_distance(a, b, str(path)) >= 0
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        M.load_feature_extractor(tmp_path / "inception.pt")


def test_bad_inputs_are_value_errors():
    with pytest.raises(ValueError, match="same"):
        M.swd(imgs(2, 32), imgs(2, 16))
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        M.psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        M.swd(imgs(2, 32) * float("nan"), imgs(2, 32))


def test_rapsd_distance_in_the_upper_band():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, 16, 16, generator=g)
    # twice the amplitude: 10 log10(4) dB at every frequency, so in any band
    assert M.rapsd_distance(2 * a, a, fmin=4.0) == pytest.approx(10 * math.log10(4), rel=1e-6)
    # a smoothed copy differs most at the top: the upper band's distance is the larger
    smooth = torch.nn.functional.avg_pool2d(a, 3, stride=1, padding=1)
    assert M.rapsd_distance(smooth, a, fmin=4.0) > M.rapsd_distance(smooth, a)
    with pytest.raises(ValueError, match="above every frequency"):
        M.rapsd_distance(a, a, fmin=100.0)
