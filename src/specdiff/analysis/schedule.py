"""SPD schedule tables: where each stage switches and what it costs (``specdiff schedule``).

One row per tolerance ``delta``: the SPD plan's stages (grid, evaluations,
time span, the switch time ``t*`` of paper Eq. 10 and the shifted entry time
``t_new`` of Eq. 5-6), the switch steps and the predicted cost ratio and
speed-up bound under the token (cost ~ elements) and attention
(cost ~ elements^2) cost models.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..fileio import save_figure
from ..plans import (
    MAX_STEPS,
    PowerSpectrum,
    _as_number,
    check_steps,
    get_spectrum,
    spd_plan,
    stage_grids,
)
from ..spectral import sequence_items

__all__ = ["MAX_STEPS", "check_steps", "check_deltas", "schedule_row", "schedule_rows",
           "schedule_table", "snr_plot"]


# check_steps and MAX_STEPS live in plans (every time grid checks them); re-exported here
def check_deltas(deltas, what: str = "delta") -> tuple[float, ...]:
    """SPD tolerances as floats, each in ``(0, 1)``; at least one."""
    items = sequence_items(deltas)
    try:
        ds = tuple(_as_number(d, what) for d in items) if items is not None else None
    except ValueError:
        ds = None
    if ds is None:
        raise ValueError(f"{what} must be numbers in (0, 1) such as 0.01,0.05, got {deltas!r}")
    bad = [d for d in ds if not 0 < d < 1]
    if not ds or bad:
        raise ValueError(f"{what} (SPD noise-dominated tolerance) must lie in (0, 1), e.g. 0.05; "
                         f"got {bad[0] if bad else 'none'}")
    return ds


def schedule_row(times, grid: Sequence[int], scales: Sequence[float], spectrum, delta: float, *,
                 continuation: str = "keep", multiple: int = 1) -> dict:
    """The SPD plan for one ``delta`` as a table row (JSON-ready).

    ``times``: the model's full-resolution time grid; ``spectrum``: a name,
    :class:`~specdiff.plans.PowerSpectrum` or ``(A, beta)``. Keys: ``delta``,
    ``stages`` (per stage ``grid``, ``evaluations``, ``t_start``, ``t_end``,
    ``t_star`` and ``t_new``, the last two ``None`` for the last stage),
    ``switch_steps``, ``cost_ratio_tokens``, ``cost_ratio_attention``,
    ``speedup_tokens``, ``speedup_attention``. The cost ratios divide by the
    time grid's step count (the full-resolution baseline's evaluations with Euler).
    """
    plan = spd_plan(times, grid, scales, spectrum=get_spectrum(spectrum), delta=delta,
                    continuation=continuation, multiple=multiple)
    steps = len(times) - 1
    t_star = plan.meta.t_star or ()
    ev = plan.evaluations()
    stages = []
    for i, st in enumerate(plan.stages):
        last = i + 1 == len(plan.stages)
        stages.append({
            "grid": list(st.grid), "evaluations": ev[i], "t_start": st.times[0],
            "t_end": st.times[-1], "t_star": None if last else t_star[i],
            "t_new": None if last else plan.stages[i + 1].times[0],
        })
    return {
        "delta": delta, "stages": stages,
        # the respace rule finds its switches on regridded times: it has no global switch step
        "switch_steps": list(plan.meta.switch_steps or ()),
        "cost_ratio_tokens": plan.cost("tokens") / steps,
        "cost_ratio_attention": plan.cost("attention") / steps,
        "speedup_tokens": plan.speedup_bound("tokens"),
        "speedup_attention": plan.speedup_bound("attention"),
    }


def schedule_rows(times, grid, scales, spectrum, deltas: Sequence[float], *,
                  continuation: str = "keep", multiple: int = 1) -> list[dict]:
    """:func:`schedule_row` for each ``delta``."""
    return [schedule_row(times, grid, scales, spectrum, d, continuation=continuation,
                         multiple=multiple) for d in deltas]


def schedule_table(rows: Sequence[dict]) -> str:
    """Markdown: one line per stage and delta; cost and speed-up on each delta's last line."""
    lines = ["| delta | stage | grid | evaluations | t_start | t_end (t*) | t_new | switch step |"
             " cost ratio (tokens / tokens^2) | speed-up bound (tokens / tokens^2) |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        for i, st in enumerate(r["stages"]):
            t_end = f"{st['t_end']:.4f}" + (f" ({st['t_star']:.4f})" if st["t_star"] else "")
            t_new = f"{st['t_new']:.4f}" if st["t_new"] else ""
            sw = str(r["switch_steps"][i]) if i < len(r["switch_steps"]) else ""
            last = i == len(r["stages"]) - 1
            cost = f"{r['cost_ratio_tokens']:.3f} / {r['cost_ratio_attention']:.3f}" if last else ""
            spd = f"{r['speedup_tokens']:.2f}x / {r['speedup_attention']:.2f}x" if last else ""
            lines.append(f"| {r['delta']:g} | {i} | {'x'.join(map(str, st['grid']))} | "
                         f"{st['evaluations']} | {st['t_start']:.4f} | {t_end} | {t_new} | {sw} | "
                         f"{cost} | {spd} |")
    return "\n".join(lines)


def snr_plot(path, spectrum: PowerSpectrum, grid, scales, rows: Sequence[dict],
             multiple: int = 1) -> None:
    """Per-frequency SNR curves ``((1-t)/t)^2 P(w)``; each coarse stage's Nyquist curve
    bold, each row's switch marked (a PNG at ``path``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    t = np.linspace(0.999, 0.001, 400)
    wmax = min(grid[-2:]) / 2

    def snr(w, tt):
        return ((1 - tt) / tt) ** 2 * spectrum.A * w ** (-spectrum.beta)

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for w in np.geomspace(1, wmax, 5):
        ax.plot(t, snr(w, t), lw=0.8, alpha=0.6, label=f"w={w:.1f}")
    grids = stage_grids(grid, scales, multiple=multiple)
    for g in grids[:-1]:
        w = min(g[-2:]) / 2
        ax.plot(t, snr(w, t), lw=2.2, label=f"w={w:g} (Nyquist of {g[-2]}x{g[-1]})")
    for r in rows:
        for i, st in enumerate(r["stages"][:-1]):
            w = min(grids[i][-2:]) / 2
            ts = st["t_star"]
            ax.plot([ts], [snr(w, ts)], "ko", ms=5)
            step = f" at step {r['switch_steps'][i]}" if i < len(r["switch_steps"]) else ""
            ax.annotate(f"delta={r['delta']:g}: switch{step}",
                        (ts, snr(w, ts)), textcoords="offset points", xytext=(6, -12), fontsize=7)
    ax.set_yscale("log")
    ax.invert_xaxis()
    ax.set_xlabel("t (1 = noise)")
    ax.set_ylabel("per-frequency SNR ((1-t)/t)^2 P(w)")
    ax.set_title(f"A={spectrum.A:g}, beta={spectrum.beta:g}, grid {'x'.join(map(str, grid))}",
                 fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
