"""The plan search: the cheapest plan at a target quality (DESIGN.md section 4, "Beyond SPD").

The exact Gaussian testbed prices any dct-transition plan's quality in closed
form (W2 to the true field), so the plan can be searched for directly:

    minimise  plan.cost(cost_model, solver)   subject to   W2(plan) <= target

over the number of stages, the stage scales, the switch times and the steps
(and their spacing) after every switch. Switch times are parameterised by the
SPD tolerance ``delta`` of each transition (SPD Eq. 9-10), so SPD's closed form
is one point of the search space; each stage is respaced along the model's
own time-grid profile (or an SD3-shift profile), which removes the long step
that SPD's keep rule leaves after each switch.

Search: for every (scales, deltas) candidate, the step counts are scaled
together by bisection to the cheapest feasible allocation, then improved by
greedy one-step moves (add where W2 falls most per unit cost, remove where
it rises least). The best few candidates are refined over the spacing
profile and neighbouring deltas.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..plans import (
    Plan,
    PlanMeta,
    activation_time,
    full_plan,
    get_spectrum,
    stage_grids,
    staged_plan,
)
from ..solvers import get_solver
from ..testbeds import GaussianField
from ..transitions import Spectral

DEFAULT_SCALES = (0.25, 0.375, 0.5, 0.625, 0.75)
DEFAULT_DELTAS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Candidate:
    plan: Plan
    w2: float
    kl: float
    cost: float


def _field(testbed, grid):
    if isinstance(testbed, GaussianField):
        if grid is not None and tuple(grid) != testbed.grid:
            raise ValueError(f"grid {grid} differs from the testbed's {testbed.grid}")
        return testbed
    if grid is None:
        raise ValueError("pass grid= when giving a spectrum instead of a GaussianField")
    spec = get_spectrum(testbed)
    return GaussianField(spec.A, spec.beta, grid)


def _switch_times(field, grids, deltas, axes):
    out = []
    for g, d in zip(grids[:-1], deltas, strict=True):
        w = min(g[-axes:]) / 2.0
        out.append(activation_time(field.spectrum(w), d))
    return out


def _build(grids, tstars, steps, times, profiles):
    spans = [(float(times[0]), tstars[0] if tstars else 0.0)]
    spans += [(None, t) for t in tstars[1:]]
    if tstars:
        spans.append((None, 0.0))
    return staged_plan(grids, spans, steps, profiles, Spectral("dct"), "optimal")


def _base_alloc(grids, tstars, times, n_total):
    """Steps per stage proportional to the span each covers on the reference grid."""
    ref = torch.as_tensor(times, dtype=torch.float64)
    n = ref.numel() - 1

    def pos(t):  # fractional index of t on the reference grid
        r = ref.flip(0)
        j = int(torch.searchsorted(r, torch.tensor(t, dtype=torch.float64)).clamp(1, n))
        w = (t - r[j - 1]) / (r[j] - r[j - 1])
        return float(n - (j - 1) - w)

    bounds = [0.0] + [pos(t) for t in tstars] + [float(n)]
    return [max(1.0, (b - a) * n_total / n) for a, b in zip(bounds, bounds[1:])]


class _Evaluator:
    def __init__(self, field, solver, cost_model, times):
        self.field, self.solver, self.cost_model, self.times = field, solver, cost_model, times
        self.cache: dict = {}

    def __call__(self, grids, tstars, steps, profiles) -> Candidate | None:
        key = (tuple(grids), tuple(round(t, 12) for t in tstars), tuple(steps), tuple(map(str, profiles)))
        if key not in self.cache:
            try:
                plan = _build(grids, tstars, steps, self.times, profiles)
            except ValueError:
                self.cache[key] = None
            else:
                m = self.field.metrics(plan, self.solver)
                self.cache[key] = Candidate(plan, m["w2"], m["kl"],
                                            plan.cost(self.cost_model, self.solver))
        return self.cache[key]


def _allocate(ev, grids, tstars, profiles, base, ok, max_cost):
    """Cheapest step allocation found for fixed grids and switch times (or None).

    ``ok(candidate)`` says whether a candidate meets the quality target."""
    def at(f):
        return [max(1, int(round(b * f))) for b in base]

    lo, hi = 0.05, 1.0
    c = ev(grids, tstars, at(hi), profiles)
    while c is not None and not ok(c) and hi < 8:
        hi *= 1.6
        c = ev(grids, tstars, at(hi), profiles)
    if c is None or not ok(c):
        return None
    for _ in range(7):
        mid = 0.5 * (lo + hi)
        cm = ev(grids, tstars, at(mid), profiles)
        if cm is not None and ok(cm):
            hi = mid
        else:
            lo = mid
    steps = at(hi)
    best = ev(grids, tstars, steps, profiles)
    # greedy local moves (first improvement, bounded): drop a step, or move one
    # step between stages, while the target still holds
    budget = 12 * len(steps) ** 2
    improved = True
    while improved and budget > 0:
        improved = False
        moves = []
        for i in range(len(steps)):
            if steps[i] > 1:
                moves.append([s - (k == i) for k, s in enumerate(steps)])
        for i, j in itertools.permutations(range(len(steps)), 2):
            if steps[i] > 1:
                moves.append([s - (k == i) + (k == j) for k, s in enumerate(steps)])
        for s2 in moves:
            budget -= 1
            c2 = ev(grids, tstars, s2, profiles)
            if c2 is not None and ok(c2) and c2.cost < best.cost - 1e-12:
                best, steps, improved = c2, s2, True
                break
    if best.cost > max_cost:
        return None
    return best


def optimal_plan(testbed, times, *, grid: Sequence[int] | None = None, solver="euler",
                 target_w2: float | None = None, tolerance: float = 0.0,
                 quality: str = "w2+kl",
                 cost_model="tokens", max_stages: int = 3,
                 scales: Sequence[float] = DEFAULT_SCALES,
                 deltas: Sequence[float] = DEFAULT_DELTAS,
                 profiles: Sequence = (None, 1.0, 3.0), axes: int = 2, multiple: int = 1,
                 refine: int = 3, progress: bool = False, return_candidates: bool = False):
    """Cheapest plan whose exact W2 on the testbed is at most the target.

    Args:
        testbed: a :class:`~specdiff.testbeds.GaussianField`, or a spectrum
            (name, :class:`~specdiff.plans.PowerSpectrum` or ``(A, beta)``) with ``grid=``.
        times: the model's full-resolution time grid; its W2 with ``solver`` is
            the default target and its profile spaces the steps.
        target_w2: quality to reach (RMS W2 per element); default: the full
            grid's W2 times ``1 + tolerance``.
        quality: ``"w2+kl"`` (default: the W2 target and the exact KL at most
            the baseline's times ``1 + tolerance``) or ``"w2"`` alone. W2 is
            dominated by the few high-power low frequencies; KL weighs every
            frequency by its relative error, so the KL constraint stops the
            search from trading away high-frequency fidelity for W2.
        cost_model: see :meth:`Plan.cost`.
        max_stages: 1 to 3 stages are searched.
        scales, deltas: candidate coarse scales and per-transition SPD tolerances.
        profiles: spacing profiles tried in refinement (``None`` = the model's
            grid, a number = SD3 shift profile).

    Returns:
        The best :class:`Plan` (``plan.meta`` holds ``w2``, ``cost``, ``target``,
        ``deltas``), or with ``return_candidates=True`` also the list of every
        feasible :class:`Candidate` found (for a Pareto plot). Raises
        ``ValueError`` when nothing cheaper than the baseline reaches the target.
    """
    t = torch.as_tensor(times, dtype=torch.float64)
    field = _field(testbed, grid)
    grid = field.grid
    get_solver(solver)
    if not 1 <= max_stages <= 3:
        raise ValueError(f"max_stages must be 1, 2 or 3, got {max_stages}")
    if quality not in ("w2", "w2+kl"):
        raise ValueError(f"quality must be 'w2' or 'w2+kl', got {quality!r}")
    base_plan = full_plan(t, grid)
    base_m = field.metrics(base_plan, solver)
    base_w2 = base_m["w2"]
    target = target_w2 if target_w2 is not None else base_w2 * (1 + tolerance)
    if not target > 0:
        raise ValueError(f"target W2 must be positive, got {target}")
    target_kl = base_m["kl"] * (1 + tolerance) if quality == "w2+kl" else math.inf
    search = _Search(field, _Evaluator(field, solver, cost_model, t), t, target, target_kl,
                     base_plan.cost(cost_model, solver) * 1.5, axes)

    found = []
    for grids, ds in tqdm(_jobs(grid, scales, deltas, max_stages, multiple, axes),
                          disable=not progress, desc="plan search", leave=False):
        c = search.run(grids, ds, [t] * len(grids))
        if c is not None:
            found.append((c, grids, ds))
    if not found:
        raise ValueError(
            f"no plan reached W2 <= {target:.4g} below 1.5x the baseline's cost; raise "
            "target_w2/tolerance or allow more stages/steps"
        )
    found.sort(key=lambda r: r[0].cost)
    # refine the best few: spacing profile, then each transition's delta by
    # coordinate descent over neighbouring values
    dgrid = sorted(set(deltas) | {d * f for d in deltas for f in (0.7, 1.4)})
    for c, grids, ds in list(found[:refine]):
        found.append(search.refine(c, grids, ds, profiles, dgrid))
    found.sort(key=lambda r: r[0].cost)
    best, grids, ds = found[0]
    scale_of = tuple(min(g[-axes:]) / min(grid[-axes:]) for g in grids)
    meta = PlanMeta(family="optimal", w2=best.w2, kl=best.kl, cost=best.cost, target=target,
                    quality=quality, baseline_w2=base_w2, baseline_kl=base_m["kl"],
                    deltas=tuple(ds), solver=get_solver(solver).name, scales=scale_of)
    plan = Plan(best.plan.stages, None, "optimal " + "/".join(f"{v:g}" for v in scale_of), meta)
    if return_candidates:
        return plan, [r[0] for r in found]
    return plan


def _jobs(grid, scales, deltas, max_stages, multiple, axes) -> list:
    """``(stage grids, one delta per switch)`` of every candidate: 1 stage, then each coarse
    scale, then each pair of them (up to ``max_stages``), each with every delta."""
    chains = [(1.0,)]
    sc = sorted(float(s) for s in scales)
    if max_stages >= 2:
        chains += [(s, 1.0) for s in sc]
    if max_stages >= 3:
        chains += [(a, b, 1.0) for a, b in itertools.combinations(sc, 2)]
    jobs = []
    for ch in chains:
        try:
            grids = stage_grids(grid, ch, multiple=multiple, axes=axes)
        except ValueError:  # a chain this grid cannot hold (two scales round to one grid)
            continue
        k = len(grids) - 1
        for d in ([()] if k == 0 else [(dd,) * k for dd in deltas]):
            jobs.append((grids, tuple(d)))
    return jobs


class _Search:
    """One search's fixed parts: the field, the evaluator, the targets and the cost cap."""

    def __init__(self, field, ev, times, target, target_kl, max_cost, axes):
        self.field, self.ev, self.t, self.axes = field, ev, times, axes
        self.target, self.target_kl, self.max_cost = target, target_kl, max_cost
        self.n_total = len(times) - 1

    def ok(self, c: Candidate) -> bool:
        return c.w2 <= self.target and c.kl <= self.target_kl

    def run(self, grids, dvec, prof) -> Candidate | None:
        """The cheapest allocation for these grids, deltas and spacing profiles (or None)."""
        tstars = _switch_times(self.field, grids, dvec, self.axes)
        if any(b >= a for a, b in zip(tstars, tstars[1:])):
            return None  # switch times out of order: no such plan
        base = _base_alloc(grids, tstars, self.t, self.n_total)
        return _allocate(self.ev, grids, tstars, list(prof), base, self.ok, self.max_cost)

    def refine(self, c, grids, ds, profiles, dgrid):
        """Try each spacing profile, then move each delta to its neighbours on ``dgrid``."""
        best, best_d, best_p = c, tuple(ds), tuple(self.t for _ in grids)
        for p in profiles:
            prof = tuple((self.t if p is None else p) for _ in grids)
            c2 = self.run(grids, best_d, prof)
            if c2 is not None and c2.cost < best.cost:
                best, best_p = c2, prof
        for k in range(len(best_d)):
            for dk in _neighbours_1d(best_d[k], dgrid):
                dvec = best_d[:k] + (dk,) + best_d[k + 1:]
                c2 = self.run(grids, dvec, best_p)
                if c2 is not None and c2.cost < best.cost:
                    best, best_d = c2, dvec
        return best, grids, best_d


def _neighbours_1d(d, dgrid):
    i = min(range(len(dgrid)), key=lambda j: abs(math.log(dgrid[j] / d)))
    return [dgrid[j] for j in (i - 1, i + 1) if 0 <= j < len(dgrid)]
