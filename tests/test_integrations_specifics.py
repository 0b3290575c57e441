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
    # 128 px -> 16x16 latent -> 64 packed tokens: mu = flux_mu(64)
    ref = flux_times(8, 64).tolist()
    assert max(abs(a - b) for a, b in zip(t, ref, strict=True)) < 1e-6
    # by hand (numpy) from FluxPipeline's rule: sigmas = linspace(1, 1/8, 8) time-shifted,
    # e^mu / (e^mu + 1/s - 1), with mu = calculate_shift(64, 256, 4096, 0.5, 1.15) = 0.4675
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
    # by hand (numpy) from FlowMatchEulerDiscreteScheduler(shift=3): with
    # f(s) = 3 s / (1 + 2 s), sigmas = f(linspace(1, f(1/1000), 8)), the shift applied to
    # already-shifted endpoints (diffusers 0.42 __init__ + set_timesteps)
    assert [round(v, 4) for v in t] == [1.0, 0.9475, 0.8828, 0.8008, 0.6938, 0.548, 0.338,
                                        0.0089, 0.0]


def test_sdxl_time_grid_and_start_scale():
    pipe, kw = build("sdxl")
    sp = SpectralPipeline.from_pipe(pipe)
    t = full_times(sp, dict(kw, num_inference_steps=8))
    # by hand (numpy): scaled_linear betas 0.00085..0.012 over 1000 steps, "leading" spacing
    # with steps_offset 1 gives timesteps 876, 751, ..., 1 and sigma = sqrt((1 - a) / a) of
    # their alphas_cumprod; init_noise_sigma = sqrt(7.372^2 + 1) = 7.439
    sig = [7.372, 4.117, 2.511, 1.624, 1.076, 0.698, 0.402, 0.041, 0.0]
    assert [v / (1 - v) for v in t] == pytest.approx(sig, abs=1e-3)
    ad = sp._adapter_cls(pipe, sp._bind((), dict(kw, num_inference_steps=8)), dry=True)
    assert ad.start_scale == pytest.approx(7.439 / (1 + 7.372), abs=1e-3)


def test_wan_time_grid_unipc():
    pipe, kw = build("wan")
    sp = SpectralPipeline.from_pipe(pipe)
    t = full_times(sp, dict(kw, num_inference_steps=8))
    # by hand (numpy) from UniPCMultistepScheduler(use_flow_sigmas, flow_shift=3):
    # sigmas = f(linspace(1, 1/1000, 9)[:-1]), f(s) = 3 s / (1 + 2 s), then 0
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


_W = torch.linspace(0.3, 0.9, 8).reshape(1, 8, 1, 1)


def _velocity(x, t):
    """A smooth nonlinear toy model in the flow frame: v = eps - x0 with x0 = tanh(x) w."""
    return (x - torch.tanh(x) * _W) / t


def _toy_denoiser(x, t):
    tt = float(t[0])
    return x - tt * _velocity(x, tt)


def _diffusers_unipc(order, variant, steps, noise, shift=3.0):
    """diffusers' own UniPC loop on the toy model: its sigmas and the state after every step."""
    from diffusers import UniPCMultistepScheduler

    sched = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                    flow_shift=shift, solver_order=order, solver_type=variant,
                                    predict_x0=True, lower_order_final=True,
                                    final_sigmas_type="zero")
    sched.set_timesteps(steps)
    x, ref = noise.clone(), []
    for ts in sched.timesteps:
        sigma = float(sched.sigmas[sched.step_index or 0])
        x = sched.step(_velocity(x, sigma), ts, x).prev_sample
        ref.append(x)
    return sched.sigmas.double(), ref


def _walk(solver, plan, noise):
    from specdiff.sampling import sample

    ours = []
    y = sample(_toy_denoiser, plan, solver=solver, noise=noise,
               callback=lambda info: ours.append(info["x"]))
    return y, ours


@pytest.mark.parametrize("order,variant,steps", [(1, "bh2", 5), (2, "bh2", 6), (3, "bh1", 7),
                                                 (2, "bh1", 20)])
