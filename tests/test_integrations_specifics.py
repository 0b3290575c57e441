"""Family specifics of the diffusers integration: full-resolution time grids (FLUX mu,
SD3 double shift, SDXL sigmas, Wan UniPC), positions per stage, the UniPC solver against
diffusers' scheduler, cache resets at transitions, bf16 models, plans and schedulers."""

import math

import pytest
import torch

pytest.importorskip("diffusers")

from specdiff.integrations.diffusers import SpectralPipeline, _start_noise  # noqa: E402
from specdiff.integrations.tiny import TINY_BUILDERS, TokenCounter  # noqa: E402
from specdiff.plans import flux_times, fraction_plan, full_plan, spd_plan  # noqa: E402
from specdiff.spectral import dct  # noqa: E402

# The tiny models are ~100x faster single-threaded on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


_CACHE = {}


def build(family, **opts):
    key = (family, tuple(sorted(opts.items())))
    if key not in _CACHE:
        _CACHE[key] = TINY_BUILDERS[family](**opts)
    pipe, kw = _CACHE[key]
    return pipe, dict(kw)


def first(out):
    return out[0]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def full_times(sp, kw):
    return list(sp.get_plan(**kw, scales=(1.0,)).stages[0].times)


# --- time grids: the pipeline's full-resolution schedule -------------------------------


def test_flux_time_grid_uses_full_resolution_mu():
    pipe, kw = build("flux")
    sp = SpectralPipeline.from_pipe(pipe)
    kw["num_inference_steps"] = 8
    t = full_times(sp, kw)
    # 128 px -> 16x16 latent -> 64 packed tokens: mu = flux_mu(64) (diffusers-facts: .9178 ...)
    ref = flux_times(8, 64).tolist()
    assert max(abs(a - b) for a, b in zip(t, ref, strict=True)) < 1e-6
    assert [round(v, 4) for v in t] == [1.0, 0.9178, 0.8272, 0.7268, 0.6148, 0.4892, 0.3473,
                                        0.1857, 0.0]
    # the SPD plan keeps that grid (stage 0 a prefix, stage 1 the rest after the shifted entry)
    plan = sp.get_plan(**kw)
    s0, s1 = plan.stages
    assert list(s0.times) == t[: len(s0.times)]
    j = len(s0.times) - 1
    assert list(s1.times[1:]) == t[j + 1:]
    assert s1.times[0] == pytest.approx(2 * t[j] / (1 + t[j]), abs=1e-9)


def test_sd3_time_grid_double_shift():
    pipe, kw = build("sd3")
    sp = SpectralPipeline.from_pipe(pipe)
    t = full_times(sp, dict(kw, num_inference_steps=8))
    assert [round(v, 4) for v in t] == [1.0, 0.9475, 0.8828, 0.8008, 0.6938, 0.548, 0.338,
                                        0.0089, 0.0]


def test_sdxl_time_grid_and_start_scale():
    pipe, kw = build("sdxl")
    sp = SpectralPipeline.from_pipe(pipe)
    t = full_times(sp, dict(kw, num_inference_steps=8))
    sig = [7.372, 4.117, 2.511, 1.624, 1.076, 0.698, 0.402, 0.041, 0.0]
    assert [v / (1 - v) for v in t] == pytest.approx(sig, abs=1e-3)
    ad = sp._adapter_cls(pipe, sp._bind((), dict(kw, num_inference_steps=8)), dry=True)
    assert ad.start_scale == pytest.approx(7.439 / (1 + 7.372), abs=1e-3)


def test_wan_time_grid_unipc():
    pipe, kw = build("wan")
    sp = SpectralPipeline.from_pipe(pipe)
    t = full_times(sp, dict(kw, num_inference_steps=8))
    assert [round(v, 4) for v in t] == [1.0, 0.9546, 0.9001, 0.8336, 0.7504, 0.6435, 0.501,
                                        0.3017, 0.0]


