"""``sample()``: run a plan stage by stage with any solver (DESIGN.md section 5).

Frame: rectified flow (``t = 1`` noise). The state is kept in float32 (float64
when the noise is float64); the denoiser casts at the network.

Seed-coupled noise (default): one full-resolution noise tensor is drawn (or
given); the first stage starts from its orthonormal projection onto the
coarse grid and every spectral expansion fills its new bins with the matching
band of the same tensor. A deterministic solver then makes the output a
function of that one tensor, so progressive and full-resolution samples from
the same seed are comparable pixel by pixel, and they coincide as the
transitions move to ``t = 1``. ``coupled=False`` draws fresh noise from
``generator`` at every transition instead.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

import torch
from tqdm.auto import tqdm

from .plans import DEFAULT_MODEL, Plan
from .solvers import StepInfo, call_denoiser, get_solver
from .spectral import Generator, check_generator, make_noise, project_noise
from .transitions import Transition, as_transition

__all__ = ["sample", "coupling_basis"]


def coupling_basis(transition: Transition | str) -> str:
    """Basis in which the seed-coupled noise is split between grids for one transition
    (``"dct"`` for transitions that carry no state). Plans answer for all their
    transitions at once with :meth:`Plan.coupling_basis`."""
    return as_transition(transition).coupling_basis or "dct"


def _check_plan(plan) -> Plan:
    if not isinstance(plan, Plan):
        raise ValueError(
            "plan must be a specdiff.plans.Plan (build one with full_plan, spd_plan, ...)"
        )
    return plan


def _check_count(value, name: str, what: str) -> int:
    """``value`` as a positive int (bools and whole-valued floats are not counts here)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1:
        return int(value)
    raise ValueError(f"{name} must be a positive integer ({what}), got "
                     f"{type(value).__name__} {value!r}")


def _check_sample_args(generator, batch_size, channels, eta) -> None:
    """The arguments ``sample`` takes as plain values, checked before any work: each would
    otherwise fail deep inside torch (an int generator, a negative batch) or, like a negative
    ``eta``, not fail at all."""
    check_generator(generator)
    _check_count(batch_size, "batch_size", "samples to draw when noise= is omitted")
    if channels is not None:
        _check_count(channels, "channels", "the model's input channels, e.g. 3 or 16")
    ok = isinstance(eta, numbers.Real) and not isinstance(eta, bool)
    if not ok or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a number >= 0 (0 is deterministic, 1 ancestral), got "
                         f"{type(eta).__name__} {eta!r}")


def _check_noise(noise, full) -> None:
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape[2:]) != tuple(full):
        raise ValueError(
            f"noise must be (B, C, *{tuple(full)}) to match the plan's full grid, got "
            f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise)}"
        )
    if not noise.is_floating_point():
        # an integer noise tensor would be cast to float silently: quantised, not Gaussian
        raise ValueError(f"noise must be a float tensor (white N(0, 1), e.g. torch.randn), got "
                         f"{noise.dtype}")
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf")


def stage_denoisers(denoiser, plan: Plan) -> list:
    """The denoiser of every stage: one ``Denoiser`` for all, or ``mapping[stage.model]``.

    A stage that names no model uses the key ``"default"``. Raises ``ValueError``
    naming any key the plan needs and the mapping lacks.
    """
    if isinstance(denoiser, Mapping):
        missing = [k for k in plan.model_keys if k not in denoiser]
        if missing:
            raise ValueError(
                f"the plan runs models {list(plan.model_keys)} but the denoiser mapping has no "
                f"{missing} (it has {sorted(map(str, denoiser))}); add them, or name existing keys "
                f"in the plan's stages (Stage.model; stages naming none use {DEFAULT_MODEL!r})")
        out = [denoiser[st.model or DEFAULT_MODEL] for st in plan.stages]
    else:
        out = [denoiser] * len(plan.stages)
    for i, d in enumerate(out):
        if not callable(d):
            raise ValueError(f"the denoiser of stage {i} is not callable: {type(d).__name__}")
    return out


