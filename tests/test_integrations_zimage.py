"""SpectralPipeline on a tiny random-weight Z-Image pipeline: the same contract as the four
families (test_integrations_families), with Z-Image's list-of-latents transformer, true CFG
with truncation and normalisation, and FLUX.1's VAE constants as its default spectrum."""

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter, tiny_zimage  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def zimage():
    return tiny_zimage()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def test_one_stage_equals_pipe(zimage):
    pipe, kw = zimage
    sp = SpectralPipeline.from_pipe(pipe)
    assert sp.family == "Z-Image"
    a = pipe(**kw, generator=gen(0), output_type="latent").images
    b = sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)).images
    assert a.shape == b.shape == (1, 16, 16, 16) and a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    a = pipe(**kw, generator=gen(0), output_type="np").images
    b = sp(**kw, generator=gen(0), output_type="np", scales=(1.0,)).images
    torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), rtol=0, atol=2e-4)


@pytest.mark.parametrize("cfg", [dict(cfg_truncation=0.5), dict(cfg_normalization=1.1),
                                 dict(guidance_scale=0.0)],
                         ids=["truncation", "normalization", "no CFG"])
def test_one_stage_equals_pipe_with_cfg_options(zimage, cfg):
    pipe, kw = zimage
    kw = dict(kw, **cfg, num_inference_steps=6)
    sp = SpectralPipeline.from_pipe(pipe)
    a = pipe(**kw, generator=gen(1), output_type="latent").images
    b = sp(**kw, generator=gen(1), output_type="latent", scales=(1.0,)).images
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)


def test_given_latents_and_the_noise_a_generator_draws(zimage):
    pipe, kw = zimage
    sp = SpectralPipeline.from_pipe(pipe)
    noise = torch.randn((1, 16, 16, 16), generator=gen(4))
    a = pipe(**kw, latents=noise.clone(), output_type="latent").images
    b = sp(**kw, latents=noise.clone(), output_type="latent", scales=(1.0,)).images
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    drawn = torch.randn((1, 16, 16, 16), generator=gen(6))
    c1 = sp(**kw, latents=drawn, generator=gen(9), output_type="latent").images
    c2 = sp(**kw, generator=gen(6), output_type="latent").images
    assert torch.equal(c1, c2)


def test_progressive_same_calls_fewer_tokens_default_spectrum(zimage):
    pipe, kw = zimage
    kw = dict(kw, height=256, width=256, num_inference_steps=8)
    sp = SpectralPipeline.from_pipe(pipe)
    with TokenCounter(pipe.transformer) as base:
        a = pipe(**kw, generator=gen(0), output_type="np").images
    with TokenCounter(pipe.transformer) as spd:
        b = sp(**kw, generator=gen(0), output_type="np", scales=(0.5, 1.0), delta=0.2).images
    assert b.shape == a.shape and torch.isfinite(torch.as_tensor(b)).all()
    assert spd.calls == base.calls == 8  # CFG is one batched call of both prompt lists
    assert spd.tokens < base.tokens
    assert spd.grids[0] == (16, 16) and spd.grids[-1] == base.grids[-1] == (32, 32)
    plan = sp.get_plan(**kw, scales=(0.5, 1.0), delta=0.2)
    flux = sp.get_plan(**kw, scales=(0.5, 1.0), delta=0.2, spectrum="flux")
    assert [len(s.times) for s in plan.stages] == [len(s.times) for s in flux.stages]


def test_batch_and_per_sample_generators(zimage):
    pipe, kw = zimage
    sp = SpectralPipeline.from_pipe(pipe)
    pe, neg = kw["prompt_embeds"], kw["negative_prompt_embeds"]
    kw2 = dict(kw, prompt_embeds=pe * 2, negative_prompt_embeds=neg * 2)
    two = sp(**kw2, generator=[gen(1), gen(2)], output_type="latent").images
    one = sp(**kw, generator=[gen(2)], output_type="latent").images
    assert two.shape[0] == 2
    torch.testing.assert_close(two[1:], one, rtol=1e-4, atol=5e-5)
    assert not torch.allclose(two[0], two[1])
    out = sp(**kw, num_images_per_prompt=2, generator=gen(5), output_type="latent").images
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_bad_arguments(zimage):
    pipe, kw = zimage
    sp = SpectralPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match="end at 1.0"):
        sp(**kw, scales=(0.5,))
    with pytest.raises(ValueError, match="multiple"):  # 96 px: a 12 latent, half 6, 3 patches
        sp(**dict(kw, height=96, width=96), scales=(0.25, 1.0))
    with pytest.raises(ValueError, match="divisible by 16"):  # the pipeline's own check
        sp(**dict(kw, height=120, width=128))
    with pytest.raises(ValueError, match="positions"):
        sp(**kw, positions="stretched")
    with pytest.raises(ValueError, match="negative_prompt_embeds"):
        sp(**dict(kw, negative_prompt_embeds=None))