def test_start_noise_scales_only_the_first_band():
    g = gen(0)
    noise = torch.randn(2, 3, 16, 16, generator=g)
    plan = spd_plan(flux_times(8, 64), (16, 16), (0.5, 1.0), spectrum="flux", multiple=2)
    out = _start_noise(noise, plan, 0.9, "dct")
    a, b = dct(noise), dct(out)
    torch.testing.assert_close(b[..., :8, :8], 0.9 * a[..., :8, :8], rtol=1e-5, atol=1e-5)
    mask = torch.ones(16, 16, dtype=torch.bool)
    mask[:8, :8] = False
    torch.testing.assert_close(b[..., mask], a[..., mask], rtol=1e-5, atol=1e-5)
    full = full_plan(flux_times(8, 64), (16, 16))
    torch.testing.assert_close(_start_noise(noise, full, 0.9, "dct"), 0.9 * noise)


# --- UniPC solver vs diffusers ---------------------------------------------------------


@pytest.mark.parametrize("order,variant,steps", [(1, "bh2", 5), (2, "bh2", 6), (3, "bh1", 7),
                                                 (2, "bh1", 20)])
def test_unipc_solver_matches_diffusers_scheduler(order, variant, steps):
    from diffusers import UniPCMultistepScheduler

    from specdiff.integrations.unipc import unipc_solver
    from specdiff.sampling import sample

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    flow_shift=3.0, solver_order=order, solver_type=variant,
                                    predict_x0=True, lower_order_final=True,
                                    final_sigmas_type="zero")
    sched.set_timesteps(steps)
    w = torch.linspace(0.3, 0.9, 8).reshape(1, 8, 1, 1)

    def velocity(x, t):  # a smooth nonlinear toy model: v = eps - x0
        x0 = torch.tanh(x) * w
        return (x - x0) / t

    noise = torch.randn(1, 8, 4, 4, generator=gen(1))
    x, ref = noise.clone(), []
    for ts in sched.timesteps:
        sigma = float(sched.sigmas[sched.step_index or 0])
        x = sched.step(velocity(x, sigma), ts, x).prev_sample
        ref.append(x)
    plan = full_plan(sched.sigmas.double(), (4, 4))

    def denoiser(x, t):
        tt = float(t[0])
        return x - tt * velocity(x, tt)

    ours = []
    y = sample(denoiser, plan, solver=unipc_solver(plan, order=order, variant=variant),
               noise=noise, callback=lambda info: ours.append(info["x"]))
    assert len(ours) == len(ref) == steps
    # diffusers' bh1 returns NaN on the step onto sigma = 0 (-inf * 0 in B(h) * pred_res);
    # ours returns the x0 estimate there, as bh2 does
    last = steps if variant == "bh2" else steps - 1
    for a, b in zip(ours[:last], ref[:last], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(y).all()


def test_wan_with_euler_scheduler_equals_pipe():
    pipe, kw = build("wan", scheduler="euler")
    sp = SpectralPipeline.from_pipe(pipe)
    a = first(pipe(**kw, generator=gen(0), output_type="latent"))
    b = first(sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)


# --- positions -------------------------------------------------------------------------


def _capture_kwargs(module, key):
    seen = []

    def hook(m, args, kwargs):
        seen.append(kwargs[key].clone())

    return seen, module.register_forward_pre_hook(hook, with_kwargs=True)


def test_flux_img_ids_per_stage_native_and_stretched():
    pipe, kw = build("flux")
    sp = SpectralPipeline.from_pipe(pipe)
    seen, h = _capture_kwargs(pipe.transformer, "img_ids")
    try:
        sp(**kw, generator=gen(0), output_type="latent")
        sp(**kw, generator=gen(0), output_type="latent", positions="stretched")
    finally:
        h.remove()
    n = kw["num_inference_steps"]
    native, stretched = seen[0], seen[n]
    assert native.shape == stretched.shape == (16, 3)  # 8x8 latent -> 4x4 tokens
    assert native[:, 1].tolist() == [float(i // 4) for i in range(16)]
    assert stretched[:, 1].tolist() == [2 * (i // 4) + 0.5 for i in range(16)]
    assert stretched[:, 2].tolist() == [2 * (i % 4) + 0.5 for i in range(16)]
    assert torch.equal(seen[n - 1], seen[2 * n - 1])  # full resolution: the pipeline's ids
    assert seen[n - 1].shape == (64, 3)


def test_sd3_stretched_positions_formula_and_hook_removed():
    pipe, kw = build("sd3")
    sp = SpectralPipeline.from_pipe(pipe)
    ad = sp._adapter_cls(pipe, sp._bind((), kw), positions="stretched", dry=True)
    pe = pipe.transformer.pos_embed
    # at full size the stretched table is the pipeline's own centre crop
    torch.testing.assert_close(ad.stretched_pos_embed(8, 8), pe.cropped_pos_embed(16, 16),
                               rtol=0, atol=1e-6)
    # a 4x4 coarse grid: each patch at the centre of a 2x2 full-res block
    coarse = ad.stretched_pos_embed(4, 4)
    crop = pe.cropped_pos_embed(16, 16).reshape(8, 8, -1)
    assert coarse.shape == (1, 16, crop.shape[-1])
    assert not torch.allclose(coarse, pe.cropped_pos_embed(8, 8))
    a = first(sp(**kw, generator=gen(0), output_type="latent", spectrum="flux"))
    b = first(sp(**kw, generator=gen(0), output_type="latent", spectrum="flux",
                 positions="stretched"))
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    assert len(pe._forward_hooks) == 0


def test_wan_stretched_rope():
    pipe, kw = build("wan")
    sp = SpectralPipeline.from_pipe(pipe)
    ad = sp._adapter_cls(pipe, sp._bind((), kw), positions="stretched", dry=True)
    x = torch.zeros(1, 16, 3, 8, 12)
    ref = pipe.transformer.rope(x)
    mine = ad.rope_at(3, torch.arange(4.0), torch.arange(6.0), ref[0])
    for r, m in zip(ref, mine, strict=True):
        torch.testing.assert_close(m, r, rtol=0, atol=1e-6)
    a = first(sp(**kw, generator=gen(0), output_type="latent"))
    b = first(sp(**kw, generator=gen(0), output_type="latent", positions="stretched"))
    assert torch.isfinite(b).all() and not torch.allclose(a, b)
    assert len(pipe.transformer.rope._forward_hooks) == 0


# --- caches, dtypes, plans, schedulers ---------------------------------------------------


def test_block_cache_is_reset_at_transitions():
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, kw = TINY_BUILDERS["flux"]()
    # threshold 10: every step after the first reuses the cache; without a reset the
    # fine stage would compare against the coarse stage's residuals and crash.
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    sp = SpectralPipeline.from_pipe(pipe)
    out = first(sp(**kw, generator=gen(0), output_type="latent"))
    assert out.shape == (1, 64, 64) and torch.isfinite(out).all()


def test_flux_true_cfg_equals_pipe_and_doubles_calls():
    pipe, kw = build("flux")
    sp = SpectralPipeline.from_pipe(pipe)
    neg = dict(true_cfg_scale=2.0, negative_prompt_embeds=kw["prompt_embeds"].flip(-1),
               negative_pooled_prompt_embeds=kw["pooled_prompt_embeds"].flip(-1))
    a = first(pipe(**kw, **neg, generator=gen(0), output_type="latent"))
    b = first(sp(**kw, **neg, generator=gen(0), output_type="latent", scales=(1.0,)))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    with TokenCounter(pipe.transformer) as c:
        sp(**kw, **neg, generator=gen(0), output_type="latent")
    assert c.calls == 2 * kw["num_inference_steps"]


def test_bf16_model_float32_state():
    pipe, kw = TINY_BUILDERS["flux"]()
    pipe.transformer.to(torch.bfloat16)
    kw = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) else v) for k, v in kw.items()}
    sp = SpectralPipeline.from_pipe(pipe)
    dtypes = []
    orig = sp._adapter_cls.__call__

    def spy(self, x, t, **c):
        dtypes.append(x.dtype)
        return orig(self, x, t, **c)

    sp._adapter_cls.__call__ = spy
    try:
        out = first(sp(**kw, generator=gen(0), output_type="latent"))
    finally:
        sp._adapter_cls.__call__ = orig
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert set(dtypes) == {torch.float32}  # the solver state stays float32
    ref = first(pipe(**kw, generator=gen(0), output_type="latent"))
    assert ref.dtype == out.dtype and ref.shape == out.shape


def test_user_plan_and_its_checks():
    pipe, kw = build("flux")
    sp = SpectralPipeline.from_pipe(pipe)
    times = full_times(sp, kw)
    plan = fraction_plan(times, (16, 16), (0.5, 1.0), (0.5,), multiple=2)
    with TokenCounter(pipe.transformer) as c:
        out = first(sp(**kw, generator=gen(0), output_type="latent", plan=plan))
    assert out.shape == (1, 64, 64) and c.grids[:2] == [(16,), (16,)] and c.grids[-1] == (64,)
    with pytest.raises(ValueError, match="full_grid"):
        sp(**kw, plan=full_plan(times, (8, 8)))
    with pytest.raises(ValueError, match="Plan"):
        sp(**kw, plan="spd")


def test_schedulers_supported_or_clear_error():
    from diffusers import DPMSolverMultistepScheduler

    pipe, kw = TINY_BUILDERS["sdxl"]()
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    sp = SpectralPipeline.from_pipe(pipe)
    with pytest.raises(ValueError, match="solver='euler'"):
        sp(**kw, spectrum="flux")
    out = first(sp(**kw, spectrum="flux", solver="euler", output_type="latent",
                   generator=gen(0)))
    assert torch.isfinite(out).all()


def test_unsupported_pipeline_and_missing_spectrum():
    with pytest.raises(ValueError, match="FluxPipeline"):
        SpectralPipeline.from_pipe(object())
    pipe, kw = build("sd3")
    with pytest.raises(ValueError, match="specdiff analyze"):
        SpectralPipeline.from_pipe(pipe)(**kw)
    pipe, kw = build("flux")
    with pytest.raises(ValueError, match="packed"):
        SpectralPipeline.from_pipe(pipe)(**kw, latents=torch.randn(1, 16, 16, 16))


def test_more_stages_and_other_transitions():
    pipe, kw = build("flux")
    sp = SpectralPipeline.from_pipe(pipe)
    kw = dict(kw, height=256, width=256, num_inference_steps=6)
    with TokenCounter(pipe.transformer) as c:
        out = first(sp(**kw, generator=gen(0), output_type="latent", scales=(0.25, 0.5, 1.0),
                       delta=0.1))
    assert out.shape == (1, 256, 64) and torch.isfinite(out).all()
    assert sorted(set(c.grids)) == [(16,), (64,), (256,)]
    for tr in ("fft", "haar"):
        out = first(sp(**kw, generator=gen(0), output_type="latent", transition=tr))
        assert torch.isfinite(out).all()
    plan = sp.get_plan(**kw, scales=(0.25, 0.5, 1.0), delta=0.1)
    assert math.isclose(plan.cost(), c.tokens / 256, rel_tol=1e-9)


def test_sd3_dynamic_shift_and_sdxl_v_prediction_equal_pipe():
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    pipe, kw = TINY_BUILDERS["sd3"]()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    sp = SpectralPipeline.from_pipe(pipe)
    a = first(pipe(**kw, generator=gen(0), output_type="latent"))
    b = first(sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
    # mu from the full-resolution patch count (8x8 = 64), whatever the first stage
    from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

    c = pipe.scheduler.config
    mu = calculate_shift(64, c.base_image_seq_len, c.max_image_seq_len, c.base_shift, c.max_shift)
    t = full_times(sp, kw)
    ref = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True, shift=3.0)
    ref.set_timesteps(kw["num_inference_steps"], mu=mu)
    assert t == pytest.approx(ref.sigmas.double().tolist(), abs=1e-7)
    assert sp.get_plan(**kw, spectrum="flux").stages[0].times[0] == t[0]

    pipe, kw = TINY_BUILDERS["sdxl"]()
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                        prediction_type="v_prediction")
    sp = SpectralPipeline.from_pipe(pipe)
    a = first(pipe(**kw, generator=gen(0), output_type="latent"))
    b = first(sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,)))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=5e-5)
