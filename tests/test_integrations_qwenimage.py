"""SpectralPipeline on a tiny random-weight Qwen-Image pipeline: the same contract as the
other families (one stage reproduces ``pipe(...)``, progressive uses fewer tokens at the same
call count, per-sample generators, clear errors), with its packed latents, ``img_shapes``
positions, normed true CFG, and a spectrum fitted for its VAE when none is given."""

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter, tiny_qwenimage  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwenimage()


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("cfg", [{}, dict(true_cfg_scale=1.0)], ids=["true CFG", "no CFG"])
def test_one_stage_equals_pipe(qwen, cfg):
    pipe, kw = qwen
    kw = dict(kw, **cfg)
    sp = SpectralPipeline.from_pipe(pipe)
    assert sp.family == "Qwen-Image"
    a = pipe(**kw, generator=gen(0), output_type="latent").images
    b = sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)).images
    assert a.shape == b.shape == (1, 64, 64) and a.dtype == b.dtype
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    a = pipe(**kw, generator=gen(0), output_type="np").images
    b = sp(**kw, generator=gen(0), output_type="np", scales=(1.0,)).images
    torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), rtol=0, atol=2e-4)


def test_given_latents_and_the_noise_a_generator_draws(qwen):
    pipe, kw = qwen
    sp = SpectralPipeline.from_pipe(pipe)
    noise = torch.randn((1, 64, 64), generator=gen(4))  # packed, as the pipeline holds it
    a = pipe(**kw, latents=noise.clone(), output_type="latent").images
    b = sp(**kw, latents=noise.clone(), output_type="latent", scales=(1.0,)).images
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    drawn = pipe._pack_latents(torch.randn((1, 1, 16, 16, 16), generator=gen(6)), 1, 16, 16, 16)
    c1 = sp(**kw, latents=drawn, generator=gen(9), output_type="latent", spectrum="flux").images
    c2 = sp(**kw, generator=gen(6), output_type="latent", spectrum="flux").images
    assert torch.equal(c1, c2)


def test_progressive_same_calls_fewer_tokens_with_a_fitted_spectrum(qwen):
    pipe, kw = qwen
    kw = dict(kw, height=256, width=256, num_inference_steps=8)
    sp = SpectralPipeline.from_pipe(pipe)
    with TokenCounter(pipe.transformer) as base:
        a = pipe(**kw, generator=gen(0), output_type="np").images
    with TokenCounter(pipe.transformer) as spd:  # no spectrum: fitted for its VAE (cached)
        b = sp(**kw, generator=gen(0), output_type="np", scales=(0.5, 1.0), delta=0.2).images
    assert b.shape == a.shape and torch.isfinite(torch.as_tensor(b)).all()
    assert spd.calls == base.calls == 16  # true CFG: two calls per step
    assert spd.tokens < base.tokens
    assert spd.grids[0] == (64,) and spd.grids[-1] == base.grids[-1] == (256,)


def test_batch_and_per_sample_generators(qwen):
    pipe, kw = qwen
    sp = SpectralPipeline.from_pipe(pipe)
    kw2 = {k: (torch.cat([v, v]) if k.endswith(("embeds", "mask")) else v) for k, v in kw.items()}
    two = sp(**kw2, generator=[gen(1), gen(2)], output_type="latent", spectrum="flux").images
    one = sp(**kw, generator=[gen(2)], output_type="latent", spectrum="flux").images
    assert two.shape[0] == 2
    torch.testing.assert_close(two[1:], one, rtol=1e-4, atol=5e-5)
    assert not torch.allclose(two[0], two[1])
    out = sp(**kw, num_images_per_prompt=2, generator=gen(5), output_type="latent",
             spectrum="flux").images
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_bad_arguments(qwen):
    pipe, kw = qwen
    sp = SpectralPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match="end at 1.0"):
        sp(**kw, scales=(0.5,), spectrum="flux")
    with pytest.raises(ValueError, match="multiple"):  # 96 px: a 12 latent, a quarter is 3
        sp(**dict(kw, height=96, width=96), scales=(0.25, 1.0), spectrum="flux")
    with pytest.raises(ValueError, match="positions"):
        sp(**kw, positions="stretched", spectrum="flux")
    with pytest.raises(ValueError, match="packed full-resolution noise"):
        sp(**kw, latents=torch.randn(1, 16, 16, 16), spectrum="flux")
