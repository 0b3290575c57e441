"""diffusers' step caches across an SPD transition: drop what has the old grid's shape, keep
every step counter on the pipeline's global step.

A cache hook (``pipe.transformer.enable_cache(...)``) holds two kinds of state: activations
of the previous call (residuals, Taylor factors, attention outputs), which have the old
stage's token count and cannot serve the new one, and step-indexed counters (which step of
the run this is), which a plan does not restart: the full-resolution suffix of a progressive
run is steps ``k..N-1`` of the same schedule. ``reset_stateful_hooks`` (diffusers' own reset,
for a new run) clears both, so after a switch MagCache would apply its calibrated per-step
``mag_ratios`` off by ``k`` and repeat its no-skip window, and TaylorSeer would rerun its
warm-up and predict steps its ``disable_cache_after_step`` excludes. :func:`reset_for_new_grid`
clears only the first kind, per hook class:

* ``MagCacheHeadHook``/``MagCacheBlockHook`` (shared ``MagCacheState``): the previous residual
  and head input and the skip accumulators go; ``step_index`` and the calibration ratios
  stay. With no residual, MagCache itself computes the next step.
* ``TaylorSeerCacheHook``: the Taylor factors, the step of their last update and the
  inactive outputs' shapes go; ``current_step`` stays. Predicting needs factors of the new
  shape, so the next evaluation computes every hooked module (the hook's
  ``disable_cache_after_step`` is lowered for that one evaluation, then restored).
* ``PyramidAttentionBroadcastHook``: the cached attention output goes (it then computes);
  ``iteration`` stays.
* ``FBCHeadBlockHook`` (First Block Cache) keeps no step counter: reset whole, as before.
* Any other stateful hook (FasterCache, whose skip logic reads its cache without checking
  it, SEA cache, hooks added later): reset whole by its own ``reset_state``.

The first evaluation after a switch therefore always computes (there is nothing of the new
size to reuse); from the next one on, each cache decides as ``pipe(...)`` would at that step.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["reset_for_new_grid"]


def _states(hook) -> list:
    """The per-context states of a hook (cond/uncond each have one), or its single state."""
    manager = getattr(hook, "state_manager", None)
    if manager is not None:
        return list(getattr(manager, "_state_cache", {}).values())
    state = getattr(hook, "state", None)
    return [state] if state is not None else []


def _mag_cache(hook, module) -> Callable | None:
    for st in _states(hook):
        st.previous_residual = None
        st.head_block_input = None
        st.should_compute = True
        st.accumulated_ratio, st.accumulated_err, st.accumulated_steps = 1.0, 0.0, 0
    return None


def _taylorseer(hook, module) -> Callable | None:
    for st in _states(hook):
        st.taylor_factors = {}
        st.last_update_step = None
        st.inactive_shapes = None
        st.device = None
    saved = hook.disable_cache_after_step
    hook.disable_cache_after_step = -1  # every step is past it: compute, for one evaluation

    def restore() -> None:
        hook.disable_cache_after_step = saved

    return restore


def _pyramid_attention_broadcast(hook, module) -> Callable | None:
    for st in _states(hook):
        st.cache = None
    return None


# hook class name -> how to clear it for a new grid (returns what to undo after the next
# evaluation, or None); matched by name so diffusers stays an optional import
_HANDLERS: dict[str, Callable] = {
    "MagCacheHeadHook": _mag_cache,
    "MagCacheBlockHook": _mag_cache,
    "TaylorSeerCacheHook": _taylorseer,
    "PyramidAttentionBroadcastHook": _pyramid_attention_broadcast,
}


def reset_for_new_grid(denoiser) -> list[Callable[[], None]]:
    """Clear every stateful diffusers hook on ``denoiser`` (and its submodules) for a new
    grid, keeping step counters (module docstring). Only registries that already exist are
    touched. Returns the callables to run after the next evaluation (restoring what was
    overridden for it)."""
    undo: list[Callable[[], None]] = []
    for m in denoiser.modules():
        reg = m.__dict__.get("_diffusers_hook")
        if reg is None:
            continue
        for name in reversed(list(reg._hook_order)):
            hook = reg.hooks[name]
            if not getattr(hook, "_is_stateful", False):
                continue
            handler = _HANDLERS.get(type(hook).__name__)
            if handler is None:
                hook.reset_state(reg._module_ref)
                continue
            restore = handler(hook, reg._module_ref)
            if restore is not None:
                undo.append(restore)
    return undo
