"""diffusers step caches across an SPD transition keep their step counters (cache_hooks).

On a tiny FLUX at 256 px, 16 steps, scales (0.5, 1), delta 0.4, the plan runs steps 0..3
on the coarse grid and 4..15 at full resolution. For each cache, which steps run the
transformer (a pre-hook on the first block's ``to_q`` counts them) is compared with
``pipe(...)``'s on the same steps: after the forced first full-resolution evaluation they
must agree step for step, while diffusers' own full reset (what this replaced) does not.
"""

import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import MagCacheConfig, TaylorSeerCacheConfig  # noqa: E402

from specdiff.integrations import cache_hooks  # noqa: E402
from specdiff.integrations.diffusers import SpectralPipeline  # noqa: E402
from specdiff.integrations.tiny import tiny_flux  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

N, SWITCH = 16, 4
SPD = dict(scales=(0.5, 1.0), delta=0.4)


def _computed_steps(run) -> list[bool]:
    """Per step: whether the transformer's first block ran (not served from the cache)."""
    pipe, kw, call = run
    ran: list[int] = []
    handle = pipe.transformer.transformer_blocks[0].attn.to_q.register_forward_pre_hook(
        lambda m, a: ran.append(1))
    counts = []

    def on_step(p, i, t, tensors):
        counts.append(len(ran))
        return {}

    try:
        call(**kw, generator=torch.Generator().manual_seed(0), output_type="latent",
             callback_on_step_end=on_step)
    finally:
        handle.remove()
    return [b > a for a, b in zip([0, *counts], counts)]


def _runs(config):
    pipe, kw = tiny_flux()
    kw = dict(kw, height=256, width=256, num_inference_steps=N)
    sp = SpectralPipeline.from_pipe(pipe)
    plan = sp.get_plan(**kw, **SPD)
    assert [len(st.times) - 1 for st in plan.stages] == [SWITCH, N - SWITCH]
    pipe.transformer.enable_cache(config)
    plain = _computed_steps((pipe, kw, pipe))
    spd = _computed_steps((pipe, kw, lambda **k: sp(**k, **SPD)))
    return plain, spd, pipe


def _full_reset(denoiser):
    """diffusers' own reset of every stateful hook: what SPD did before cache_hooks."""
    for m in denoiser.modules():
        reg = m.__dict__.get("_diffusers_hook")
        if reg is not None:
            reg.reset_stateful_hooks(recurse=False)
    return []


TAYLORSEER = TaylorSeerCacheConfig(cache_interval=3, disable_cache_before_step=2,
                                   disable_cache_after_step=13, max_order=1)


def test_taylorseer_keeps_its_step_on_the_full_resolution_suffix(monkeypatch):
    plain, spd, pipe = _runs(TAYLORSEER)
    # pipe(...): warm-up 0, 1; every third step from 3; everything from 13 on
    assert [i for i, c in enumerate(plain) if c] == [0, 1, 3, 6, 9, 12, 13, 14, 15]
    assert spd[SWITCH]  # nothing of the new size to predict from: computed
    assert spd[SWITCH + 1:] == plain[SWITCH + 1:]
    # the one-evaluation override of disable_cache_after_step was undone
    hooks = [h for m in pipe.transformer.modules() if "_diffusers_hook" in m.__dict__
             for h in m._diffusers_hook.hooks.values() if type(h).__name__ == "TaylorSeerCacheHook"]
    assert len(hooks) == 3 and all(h.disable_cache_after_step == 13 for h in hooks)
    # with the counters reset at the switch the warm-up reruns and step 12 is predicted
    monkeypatch.setattr(cache_hooks, "reset_for_new_grid", _full_reset)
    old = _runs(TAYLORSEER)[1]
    assert old[SWITCH + 1:] != plain[SWITCH + 1:]


def test_magcache_applies_its_ratios_at_the_global_step(monkeypatch):
    # ratios 1 (no error accrues), at most 2 skips in a row, no skipping before step 5
    config = MagCacheConfig(mag_ratios=[1.0] * N, threshold=1.0, max_skip_steps=2,
                            retention_ratio=(SWITCH + 1) / N, num_inference_steps=N)
    plain, spd, _ = _runs(config)
    assert [i for i, c in enumerate(plain) if c] == [0, 1, 2, 3, 4, 7, 10, 13]
    assert spd[SWITCH:] == plain[SWITCH:]
    monkeypatch.setattr(cache_hooks, "reset_for_new_grid", _full_reset)
    old = _runs(config)[1]  # step_index restarts: the no-skip window is repeated
    assert old[SWITCH:] != plain[SWITCH:]


def test_the_community_pattern_runs_the_coarse_steps_uncached_and_starts_afresh():
    """``caches="full_resolution"``: every coarse step computes, and at full resolution the
    cache behaves as in a new run of the remaining steps (its counters from 0)."""
    pipe, kw = tiny_flux()
    kw = dict(kw, height=256, width=256, num_inference_steps=N)
    sp = SpectralPipeline.from_pipe(pipe)
    pipe.transformer.enable_cache(TAYLORSEER)
    spd = _computed_steps((pipe, kw, lambda **k: sp(**k, **SPD, caches="full_resolution")))
    fresh = _computed_steps((pipe, dict(kw, num_inference_steps=N - SWITCH), pipe))
    assert spd[:SWITCH] == [True] * SWITCH
    assert spd[SWITCH:] == fresh
    # ... which is not the global-step pattern
    plain = _computed_steps((pipe, kw, pipe))
    assert spd[SWITCH + 1:] != plain[SWITCH + 1:]
    with pytest.raises(ValueError, match="caches must be one of"):
        sp(**kw, **SPD, caches="none")
