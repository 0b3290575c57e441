"""The methods compared side by side, each defined once (constructor call and constants).

Two consumers put them next to each other: the model benchmark
(:func:`specdiff.analysis.bench.build_plans`, sampled on a network) and the
exact testbed comparison (:func:`specdiff.analysis.testbed.compare_on_testbed`,
priced in closed form). Both build every plan here, so a row called
"bottleneck" or "cascade" is the same plan family with the same constants in
both tables.

One thing may differ between the two: the transition. The Gaussian testbed's
closed form (:meth:`specdiff.testbeds.GaussianField.output_variance`) needs
transitions that act diagonally on DCT coefficients, ``Spectral("dct")`` and
``X0Renoise("dct")``. A method whose model transition is not one of them (the
x0 cascade re-noises a bicubic upsample) names a DCT stand-in
(:attr:`Method.exact_transition`), used when the :class:`Setting` says
``exact=True``. Every other method uses the same transition in both places.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..plans import (
    Plan,
    PowerSpectrum,
    bottleneck_plan,
    cascade_plan,
    full_plan,
    pyramidal_plan,
    spd_plan,
    stage_grids,
)
from ..testbeds import CLOSED_FORM_TRANSITIONS
from ..transitions import Spectral, Transition, X0Renoise
from .names import SPD_DELTAS

__all__ = ["Method", "METHODS", "ALL_METHODS", "Setting", "CLOSED_FORM_TRANSITIONS",
           "has_closed_form", "SPD_SCALES", "SPD_DELTAS", "CONTINUATIONS", "PYRAMIDAL_SCALES",
           "BOTTLENECK_LOW_SCALE", "BOTTLENECK_FRACTIONS", "CASCADE_SCALES", "CASCADE_RENOISE",
           "OPTIMAL_SCALES", "baseline", "spd", "pyramidal", "bottleneck", "cascade", "optimal",
           "optimal_scales", "matched_steps", "matched"]

# --- the constants (one set, for the benchmark and the testbed) -------------

#: stage scales of the two SPD variants (the paper's 2 stages, and 3)
SPD_SCALES = {"spd": (0.5, 1.0), "spd3": (0.25, 0.5, 1.0)}
#: what SPD does after a switch: the paper's rule, and respaced remaining steps
CONTINUATIONS = ("keep", "respace")
#: Pyramid Flow's three equal time windows (arXiv 2410.05954)
PYRAMIDAL_SCALES = (0.25, 0.5, 1.0)
#: bottleneck sampling (arXiv 2503.18940): full, then half resolution, then full again; the
#: low stage covers 10% to 80% of the steps (the constructor's default)
BOTTLENECK_LOW_SCALE = 0.5
BOTTLENECK_FRACTIONS = (0.1, 0.8)
#: x0 cascade (hires-fix / self-cascade): a half-size sample, re-noised to 0.7 at full size
#: (self-cascade's SDXL default strength); half the steps on each grid
CASCADE_SCALES = (0.5, 1.0)
CASCADE_RENOISE = 0.7
#: coarse scales the plan search may choose from
OPTIMAL_SCALES = (0.25, 0.375, 0.5, 0.625, 0.75)



def has_closed_form(plan: Plan) -> bool:
    """Whether the Gaussian testbed prices ``plan``'s output law exactly (every transition
    is in :data:`CLOSED_FORM_TRANSITIONS`; a one-stage plan always is)."""
    return all(tr in CLOSED_FORM_TRANSITIONS for tr in plan.transitions)


@dataclass(frozen=True)
class Method:
    """One method of the side-by-side tables.

    ``transition``: the switch it makes when run on a model (``None``: one grid
    only). ``exact_transition``: the DCT-diagonal stand-in on the Gaussian
    testbed, when ``transition`` has no closed form there (else the same).
    """

    key: str
    summary: str
    transition: Transition | None = None
    exact_transition: Transition | None = None

    def __post_init__(self):
        if self.exact_transition is None:
            object.__setattr__(self, "exact_transition", self.transition)
        if self.exact_transition is not None and self.exact_transition not in CLOSED_FORM_TRANSITIONS:
            raise ValueError(f"{self.key}: the testbed stand-in {self.exact_transition!r} has no "
                             "closed form; use Spectral('dct') or X0Renoise('dct')")

    @property
    def closed_form(self) -> bool:
        """Its model transition itself has a closed-form law on the Gaussian testbed."""
        return self.transition is None or self.transition in CLOSED_FORM_TRANSITIONS

    def transition_for(self, setting: Setting) -> Transition | None:
        return self.exact_transition if setting.exact else self.transition


METHODS: dict[str, Method] = {m.key: m for m in (
    Method("baseline", "full resolution, the model's own time grid"),
    Method("matched", "fewer full-resolution steps at a progressive plan's cost"),
    Method("spd", "SPD, scales 0.5,1, over the delta sweep", Spectral("dct")),
    Method("spd3", "SPD, scales 0.25,0.5,1, over the delta sweep", Spectral("dct")),
    Method("optimal", "the plan search on the Gaussian testbed with the data's spectrum",
           Spectral("dct")),
    # Pyramid Flow's own jump is Pyramid() (block noise, gamma = 1/3); its law equals the
    # dct expansion's, and Pyramid() cannot reach the quarter-size first window from one
    # seed-coupled noise, so the windows are joined by the dct resize
    Method("pyramidal", "Pyramid-Flow windows 0.25,0.5,1, equal time windows",
           Spectral("dct")),
    Method("bottleneck", "1 -> 0.5 -> 1 (bottleneck sampling)", Spectral("dct")),
    # the cascade upsamples its clean half-size sample bicubically on a model; the testbed
    # prices the band-limited (dct) upsample, its closed-form stand-in
    Method("cascade", "x0 cascade 0.5 -> 1: sample, upsample, re-noise, denoise",
           X0Renoise("bicubic"), X0Renoise("dct")),
)}
#: every method key, in table order
ALL_METHODS = tuple(METHODS)


@dataclass(frozen=True)
class Setting:
    """Where the methods are built: the model's time grids, the full grid, the data spectrum.

    ``times_fn(n)``: the model's own ``n``-step full-resolution time grid
    (descending to 0); ``steps``: the baseline's step count; ``multiple``: stage
    grids are rounded to it (a patch size); ``exact``: use each method's
    closed-form transition (for the Gaussian testbed).
    """

    times_fn: Callable[[int], torch.Tensor]
    steps: int
    grid: tuple[int, ...]
    spectrum: PowerSpectrum
    multiple: int = 1
    exact: bool = False

    def __post_init__(self):
        if int(self.steps) != self.steps or self.steps < 2:
            raise ValueError(f"steps must be an integer >= 2, got {self.steps}")
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))

    @functools.cached_property
    def times(self) -> torch.Tensor:
        """The baseline's time grid, ``times_fn(steps)``."""
        return self.times_fn(self.steps)


