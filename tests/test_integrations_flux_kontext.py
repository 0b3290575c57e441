"""SpectralPipeline on a tiny FLUX.1 Kontext pipeline: one stage reproduces ``pipe(...)``
with the reference image's tokens appended; progressive uses fewer tokens at the same call
count, with the reference kept at full resolution or resized per stage."""

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter, tiny_flux, tiny_flux_kontext  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def kontext():
    return tiny_flux_kontext()


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("extra", [{}, dict(true_cfg_scale=2.0)], ids=["guidance", "true CFG"])
def test_one_stage_equals_pipe(kontext, extra):
    pipe, kw = kontext
    kw = dict(kw, **extra)
    if extra:
        kw.update(negative_prompt_embeds=kw["prompt_embeds"] * 0.5,
                  negative_pooled_prompt_embeds=kw["pooled_prompt_embeds"] * 0.5)
    sp = SpectralPipeline.from_pipe(pipe)
    assert sp.family == "FLUX Kontext"
    a = pipe(**kw, generator=gen(0), output_type="latent").images
    b = sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)).images
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    a = pipe(**kw, generator=gen(0), output_type="np").images
    b = sp(**kw, generator=gen(0), output_type="np", scales=(1.0,)).images
    torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), rtol=0, atol=2e-4)
    # given latents=, the reference is still appended
    noise = torch.randn(a.shape[0], 64, 64, generator=gen(3))
    a = pipe(**kw, latents=noise.clone(), output_type="latent").images
    b = sp(**kw, latents=noise.clone(), output_type="latent", scales=(1.0,)).images
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)


def test_the_size_follows_max_area(kontext):
    pipe, kw = kontext
    sp = SpectralPipeline.from_pipe(pipe)
    kw = dict(kw, height=64, width=128, max_area=128 * 128)  # aspect 2: 176 x 80 -> 176 x 80
    a = pipe(**kw, generator=gen(0), output_type="latent").images
    b = sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)).images
    assert a.shape == b.shape == (1, (80 // 16) * (176 // 16), 64)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)


def test_progressive_tokens_with_the_reference_full_or_per_stage(kontext):
    pipe, kw = kontext
    kw = dict(kw, num_inference_steps=6)
    sp = SpectralPipeline.from_pipe(pipe)
    with TokenCounter(pipe.transformer) as base:
        pipe(**kw, generator=gen(0), output_type="latent")
    runs = {}
    for ref in ("full", "stage"):
        with TokenCounter(pipe.transformer) as c:
            out = sp(**kw, generator=gen(0), output_type="latent", reference=ref).images
        assert torch.isfinite(out).all() and c.calls == base.calls == 6
        runs[ref] = c
    plan = sp.get_plan(**kw)
    k = len(plan.stages[0].times) - 1  # coarse steps
    # target 64 tokens (16 coarse) + reference 64 (full) or 16 (stage)
    assert runs["full"].grids == [(16 + 64,)] * k + [(64 + 64,)] * (6 - k)
    assert runs["stage"].grids == [(16 + 16,)] * k + [(64 + 64,)] * (6 - k)
    assert runs["stage"].tokens < runs["full"].tokens < base.tokens


def test_reference_is_only_for_editing_pipelines():
    pipe, kw = tiny_flux()
    with pytest.raises(ValueError, match=r"reference must be one of \('full',\)"):
        SpectralPipeline.from_pipe(pipe)(**kw, reference="stage")
