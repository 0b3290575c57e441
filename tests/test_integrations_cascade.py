"""Tuning-free Self-Cascade through SpectralPipeline.self_cascade on tiny FLUX.1 and SDXL:
the output at the larger size, the denoiser calls and tokens as planned, the user's
generator honoured, and the pipeline left as it was."""

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter, tiny_flux, tiny_sdxl  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("build", [tiny_flux, tiny_sdxl], ids=["flux", "sdxl"])
def test_self_cascade_generates_at_the_pivot_then_larger(build):
    pipe, kw = build()
    kw = dict(kw, height=64, width=64, num_inference_steps=6)
    sp = SpectralPipeline.from_pipe(pipe)
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    before = pipe(**kw, generator=gen(1), output_type="latent")[0]
    with TokenCounter(denoiser) as c:
        out = sp.self_cascade(**kw, factor=2, strength=0.5, generator=gen(0),
                              output_type="latent")[0]
    big = pipe(**dict(kw, height=128, width=128), generator=gen(0), output_type="latent")[0]
    assert out.shape == big.shape and torch.isfinite(out).all()
    assert c.calls == 6 + 3  # the pivot's 6 steps, then round(6 * 0.5) at 128 px
    assert len(set(c.grids[:6])) == 1 and c.grids[6:] == [c.grids[-1]] * 3
    assert c.grids[0] != c.grids[-1]
    # the user's generator decides everything: same seed, same output; another, another
    again = sp.self_cascade(**kw, factor=2, strength=0.5, generator=gen(0),
                            output_type="latent")[0]
    other = sp.self_cascade(**kw, factor=2, strength=0.5, generator=gen(2),
                            output_type="latent")[0]
    assert torch.equal(out, again) and not torch.allclose(out, other)
    # the spectral re-noise time (FLUX: its constants; SDXL: fitted for its VAE, cached)
    spec = sp.self_cascade(**kw, factor=2, delta=0.05, generator=gen(0), output_type="latent")[0]
    assert spec.shape == big.shape and torch.isfinite(spec).all()
    # pipe(...) is unchanged afterwards
    torch.testing.assert_close(pipe(**kw, generator=gen(1), output_type="latent")[0], before,
                               rtol=0, atol=0)


def test_self_cascade_bad_arguments():
    pipe, kw = tiny_flux()
    sp = SpectralPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        sp.self_cascade(**kw, factor=1)
    with pytest.raises(ValueError, match="needs height= and width="):
        sp.self_cascade(**dict(kw, height=None), factor=2)
    with pytest.raises(ValueError, match="not both"):
        sp.self_cascade(**kw, factor=2, delta=0.05, strength=0.7)