def _transition(key: str, s: Setting) -> Transition:
    return METHODS[key].transition_for(s)


# --- constructors -------------------------------------------------------------


def baseline(s: Setting) -> Plan:
    """Full resolution with the model's own ``steps``-step grid."""
    return full_plan(s.times, s.grid).with_name(f"full {s.steps} steps (baseline)")


def spd(s: Setting, key: str, delta: float, continuation: str = "keep") -> Plan:
    """SPD (paper Eq. 9-10) with the scales of ``key`` (``"spd"`` or ``"spd3"``)."""
    if key not in SPD_SCALES:
        raise ValueError(f"SPD variant must be one of {sorted(SPD_SCALES)}, got {key!r}")
    return spd_plan(s.times, s.grid, SPD_SCALES[key], spectrum=s.spectrum, delta=delta,
                    continuation=continuation, transition=_transition(key, s),
                    multiple=s.multiple)


def pyramidal(s: Setting) -> Plan:
    """Pyramid-Flow windows: a third of the steps on each of the first two grids, the
    rest on the full grid, each window spaced like the model's grid."""
    third = s.steps // 3
    return pyramidal_plan(s.grid, PYRAMIDAL_SCALES, (third, third, s.steps - 2 * third),
                          profile=s.times, transition=_transition("pyramidal", s),
                          multiple=s.multiple)


