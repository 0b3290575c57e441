"""Exact side-by-side comparison of plans on the Gaussian testbed (``specdiff testbed``).

Everything here is closed form (:meth:`GaussianField.w2`): no sampling, no
timing. Quality is the exact W2 (RMS per element) between the plan's output
law and the true field; cost is model evaluations weighted by a cost model,
relative to the full-resolution baseline.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .fileio import atomic_write_text, save_figure
from .optimize import optimal_plan
from .plans import (
    Plan,
    bottleneck_plan,
    cascade_plan,
    full_plan,
    pyramidal_plan,
    spd_plan,
)
from .testbeds import GaussianField


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


def compare_on_testbed(
    field: GaussianField,
    times_fn: Callable[[int], torch.Tensor],
    steps: int = 50,
    *,
    solvers: Sequence[str] = ("euler", "heun"),
    deltas: Sequence[float] = (0.01, 0.05, 0.1, 0.2),
    cost_model="tokens",
    optimal: bool = True,
    optimal_kwargs: dict | None = None,
    multiple: int = 1,
    progress: bool = False,
) -> list[Row]:
    """Baseline, matched-cost fewer steps, SPD (keep/respace, 2 and 3 stages),
    Pyramidal Flow, bottleneck, x0 cascade and ``optimal_plan``, per solver.

    ``times_fn(n)`` builds the model's own ``n``-step full-resolution grid.
    Pyramidal/cascade plans use DCT-diagonal transitions (``dct``/``x0_dct``)
    so their law stays closed form.
    """
    grid = field.grid
    times = times_fn(steps)
    rows: list[Row] = []
    for solver in solvers:
        base = full_plan(times, grid).with_name(f"full {steps} steps (baseline)")
        base_cost = base.cost(cost_model, solver)
        base_w2 = field.w2(base, solver)
        rows.append(_row(field, base, solver, "baseline", base_cost, base_w2, cost_model))
        plans: list[tuple[str, Plan]] = []
        for d in deltas:
            for sc in ((0.5, 1.0), (0.25, 0.5, 1.0)):
                for cont in ("keep", "respace"):
                    try:
                        plans.append(("spd " + cont, spd_plan(times, grid, sc, spectrum=field.spectrum,
                                                              delta=d, continuation=cont, multiple=multiple)))
                    except ValueError:
                        continue
        third = steps // 3
        plans.append(("pyramidal", pyramidal_plan(grid, (0.25, 0.5, 1.0), (third, third, steps - 2 * third),
                                                  profile=times, transition="dct", multiple=multiple)))
        plans.append(("bottleneck", bottleneck_plan(times, grid, multiple=multiple)))
        plans.append(("cascade", cascade_plan(times, grid, (0.5, 1.0), renoise_at=(0.7,), up="dct",
                                              steps=(steps // 2, steps // 2), multiple=multiple)))
        if optimal:
            kw = dict(optimal_kwargs or {})
            for label, ms in (("optimal (1 stage: spacing only)", 1), ("optimal", 3)):
                try:
                    p = optimal_plan(field, times, solver=solver, cost_model=cost_model,
                                     max_stages=ms, multiple=multiple, progress=progress, **kw)
                    plans.append((label, p.with_name(label + " " + p.name.removeprefix("optimal "))))
                except ValueError as e:
                    print(f"[testbed] {label} ({solver}): {e}")
        matched: dict[int, Plan] = {}
        for family, p in plans:
            rows.append(_row(field, p, solver, family, base_cost, base_w2, cost_model))
            two_stage_keep = family == "spd keep" and len(p.stages) == 2
            if two_stage_keep or family == "optimal":
                n = _matched_steps(p.cost(cost_model, solver), times_fn, grid, solver, cost_model)
                matched.setdefault(n, full_plan(times_fn(n), grid).with_name(f"full {n} steps"))
        for n in sorted(matched, reverse=True):
            rows.append(_row(field, matched[n], solver, "fewer steps", base_cost, base_w2, cost_model))
    return rows


def _matched_steps(cost, times_fn, grid, solver, cost_model) -> int:
    """Full-resolution step count whose cost is closest to ``cost``."""
    per_step = full_plan(times_fn(2), grid).cost(cost_model, solver) - full_plan(
        times_fn(1), grid).cost(cost_model, solver)
    guess = max(1, round(cost / per_step))
    cands = range(max(1, guess - 1), guess + 2)
    return min(cands, key=lambda n: abs(full_plan(times_fn(n), grid).cost(cost_model, solver) - cost))


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


def markdown_table(rows: Sequence[Row]) -> str:
    head = "| solver | plan | stages (grid x evals) | evals | cost ratio | W2 | W2 / base | KL |"
    lines = [head, "|---|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r.solver} | {r.plan} | {r.stages} | {r.evaluations} | {r.cost_ratio:.3f} | "
            f"{r.w2:.5f} | {r.w2_ratio:.3f} | {r.kl:.2e} |"
        )
    return "\n".join(lines)



def save_results(rows: Sequence[Row], out_dir: str, extra: dict | None = None) -> list[str]:
    """Write ``testbed.md``, ``testbed.json`` and ``pareto.png`` (W2 vs cost) to ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    md = os.path.join(out_dir, "testbed.md")
    js = os.path.join(out_dir, "testbed.json")
    atomic_write_text(md, markdown_table(rows) + "\n")
    atomic_write_text(js, json.dumps({"rows": [r.__dict__ for r in rows], **(extra or {})}, indent=1))
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


def fmt_float(x: float) -> str:
    return f"{x:.4g}" if math.isfinite(x) else str(x)
