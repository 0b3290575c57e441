"""Other models in the same benchmark run: ``specdiff bench --compare A,B``.

A compared model (a slim student, a fine-tuned variant, an ablation) is sampled
from the same seeds and the same full-resolution noise as the bench's main
model, scored against the same held-out crops and timed in the same
round-robin, so its rows read against the main model's baseline directly.
Each compared model runs the baseline plan and, when ``"spd"`` is among the
bench's methods, the two-stage SPD plans of the bench's deltas (the stacking
row: SPD on that model, with that model's own data spectrum); with ``"matched"``,
the main model with fewer full-resolution steps at each compared row's FLOPs is
added (what a user would run instead at that cost).

Plans of a compared model name it as every stage's model key
(:attr:`specdiff.plans.Stage.model`), so :func:`specdiff.sampling.sample` walks
them with the mapping ``{"default": main, key: compared}``; FLOPs per evaluation
are measured per model and grid and kept under ``(key, grid)``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from ..plans import Plan, Stage

if TYPE_CHECKING:
    from .bench import BenchConfig, BenchModel

#: the methods a compared model runs (those of the bench's ``methods`` it has)
COMPARED_METHODS = ("baseline", "spd")


def check_compared(cfg: BenchConfig) -> None:
    """``ValueError`` for a compare list the bench cannot run (before any model loads)."""
    names = list(cfg.compare)
    if any(not isinstance(n, str) or not n.strip() for n in names):
        raise ValueError(f"compare (--compare) needs model names or paths, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"compare (--compare) lists a model twice: {names}")
    if cfg.model in names:
        raise ValueError(f"compare (--compare) repeats the main model {cfg.model!r}; list only "
                         "the other models")
    if "gaussian" in names or (names and cfg.model == "gaussian"):
        raise ValueError("compare (--compare) runs trained models against a trained main model; "
                         "the exact testbed 'gaussian' has no place in it")


def load_compared(cfg: BenchConfig, main: BenchModel) -> dict[str, BenchModel]:
    """The compared models by key (their names), checked against ``main``."""
    from .bench import load_bench_model

    out = {}
    for name in cfg.compare:
        bm = load_bench_model(name, tuple(cfg.size))
        if bm.channels != main.channels:
            raise ValueError(f"compared model {name!r} makes {bm.channels}-channel images, the "
                             f"main model {main.name!r} {main.channels}: compare models of the "
                             "same images")
        out[name] = bm
    return out


def relabel(plan: Plan, key: str) -> Plan:
    """``plan`` with every stage run by model ``key`` and the row named ``key: name``."""
    stages = [Stage(st.grid, st.times, st.transition, key) for st in plan.stages]
    return Plan(stages, name=f"{key}: {plan.name}", meta=plan.meta)


def compared_plans(cfg: BenchConfig, others: dict[str, BenchModel], flops: dict,
                   progress: bool = False) -> list[Plan]:
    """Each compared model's plans (:data:`COMPARED_METHODS` of ``cfg.methods``), relabelled;
    their grids' FLOPs are added to ``flops`` under ``(key, grid)``."""
    from .bench import build_plans

    want = tuple(m for m in COMPARED_METHODS if m in cfg.methods)
    sub = replace(cfg, methods=want, compare=())
    out = []
    for key, bm in others.items():
        own: dict = {}
        plans = build_plans(sub, bm, own, progress=progress)
        flops.update({(key, g): v for g, v in own.items()})
        out += [relabel(p, key) for p in plans]
    return out


def absolute_flops(plan: Plan, flops: dict, solver: str) -> float:
    """FLOPs of one image through ``plan``: its cost (in units of its last stage's model on the
    full grid) times that evaluation's measured FLOPs."""
    last = plan.stages[-1]
    unit = flops[(last.model, plan.full_grid)] if last.model else flops[plan.full_grid]
    return plan.cost(flops, solver) * unit


def matched_for_compared(cfg: BenchConfig, setting, plans: list[Plan], flops: dict,
                         taken: set[int]) -> list[Plan]:
    """The main model with fewer full-resolution steps at each compared plan's FLOPs (one plan
    per step count not in ``taken``, fewer than the baseline's)."""
    from . import methods

    full = flops[tuple(cfg.size)]
    out = []
    for p in plans:
        if p.stages[-1].model is None:
            continue
        mp = methods.matched(setting, absolute_flops(p, flops, cfg.solver) / full,
                             solver=cfg.solver, cost_model=flops)
        if mp.steps in taken or mp.steps >= cfg.steps:
            continue
        taken.add(mp.steps)
        out.append(mp)
    return out


__all__ = ["COMPARED_METHODS", "check_compared", "load_compared", "relabel", "compared_plans",
           "absolute_flops", "matched_for_compared"]
