"""Write images of one plan from an embedded model (``specdiff sample``).

Image ``i`` starts from the full-resolution noise of seed ``seed + i``
(:func:`specdiff.analysis.bench.seeded_noise`), so the baseline
(``scales=(1.0,)``) and a progressive plan from the same seeds are comparable
pixel by pixel.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

from ..cascade import OFFICIAL_STRENGTH
from ..fileio import atomic_write_json, check_output_dir
from ..images import image_grid, save_png
from ..plans import Plan, full_plan, spd_plan
from ..sampling import sample
from ..transitions import Transition
from .bench import load_bench_model, seeded_noise
from .schedule import check_deltas, check_steps

__all__ = ["SampleConfig", "sample_plan", "generate"]


@dataclass(frozen=True)
class SampleConfig:
    """One ``specdiff sample`` run (defaults: the CLI's)."""

    model: str = "unet"
    size: tuple[int, int] = (128, 128)
    steps: int = 50
    shift: float | None = None  # None: the model's default (sqrt(HW)/64)
    solver: str = "euler"
    n: int = 16
    scales: tuple[float, ...] = (0.5, 1.0)  # (1.0,): the full-resolution baseline
    delta: float = 0.05
    transition: Transition | str = "dct"
    continuation: str = "keep"
    seed: int = 0
    # tuning-free self-cascade (specdiff.cascade): "spectral" re-noises each step up at
    # SPD's activation time for ``delta``; "strength" at ``strength``; None: no cascade
    cascade: str | None = None
    pivot: int = 128  # the size the model was trained at: the cascade's first stage
    strength: float = OFFICIAL_STRENGTH  # the official Self-Cascade re-noise strength

    def validate(self) -> SampleConfig:
        if self.n < 1:
            raise ValueError(f"n (images) must be >= 1, got {self.n}")
        check_steps(self.steps)
        check_deltas((self.delta,))
        if self.cascade not in (None, "spectral", "strength"):
            raise ValueError(f"cascade must be 'spectral', 'strength' or None, got {self.cascade!r}")
        if self.cascade is not None:
            from ..cascade import cascade_grids

            cascade_grids((self.pivot, self.pivot), tuple(self.size))  # a clear error now
            if not 0 < self.strength < 1:
                raise ValueError(f"strength (--cascade-strength) must lie in (0, 1), got "
                                 f"{self.strength}")
        return self


def sample_plan(cfg: SampleConfig, bm) -> Plan:
    """The full-resolution plan for ``scales=(1.0,)``, a tuning-free self-cascade from the
    pivot size with ``cascade``, else SPD with ``cfg``'s settings."""
    grid = tuple(cfg.size)
    if cfg.cascade is not None:
        return _cascade_plan(cfg, bm, grid)
    times = bm.times(cfg.steps, grid, cfg.shift)
    if tuple(cfg.scales) == (1.0,):
        return full_plan(times, grid)
    return spd_plan(times, grid, tuple(cfg.scales), A=bm.spectrum[0], beta=bm.spectrum[1],
                    delta=cfg.delta, transition=cfg.transition,
                    multiple=bm.stage_multiple(grid), continuation=cfg.continuation)


def _cascade_plan(cfg: SampleConfig, bm, grid) -> Plan:
    from ..cascade import cascade_grids, cascade_renoise_times, self_cascade_plan

    grids = cascade_grids((cfg.pivot, cfg.pivot), grid)
    model = bm.denoiser

    def spectrum_at(g):  # the data spectrum on that grid (the embedded models record it)
        return model.spectrum(min(g[-2:])) if hasattr(model, "spectrum") else bm.spectrum

    if cfg.cascade == "spectral":
        ren = cascade_renoise_times(grids, spectrum_at=spectrum_at, delta=cfg.delta)
    else:
        ren = cascade_renoise_times(grids, strength=cfg.strength)
    return self_cascade_plan(lambda g: bm.times(cfg.steps, g, cfg.shift), grids, ren,
                             steps=cfg.steps)


def generate(cfg: SampleConfig, out: str | Path, *, progress: bool = True) -> dict:
    """Sample ``cfg.n`` images; write ``{i:03d}_seed{seed+i}.png``, ``grid.png`` and
    ``sample.json`` (returned: model, plan, seconds, pixel cost relative to the baseline)."""
    cfg = cfg.validate()
    out = check_output_dir(out, "the output folder (--out)")
    bm = load_bench_model(cfg.model, tuple(cfg.size))
    if bm.field is not None:
        raise ValueError("sample needs a trained model (unet, dit or a checkpoint path)")
    plan = sample_plan(cfg, bm)
    noise, fresh = seeded_noise(cfg.seed, bm.channels, tuple(cfg.size), 0, cfg.n)
    t0 = time.perf_counter()
    # per-image generators for the fresh noise of x0 re-noise transitions (a cascade)
    x = sample(bm.denoiser, plan, solver=cfg.solver, noise=noise, generator=fresh,
               progress=progress)
    dt = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    for i in range(cfg.n):
        save_png(out / f"{i:03d}_seed{cfg.seed + i}.png", x[i])
    cols = math.ceil(math.sqrt(cfg.n))
    save_png(out / "grid.png", image_grid([x[i : i + cols] for i in range(0, cfg.n, cols)]))
    desc = ", ".join(f"{r['steps']} steps at {r['grid']}" for r in plan.describe(cfg.solver))
    info = {"model": cfg.model, "size": list(cfg.size), "steps": cfg.steps,
            "scales": list(plan.meta.scales) if cfg.cascade else list(cfg.scales),
            "delta": cfg.delta, "continuation": cfg.continuation,
            "seed": cfg.seed, "n": cfg.n, "plan": desc, "seconds": dt, "cascade": cfg.cascade,
            "pixel_cost_vs_full": plan.cost("tokens", cfg.solver) / cfg.steps}
    atomic_write_json(out / "sample.json", info)
    return info
