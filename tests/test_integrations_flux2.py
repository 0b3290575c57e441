"""SpectralPipeline on a tiny FLUX.2 pipeline: SPD on the patchified, batch-normalised token
grid; one stage reproduces ``pipe(...)`` (text-to-image and with a reference image); the
spectrum is fitted in the same frame, which equals the pipeline's own image encoding."""

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers")

from specdiff.integrations import auto_spectrum  # noqa: E402
from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter, tiny_flux2  # noqa: E402
from specdiff.integrations.vae_spectrum import normalise_latents, spatial_factor  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def flux2():
    return tiny_flux2()


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _photo(side=64, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


@pytest.mark.parametrize("with_image", [False, True], ids=["text-to-image", "reference image"])
def test_one_stage_equals_pipe(flux2, with_image):
    pipe, kw = flux2
    kw = dict(kw, image=_photo() if with_image else None)
    sp = SpectralPipeline.from_pipe(pipe)
    assert sp.family == "FLUX.2"
    a = pipe(**kw, generator=gen(0), output_type="latent").images
    b = sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)).images
    assert a.shape == b.shape == (1, 64, 128)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    a = pipe(**kw, generator=gen(0), output_type="np").images
    b = sp(**kw, generator=gen(0), output_type="np", scales=(1.0,)).images
    torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), rtol=0, atol=2e-4)


def test_the_spectrum_frame_is_the_pipelines_encoding(flux2):
    pipe, _ = flux2
    assert spatial_factor(pipe.vae) == 16  # pixels per token
    x = torch.rand(1, 3, 64, 64, generator=gen(1)) * 2 - 1
    with torch.no_grad():
        raw = pipe.vae.encode(x).latent_dist.mode()
        want = pipe._encode_vae_image(x, generator=None)  # patchify + batch norm
    torch.testing.assert_close(normalise_latents(pipe.vae, raw), want, rtol=1e-6, atol=1e-6)


def test_progressive_with_a_fitted_spectrum(flux2):
    pipe, kw = flux2
    kw = dict(kw, height=256, width=256, num_inference_steps=8)
    sp = SpectralPipeline.from_pipe(pipe)
    with TokenCounter(pipe.transformer) as base:
        a = pipe(**kw, generator=gen(0), output_type="np").images
    with TokenCounter(pipe.transformer) as spd:
        b = sp(**kw, generator=gen(0), output_type="np", scales=(0.5, 1.0), delta=0.2).images
    assert b.shape == a.shape and np.isfinite(b).all()
    assert spd.calls == base.calls == 8 and spd.tokens < base.tokens
    assert spd.grids[0] == (64,) and spd.grids[-1] == (256,)
    fit = auto_spectrum.auto_spectrum(pipe.vae, 256, 256, (16, 16), progress=False)
    plan = sp.get_plan(**kw, scales=(0.5, 1.0), delta=0.2)
    explicit = sp.get_plan(**kw, scales=(0.5, 1.0), delta=0.2, spectrum=(fit.A, fit.beta))
    assert [len(s.times) for s in plan.stages] == [len(s.times) for s in explicit.stages]


def test_bad_arguments(flux2):
    pipe, kw = flux2
    sp = SpectralPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match="end at 1.0"):
        sp(**kw, scales=(0.5,), spectrum="flux")
    with pytest.raises(ValueError, match="patchified latents"):
        sp(**kw, latents=torch.randn(1, 64, 128), spectrum="flux")
    with pytest.raises(ValueError, match="caption_upsample_temperature"):
        sp(**kw, caption_upsample_temperature=0.5, spectrum="flux")
