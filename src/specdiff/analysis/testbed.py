"""Exact side-by-side comparison of plans on the Gaussian testbed (``specdiff testbed``).

Everything here is closed form (:meth:`GaussianField.w2`): no sampling, no
timing. Quality is the exact W2 (RMS per element) between the plan's output
law and the true field; cost is model evaluations weighted by a cost model,
relative to the full-resolution baseline. The plans are the methods of
:mod:`specdiff.analysis.methods`, built with their closed-form transitions.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from ..fileio import atomic_write_text, save_figure
from ..plans import Plan, PowerSpectrum, flow_times, flux_times, full_plan, spd_plan
from ..testbeds import GaussianField
from . import methods as M
from .schedule import check_deltas, check_steps

__all__ = ["Row", "compare_on_testbed", "long_step_study", "markdown_table", "study_table",
           "save_results", "pareto_plot", "stage_summary", "times_for_schedule", "run_testbed"]


@dataclass(frozen=True)
class Row:
    solver: str
    family: str
    plan: str
    stages: str
    evaluations: int
    cost_ratio: float
    w2: float
    w2_ratio: float
    kl: float


def stage_summary(plan: Plan, solver: str = "euler") -> str:
    """``"64^2x18 > 128^2x32"``: each stage's grid and model evaluations."""
    ev = plan.evaluations(solver)
    parts = []
    for st, n in zip(plan.stages, ev, strict=True):
        g = st.grid
        side = f"{g[-1]}^2" if len(g) == 2 and g[0] == g[1] else "x".join(map(str, g))
        parts.append(f"{side}x{n}")
    return " > ".join(parts)


def _row(field, plan, solver, family, base_cost, base_w2, cost_model) -> Row:
    w2 = field.w2(plan, solver)
    return Row(solver, family, plan.name, stage_summary(plan, solver), sum(plan.evaluations(solver)),
               plan.cost(cost_model, solver) / base_cost, w2, w2 / base_w2, field.kl(plan, solver))


def _fixed_plans(s: M.Setting, deltas) -> list[tuple[str, str, Plan]]:
    """``(method key, family, plan)`` of the methods that do not depend on the solver."""
    out = []
    for d in deltas:
        for key in M.SPD_SCALES:
            for cont in M.CONTINUATIONS:
                try:
                    out.append((key, "spd " + cont, M.spd(s, key, d, cont)))
                except ValueError:  # a delta/grid this step count cannot express
                    continue
    out += [("pyramidal", "pyramidal", M.pyramidal(s)), ("bottleneck", "bottleneck", M.bottleneck(s)),
            ("cascade", "cascade", M.cascade(s))]
    return out


def _optimal_plans(s, field, solver, cost_model, kwargs, progress) -> list[tuple[str, str, Plan]]:
    out = []
    for label, ms in (("optimal (1 stage: spacing only)", 1), ("optimal", 3)):
        try:
            p = M.optimal(s, solver=solver, cost_model=cost_model, max_stages=ms, label=label,
                          testbed=field, progress=progress, **kwargs)
        except ValueError as e:  # nothing met the target: say so, keep the other rows
            print(f"[testbed] {label} ({solver}): {e}")
            continue
        out.append(("optimal", label, p))
    return out


def compare_on_testbed(
    field: GaussianField,
    times_fn: Callable[[int], torch.Tensor],
    steps: int = 50,
    *,
    solvers: Sequence[str] = ("euler", "heun"),
    deltas: Sequence[float] = M.SPD_DELTAS,
    cost_model="tokens",
    optimal: bool = True,
    optimal_kwargs: dict | None = None,
    multiple: int = 1,
    progress: bool = False,
) -> list[Row]:
    """Baseline, SPD (keep/respace, 2 and 3 stages), Pyramidal Flow, bottleneck, x0
    cascade, ``optimal_plan`` and fewer steps at the cost of the two-stage SPD and
    ``optimal`` plans, per solver.

    ``times_fn(n)`` builds the model's own ``n``-step full-resolution grid. The
    plans come from :mod:`specdiff.analysis.methods` with their closed-form
    transitions (the cascade's upsample is ``X0Renoise("dct")`` here).
    """
    steps = check_steps(steps)
    deltas = check_deltas(deltas, "deltas")
    s = M.Setting(times_fn, steps, field.grid, field.spectrum, multiple, exact=True)
    fixed = _fixed_plans(s, deltas)
    rows: list[Row] = []
    for solver in solvers:
        base = M.baseline(s)
        base_cost = base.cost(cost_model, solver)
        base_w2 = field.w2(base, solver)
        rows.append(_row(field, base, solver, "baseline", base_cost, base_w2, cost_model))
        plans = fixed + (_optimal_plans(s, field, solver, cost_model, dict(optimal_kwargs or {}),
                                        progress) if optimal else [])
        matched: dict[int, Plan] = {}
        for key, family, p in plans:
            rows.append(_row(field, p, solver, family, base_cost, base_w2, cost_model))
            # the plain solver at the cost of SPD's own rule and of the searched plan
            if (key == "spd" and family == "spd keep") or family == "optimal":
                n = M.matched_steps(s, p.cost(cost_model, solver), solver=solver,
                                    cost_model=cost_model)
                matched.setdefault(n, M.matched(s, p.cost(cost_model, solver), solver=solver,
                                                cost_model=cost_model))
        for n in sorted(matched, reverse=True):
            rows.append(_row(field, matched[n], solver, "fewer steps", base_cost, base_w2, cost_model))
    return rows


