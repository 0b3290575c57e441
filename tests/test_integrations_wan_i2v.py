"""SpectralPipeline on a tiny Wan 2.1 image-to-video pipeline: one stage reproduces
``pipe(...)`` (first frame, and first plus last frame); progressive runs with the first-frame
mask and latent condition on each stage's grid and fewer tokens at the same call count."""

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TokenCounter, tiny_wan_i2v  # noqa: E402
from specdiff.spectral import resize  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def i2v():
    return tiny_wan_i2v()


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("last", [False, True], ids=["first frame", "first and last frame"])
def test_one_stage_equals_pipe(i2v, last):
    pipe, kw = i2v
    kw = dict(kw, last_image=kw["image"].transpose(0) if last else None)  # a mirrored image
    sp = SpectralPipeline.from_pipe(pipe)
    assert sp.family == "Wan I2V"
    a = pipe(**kw, generator=gen(0), output_type="latent").frames
    b = sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)).frames
    assert a.shape == b.shape == (1, 16, 3, 16, 16)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    a = pipe(**kw, generator=gen(0), output_type="np").frames
    b = sp(**kw, generator=gen(0), output_type="np", scales=(1.0,)).frames
    torch.testing.assert_close(torch.as_tensor(b), torch.as_tensor(a), rtol=0, atol=2e-4)


def test_progressive_conditions_each_stage_on_its_grid(i2v):
    pipe, kw = i2v
    sp = SpectralPipeline.from_pipe(pipe)
    seen = []
    handle = pipe.transformer.register_forward_pre_hook(
        lambda m, a, k: seen.append(k["hidden_states"].clone()), with_kwargs=True)
    try:
        with TokenCounter(pipe.transformer) as base:
            pipe(**kw, generator=gen(0), output_type="latent")
        seen.clear()
        with TokenCounter(pipe.transformer) as spd:
            out = sp(**kw, generator=gen(0), output_type="latent").frames
    finally:
        handle.remove()
    assert torch.isfinite(out).all() and spd.calls == base.calls == 8  # CFG: 2 per step
    assert spd.tokens < base.tokens
    coarse, full = seen[0], seen[-1]
    assert coarse.shape == (1, 36, 3, 8, 8) and full.shape == (1, 36, 3, 16, 16)
    # the mask: the first latent frame given (1), the others to generate (0), at any size
    for x in (coarse, full):
        mask = x[:, 16:20]
        assert torch.equal(mask[:, :, 0], torch.ones_like(mask[:, :, 0]))
        assert torch.equal(mask[:, :, 1:], torch.zeros_like(mask[:, :, 1:]))
    # the coarse latent condition is the full one's band-limited resize (clean: t = 0)
    want = resize(full[:, 20:].float(), 0.0, (3, 8, 8))[0]
    torch.testing.assert_close(coarse[:, 20:].float(), want, rtol=1e-5, atol=1e-5)


def test_per_sample_generators_and_wan22_refused(i2v):
    pipe, kw = i2v
    sp = SpectralPipeline.from_pipe(pipe)
    one = sp(**kw, generator=[gen(2)], output_type="latent").frames
    again = sp(**kw, generator=gen(2), output_type="latent").frames
    torch.testing.assert_close(one, again, rtol=1e-5, atol=5e-5)
    pipe.register_to_config(expand_timesteps=True)
    try:
        with pytest.raises(ValueError, match="Wan 2.2"):
            sp(**kw)
    finally:
        pipe.register_to_config(expand_timesteps=False)