def bottleneck(s: Setting) -> Plan:
    """Bottleneck sampling: 1 -> :data:`BOTTLENECK_LOW_SCALE` -> 1 at :data:`BOTTLENECK_FRACTIONS`."""
    return bottleneck_plan(s.times, s.grid, low_scale=BOTTLENECK_LOW_SCALE,
                           fractions=BOTTLENECK_FRACTIONS, transition=_transition("bottleneck", s),
                           multiple=s.multiple)


def cascade(s: Setting) -> Plan:
    """x0 cascade: a complete :data:`CASCADE_SCALES` [0] sample, upsampled, re-noised to
    :data:`CASCADE_RENOISE`, denoised at full size; half the steps on each grid."""
    half = s.steps // 2
    return cascade_plan(s.times, s.grid, CASCADE_SCALES, renoise_at=(CASCADE_RENOISE,),
                        steps=(half, s.steps - half), up=_transition("cascade", s).up,
                        multiple=s.multiple)


def optimal_scales(s: Setting, scales: Sequence[float] = OPTIMAL_SCALES) -> tuple[float, ...]:
    """The candidate coarse scales whose two-stage grids exist on ``s.grid`` (with ``multiple``)."""
    out = []
    for v in scales:
        try:
            stage_grids(s.grid, (v, 1.0), multiple=s.multiple)
        except ValueError:
            continue
        out.append(float(v))
    return tuple(out)


def optimal(s: Setting, *, solver: str = "euler", cost_model="tokens", tolerance: float = 0.0,
            max_stages: int = 3, scales: Sequence[float] = OPTIMAL_SCALES,
            label: str = "optimal", testbed=None, progress: bool = False, **search) -> Plan:
    """:func:`specdiff.analysis.optimize.optimal_plan` for this setting, named
    ``"{label} {scales}"`` (e.g. ``optimal 0.25/0.625/1``).

    ``testbed``: the :class:`~specdiff.testbeds.GaussianField` to search on
    (default: one with ``s.spectrum`` on ``s.grid``); ``search``: further
    ``optimal_plan`` arguments (``deltas``, ``profiles``, ``refine``, ...).
    """
    from .optimize import optimal_plan

    p = optimal_plan(s.spectrum if testbed is None else testbed, s.times, grid=s.grid,
                     solver=solver, tolerance=tolerance, cost_model=cost_model,
                     max_stages=max_stages, scales=optimal_scales(s, scales),
                     multiple=s.multiple, progress=progress, **search)
    return p.with_name(f"{label} {'/'.join(f'{v:g}' for v in p.meta.scales)}")


def matched_steps(s: Setting, cost: float, *, solver: str = "euler", cost_model="tokens") -> int:
    """The full-resolution step count whose cost (with ``solver``) is closest to ``cost``
    (in units of one full-resolution evaluation, :meth:`Plan.cost`)."""
    def price(n):
        return full_plan(s.times_fn(n), s.grid).cost(cost_model, solver)

    per_step = price(2) - price(1)
    guess = max(1, round(cost / per_step))
    return min(range(max(1, guess - 1), guess + 2), key=lambda n: abs(price(n) - cost))


def matched(s: Setting, cost: float, *, solver: str = "euler", cost_model="tokens") -> Plan:
    """Fewer full-resolution steps at ``cost``: the plain-solver answer to a progressive plan."""
    n = matched_steps(s, cost, solver=solver, cost_model=cost_model)
    return full_plan(s.times_fn(n), s.grid).with_name(f"full {n} steps")