def long_step_study(field: GaussianField, times_fn, step_counts=(50, 100, 200), *,
                    scales=(0.5, 1.0), delta=0.01, solver="euler"):
    """W2 of SPD keep vs respace vs baseline as steps grow: the keep rule's one
    long step after the switch does not shrink, so its W2 plateaus."""
    out = []
    for n in step_counts:
        t = times_fn(n)
        b = field.w2(full_plan(t, field.grid), solver)
        k = field.w2(spd_plan(t, field.grid, scales, spectrum=field.spectrum, delta=delta), solver)
        r = field.w2(spd_plan(t, field.grid, scales, spectrum=field.spectrum, delta=delta,
                              continuation="respace"), solver)
        out.append({"steps": n, "baseline": b, "keep": k, "respace": r,
                    "keep_ratio": k / b, "respace_ratio": r / b})
    return out


def times_for_schedule(schedule: str, grid: Sequence[int]) -> Callable[[int], torch.Tensor]:
    """``times_fn(n)`` for a schedule name: ``"flux"`` (FLUX.1's grid, mu from the
    grid's 2x2-packed tokens) or ``"shift:S"`` (SD3 shift ``S``)."""
    if schedule == "flux":
        tokens = (int(grid[-2]) // 2) * (int(grid[-1]) // 2)
        return lambda n: flux_times(n, tokens)
    if schedule.startswith("shift:"):
        try:
            shift = float(schedule.split(":", 1)[1])
        except ValueError:
            raise ValueError(f"schedule shift:S needs a number S, got {schedule!r}") from None
        return lambda n: flow_times(n, shift)
    raise ValueError(f"schedule must be 'flux' or 'shift:S' (an SD3 shift S), got {schedule!r}")


def run_testbed(spectrum: PowerSpectrum, grid: Sequence[int], steps: int = 50, *,
                schedule: str = "flux", solvers: Sequence[str] = ("euler", "heun"),
                deltas: Sequence[float] = M.SPD_DELTAS, optimal: bool = True,
                progress: bool = False) -> dict:
    """What ``specdiff testbed`` reports: the comparison rows on ``grid`` and the SPD
    keep-vs-respace study on a field of half the side (same spectrum and schedule).

    Returns ``{"rows": [Row], "study": [...], "study_side": side}``.
    """
    check_steps(steps)
    check_deltas(deltas, "deltas (--deltas)")
    grid = tuple(int(g) for g in grid)
    times_fn = times_for_schedule(schedule, grid)
    field = GaussianField(spectrum.A, spectrum.beta, grid)
    rows = compare_on_testbed(field, times_fn, steps, solvers=solvers, deltas=deltas,
                              optimal=optimal, progress=progress)
    side = min(grid) // 2
    small = GaussianField(spectrum.A, spectrum.beta, (side, side))
    study = long_step_study(small, times_for_schedule(schedule, (side, side)))
    return {"rows": rows, "study": study, "study_side": side}


def markdown_table(rows: Sequence[Row]) -> str:
    head = "| solver | plan | stages (grid x evals) | evals | cost ratio | W2 | W2 / base | KL |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.solver} | {r.plan} | {r.stages} | {r.evaluations} | {r.cost_ratio:.3f} | "
            f"{r.w2:.5f} | {r.w2_ratio:.3f} | {r.kl:.2e} |"
        )
    return "\n".join(lines)


def study_table(study: Sequence[dict]) -> str:
    """The keep-vs-respace study as a markdown table."""
    lines = ["| steps | baseline W2 | keep W2 (x base) | respace W2 (x base) |",
             "|---:|---:|---:|---:|"]
    for r in study:
        lines.append(f"| {r['steps']} | {r['baseline']:.5f} | {r['keep']:.5f} ({r['keep_ratio']:.2f}x) | "
                     f"{r['respace']:.5f} ({r['respace_ratio']:.2f}x) |")
    return "\n".join(lines)


def save_results(rows: Sequence[Row], out_dir: str, extra: dict | None = None) -> list[str]:
    """Write ``testbed.md``, ``testbed.json`` and ``pareto.png`` (W2 vs cost) to ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "testbed.md")
    js = os.path.join(out_dir, "testbed.json")
    atomic_write_text(md, markdown_table(rows) + "\n")
    atomic_write_text(js, json.dumps({"rows": [asdict(r) for r in rows], **(extra or {})}, indent=1))
    png = os.path.join(out_dir, "pareto.png")
    pareto_plot(rows, png)
    return [md, js, png]


def pareto_plot(rows: Sequence[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    solvers = sorted({r.solver for r in rows})
    fig, axes = plt.subplots(1, len(solvers), figsize=(6 * len(solvers), 4.5), squeeze=False)
    markers = {"baseline": "*", "fewer steps": "o", "spd keep": "s", "spd respace": "D",
               "pyramidal": "^", "bottleneck": "v", "cascade": "P"}
    for ax, solver in zip(axes[0], solvers, strict=True):
        for fam in dict.fromkeys(r.family for r in rows if r.solver == solver):
            rs = [r for r in rows if r.solver == solver and r.family == fam]
            ax.scatter([r.cost_ratio for r in rs], [r.w2 for r in rs], label=fam,
                       marker=markers.get(fam, "X"), s=60 if fam != "baseline" else 160)
        ax.set_xlabel("cost / baseline (token model)")
        ax.set_ylabel("exact W2 to the field (RMS per element)")
        ax.set_yscale("log")
        ax.set_title(f"{solver}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
