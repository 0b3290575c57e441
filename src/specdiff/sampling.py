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

from collections.abc import Callable
from typing import Any

import torch
from tqdm.auto import tqdm

from .plans import Plan
from .solvers import get_solver
from .spectral import (
    Generator,
    make_noise,
    project_noise,
    pyramid_renoise,
    resize,
    x0_renoise,
)

__all__ = ["sample", "coupling_basis"]


def coupling_basis(transition: str) -> str:
    """Basis in which the seed-coupled noise is split between grids for a transition kind."""
    if transition in ("fft", "haar"):
        return transition
    if transition == "pyramid":
        return "haar"  # pyramid renoise == haar expansion given the same noise
    return "dct"


def _check_plan(plan) -> Plan:
    if not isinstance(plan, Plan):
        raise ValueError(
            "plan must be a specdiff.plans.Plan (build one with full_plan, spd_plan, ...)"
        )
    return plan


def sample(
    denoiser: Callable[..., torch.Tensor],
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
        denoiser: ``(x, t, **cond) -> x0_hat`` (see :mod:`specdiff.denoisers`).
        plan: stages and transitions (:mod:`specdiff.plans`).
        solver: ``"euler"``, ``"heun"``, ``"dpmpp_2m"`` or ``"stochastic"``
            (ancestral with ``eta``). Multistep history resets at every transition.
        noise: ``(B, C, *plan.full_grid)`` full-resolution white noise. When
            omitted it is drawn from ``generator`` with ``batch_size`` and ``channels``.
        generator: one ``torch.Generator`` or one per sample; needed for fresh
            noise (``coupled=False``, x0 transitions, the stochastic solver) and
            when ``noise`` is omitted. Nothing here uses the global RNG.
        cond: keyword arguments passed to every denoiser call.
        callback: called after every step with a dict (``stage``, ``step``,
            ``index``, ``t``, ``t_next``, ``x``, ``x0_hat``, ``grid``); if it
            returns a tensor of the same shape, that replaces ``x``.
        progress: show a progress bar.
        coupled: seed-coupled noise across stages (default) or fresh noise.

    Returns:
        ``(B, C, *plan.full_grid)`` samples at ``t = 0`` in the noise's dtype
        (float32 unless the noise is float64).
    """
    plan = _check_plan(plan)
    sv = get_solver(solver)
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
    if not isinstance(noise, torch.Tensor) or tuple(noise.shape[2:]) != tuple(full):
        raise ValueError(
            f"noise must be (B, C, *{tuple(full)}) to match the plan's full grid, got "
            f"{tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise)}"
        )
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf")
    wd = torch.float64 if noise.dtype == torch.float64 else torch.float32
    noise = noise.to(dtype=wd, device=device if device is not None else noise.device)
    needs_gen = (not coupled and len(plan.stages) > 1) or not plan.carries_state or sv.stochastic
    if needs_gen and generator is None:
        raise ValueError(
            "this plan/solver draws fresh noise (fresh-noise mode, x0 transitions or a "
            "stochastic solver): pass generator="
        )
    basis = coupling_basis(plan.transition)

    first = plan.stages[0].grid
    x = noise if first == tuple(full) else project_noise(noise, first, basis)
    total = plan.steps
    bar = tqdm(total=total, disable=not progress, desc="sampling", leave=False)
    index = 0
    try:
        for i, stage in enumerate(plan.stages):
            if i > 0:
                x = _transition(denoiser, plan, i, x, noise, generator, cond, coupled, basis)
            state = None
            for j in range(stage.steps):
                t, t_next = stage.times[j], stage.times[j + 1]
                step_noise = (
                    make_noise(x.shape, generator, dtype=wd, device=x.device)
                    if sv.stochastic else None
                )
                kwargs = {"eta": eta} if sv.stochastic else {}
                x, state, x0 = sv.step(denoiser, x, t, t_next, cond=cond, state=state,
                                       noise=step_noise, **kwargs)
                if callback is not None:
                    out = callback({"stage": i, "step": j, "index": index, "t": t,
                                    "t_next": t_next, "x": x, "x0_hat": x0, "grid": stage.grid})
                    if isinstance(out, torch.Tensor):
                        if out.shape != x.shape:
                            raise ValueError("a callback may only return a tensor of x's shape")
                        x = out.to(wd)
                index += 1
                bar.update(1)
    finally:
        bar.close()
    return x


def _transition(denoiser, plan: Plan, i: int, x, noise, generator, cond, coupled, basis):
    """Move the state from stage ``i - 1`` to stage ``i``."""
    prev, nxt = plan.stages[i - 1], plan.stages[i]
    t_end = prev.times[-1]
    grows = any(b > a for a, b in zip(prev.grid, nxt.grid, strict=True))
    kind = plan.transition
    if kind.startswith("x0"):
        if t_end > 0:
            tt = torch.full((x.shape[0],), t_end, dtype=x.dtype, device=x.device)
            x0 = denoiser(x, tt, **(cond or {})).to(x.dtype)
        else:
            x0 = x
        return x0_renoise(x0, nxt.times[0], nxt.grid, generator=generator, mode=kind[3:])
    nz = None
    if grows and coupled:
        nz = noise if nxt.grid == tuple(noise.shape[2:]) else project_noise(noise, nxt.grid, basis)
    if kind == "pyramid":
        x_new, t_new = pyramid_renoise(x, t_end, nxt.grid, noise=nz, generator=generator)
    else:
        x_new, t_new = resize(x, t_end, nxt.grid, noise=nz, generator=generator, basis=kind)
    if abs(t_new - nxt.times[0]) > 1e-6:
        raise ValueError(
            f"stage {i} starts at t={nxt.times[0]} but the transition gives t={t_new}; rebuild "
            "the plan with the constructors in specdiff.plans"
        )
    return x_new