def test_unipc_solver_matches_diffusers_scheduler(order, variant, steps):
    from specdiff.integrations.unipc import unipc_solver

    noise = torch.randn(1, 8, 4, 4, generator=gen(1))
    sigmas, ref = _diffusers_unipc(order, variant, steps, noise)
    plan = full_plan(sigmas, (4, 4))
    y, ours = _walk(unipc_solver(order=order, variant=variant), plan, noise)
    assert len(ours) == len(ref) == steps
    # diffusers' bh1 returns NaN on the step onto sigma = 0 (-inf * 0 in B(h) * pred_res);
    # ours returns the x0 estimate there, as bh2 does
    last = steps if variant == "bh2" else steps - 1
    for a, b in zip(ours[:last], ref[:last], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(y).all()


def test_one_unipc_solver_walks_two_plans():
    from specdiff.integrations.unipc import unipc_solver

    # order 3: lower_order_final lowers the last two steps of each walk, so the solver must
    # know how many steps are left in *this* plan (6 and then 9 steps, other shifts)
    solver = unipc_solver(order=3, variant="bh2")
    noise = torch.randn(1, 8, 4, 4, generator=gen(2))
    for steps, shift in ((6, 3.0), (9, 5.0), (6, 3.0)):
        sigmas, ref = _diffusers_unipc(3, "bh2", steps, noise, shift=shift)
        _, ours = _walk(solver, full_plan(sigmas, (4, 4)), noise)
        assert len(ours) == steps
        for a, b in zip(ours, ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the steps left matter: the same solver denied the StepInfo (so it falls back to
    # lowering only the step onto t = 0) takes the second-to-last step at order 3, not 2
    from specdiff.solvers import Solver

    def blind_step(*args, info=None, **kw):
        return solver.step(*args, **kw)

    blind = Solver("blind", blind_step, 3, multistep=True)
    _, other = _walk(blind, full_plan(sigmas, (4, 4)), noise)
    torch.testing.assert_close(other[-3], ref[-3], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(other[-2], ref[-2], rtol=1e-4, atol=1e-4)
    # a plan argument is no longer needed; it is accepted, ignored, and says so
    with pytest.warns(DeprecationWarning, match="no longer needed"):
        unipc_solver(full_plan(sigmas, (4, 4)), order=3)
    with pytest.raises(ValueError, match="Plan"):
        unipc_solver("spd")


# --- step position: what the sampler passes, no counter in the adapter -------------------


def _expected_walk(plan, solver):
    """(index, t) of every denoiser evaluation, read off the plan: step k's first evaluation
    at its start time sees walk position k; Heun's corrector at the step's end sees k + 1
    (skipped on the step onto t = 0)."""
    out, k = [], 0
    for st in plan.stages:
        for a, b in zip(st.times, st.times[1:]):
            out.append((k, a))
            if solver == "heun" and b > 0:
                out.append((k + 1, b))
            k += 1
    return out


def test_sd3_skip_layer_guidance_sees_each_evaluations_walk_position(monkeypatch):
    pipe, kw = build("sd3")
    sp = SpectralPipeline.from_pipe(pipe)
    # with 4 steps, SLG runs where 4 * 0.3 < i < 4 * 0.6: at walk position 2 only
    slg = dict(skip_guidance_layers=[1], skip_layer_guidance_start=0.3,
               skip_layer_guidance_stop=0.6)
    plan = sp.get_plan(**kw, spectrum="flux")
    assert len(plan.stages) == 2 and plan.steps == 4
    seen, calls = [], []
    orig = sp._adapter_cls.__call__

    def spy(self, x, t, **c):
        seen.append((c["step_info"].index, float(t[0])))
        return orig(self, x, t, **c)

    def hook(mod, args, kwargs, out):
        calls.append((len(seen) - 1, float(kwargs["timestep"][0]), "skip_layers" in kwargs))

    monkeypatch.setattr(sp._adapter_cls, "__call__", spy)
    handle = pipe.transformer.register_forward_hook(hook, with_kwargs=True)
    try:
        sp(**kw, **slg, generator=gen(0), output_type="latent", spectrum="flux", solver="heun")
    finally:
        handle.remove()
    walk = _expected_walk(plan, "heun")
    assert [i for i, _ in seen] == [i for i, _ in walk] == [0, 1, 1, 2, 2, 3, 3]
    assert [t for _, t in seen] == pytest.approx([t for _, t in walk], abs=1e-7)
    # every transformer call belongs to one evaluation and gets its time (SD3: 1000 t)
    for ev, ts, _ in calls:
        assert ts == pytest.approx(1000 * walk[ev][1], rel=1e-6)
    # the extra SLG call follows the evaluation's own position: evaluations 3 and 4 are
    # step 1's corrector and step 2's predictor, both at t_2 (position 2); step 2's
    # corrector (evaluation 5, at t_3) is at position 3 and gets none
    skipped = [ev for ev, _, sk in calls if sk]
    assert skipped == [3, 4]
    assert [walk[e] for e in skipped] == [(2, plan.stages[1].times[1])] * 2
    # with Euler (one evaluation per step) the positions are the steps themselves
    seen.clear()
    sp(**kw, generator=gen(0), output_type="latent", spectrum="flux")
    assert seen == [(i, pytest.approx(t, abs=1e-7)) for i, t in _expected_walk(plan, "euler")]


def test_wan_cache_context_gets_the_walk_position():
    pipe, kw = build("wan")
    sp = SpectralPipeline.from_pipe(pipe)
    contexts = []
    orig = pipe.transformer.cache_context

    def recording(name, **ck):
        contexts.append((name, ck["step_index"], round(ck["sigma"], 6), ck["num_inference_steps"]))
        return orig(name, **ck)

    plan = sp.get_plan(**kw)
    pipe.transformer.cache_context = recording  # an instance attribute, deleted below
    try:
        pipe(**kw, generator=gen(0), output_type="latent")
        theirs = list(contexts)
        contexts.clear()
        sp(**kw, generator=gen(0), output_type="latent", scales=(1.0,))
        ours = list(contexts)
        contexts.clear()
        sp(**kw, generator=gen(0), output_type="latent", solver="heun")
    finally:
        del pipe.transformer.cache_context
    # one stage, UniPC: what the pipeline's own loop tells the cache hooks, call for call
    assert ours == theirs and len(theirs) == 2 * kw["num_inference_steps"]
    # two stages with Heun: each evaluation's own position; its sigma is its time's
    walk = _expected_walk(plan, "heun")
    want = [(name, i, round(t, 6), plan.steps) for i, t in walk for name in ("cond", "uncond")]
    assert [c[:2] + c[3:] for c in contexts] == [w[:2] + w[3:] for w in want]
    assert [c[2] for c in contexts] == pytest.approx([w[2] for w in want], abs=2e-6)


def test_adapter_has_no_hidden_step_state():
    from specdiff.solvers import StepInfo

    pipe, kw = build("sd3")
    sp = SpectralPipeline.from_pipe(pipe)
    kw = dict(kw, skip_guidance_layers=[1], skip_layer_guidance_start=0.3,
              skip_layer_guidance_stop=0.6)
    ad = sp._adapter_cls(pipe, sp._bind((), kw), dry=True)
    assert not hasattr(ad, "step_index") and not hasattr(ad, "current_sigma")
    x = torch.randn(1, 16, 16, 16, generator=gen(3))
    t2 = float(ad.times[2])
    tt = torch.tensor([t2])
    with torch.no_grad():
        at2 = ad(x, tt, step_info=StepInfo(1, 2, 4))
        again = ad(x, tt, step_info=StepInfo(1, 2, 4))
        at1 = ad(x, tt, step_info=StepInfo(1, 1, 4))
        no_info = ad(x, tt)
    assert torch.equal(at2, again)  # same arguments, same result
    assert not torch.allclose(at1, at2)  # position 1 is outside the SLG window, 2 inside
    # outside a plan the position is the time's place on the scheduler's grid (t_2 -> 2)
    assert ad.grid_position(t2) == 2 and torch.equal(no_info, at2)
    assert ad.grid_position(float(ad.times[2] + ad.times[3]) / 2) == 3


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


def _record_calls(module):
    """Forward hook keeping every call's keyword arguments and first output (cloned)."""
    calls = []

    def hook(mod, args, kwargs, out):
        kw = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in kwargs.items()}
        calls.append((kw, out[0].clone()))

    return calls, module.register_forward_hook(hook, with_kwargs=True)


def test_block_cache_is_reset_at_transitions():
    from diffusers.hooks import FirstBlockCacheConfig

    pipe, kw = TINY_BUILDERS["flux"]()
    # threshold 10: after the first call every call reuses the cached tail residuals, unless
    # the cache was reset (then the first block's residual has nothing to compare with)
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=10.0))
    sp = SpectralPipeline.from_pipe(pipe)
    plan = sp.get_plan(**kw)
    assert [st.steps for st in plan.stages] == [1, 3]
    calls, handle = _record_calls(pipe.transformer)
    try:
        out = first(sp(**kw, generator=gen(0), output_type="latent"))
    finally:
        handle.remove()
    assert out.shape == (1, 64, 64) and torch.isfinite(out).all()
    sizes = [c[0]["hidden_states"].shape[1] for c in calls]
    assert sizes == [16, 64, 64, 64]  # 8x8 then 16x16 latents, 2x2-packed
    pipe.transformer.disable_cache()
    with torch.no_grad():
        fresh = [pipe.transformer(**c[0])[0] for c in calls]
    # the first full-resolution call is a full recomputation (no stale coarse activation
    # entered it): it equals a cache-less evaluation of the same input
    torch.testing.assert_close(calls[1][1], fresh[1], rtol=0, atol=0)
    # the cache is live: the next full-resolution calls reuse its residuals, so they
    # differ from a cache-less evaluation of their inputs
    for c, f in zip(calls[2:], fresh[2:], strict=True):
        assert not torch.allclose(c[1], f, rtol=1e-3, atol=1e-3)


def test_wan_transitions_act_per_frame():
    from specdiff.spectral import project_noise, resize
    from specdiff.transitions import Spectral

    pipe, kw = build("wan")
    sp = SpectralPipeline.from_pipe(pipe)
    plan = sp.get_plan(**kw)
    (F, h, w), coarse_grid = plan.full_grid, plan.stages[0].grid
    assert F == 3 and coarse_grid == (3, h // 2, w // 2)  # 9 frames -> 3 latent frames
    # the full-resolution noise as the pipeline draws it (randn_tensor on the CPU)
    noise = torch.randn((1, 16, F, h, w), generator=gen(0))
    last_coarse = {}

    def cb(p, i, t, k):
        if k["stage"] == 0:
            last_coarse["x"] = k["latents"].clone()  # Wan's latents are the flow state
        return {}

    calls, handle = _record_calls(pipe.transformer)
    try:
        sp(**kw, generator=gen(0), output_type="latent", callback_on_step_end=cb)
    finally:
        handle.remove()
    inputs = [c[0]["hidden_states"] for c in calls]
    assert all(x.shape[2] == F for x in inputs)  # no stage changes the frame count
    # the coarse start: each frame's noise projected on its own, 2-D
    start = torch.stack([project_noise(noise[:, :, f], (h // 2, w // 2)) for f in range(F)], 2)
    torch.testing.assert_close(inputs[0], start, rtol=1e-5, atol=1e-5)
    # the expansion: each frame resized on its own with its own noise equals what the first
    # full-resolution call received
    t_end = plan.stages[0].times[-1]
    fine = next(x for x in inputs if tuple(x.shape[2:]) == (F, h, w))
    per_frame = [resize(last_coarse["x"][:, :, f], t_end, (h, w), noise=noise[:, :, f])
                 for f in range(F)]
    assert per_frame[0][1] == pytest.approx(plan.stages[1].times[0], abs=1e-6)
    torch.testing.assert_close(fine, torch.stack([r[0] for r in per_frame], 2),
                               rtol=1e-5, atol=1e-5)
    # ... and so does the video transition on (F, h, w): frames are never mixed
    video = Spectral("dct").apply(last_coarse["x"], t_end, (F, h, w), noise=noise)[0]
    torch.testing.assert_close(fine, video, rtol=1e-5, atol=1e-5)
    # frame content stays with its frame: reversing the frames of the input reverses them
    # in the output
    rev = Spectral("dct").apply(last_coarse["x"].flip(2), t_end, (F, h, w), noise=noise.flip(2))[0]
    torch.testing.assert_close(rev, video.flip(2), rtol=1e-5, atol=1e-5)


def test_transition_objects_and_legacy_strings():
    from specdiff.transitions import Pyramid, Spectral, X0Renoise

    pipe, kw = build("flux")
    sp = SpectralPipeline.from_pipe(pipe)
    runs = {}
    for name, tr in (("fft", "fft"), ("fft_obj", Spectral("fft")), ("haar", "haar"),
                     ("pyramid", Pyramid())):
        runs[name] = first(sp(**kw, generator=gen(0), output_type="latent", transition=tr))
    assert torch.equal(runs["fft"], runs["fft_obj"])  # the string is read as the object
    # Pyramid Flow's jump equals the Haar expansion given the same (seed-coupled) noise
    # (methods.md section 6.1), through different code (nearest upsample + block noise)
    torch.testing.assert_close(runs["pyramid"], runs["haar"], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(runs["fft"], runs["haar"])
    assert sp.get_plan(**kw, transition=Pyramid()).transitions == (Pyramid(),)
    with pytest.raises(ValueError, match="carries the state"):
        sp(**kw, transition=X0Renoise("bicubic"))
    with pytest.raises(ValueError, match="transition must be"):
        sp(**kw, transition="nearest", scales=(1.0,))


def test_mixed_transitions_need_fresh_noise_and_start_from_the_noise_band():
    import dataclasses

    from specdiff.plans import Plan
    from specdiff.spectral import project_noise
    from specdiff.transitions import Spectral

    pipe, kw = build("sdxl")
    sp = SpectralPipeline.from_pipe(pipe)
    kw = dict(kw, num_inference_steps=6)
    st = sp.get_plan(**kw, scales=(0.25, 0.5, 1.0), spectrum="flux", delta=0.1).stages
    # dct into the middle stage, haar into the last: one plan, two bases
    mixed = Plan((st[0], st[1], dataclasses.replace(st[2], transition=Spectral("haar"))))
    assert [tr.kind for tr in mixed.transitions] == ["dct", "haar"]
    with pytest.raises(ValueError, match="coupled=False"):
        sp(**kw, plan=mixed, generator=gen(0), output_type="latent")
    seen = []
    handle = pipe.unet.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
    try:
        out = first(sp(**kw, plan=mixed, coupled=False, generator=gen(0), output_type="latent"))
    finally:
        handle.remove()
    assert out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()
    # SDXL's first UNet input is init_noise_sigma * noise / sqrt(1 + s_max^2) = the noise
    # itself ("leading" spacing); on the 4x4 first stage, its DCT band (the first carried
    # transition's basis, as specdiff.sample starts)
    noise = torch.randn((1, 4, 16, 16), generator=gen(0))
    torch.testing.assert_close(seen[0][:1], project_noise(noise, (4, 4), "dct"),
                               rtol=1e-5, atol=1e-5)


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
    from specdiff.integrations.auto_spectrum import auto_spectrum

    with pytest.raises(ValueError, match="FluxPipeline"):
        SpectralPipeline.from_pipe(object())
    # SD3 without a spectrum fits one (test_integrations_auto_spectrum); with no VAE to fit
    # it with, the error says what to pass
    with pytest.raises(ValueError, match="no VAE .* `specdiff analyze`"):
        auto_spectrum(None, 64, 64)
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
