"""Where does ``optimal_plan`` break? Exact study on the Gaussian testbed.

For the FLUX-constant field (default 128^2 latents, FLUX shift):

1. step budget: the cost ratio at which the search matches the full-resolution
   baseline (W2 and KL) for 25, 50 and 100 baseline steps;
2. tighter targets: the cost needed to beat the 50-step baseline's W2 by 25%
   and 50% (a ratio above 1 means progressive sampling cannot buy it cheaper
   than the baseline);
3. spectrum mismatch: the plan searched on the FLUX constants, evaluated on
   fields whose spectrum is off (beta +-0.25, A x0.5 / x2), each against its
   own baseline.

Everything is closed form (no sampling); run time is the plan search.

    .venv/bin/python benchmarks/optimal_study.py [--grid 128] [--solvers euler,heun]
"""

from __future__ import annotations

import argparse
import time

from specdiff.analysis import optimal_plan
from specdiff.analysis.testbed import stage_summary
from specdiff.plans import SPECTRA, flux_times, full_plan
from specdiff.testbeds import GaussianField


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grid", type=int, default=128)
    ap.add_argument("--solvers", default="euler,heun")
    args = ap.parse_args()
    spec = SPECTRA["flux"]
    g = (args.grid, args.grid)
    tokens = (args.grid // 2) ** 2
    field = GaussianField(spec.A, spec.beta, g)
    t_start = time.perf_counter()
    print(f"# optimal_plan study: FLUX constants, {g[0]}x{g[1]}, FLUX shift (mu from {tokens} tokens)")
    for solver in args.solvers.split(","):
        print(f"\n## {solver}\n")
        print("| study | setting | plan (grid x evals) | cost ratio | W2 / base | KL / base |")
        print("|---|---|---|---:|---:|---:|")
        plans = {}
        for n in (25, 50, 100):
            times = flux_times(n, tokens)
            base = field.metrics(full_plan(times, g), solver)
            try:
                p = optimal_plan(field, times, solver=solver)
            except ValueError as e:
                print(f"| steps | {n} | {e} | | | |")
                continue
            m = field.metrics(p, solver)
            ratio = p.cost(solver=solver) / full_plan(times, g).cost(solver=solver)
            print(f"| steps | {n} baseline steps | {stage_summary(p, solver)} | {ratio:.3f} | "
                  f"{m['w2'] / base['w2']:.3f} | {m['kl'] / base['kl']:.3f} |")
            plans[n] = p
        times = flux_times(50, tokens)
        base_plan = full_plan(times, g)
        base = field.metrics(base_plan, solver)
        for frac in (0.75, 0.5):
            try:
                p = optimal_plan(field, times, solver=solver, target_w2=base["w2"] * frac,
                                 quality="w2")
                m = field.metrics(p, solver)
                ratio = p.cost(solver=solver) / base_plan.cost(solver=solver)
                print(f"| target | W2 <= {frac:g} x base (50 steps) | {stage_summary(p, solver)} | "
                      f"{ratio:.3f} | {m['w2'] / base['w2']:.3f} | {m['kl'] / base['kl']:.3f} |")
            except ValueError:
                print(f"| target | W2 <= {frac:g} x base (50 steps) | none below 1.5x the "
                      "baseline's cost | - | - | - |")
        if 50 in plans:
            p = plans[50]
            for label, A, beta in (("beta - 0.25", spec.A, spec.beta - 0.25),
                                   ("beta + 0.25", spec.A, spec.beta + 0.25),
                                   ("A x 0.5", spec.A * 0.5, spec.beta),
                                   ("A x 2", spec.A * 2, spec.beta)):
                other = GaussianField(A, beta, g)
                ob = other.metrics(base_plan, solver)
                om = other.metrics(p, solver)
                print(f"| mismatch | true spectrum {label} | plan searched on FLUX constants | "
                      f"{p.cost(solver=solver) / base_plan.cost(solver=solver):.3f} | "
                      f"{om['w2'] / ob['w2']:.3f} | {om['kl'] / ob['kl']:.3f} |")
    print(f"\n(search time {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