def sample(
    denoiser: Callable[..., torch.Tensor] | Mapping[str, Callable[..., torch.Tensor]],
    plan: Plan,
    *,
    solver: str = "euler",
    noise: torch.Tensor | None = None,
    generator: Generator = None,
    cond: dict[str, Any] | None = None,
    callback: Callable[[dict], torch.Tensor | None] | None = None,
    progress: bool = False,
    coupled: bool = True,
    batch_size: int = 1,
    channels: int | None = None,
    device: torch.device | str | None = None,
    eta: float = 1.0,
) -> torch.Tensor:
    """Generate samples by walking ``plan`` with ``solver``.

    Args:
        denoiser: ``(x, t, **cond) -> x0_hat`` (see :mod:`specdiff.denoisers`), or a
            mapping from the plan's model keys to denoisers (``Stage.model``; stages
            naming none use ``"default"``). Denoisers that declare
            ``takes_step_info = True`` also get ``step_info=`` (a
            :class:`specdiff.solvers.StepInfo`: stage, walk position, plan length).
        plan: stages with their entering transitions (:mod:`specdiff.plans`).
        solver: ``"euler"``, ``"heun"``, ``"dpmpp_2m"`` or ``"stochastic"``
            (ancestral with ``eta``). Multistep history resets at every transition.
        noise: ``(B, C, *plan.full_grid)`` full-resolution white noise. When
            omitted it is drawn from ``generator`` with ``batch_size`` and ``channels``.
        generator: one ``torch.Generator`` or one per sample; needed for fresh
            noise (``coupled=False``, x0 transitions, the stochastic solver) and
            when ``noise`` is omitted. Nothing here uses the global RNG.
        cond: keyword arguments passed to every denoiser call.
        callback: called after every step with a dict (``stage``, ``step``,
            ``index``, ``t``, ``t_next``, ``x``, ``x0_hat``, ``grid``, ``model``); if it
            returns a tensor of the same shape, that replaces ``x``.
        progress: show a progress bar.
        coupled: seed-coupled noise across stages (default) or fresh noise.
        batch_size, channels: the noise shape ``(batch_size, channels, *grid)`` drawn
            when ``noise`` is omitted (positive integers).
        eta: the stochastic solver's noise level, a number >= 0 (0 is Euler, 1 ancestral).

    Returns:
        ``(B, C, *plan.full_grid)`` samples at ``t = 0`` in the noise's dtype
        (float32 unless the noise is float64), not clamped: for the embedded models
        about [-1, 1] (8 seeds of the UNet at 128^2 reach -1.26 and 1.23);
        :func:`specdiff.images.save_png` clamps when it writes. With per-sample
        generators, sample ``i`` gets the same noise whatever the batch and comes out the
        same to within 1e-5 (batched kernels round differently).
    """
    plan = _check_plan(plan)
    dens = stage_denoisers(denoiser, plan)
    sv = get_solver(solver)
    _check_sample_args(generator, batch_size, channels, eta)
    full = plan.full_grid
    if noise is None:
        if generator is None:
            raise ValueError(
                "pass noise= (B, C, *grid) or generator= (with batch_size= and channels=) "
                "to choose the randomness"
            )
        if channels is None:
            raise ValueError("channels= is needed to draw noise of shape (B, C, *grid)")
        noise = make_noise((batch_size, channels, *full), generator, device=device)
    _check_noise(noise, full)
    wd = torch.float64 if noise.dtype == torch.float64 else torch.float32
    noise = noise.to(dtype=wd, device=device if device is not None else noise.device)
    needs_gen = (not coupled and len(plan.stages) > 1) or not plan.carries_state or sv.stochastic
    if needs_gen and generator is None:
        raise ValueError(
            "this plan/solver draws fresh noise (fresh-noise mode, x0 transitions or a "
            "stochastic solver): pass generator="
        )
    # fresh-noise mode never band-splits the seed noise after the start, so a plan
    # mixing bases only needs one when coupled
    basis = plan.coupling_basis(coupled)

    first = plan.stages[0].grid
    x = noise if first == tuple(full) else project_noise(noise, first, basis)
    total = plan.steps
    bar = tqdm(total=total, disable=not progress, desc="sampling", leave=False)
    index = 0
    try:
        for i, stage in enumerate(plan.stages):
            if i > 0:
                info = StepInfo(i - 1, index, total, plan.stages[i - 1].model)
                x = _enter(dens[i - 1], plan, i, x, noise, generator, cond, coupled, basis, info)
            state = None
            for j in range(stage.steps):
                t, t_next = stage.times[j], stage.times[j + 1]
                step_noise = (
                    make_noise(x.shape, generator, dtype=wd, device=x.device)
                    if sv.stochastic else None
                )
                kwargs = {"eta": eta} if sv.stochastic else {}
                info = StepInfo(i, index, total, stage.model)
                x, state, x0 = sv.step(dens[i], x, t, t_next, cond=cond, state=state,
                                       noise=step_noise, info=info, **kwargs)
                if callback is not None:
                    out = callback({"stage": i, "step": j, "index": index, "t": t,
                                    "t_next": t_next, "x": x, "x0_hat": x0, "grid": stage.grid,
                                    "model": stage.model or DEFAULT_MODEL})
                    if isinstance(out, torch.Tensor):
                        if out.shape != x.shape:
                            raise ValueError("a callback may only return a tensor of x's shape")
                        x = out.to(wd)
                index += 1
                bar.update(1)
    finally:
        bar.close()
    return x


def _enter(denoiser, plan: Plan, i: int, x, noise, generator, cond, coupled, basis, info):
    """Move the state from stage ``i - 1`` into stage ``i`` through stage ``i``'s transition.

    ``denoiser`` is stage ``i - 1``'s: an x0 re-noise takes its clean estimate at
    the stage's last time (``info`` places that evaluation on the walk).
    """
    prev, nxt = plan.stages[i - 1], plan.stages[i]
    t_end = prev.times[-1]
    tr = nxt.transition
    if not tr.carries_state:
        x0 = call_denoiser(denoiser, x, t_end, cond, info) if t_end > 0 else x
        return tr.apply(x0, nxt.times[0], nxt.grid, generator=generator)
    grows = any(b > a for a, b in zip(prev.grid, nxt.grid, strict=True))
    nz = None
    if grows and coupled:
        nz = noise if nxt.grid == tuple(noise.shape[2:]) else project_noise(noise, nxt.grid, basis)
    x_new, t_new = tr.apply(x, t_end, nxt.grid, noise=nz, generator=generator)
    if abs(t_new - nxt.times[0]) > 1e-6:
        raise ValueError(
            f"stage {i} starts at t={nxt.times[0]} but the transition gives t={t_new}; rebuild "
            "the plan with the constructors in specdiff.plans"
        )
    return x_new
