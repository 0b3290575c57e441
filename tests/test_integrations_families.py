"""SpectralPipeline on tiny random-weight FLUX / SD3 / SDXL / Wan pipelines (no downloads).

For every family: one stage reproduces ``pipe(...)``; SPD (scales 0.5, 1) gives a
full-size finite output with the same number of denoiser calls and fewer tokens;
CFG and batches work and sample i does not depend on the batch; bad arguments raise
clear ValueErrors; the pipeline is left exactly as it was.
"""

import copy

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import TINY_BUILDERS, TokenCounter  # noqa: E402

FAMILIES = ["flux", "sd3", "sdxl", "wan"]
# SD3 and SDXL have no published VAE spectrum: borrow FLUX's for the plan.
SPECTRUM = {"flux": None, "sd3": "flux", "sdxl": "flux", "wan": None}
NUM_PER_PROMPT = {"wan": "num_videos_per_prompt"}


# The tiny models are ~100x faster single-threaded on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


_CACHE = {}


def build(family):
    if family not in _CACHE:
        _CACHE[family] = TINY_BUILDERS[family]()
    pipe, kw = _CACHE[family]
    return pipe, dict(kw)


def first(out):
    o = out[0]
    return torch.as_tensor(o) if not isinstance(o, torch.Tensor) else o


def module(pipe):
    return pipe.unet if hasattr(pipe, "unet") else pipe.transformer


def gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_stage_equals_pipe(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    a = first(pipe(**kw, generator=gen(0), output_type="latent"))
    b = first(sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)))
    assert a.shape == b.shape and a.dtype == b.dtype
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    # decoded output: same type and values (decoding amplifies latent roundoff ~10x)
    a = pipe(**kw, generator=gen(0), output_type="np")
    b = sp(**kw, generator=gen(0), output_type="np", scales=(1.0,))
    assert type(a) is type(b)
    torch.testing.assert_close(first(b), first(a), rtol=0, atol=2e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_stage_equals_pipe_given_latents(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    lat = first(pipe(**dict(kw, num_inference_steps=1), generator=gen(3), output_type="latent"))
    noise = torch.randn(lat.shape, generator=gen(4))  # the pipeline's own latent layout
    a = first(pipe(**kw, latents=noise.clone(), output_type="latent"))
    b = first(sp(**kw, latents=noise.clone(), output_type="latent", scales=(1.0,)))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    # progressive mode: latents= is the noise a generator would draw, in the pipeline's
    # layout. Build it as prepare_latents does (randn_tensor of the unpacked shape; FLUX
    # then packs 2x2), and the run equals the one given that generator (not used here)
    spec = SPECTRUM[family]
    drawn = torch.randn(_unpacked_shape(pipe, lat), generator=gen(6))
    if family == "flux":
        drawn = pipe._pack_latents(drawn, *drawn.shape)
    c1 = first(sp(**kw, latents=drawn, generator=gen(9), output_type="latent", spectrum=spec))
    c2 = first(sp(**kw, generator=gen(6), output_type="latent", spectrum=spec))
    torch.testing.assert_close(c1, c2, rtol=0, atol=0)


def _unpacked_shape(pipe, lat):
    """(B, C, *grid) of the noise behind the pipeline-layout latents ``lat`` (FLUX packs
    (B, C, h, w) into (B, hw / 4, 4 C); the other families keep that layout)."""
    if lat.ndim == 3:
        b, n, d = lat.shape
        side = int(round(n ** 0.5)) * 2
        return (b, d // 4, side, side)
    return tuple(lat.shape)


@pytest.mark.parametrize("family", FAMILIES)
def test_progressive_full_size_same_calls_fewer_tokens(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    with TokenCounter(module(pipe)) as base:
        a = pipe(**kw, generator=gen(0), output_type="np")
    with TokenCounter(module(pipe)) as spd:
        b = sp(**kw, generator=gen(0), output_type="np", spectrum=SPECTRUM[family])
    assert type(a) is type(b)
    assert first(b).shape == first(a).shape
    assert torch.isfinite(first(b)).all()
    assert spd.calls == base.calls == kw["num_inference_steps"] * (2 if family == "wan" else 1)
    assert spd.tokens < base.tokens
    # the first stage ran at half size per side
    assert spd.grids[0] != base.grids[0] and spd.grids[-1] == base.grids[-1]
    plan = sp.get_plan(**kw, spectrum=SPECTRUM[family])
    assert len(plan.stages) == 2 and plan.steps == kw["num_inference_steps"]


EMBEDS = ("prompt_embeds", "pooled_prompt_embeds", "negative_prompt_embeds",
          "negative_pooled_prompt_embeds")


@pytest.mark.parametrize("family", FAMILIES)
def test_batch_and_per_sample_generators(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    spec = SPECTRUM[family]
    # the same prompt twice (SD3 cannot expand precomputed pooled embeddings by
    # num_images_per_prompt, so batch the embeddings themselves)
    kw2 = {k: (torch.cat([v, v]) if k in EMBEDS else v) for k, v in kw.items()}
    two = first(sp(**kw2, generator=[gen(1), gen(2)], output_type="latent", spectrum=spec))
    one = first(sp(**kw, generator=[gen(2)], output_type="latent", spectrum=spec))
    assert two.shape[0] == 2 and one.shape[0] == 1
    # batched kernels round differently: float tolerance, not bitwise
    torch.testing.assert_close(two[1:], one, rtol=1e-4, atol=5e-5)
    assert not torch.allclose(two[0], two[1])
    # two different prompts (and CFG where the family uses it) in one batch
    kw3 = {k: (torch.cat([v, v.flip(-1) * 0.5]) if k in EMBEDS else v) for k, v in kw.items()}
    out = first(sp(**kw3, generator=gen(5), output_type="latent", spectrum=spec))
    assert out.shape[0] == 2 and torch.isfinite(out).all()
    if family != "sd3":
        nkey = NUM_PER_PROMPT.get(family, "num_images_per_prompt")
        out = first(sp(**kw, **{nkey: 2}, generator=gen(5), output_type="latent", spectrum=spec))
        assert out.shape[0] == 2 and torch.isfinite(out).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_arguments(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    spec = SPECTRUM[family]
    with pytest.raises(ValueError, match="end at 1.0"):
        sp(**kw, scales=(0.5,), spectrum=spec)
    with pytest.raises(ValueError, match="end at 1.0"):
        sp(**kw, scales=(0.5, 0.8), spectrum=spec)
    with pytest.raises(ValueError, match="increasing"):
        sp(**kw, scales=(0.6, 0.3, 1.0), spectrum=spec)
    # 48 px -> a 6x6 latent: half of it is 3, which the packing/patching cannot represent
    small = dict(kw, height=48, width=48)
    with pytest.raises(ValueError, match="multiple"):
        sp(**small, scales=(0.5, 1.0), spectrum=spec)
    with pytest.raises(ValueError, match="delta"):
        sp(**kw, delta=1.5, spectrum=spec)
    with pytest.raises(TypeError):
        sp(**kw, not_an_argument=1)


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a is b or a == b


@pytest.mark.parametrize("family", FAMILIES)
def test_pipe_left_unchanged(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    assert sp.vae is pipe.vae and module(sp) is module(pipe)  # shared, not copied
    a = first(pipe(**kw, generator=gen(0), output_type="latent"))
    sched = copy.deepcopy(pipe.scheduler.__dict__)
    state = {k: v for k, v in pipe.__dict__.items() if k.startswith("_") and not
             isinstance(v, torch.nn.Module)}
    hooks = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in module(pipe).modules()]
    params = [p.detach().clone() for p in module(pipe).parameters()]
    sp(**kw, generator=gen(0), output_type="latent", spectrum=SPECTRUM[family],
       positions="stretched", callback_on_step_end=lambda p, i, t, k: {})
    for k, v in sched.items():
        if k != "config":
            assert _same(v, pipe.scheduler.__dict__[k]), k
    for k, v in state.items():
        assert pipe.__dict__.get(k) is v or pipe.__dict__.get(k) == v, k
    assert hooks == [(len(m._forward_hooks), len(m._forward_pre_hooks))
                     for m in module(pipe).modules()]
    assert all(torch.equal(p, q) for p, q in zip(params, module(pipe).parameters(), strict=True))
    b = first(pipe(**kw, generator=gen(0), output_type="latent"))
    assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_callback_gets_stage_and_can_interrupt(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    seen = []

    def cb(p, i, t, k):
        assert p is pipe
        seen.append((i, k["stage"], tuple(k["latents"].shape), float(t)))
        return k

    full = first(sp(**kw, generator=gen(0), output_type="latent", spectrum=SPECTRUM[family]))
    again = first(sp(**kw, generator=gen(0), output_type="latent", spectrum=SPECTRUM[family],
                     callback_on_step_end=cb))
    assert torch.equal(full, again)  # returning the inputs unchanged changes nothing
    n = kw["num_inference_steps"]
    assert [s[0] for s in seen] == list(range(n))
    assert seen[0][1] == 0 and seen[-1][1] == 1
    assert seen[0][2] != seen[-1][2]  # the coarse stage hands the callback coarse latents
    assert seen[-1][2] == tuple(full.shape)

    def stop(p, i, t, k):
        p._interrupt = True
        return {}

    with TokenCounter(module(pipe)) as c:
        out = first(sp(**kw, generator=gen(0), output_type="latent", spectrum=SPECTRUM[family],
                       callback_on_step_end=stop))
    assert c.calls == (2 if family == "wan" else 1)
    assert out.shape == full.shape and torch.isfinite(out).all()
    assert not getattr(pipe, "_interrupt", False)


def _zero_at(step):
    """A callback that replaces the latents by zeros after step ``step`` (and only then)."""

    def cb(p, i, t, k):
        if i == step:
            return {"latents": torch.zeros_like(k["latents"])}
        return {}

    return cb


@pytest.mark.parametrize("family", FAMILIES)
def test_callback_replaces_latents(family):
    pipe, kw = build(family)
    sp = SpectralPipeline.from_pipe(pipe)
    n = kw["num_inference_steps"]
    spec = SPECTRUM[family]
    # zeros after step n - 2: the last step then starts from x = 0. The pipeline's own loop
    # given the same callback is the independent reference.
    ref = first(pipe(**kw, generator=gen(0), output_type="latent", callback_on_step_end=_zero_at(n - 2),
                     callback_on_step_end_tensor_inputs=["latents"]))
    ours = first(sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,),
                    callback_on_step_end=_zero_at(n - 2)))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=5e-5)
    plain = first(pipe(**kw, generator=gen(0), output_type="latent"))
    assert not torch.allclose(ref, plain, rtol=1e-2, atol=1e-2)  # the edit has an effect
    if family != "wan":
        # Euler keeps no history, so once the fine stage (whose times after its entry are
        # the full grid's) is zeroed, SPD continues exactly as the pipeline does
        plan = sp.get_plan(**kw, spectrum=spec)
        assert len(plan.stages) == 2 and plan.stages[0].steps <= n - 2
        spd = first(sp(**kw, generator=gen(0), output_type="latent", spectrum=spec,
                       callback_on_step_end=_zero_at(n - 2)))
        torch.testing.assert_close(spd, ref, rtol=1e-5, atol=5e-5)
    # zeros after the last step are the result
    out = first(sp(**kw, generator=gen(0), output_type="latent", spectrum=spec,
                   callback_on_step_end=_zero_at(n - 1)))
    assert torch.count_nonzero(out) == 0

    def wrong_size(p, i, t, k):
        return {"latents": torch.zeros(1, 3)}

    with pytest.raises(ValueError, match="keep the stage's shape"):
        sp(**kw, generator=gen(0), output_type="latent", spectrum=spec,
           callback_on_step_end=wrong_size)
