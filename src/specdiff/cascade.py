"""Tuning-free Self-Cascade (arXiv 2402.10491, ECCV 2024; methods.md section 4).

A model trained at one size (the *pivot*, e.g. 128^2 for the embedded models) generates
larger images without training: sample at the pivot size, upsample the clean result,
re-noise it to an intermediate time with fresh noise and denoise the rest of the way at
the next size with the same model, cyclically per scale (128 -> 256 -> 512). Each step up
is an :class:`~specdiff.transitions.X0Renoise` transition (bicubic, as the official SDXL
code upsamples its latents), so a self-cascade is an ordinary :class:`~specdiff.plans.Plan`
that :func:`specdiff.sample` walks.

Re-noise time of a step up from grid ``n`` to grid ``N``:

* ``"spectral"`` (this project's criterion): the pivot lacks the frequencies at and above
  its Nyquist ``w = n / 2`` cycles per image; the strongest of them (the power law
  decreases) stops being noise-dominated at SPD's activation time (paper Eq. 9-10)
  ``t* = 1 / (1 + sqrt(delta / (P (1 + P - delta))))`` with ``P = A (n/2)^-beta`` the data
  power on the ``N`` grid. Re-noising to ``t*`` gives the model back exactly the band it
  has to invent, no more: the same time SPD hands a coarse stage over to a finer one
  (:func:`specdiff.plans.spd_switch_times`).
* a fixed strength ``s`` (the official code's ``strength = 0.7``): re-noise to ``t = s``.

Times: each stage walks its own grid's schedule (the model's resolution-shifted time grid
for that size), the pivot from 1 and each later stage from its re-noise time, with the
steps scaled to the time span it covers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from .plans import Plan, PlanMeta, get_spectrum, spd_switch_times, staged_plan
from .transitions import X0Renoise

__all__ = ["OFFICIAL_STRENGTH", "cascade_grids", "cascade_renoise_times", "self_cascade_plan"]

#: the official Self-Cascade SDXL code's re-noise strength (``strength = 0.7``)
OFFICIAL_STRENGTH = 0.7


def cascade_grids(pivot: Sequence[int], target: Sequence[int]) -> list[tuple[int, ...]]:
    """The grids of a self-cascade from ``pivot`` to ``target`` (the last two axes): doubling
    while that stays within the target, the last step up by the integer factor left.

    Every side of ``target`` must be the same integer multiple (>= 2) of ``pivot``'s, e.g.
    ``(128, 128) -> (512, 512)`` gives 128, 256, 512 and ``(128, 128) -> (384, 384)`` gives
    128, 384; a ``ValueError`` says what works otherwise.
    """
    p, t = tuple(int(v) for v in pivot), tuple(int(v) for v in target)
    if len(p) != len(t) or len(p) < 2 or min(p) < 1:
        raise ValueError(f"pivot {p} and target {t} must be grids of the same rank (>= 2 axes)")
    lead_p, lead_t = p[:-2], t[:-2]
    if lead_p != lead_t:
        raise ValueError(f"a cascade changes only the last two axes; got {p} -> {t}")
    factors = {tt / pp for pp, tt in zip(p[-2:], t[-2:], strict=True)}
    f = factors.pop() if len(factors) == 1 else None
    if f is None or f != int(f) or f < 2:
        raise ValueError(f"the target {t[-2]}x{t[-1]} must be the pivot {p[-2]}x{p[-1]} times "
                         "one integer factor >= 2 on both sides (the cascade's scales are "
                         f"increasing integers), e.g. {2 * p[-2]}x{2 * p[-1]}")
    f = int(f)
    grids, k = [p], 1
    while k * 2 <= f and f % (k * 2) == 0:
        k *= 2
        grids.append((*lead_p, p[-2] * k, p[-1] * k))
    if k != f:
        grids.append(t)
    return grids


def cascade_renoise_times(grids: Sequence[Sequence[int]], *, spectrum_at: Callable | None = None,
                          delta: float | None = None, strength: float | None = None
                          ) -> list[float]:
    """One re-noise time per step up between consecutive ``grids``.

    Give either ``delta`` with ``spectrum_at(grid) -> spectrum`` (a name, ``(A, beta)`` or a
    :class:`~specdiff.plans.PowerSpectrum` of the data *on that grid*) for the spectral
    criterion, or ``strength`` in (0, 1) for the fixed one (module docstring).
    """
    if (delta is None) == (strength is None):
        raise ValueError("give either delta (the spectral re-noise time) or strength (a fixed "
                         f"one, officially {OFFICIAL_STRENGTH}), not both or neither")
    steps_up = len(grids) - 1
    if steps_up < 1:
        raise ValueError("a cascade needs at least two grids")
    if strength is not None:
        s = float(strength)
        if not 0 < s < 1:
            raise ValueError(f"strength must lie in (0, 1), e.g. {OFFICIAL_STRENGTH}; got {strength}")
        return [s] * steps_up
    if spectrum_at is None:
        raise ValueError("the spectral re-noise time needs spectrum_at(grid)")
    out = []
    for lo, hi in zip(grids, grids[1:]):
        scale = lo[-1] / hi[-1]
        out.append(spd_switch_times(hi, (scale, 1.0), get_spectrum(spectrum_at(hi)), delta)[0])
    return out


def self_cascade_plan(times_at: Callable, grids: Sequence[Sequence[int]],
                      renoise: Sequence[float], *, steps: int, up: str = "bicubic") -> Plan:
    """The self-cascade plan over ``grids`` (pivot first) with one re-noise time per step up.

    ``times_at(grid)``: the model's full time grid for ``grid`` with ``steps`` steps (its
    resolution shift); the pivot stage walks it from its first time, stage ``k`` from
    ``renoise[k-1]``
    in ``round(steps * renoise[k-1])`` steps (at least 1).
    """
    grids = [tuple(int(v) for v in g) for g in grids]
    ren = [float(v) for v in renoise]
    if len(ren) != len(grids) - 1 or any(not 0 < v < 1 for v in ren):
        raise ValueError(f"need {len(grids) - 1} re-noise times in (0, 1), got {tuple(renoise)}")
    profiles = [times_at(g) for g in grids]
    # the pivot starts where its grid does: 1 for flow models, below 1 for a VP schedule
    # (SDXL's first sigma is finite)
    spans = [(float(profiles[0][0]), 0.0)] + [(v, 0.0) for v in ren]
    n_steps = [int(steps)] + [max(1, int(round(steps * v))) for v in ren]
    sides = "/".join(str(g[-1]) for g in grids)
    name = f"self-cascade {sides} renoise {'/'.join(f'{v:.3g}' for v in ren)}"
    scales = tuple(g[-1] / grids[-1][-1] for g in grids)
    return staged_plan(grids, spans, n_steps, profiles, X0Renoise(up), name,
                       PlanMeta(family="cascade", scales=scales, renoise_at=tuple(ren)))
